"""Store maintenance: compaction and vacuum of real Delta tables (temp dirs and a local S3
server), what they keep (every row, pinned outputs, tables that are not ours) and what they
remove (small files, unreferenced files, time travel of our own tables)."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from orcapod_core import CSVSource, DeltaTableDatabase, DeltaTableSource, DictSource, MaintenanceReport, Pipeline, function_pod
from orcapod_core.databases import RECORD_ID_COLUMN, InMemoryArrowDatabase
from orcapod_core.errors import CorruptStoreError, InputValidationError, InvalidPathError
from orcapod_core.pipeline import LoggingObserver
from orcapod_core.pipeline.snapshots import load_snapshot, pinned_outputs, save_snapshot

PATH = ("pipe", "node", "abc123")


def batch(ids, **columns) -> pa.Table:
    return pa.table({RECORD_ID_COLUMN: pa.array([str(i) for i in ids], pa.large_string()), **columns})


TAGS = pa.map_(pa.string(), pa.string())


def fill(db, path=PATH, batches=5, size=3):
    """``batches`` commits of ``size`` records each (one file each), with a map column and a
    column added half-way (schema evolution)."""
    for b in range(batches):
        ids = list(range(b * size, (b + 1) * size))
        columns = {"x": [i * 10 for i in ids], "tags": pa.array([{"k": str(i)} for i in ids], TAGS)}
        if b >= batches // 2:
            columns["note"] = [f"n{i}" for i in ids]
        db.add_records(path, batch(ids, **columns), flush=True)


def rows(db, path=PATH) -> pa.Table:
    """Every committed record, in id order (the order of batches may change, see maintenance)."""
    return db.get_all_records(path).sort_by(RECORD_ID_COLUMN)


def parquet_files(directory: Path) -> set[str]:
    return {p.name for p in directory.glob("*.parquet")}


# -- compaction ----------------------------------------------------------------------------------


def test_compaction_merges_small_files_and_keeps_every_row(tmp_path):
    db = DeltaTableDatabase(tmp_path / "store")
    fill(db)
    table_dir = Path(db.table_uri(PATH))
    before, version = rows(db), db.table_version(PATH)
    lookup = db.get_records_by_ids(PATH, ["4", "12"]).sort_by(RECORD_ID_COLUMN)
    assert len(parquet_files(table_dir)) == 5

    report = db.compact()
    assert isinstance(report, MaintenanceReport) and report.operation == "compact"
    assert report.tables == (PATH,) and report.scanned == 1
    assert (report.files_before, report.files_after, report.files_removed) == (5, 1, 5)
    assert report.bytes_after < report.bytes_before
    assert repr(report).startswith(f"MaintenanceReport(compact {str(tmp_path / 'store')!r}: 1 of 1 tables compacted, files 5 -> 1")
    assert rows(db).equals(before)  # same rows, same exact schema (the added column null before it existed)
    assert db.get_records_by_ids(PATH, ["4", "12"]).sort_by(RECORD_ID_COLUMN).equals(lookup)
    assert rows(DeltaTableDatabase(tmp_path / "store")).equals(before)  # a fresh handle reads the same
    assert db.table_version(PATH) == version + 1
    # The merged-away files stay until a vacuum: the older version is still readable.
    assert len(parquet_files(table_dir)) == 6
    assert DeltaTable(str(table_dir), version=version).to_pyarrow_table().num_rows == 15
    # Nothing left to merge: a second compaction changes nothing.
    again = db.compact()
    assert again.tables == () and again.files_before == again.files_after == 1 and db.table_version(PATH) == version + 1
    # The handle keeps working: dedup against the compacted ids, new batches, reads.
    assert db.add_records(PATH, batch(["0", "99"], x=[0, 990]), flush=True) == 1
    assert db.get_records_by_ids(PATH, ["99"])["x"].to_pylist() == [990]


def test_pending_records_are_committed_before_maintenance(tmp_path):
    db = DeltaTableDatabase(tmp_path / "store", max_batch_age_s=None)
    fill(db, batches=2)
    db.add_records(PATH, batch(["p1", "p2"], x=[1, 2]))
    db.add_records(("other", "t"), batch(["o"], x=[1]))
    assert db.pending_count() == 3
    report = db.compact(("pipe",))
    assert db.pending_count(PATH) == 0 and db.pending_count(("other", "t")) == 1  # only under the prefix
    assert report.files_before == 3 and report.files_after == 1
    assert DeltaTableDatabase(tmp_path / "store").get_records_by_ids(PATH, ["p1", "p2"])["x"].to_pylist() == [1, 2]
    db.add_records(PATH, batch(["p3"], x=[3]))
    db.vacuum(("pipe",), dry_run=True)
    assert db.pending_count(PATH) == 0


def test_prefix_limits_what_is_maintained(tmp_path):
    db = DeltaTableDatabase(tmp_path / "store")
    fill(db, ("a", "t1"), batches=3)
    fill(db, ("a", "sub", "t2"), batches=3)
    fill(db, ("b", "t3"), batches=3)
    report = db.compact(("a",))
    assert report.tables == (("a", "sub", "t2"), ("a", "t1"))
    assert len(parquet_files(Path(db.table_uri(("b", "t3"))))) == 3
    assert db.compact(("a", "t1")).scanned == 1  # a table path itself is a prefix
    assert db.compact(("nothing", "here")) == MaintenanceReport("compact", db.base_uri)
    with pytest.raises(InvalidPathError, match="'a/t1'"):
        db.compact("a/t1")
    with pytest.raises(InvalidPathError, match=r"'\.\.'"):
        db.vacuum(("a", ".."))


def test_racing_duplicates_are_not_compacted_so_the_first_copy_still_wins(tmp_path):
    db = DeltaTableDatabase(tmp_path / "store")
    db.add_records(PATH, batch(["a", "b"], x=[1, 2]), flush=True)
    # What two object-store writers racing past each other's id check leave behind.
    write_deltalake(db.table_uri(PATH), batch(["b", "c"], x=[20, 3]), mode="append")
    report = db.compact()
    assert report.tables == () and [(t, r.split(" (")[0]) for t, r in report.skipped] == [(PATH, "holds 1 repeated record id(s)")]
    db.vacuum(retention_hours=0)
    assert db.get_records_by_ids(PATH, ["b"])["x"].to_pylist() == [2]


def test_tables_that_are_not_record_tables_are_never_touched(tmp_path):
    # e.g. a table a plain Dagster asset published through the IO manager, read at a version
    db = DeltaTableDatabase(tmp_path / "store")
    fill(db, batches=3)
    published = tmp_path / "store" / "pipe" / "published"
    for value in (1, 2, 3):
        write_deltalake(str(published), pa.table({"v": [value]}), mode="overwrite")
    files = parquet_files(published)
    compaction, vacuum = db.compact(), db.vacuum(retention_hours=0)
    assert (("pipe", "published"), "not an orcapod record table (no __record_id column): left as it is, old versions stay "
            "readable") in compaction.skipped and vacuum.skipped == compaction.skipped
    assert compaction.scanned == vacuum.scanned == 1
    assert parquet_files(published) == files
    assert DeltaTable(str(published), version=0).to_pyarrow_table()["v"].to_pylist() == [1]


# -- vacuum --------------------------------------------------------------------------------------


def test_vacuum_keeps_recent_files_unless_told_otherwise(tmp_path):
    db = DeltaTableDatabase(tmp_path / "store")
    fill(db)
    table_dir = Path(db.table_uri(PATH))
    before, old = rows(db), db.table_version(PATH)
    db.compact()
    on_disk = parquet_files(table_dir)
    assert len(on_disk) == 6

    kept = db.vacuum()  # default: a week's retention; the merged-away files are minutes old
    assert kept.retention_hours == 168 and kept.files_removed == 0 and kept.tables == () and parquet_files(table_dir) == on_disk

    dry = db.vacuum(retention_hours=0, dry_run=True)
    assert dry.dry_run and dry.files_removed == 5 and dry.tables == (PATH,) and parquet_files(table_dir) == on_disk
    assert (dry.files_before, dry.files_after) == (6, 1) and dry.bytes_after < dry.bytes_before
    assert "would be vacuumed" in repr(dry) and "retention 0 h" in repr(dry)

    done = db.vacuum(retention_hours=0)
    assert (done.files_removed, done.files_before, done.files_after, done.bytes_after) == (5, 6, 1, dry.bytes_after)
    assert len(parquet_files(table_dir)) == 1
    assert rows(db).equals(before) and rows(DeltaTableDatabase(tmp_path / "store")).equals(before)
    # The trade-off: time travel of our own tables is gone.
    with pytest.raises(Exception):
        DeltaTable(str(table_dir), version=old).to_pyarrow_table()
    assert db.vacuum(retention_hours=0).files_removed == 0


def test_vacuum_removes_files_a_killed_writer_left_behind(tmp_path):
    db = DeltaTableDatabase(tmp_path / "store")
    fill(db, batches=2)
    table_dir = Path(db.table_uri(PATH))
    orphan = table_dir / "part-00000-orphan-c000.zstd.parquet"  # written, never committed
    orphan.write_bytes(b"PAR1 not committed")
    assert db.vacuum().files_removed == 0  # too recent for the default retention
    assert db.vacuum(retention_hours=0).files_removed == 1 and not orphan.exists()
    assert rows(db).num_rows == 6


def test_vacuum_never_reaches_into_a_table_nested_under_another(tmp_path):
    db = DeltaTableDatabase(tmp_path / "store")
    outer, inner = ("pipe", "outer"), ("pipe", "outer", "inner")
    fill(db, outer, batches=3)
    fill(db, inner, batches=3)
    db.compact(outer)  # both: the inner table's files are not in the outer table's log either
    report = db.vacuum(outer, retention_hours=0)
    assert report.scanned == 2 and report.files_removed == 6
    assert len(parquet_files(Path(db.table_uri(outer)))) == 1
    assert rows(db, outer).num_rows == rows(db, inner).num_rows == 9
    assert len(parquet_files(Path(db.table_uri(inner)))) == 1


def test_invalid_maintenance_options_are_refused(tmp_path):
    db = DeltaTableDatabase(tmp_path / "store")
    for bad in (-1, 1.5, True, "0"):
        with pytest.raises(InputValidationError, match="retention_hours"):
            db.vacuum(retention_hours=bad)
    for bad in (0, -5, 2.0):
        with pytest.raises(InputValidationError, match="target_file_size"):
            db.compact(target_file_size=bad)


def test_a_corrupt_table_is_named_and_the_others_are_still_maintained(tmp_path):
    db = DeltaTableDatabase(tmp_path / "store")
    fill(db, batches=3)
    log = tmp_path / "store" / "pipe" / "broken" / "_delta_log"
    log.mkdir(parents=True)
    (log / "00000000000000000000.json").write_text("this is not json{")
    with pytest.raises(CorruptStoreError, match="'pipe/broken'"):
        db.compact()
    assert len(parquet_files(Path(db.table_uri(PATH)))) == 4  # the healthy table was compacted (3 merged + 1)
    assert rows(db).num_rows == 9


def test_writers_in_this_process_are_safe_during_maintenance(tmp_path):
    """Another handle's writer thread commits while compaction and vacuum with no retention
    run: the commit lock makes them take turns, so no commit loses a file."""
    store = tmp_path / "store"
    db, writer_db = DeltaTableDatabase(store), DeltaTableDatabase(store)
    fill(db, batches=2)
    stop, failures, written = threading.Event(), [], []

    def write() -> None:
        i = 0
        try:
            while not stop.is_set() or i < 10:
                writer_db.add_records(PATH, batch([f"w{i}"], x=[i]), flush=True)
                written.append(f"w{i}")
                i += 1
        except Exception as exc:  # pragma: no cover - what the test would report
            failures.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        for _ in range(4):
            db.compact()
            db.vacuum(retention_hours=0)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not failures and not thread.is_alive()
    db.compact()
    db.vacuum(retention_hours=0)
    fresh = DeltaTableDatabase(store)
    ids = set(fresh.get_column(PATH, RECORD_ID_COLUMN).to_pylist())
    assert ids == {str(i) for i in range(6)} | set(written)
    assert fresh.get_all_records(PATH).num_rows == len(ids)


def test_maintenance_on_object_storage(s3_store):
    db = DeltaTableDatabase(s3_store.uri, storage_options=s3_store.storage_options)
    fill(db, batches=4)
    before = rows(db)
    compaction = db.compact()
    assert compaction.tables == (PATH,) and (compaction.files_before, compaction.files_after) == (4, 1)
    vacuum = db.vacuum(retention_hours=0)
    assert vacuum.tables == (PATH,) and vacuum.files_removed == 4 and vacuum.files_after == 1
    fresh = DeltaTableDatabase(s3_store.uri, storage_options=s3_store.storage_options)
    assert rows(fresh).equals(before)
    assert len(DeltaTable(db.table_uri(PATH), storage_options=s3_store.storage_options).file_uris()) == 1
    assert fresh.vacuum(retention_hours=0, dry_run=True).files_removed == 0


def test_in_memory_database_has_nothing_to_maintain():
    db = InMemoryArrowDatabase()
    db.add_records(PATH, batch(["a"], x=[1]))
    report = db.compact()
    assert db.pending_count() == 0 and report.scanned == 1 and report.tables == () and report.files_removed == 0
    assert db.vacuum(retention_hours=0).files_removed == 0
    assert db.get_all_records(PATH)["x"].to_pylist() == [1]


def test_reports_merge():
    a = MaintenanceReport("vacuum", "s1", (("t",),), 1, 4, 1, 400, 100, 3, retention_hours=0)
    b = MaintenanceReport("vacuum", "s2", (("u",),), 2, 2, 2, 50, 50, 0, retention_hours=0)
    merged = MaintenanceReport.merge([a, b])
    assert merged == MaintenanceReport("vacuum", "s1 + s2", (("t",), ("u",)), 3, 6, 3, 450, 150, 3, retention_hours=0)
    with pytest.raises(InputValidationError, match="different operations"):
        MaintenanceReport.merge([a, MaintenanceReport("compact", "s1")])


# -- a pipeline's store, and its pinned outputs ----------------------------------------------------


@function_pod(output_keys="bmi")
def bmi(weight: float, height: float) -> float:
    return round(weight / height**2, 2)


@function_pod(output_keys="label")
def label(bmi: float, group: str) -> str:
    return f"{group}:{bmi}"


@function_pod(output_keys="scaled")
def scaled(value: float) -> float:
    return value * 10


def build(tmp_path: Path, store: Path) -> Pipeline:
    """CSV visits ⋈ a user's Delta table of heights → bmi → ⋈ groups (in memory) → label; and a
    Delta table published *inside* the store (as the IO manager does) → scaled."""
    visits = CSVSource(tmp_path / "visits.csv", tag_columns="subject", source_id="visits", label="visits")
    heights = DeltaTableSource(str(tmp_path / "heights"), tag_columns="subject", source_id="heights", label="heights")
    groups = DictSource({"subject": ["s1", "s2", "s3", "s4"], "group": ["a", "b", "a", "b"]}, tag_columns="subject",
                        source_id="groups", label="groups")
    lab = DeltaTableSource(str(store / "lab" / "published"), tag_columns="subject", source_id="lab", label="lab")
    with Pipeline("clinic", pipeline_database=DeltaTableDatabase(store)) as pipeline:
        scores = bmi.pod(visits, heights, label="bmi")
        label.pod(scores.join(groups, label="grouped"), label="labelled")
        scaled.pod(lab, label="scaled")
    return pipeline


def pin_everything(pipeline: Pipeline, observer=None) -> list[tuple]:
    """Run, then save every node's output as a snapshot (as a Dagster materialization does)
    and read it back: ``(database, snapshot, rows)``."""
    pipeline.run(observer=observer)
    pins = []
    for node in pipeline:
        snap = save_snapshot(node)
        pins.append((node.database, snap, load_snapshot(node.database, snap.path, snap.data_version)._table()))
    return pins


def test_compaction_and_vacuum_never_break_a_pinned_output(tmp_path):
    store = tmp_path / "store"
    (tmp_path / "visits.csv").write_text("subject,weight\ns1,70.0\ns2,82.5\n")
    write_deltalake(str(tmp_path / "heights"), pa.table({"subject": ["s1", "s2", "s3"], "height": [1.75, 1.8, 1.6]}))
    write_deltalake(str(store / "lab" / "published"), pa.table({"subject": ["s1"], "value": [1.5]}))
    logs = LoggingObserver()

    pins = pin_everything(build(tmp_path, store), logs)
    # New data, new versions: rows appended to the CSV and the user's table, the published table replaced.
    with open(tmp_path / "visits.csv", "a") as f:
        f.write("s3,61.0\n")
    write_deltalake(str(tmp_path / "heights"), pa.table({"subject": ["s4"], "height": [1.9]}), mode="append")
    write_deltalake(str(store / "lab" / "published"), pa.table({"subject": ["s1", "s2"], "value": [2.5, 3.5]}), mode="overwrite")
    pins += pin_everything(build(tmp_path, store), logs)
    with open(tmp_path / "visits.csv", "a") as f:
        f.write("s4,90.0\n")
    pipeline = build(tmp_path, store)
    pins += pin_everything(pipeline, logs)
    assert {snap.label for _, snap, _ in pins} == {"visits", "heights", "groups", "lab", "bmi", "grouped", "labelled", "scaled"}
    assert len({snap.data_version for _, snap, _ in pins}) > len(pipeline.nodes)  # several versions of most nodes

    user_files = parquet_files(tmp_path / "heights")
    compaction, vacuum = pipeline.maintain_store(retention_hours=0)
    tables = compaction.tables
    assert pipeline.bmi.record_path in tables and ("clinic", "_logs") in tables  # pipeline records, logs
    assert any("_snapshots" in t for t in tables) and any(t[0] == "results" for t in tables)  # snapshots, results
    assert vacuum.files_removed >= compaction.files_removed > 0
    store_db = DeltaTableDatabase(store)
    whole = store_db.compact(), store_db.vacuum(retention_hours=0)
    assert all(report.skipped == ((("lab", "published"), whole[0].skipped[0][1]),) for report in whole)

    for database, snap, before in pins:
        after = load_snapshot(DeltaTableDatabase(store), snap.path, snap.data_version)._table()
        assert after.equals(before), snap
    # The user's table and the published one were never touched: every old version is readable.
    assert parquet_files(tmp_path / "heights") == user_files
    assert DeltaTable(str(tmp_path / "heights"), version=0).to_pyarrow_table().num_rows == 3
    assert DeltaTable(str(store / "lab" / "published"), version=0).to_pyarrow_table()["value"].to_pylist() == [1.5]

    # A pinned upstream output still drives a run downstream of it, as in a Dagster step.
    first_bmi = next((snap, rows_) for _, snap, rows_ in pins if snap.label == "bmi")
    first_labelled = next(rows_ for _, snap, rows_ in pins if snap.label == "labelled")
    fresh = build(tmp_path, store)
    with pinned_outputs({fresh.bmi: load_snapshot(fresh.bmi.database, first_bmi[0].path, first_bmi[0].data_version)}):
        result = fresh.run(nodes=["grouped", "labelled"], include_upstream=False)
        assert result.stats["labelled"].computed == 0
        assert fresh.labelled._table().equals(first_labelled)


def test_maintain_store_covers_this_pipeline_only(tmp_path):
    store = tmp_path / "store"

    def make(name: str, n: int) -> Pipeline:
        source = DictSource({"subject": [f"s{i}" for i in range(n)], "weight": [60.0 + i for i in range(n)],
                             "height": [1.7] * n}, tag_columns="subject", source_id=f"{name}-people")
        with Pipeline(name, pipeline_database=DeltaTableDatabase(store)) as p:
            bmi.pod(source, label="bmi")
        return p

    for n in (2, 3, 4):
        for name in ("mine", "theirs"):
            p = make(name, n)
            p.run()
            for node in p:
                save_snapshot(node)
    theirs = {path: len(parquet_files(Path(DeltaTableDatabase(store).table_uri(path))))
              for path in DeltaTableDatabase(store).list_tables() if path[0] == "theirs"}

    dry = make("mine", 4).maintain_store(retention_hours=0, dry_run=True)
    assert len(dry) == 1 and dry[0].operation == "vacuum" and dry[0].files_removed == 0  # changed nothing

    compaction, vacuum = make("mine", 4).maintain_store(retention_hours=0)
    assert all(t[0] in ("mine", "results") for t in compaction.tables) and ("results", "bmi") in {t[:2] for t in compaction.tables}
    assert vacuum.tables and vacuum.files_after == compaction.files_after
    after = {path: len(parquet_files(Path(DeltaTableDatabase(store).table_uri(path)))) for path in theirs}
    assert after == theirs
    assert make("mine", 4).run().computed == 0 and make("theirs", 4).run().computed == 0
    assert Pipeline("memory", pipeline_database=InMemoryArrowDatabase()).maintain_store()[1].files_removed == 0


def test_maintain_store_leaves_tables_replayed_in_commit_order_alone(tmp_path):
    """An operator's log is replayed in commit order (what a Batch downstream groups by), which
    compaction does not keep: maintain_store leaves it as it is and still compacts the rest."""
    from orcapod_core import CacheMode

    store = tmp_path / "store"

    def make(n: int) -> Pipeline:
        source = DictSource({"subject": [f"s{i}" for i in range(n)], "weight": [60.0 + i for i in range(n)],
                             "height": [1.7] * n}, tag_columns="subject", source_id="people")
        with Pipeline("ordered", pipeline_database=DeltaTableDatabase(store), operator_cache_mode=CacheMode.LOG) as p:
            bmi.pod(source.map_tags({"subject": "who"}, label="renamed"), label="bmi")
        return p

    for n in (2, 3, 4):
        make(n).run()
    p = make(4)
    log = Path(DeltaTableDatabase(store).table_uri(p.renamed.record_path))
    files = parquet_files(log)
    assert len(files) == 3  # one batch per run
    compaction, _ = p.maintain_store(retention_hours=0)
    assert parquet_files(log) == files
    assert (tuple(p.renamed.record_path), "read in commit order (excluded)") in compaction.skipped
    assert ("results", "bmi") in {t[:2] for t in compaction.tables}
