"""Files as values: a ``pathlib.Path`` column is identified by the file's content (a directory by
its tree), digests are stat-cached in the store, editing a file recomputes exactly the packets
that read it, and files a function returns are kept content-addressed in the result store —
they outlive the directory they were written in and are served to a new process, also from an
object store."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest

from orcapod_core import DeltaTableDatabase, DictSource, InMemoryArrowDatabase, Pipeline, function_pod
from orcapod_core.databases.file_store import DIGEST_RECORDS, FILE_AREA, REF_PREFIX
from orcapod_core.errors import MissingFileError
from orcapod_core.files import content_digest, digest_cache_info
from orcapod_core.hashing import hash_rows
from orcapod_core.types import python_to_arrow, schema_from_arrow, type_from_string, type_to_string
from orcapod_core.values import strict_array

READS: list[str] = []


@function_pod(output_keys="chars")
def count_chars(recording: Path) -> int:
    READS.append(recording.name)
    return len(recording.read_text())


@function_pod(output_keys="report")
def write_report(chars: int, out_dir: str) -> Path:
    path = Path(out_dir) / f"report_{chars}.txt"
    path.write_text(f"{chars} characters\n")
    return path


def recordings(folder: Path, texts: dict[str, str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in texts.items():
        (folder / name).write_text(text)
        paths.append(folder / name)
    return paths


def counting_pipeline(store: Path, paths: list[Path]) -> Pipeline:
    with Pipeline("files", DeltaTableDatabase(store)) as pipeline:
        source = DictSource({"session": [p.stem for p in paths], "recording": paths}, tag_columns="session", label="recordings")
        count_chars.pod(source, label="chars")
    return pipeline


def computed(pipeline: Pipeline, label: str) -> tuple[int, int]:
    READS.clear()
    stats = pipeline.run().stats[label]
    return stats.computed, stats.cached


def test_path_columns_have_a_documented_arrow_form_and_type_string():
    dtype = python_to_arrow(Path)
    assert dtype == pa.struct([pa.field("path", pa.large_string(), nullable=False)])
    assert type_to_string(list[Path] | None) == "list[Path] | None"
    assert type_from_string("list[Path]") == list[Path]
    schema = schema_from_arrow(pa.schema([pa.field("f", dtype, nullable=False)]))
    assert schema == {"f": Path}
    with pytest.raises(TypeError, match="expected Path"):
        strict_array(["not/a/path/object.txt"], pa.field("f", dtype))


def test_the_hash_is_the_files_content_not_its_path(tmp_path):
    a, b, c = recordings(tmp_path, {"a.txt": "same", "b.txt": "same", "c.txt": "other"})
    table = pa.table({"f": strict_array([a, b, c], pa.field("f", python_to_arrow(Path)))})
    digests = hash_rows(table).to_pylist()
    assert digests[0] == digests[1] != digests[2]
    assert content_digest(a) == hashlib.sha256(b"same").digest()
    before = digests[2]
    c.write_text("edited")
    assert hash_rows(table).to_pylist()[2] != before


def test_a_directory_is_identified_by_its_tree(tmp_path):
    one = tmp_path / "one"
    recordings(one / "sub", {"x.bin": "1"})
    (one / "y.bin").write_text("2")
    two = tmp_path / "two"
    shutil.copytree(one, two)
    assert content_digest(one) == content_digest(two)  # where the tree lives does not matter
    (two / "sub" / "x.bin").rename(two / "sub" / "z.bin")
    assert content_digest(one) != content_digest(two)  # a rename inside does
    shutil.rmtree(two)
    shutil.copytree(one, two)
    (two / "empty").mkdir()
    assert content_digest(one) != content_digest(two)  # so does a new (empty) folder


def test_editing_a_file_recomputes_exactly_the_packets_that_read_it(tmp_path):
    paths = recordings(tmp_path / "data", {"s1.txt": "a", "s2.txt": "bb", "s3.txt": "ccc"})
    pipeline = counting_pipeline(tmp_path / "store", paths)
    assert computed(pipeline, "chars") == (3, 0)
    assert computed(counting_pipeline(tmp_path / "store", paths), "chars") == (0, 3)
    paths[1].write_text("bbbb")
    again = counting_pipeline(tmp_path / "store", paths)
    assert computed(again, "chars") == (1, 2)
    assert READS == ["s2.txt"]
    rows = {r["session"]: r["chars"] for r in again.chars.as_table().to_pylist()}
    assert rows == {"s1": 1, "s2": 4, "s3": 3}


def test_unchanged_files_are_not_read_again_in_a_new_process(tmp_path):
    paths = recordings(tmp_path / "data", {f"s{i}.txt": "x" * i for i in range(5)})
    counting_pipeline(tmp_path / "store", paths).run()
    stored = DeltaTableDatabase(tmp_path / "store").get_all_records(DIGEST_RECORDS)
    assert sorted(stored.column("path").to_pylist()) == sorted(str(p) for p in paths)
    paths[0].touch()  # a new mtime (same bytes): read again, nothing recomputed
    script = textwrap.dedent(
        f"""
        import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from test_files import counting_pipeline, computed
        from orcapod_core.files import digest_cache_info
        paths = sorted(Path({str(tmp_path / 'data')!r}).iterdir())
        print(computed(counting_pipeline(Path({str(tmp_path / 'store')!r}), paths), "chars"), digest_cache_info()["reads"])
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["(0,", "5)", "1"]


def test_a_missing_file_names_the_column_row_and_path(tmp_path):
    paths = recordings(tmp_path / "data", {"s1.txt": "a", "s2.txt": "b"})
    paths[1].unlink()
    with pytest.raises(MissingFileError) as info:
        counting_pipeline(tmp_path / "store", paths).run()
    assert info.value.column == "recording" and info.value.row == 1 and info.value.path == str(paths[1])
    assert "column 'recording', row 1" in str(info.value) and str(paths[1]) in str(info.value)


def report_pipeline(store: Path, data: Path, out_dir: Path) -> Pipeline:
    paths = sorted(data.iterdir())
    with Pipeline("reports", DeltaTableDatabase(store)) as pipeline:
        source = DictSource(
            {"session": [p.stem for p in paths], "recording": paths, "out_dir": [str(out_dir)] * len(paths)},
            tag_columns="session",
            label="recordings",
        )
        chars = count_chars.pod(source.select_packet_columns(["recording"]), label="chars")
        joined = chars.join(source.select_packet_columns(["out_dir"]))
        write_report.pod(joined, label="reports")
    return pipeline


def test_a_returned_file_is_kept_in_the_store_and_served_to_a_new_process(tmp_path):
    data = tmp_path / "data"
    recordings(data, {"s1.txt": "a", "s2.txt": "bbb"})
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    pipeline = report_pipeline(tmp_path / "store", data, scratch)
    pipeline.run()
    served = {t["session"]: p["report"] for t, p in pipeline.reports}
    area = str(tmp_path / "store" / FILE_AREA)
    assert all(str(p).startswith(area) and p.read_text().endswith("characters\n") for p in served.values())
    assert served["s2"].name == "report_3.txt"  # the file keeps its name (and extension)
    stored = DeltaTableDatabase(tmp_path / "store").get_all_records(pipeline.reports.result_cache.record_path)
    assert all(r["path"].startswith(REF_PREFIX) for r in stored.column("report").to_pylist())  # no machine path stored
    shutil.rmtree(scratch)
    scratch.mkdir()
    script = textwrap.dedent(
        f"""
        import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from test_files import report_pipeline, computed
        pipeline = report_pipeline(Path({str(tmp_path / 'store')!r}), Path({str(data)!r}), Path({str(scratch)!r}))
        print(computed(pipeline, "reports"))
        for tag, packet in pipeline.reports:
            print(tag["session"], packet["report"].read_text().strip())
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["(0, 2)", "s1 1 characters", "s2 3 characters"]
    assert list(scratch.iterdir()) == []  # nothing was recomputed into the new scratch folder


def test_equal_returned_files_are_stored_once(tmp_path):
    @function_pod(output_keys="copy")
    def constant_file(x: int, out_dir: str) -> Path:
        path = Path(out_dir) / f"{x}" / "same.txt"
        path.parent.mkdir()
        path.write_text("identical")
        return path

    with Pipeline("dedup", DeltaTableDatabase(tmp_path / "store")) as pipeline:
        constant_file.pod(DictSource({"id": [1, 2, 3], "x": [1, 2, 3], "out_dir": [str(tmp_path)] * 3}, tag_columns="id"), label="copies")
    pipeline.run()
    paths = {p["copy"] for _, p in pipeline.copies}
    assert len(paths) == 1
    assert len([f for f in (tmp_path / "store" / FILE_AREA).rglob("*") if f.is_file()]) == 1


def test_a_returned_directory_is_kept_whole(tmp_path):
    @function_pod(output_keys="folder")
    def make_folder(n: int, out_dir: str) -> Path:
        folder = Path(out_dir) / f"run{n}"
        (folder / "plots").mkdir(parents=True)
        for i in range(n):
            (folder / "plots" / f"p{i}.txt").write_text(str(i))
        return folder

    with Pipeline("dirs", InMemoryArrowDatabase()) as pipeline:
        make_folder.pod(DictSource({"id": [0], "n": [2], "out_dir": [str(tmp_path / "work")]}, tag_columns="id"), label="folders")
    pipeline.run()
    shutil.rmtree(tmp_path / "work")
    ((_, packet),) = list(pipeline.folders)
    assert sorted(p.name for p in (packet["folder"] / "plots").iterdir()) == ["p0.txt", "p1.txt"]


def test_a_returned_path_that_does_not_exist_is_a_failed_packet(tmp_path):
    @function_pod(output_keys="out")
    def sometimes(x: int) -> Path:
        path = tmp_path / f"out-{x}.txt"
        if x != 2:
            path.write_text("ok")
        return path

    with Pipeline("missing", DeltaTableDatabase(tmp_path / "store")) as pipeline:
        sometimes.pod(DictSource({"id": [1, 2, 3], "x": [1, 2, 3]}, tag_columns="id"), label="outs")
    stats = pipeline.run().stats["outs"]
    assert (stats.computed, stats.failed) == (2, 1)
    assert "OutputTypeError" in stats.errors[0] and "out-2.txt' does not exist" in stats.errors[0]
    assert sorted(t["id"] for t, _ in pipeline.outs) == [1, 3]


def test_returned_files_on_an_object_store_reach_another_machine(s3_store, tmp_path, monkeypatch):
    data = tmp_path / "data"
    recordings(data, {"s1.txt": "abcd"})
    database = DeltaTableDatabase(s3_store.uri, storage_options=s3_store.storage_options)
    with Pipeline("s3files", database) as pipeline:
        source = DictSource({"session": ["s1"], "chars": [4], "out_dir": [str(tmp_path / "work")]}, tag_columns="session")
        (tmp_path / "work").mkdir()
        write_report.pod(source, label="reports")
    monkeypatch.setenv("ORCAPOD_FILE_CACHE", str(tmp_path / "cache-a"))
    pipeline.run()
    shutil.rmtree(tmp_path / "work")
    # "Another machine": a fresh handle and an empty local file cache.
    monkeypatch.setenv("ORCAPOD_FILE_CACHE", str(tmp_path / "cache-b"))
    fresh = DeltaTableDatabase(s3_store.uri, storage_options=s3_store.storage_options)
    with Pipeline("s3files", fresh) as again:
        source = DictSource({"session": ["s1"], "chars": [4], "out_dir": [str(tmp_path / "work")]}, tag_columns="session")
        write_report.pod(source, label="reports")
    assert again.run().stats["reports"].computed == 0
    ((_, packet),) = list(again.reports)
    assert str(packet["report"]).startswith(str(tmp_path / "cache-b"))
    assert packet["report"].read_text() == "4 characters\n"


def test_digest_cache_reports_reads(tmp_path):
    (tmp_path / "f.txt").write_text("z")
    before = digest_cache_info()["reads"]
    content_digest(tmp_path / "f.txt")
    content_digest(tmp_path / "f.txt")
    assert digest_cache_info()["reads"] == before + 1
    os.utime(tmp_path / "f.txt", ns=(1, 1))
    content_digest(tmp_path / "f.txt")
    assert digest_cache_info()["reads"] == before + 2


def test_two_processes_sharing_a_store_keep_one_copy_of_each_file(tmp_path):
    data = tmp_path / "data"
    recordings(data, {f"s{i}.txt": "x" * i for i in range(1, 7)})
    script = textwrap.dedent(
        f"""
        import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from test_files import report_pipeline
        scratch = Path(sys.argv[1]); scratch.mkdir()
        pipeline = report_pipeline(Path({str(tmp_path / 'store')!r}), Path({str(data)!r}), scratch)
        stats = pipeline.run().stats["reports"]
        print(stats.computed + stats.cached, stats.failed, sorted(p["report"].read_text() for _, p in pipeline.reports)[0].strip())
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path / f"scratch{i}")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outputs]
    assert [o[0].split() for o in outputs] == [["6", "0", "1", "characters"]] * 2
    stored = sorted(f.name for f in (tmp_path / "store" / FILE_AREA).rglob("*") if f.is_file())
    assert stored == sorted(f"report_{i}.txt" for i in range(1, 7))  # each content once, no leftovers


def test_a_null_path_is_no_file(tmp_path):
    """A ``Path | None`` output that is None stores nothing and reads back as None; a null Path
    hashes as null whatever its slot holds underneath (it is not read as a path)."""

    @function_pod(output_keys="out")
    def sometimes(x: int) -> Path | None:
        if x == 2:
            return None
        path = tmp_path / "work" / f"{x}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_text(str(x))
        return path

    with Pipeline("nulls", DeltaTableDatabase(tmp_path / "store")) as pipeline:
        sometimes.pod(DictSource({"id": [1, 2, 3], "x": [1, 2, 3]}, tag_columns="id"), label="outs")
    assert pipeline.run().stats["outs"].computed == 3
    served = {t["id"]: p["out"] for t, p in pipeline.outs}
    assert served[2] is None and served[1].read_text() == "1" and served[3].read_text() == "3"
    assert sorted(f.name for f in (tmp_path / "store" / FILE_AREA).rglob("*") if f.is_file()) == ["1.txt", "3.txt"]

    dtype = python_to_arrow(Path)
    hidden = pa.StructArray.from_arrays(
        [pa.array(["/does/not/exist", "/does/not/exist"], pa.large_string())], fields=list(dtype), mask=pa.array([True, True])
    )
    assert hash_rows(pa.table({"f": hidden})) == hash_rows(pa.table({"f": pa.nulls(2, dtype)}))


def test_the_missing_file_row_is_exact_when_paths_share_a_prefix(tmp_path):
    (tmp_path / "f10").write_text("here")
    field = pa.field("f", python_to_arrow(Path))
    table = pa.table({"f": strict_array([tmp_path / "f10", tmp_path / "f1"], field)})
    with pytest.raises(MissingFileError) as info:
        hash_rows(table)
    assert info.value.row == 1 and info.value.path == str(tmp_path / "f1")
