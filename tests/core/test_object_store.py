"""Pipelines on object storage: a DeltaTableDatabase and a DeltaTableSource on ``s3://`` (a local
S3 server, see tests/conftest.py) behave as on a local path — cold, warm and incremental runs,
save/load, live sources, clear errors — and two processes computing into one S3 store at once
neither lose nor duplicate results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from orcapod_core import DeltaTableDatabase, DeltaTableSource, DictSource, Pipeline, function_pod
from orcapod_core.databases import RECORD_ID_COLUMN
from orcapod_core.errors import StoreAccessError
from orcapod_core.pipeline import LoadStatus

CALLS: list[int] = []


@function_pod(output_keys="y")
def double(x: int) -> int:
    CALLS.append(x)
    return 2 * x


@function_pod(output_keys="z")
def plus_one(y: int) -> int:
    return y + 1


def build(store, source) -> Pipeline:
    database = DeltaTableDatabase(store.uri, storage_options=store.storage_options)
    with Pipeline("on_s3", pipeline_database=database) as pipeline:
        plus_one.pod(double.pod(source, label="doubled"), label="plus")
    return pipeline


def numbers(n: int) -> DictSource:
    return DictSource({"id": list(range(n)), "x": list(range(n))}, tag_columns="id", source_id="numbers")


def run(pipeline: Pipeline) -> dict[str, tuple[int, int]]:
    CALLS.clear()
    result = pipeline.run()
    pipeline.flush()
    return {label: (s.computed, s.cached) for label, s in result.stats.items() if pipeline.nodes[label].kind != "source"}


def versions(pipeline: Pipeline) -> dict[tuple[str, ...], int | None]:
    database = pipeline.pipeline_database
    return {path: database.table_version(path) for path in database.list_tables()}


def test_cold_warm_and_incremental_runs_on_s3(s3_store):
    cold = build(s3_store, numbers(4))
    assert run(cold) == {"doubled": (4, 0), "plus": (4, 0)}
    assert cold.pipeline_database.table_uri(cold.doubled.record_path).startswith(s3_store.uri + "/")

    warm = build(s3_store, numbers(4))  # a fresh handle on the same store
    before = versions(warm)
    assert run(warm) == {"doubled": (0, 4), "plus": (0, 4)} and CALLS == []
    assert versions(warm) == before  # an all-cached run only reads
    assert warm.plus.as_table().sort_by("id")["z"].to_pylist() == [1, 3, 5, 7]

    grown = build(s3_store, numbers(6))
    assert run(grown) == {"doubled": (2, 4), "plus": (2, 4)} and sorted(CALLS) == [4, 5]
    assert grown.plus.as_table().sort_by("id")["z"].to_pylist() == [1, 3, 5, 7, 9, 11]


def test_save_and_load_a_pipeline_on_s3_keeps_secrets_out(s3_store, tmp_path):
    table_uri = s3_store.at("inputs", "numbers")
    write_deltalake(table_uri, pa.table({"id": [1, 2], "x": [10, 20]}), storage_options=s3_store.storage_options)
    source = DeltaTableSource(table_uri, tag_columns="id", storage_options=s3_store.storage_options, label="numbers")
    pipeline = build(s3_store, source)
    assert run(pipeline) == {"doubled": (2, 0), "plus": (2, 0)}
    pipeline.save(tmp_path / "pipeline.json")

    text = (tmp_path / "pipeline.json").read_text()
    assert s3_store.uri in text and table_uri in text
    assert not any(value in text for value in s3_store.storage_options.values() if value not in ("true", "etag"))

    loaded = Pipeline.load(tmp_path / "pipeline.json", storage_options=s3_store.storage_options)
    assert {label: node.load_status for label, node in loaded.nodes.items()} == {
        "numbers": LoadStatus.FULL,
        "doubled": LoadStatus.FULL,
        "plus": LoadStatus.FULL,
    }
    assert run(loaded) == {"doubled": (0, 2), "plus": (0, 2)}
    write_deltalake(table_uri, pa.table({"id": [3], "x": [30]}), mode="append", storage_options=s3_store.storage_options)
    assert run(loaded) == {"doubled": (1, 2), "plus": (1, 2)} and CALLS == [30]


def test_delta_source_on_s3_is_live_and_keeps_row_ids(s3_store):
    uri = s3_store.at("live")
    options = s3_store.storage_options
    write_deltalake(uri, pa.table({"k": [1, 2], "x": [1, 2]}), storage_options=options)
    write_deltalake(uri, pa.table({"k": [3], "x": [3]}), mode="append", storage_options=options)
    source = DeltaTableSource(uri, tag_columns="k", storage_options=options)
    assert source.fingerprint() == "delta:1"
    ids = source.as_table(columns={"system_tags": True}).to_pylist()
    pipeline = build(s3_store, source)
    assert run(pipeline) == {"doubled": (3, 0), "plus": (3, 0)}

    write_deltalake(uri, pa.table({"k": [4], "x": [4]}), mode="append", storage_options=options)
    assert source.fingerprint() == "delta:2"
    assert run(pipeline) == {"doubled": (1, 3), "plus": (1, 3)} and CALLS == [4]
    now = source.as_table(columns={"system_tags": True}).to_pylist()
    assert now[:3] == ids  # appended rows come after, existing record ids stay (commit order)


def test_reads_on_s3_hide_racing_duplicate_appends(s3_store):
    # What two writers racing past each other's id check leave behind (object stores cannot lock).
    db = DeltaTableDatabase(s3_store.uri, storage_options=s3_store.storage_options)
    path = ("pipe", "t")
    db.add_records(path, pa.table({RECORD_ID_COLUMN: ["a", "b"], "x": [1, 2]}), flush=True)
    write_deltalake(db.table_uri(path), pa.table({RECORD_ID_COLUMN: ["b", "c"], "x": [20, 3]}), mode="append",
                    storage_options=s3_store.storage_options)
    assert db.get_all_records(path)[RECORD_ID_COLUMN].to_pylist() == ["a", "b", "c"]
    assert db.get_records_by_ids(path, ["b"])["x"].to_pylist() == [2]  # the first committed copy wins
    assert db.add_records(path, pa.table({RECORD_ID_COLUMN: ["c", "d"], "x": [0, 4]})) == 1


def test_partitioned_table_on_s3_is_read_with_its_partition_values(s3_store):
    db = DeltaTableDatabase(s3_store.uri, storage_options=s3_store.storage_options)
    path = ("pipe", "parts")
    table = pa.table({RECORD_ID_COLUMN: ["a", "b", "c"], "p": ["x", "y z", "x"], "v": [1, 2, 3]})
    write_deltalake(db.table_uri(path), table, partition_by=["p"], storage_options=s3_store.storage_options)
    assert sorted(db.get_records_where(path, {"p": "x"})[RECORD_ID_COLUMN].to_pylist()) == ["a", "c"]
    assert db.get_records_by_ids(path, ["b"])["p"].to_pylist() == ["y z"]
    assert db.add_records(path, pa.table({RECORD_ID_COLUMN: ["b", "d"], "p": ["y z", "x"], "v": [0, 4]})) == 1


def test_an_unreachable_store_names_the_uri_and_the_reason(s3_server):
    options = s3_server.storage_options()
    db = DeltaTableDatabase("s3://no-such-bucket-here/store", storage_options=options)
    for call in (db.list_tables, lambda: db.get_all_records(("p", "t")), lambda: db.add_records(("p", "t"), pa.table({RECORD_ID_COLUMN: ["a"]}), flush=True)):
        with pytest.raises(StoreAccessError, match=r"s3://no-such-bucket-here/store.*NoSuchBucket") as err:
            call()
        assert options["AWS_SECRET_ACCESS_KEY"] not in str(err.value)  # option names, never values
    plain_http = {k: v for k, v in options.items() if k != "AWS_ALLOW_HTTP"}
    with pytest.raises(StoreAccessError, match="URL scheme is not allowed"):
        DeltaTableSource("s3://no-such-bucket-here/t", tag_columns="k", storage_options=plain_http)


READ_THEN_EXIT = """
import json, sys, pyarrow as pa
from deltalake import write_deltalake
from orcapod_core import DeltaTableDatabase, DeltaTableSource
uri, options, run = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
db = DeltaTableDatabase(uri, storage_options=options)
path = ("pipe", f"run{run}")
for i in range(3):
    db.add_records(path, pa.table({"__record_id": [f"{i}a", f"{i}b"], "x": [i, i]}), flush=True)
assert DeltaTableDatabase(uri, storage_options=options).get_all_records(path).num_rows == 6
source_uri = f"{uri}/sources/run{run}"
write_deltalake(source_uri, pa.table({"k": [1, 2]}), storage_options=options)
assert DeltaTableSource(source_uri, tag_columns="k", storage_options=options).as_table().num_rows == 2
assert db.get_records_by_ids(path, ["1a"]).num_rows == 1  # a read right before exit
print("done")
"""


@pytest.mark.slow
def test_processes_reading_an_s3_store_exit_cleanly(s3_store):
    # Regression: reading object-store files with Arrow's scanner over deltalake's Python
    # filesystem left the last reference to it (or to a Python-owned buffer) on one of Arrow's
    # I/O threads; released during interpreter shutdown it aborted ~15% of such processes
    # ("terminate called without an active exception", SIGABRT) after all work was done.
    runs, failures = 24, []
    options = json.dumps(s3_store.storage_options)
    for first in range(0, runs, 3):  # three processes at a time
        procs = [
            (run, subprocess.Popen([sys.executable, "-c", READ_THEN_EXIT, s3_store.uri, options, str(run)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            for run in range(first, first + 3)
        ]
        for run, proc in procs:
            out, err = proc.communicate(timeout=120)
            if proc.returncode != 0 or "terminate called" in err or out.strip() != "done":
                failures.append((run, proc.returncode, err[-300:]))
    assert not failures, f"{len(failures)}/{runs} runs failed: {failures[:3]}"


CONCURRENT_RUN = textwrap.dedent(
    """
    import json, os, sys, time
    from orcapod_core import DeltaTableDatabase, DictSource, Pipeline, function_pod
    uri, options, calls, go, me = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    log = open(calls, "a", buffering=1)

    @function_pod(output_keys="y")
    def square(x: int) -> int:
        time.sleep(0.01)
        log.write(f"{x}\\n")  # one line per call, before the result exists
        return x * x

    source = DictSource({"id": list(range(40)), "x": [i % 30 for i in range(40)]}, tag_columns="id", source_id="src")
    database = DeltaTableDatabase(uri, storage_options=options, batch_size=8)
    with Pipeline("shared", pipeline_database=database) as pipeline:
        square.pod(source, label="square")
    open(f"{go}.ready{me}", "w").close()
    while me != "-" and not os.path.exists(go):  # start computing together
        time.sleep(0.005)
    stats = pipeline.run().stats["square"]
    pipeline.flush()
    rows = pipeline.square.as_table().sort_by("id").to_pylist()
    print(json.dumps({"computed": stats.computed, "cached": stats.cached, "rows": rows}))
    os._exit(0)
    """
)


@pytest.mark.slow
def test_two_processes_computing_into_one_s3_store_lose_and_duplicate_nothing(s3_store, tmp_path):
    options = json.dumps(s3_store.storage_options)
    calls, go = tmp_path / "calls.txt", tmp_path / "go"

    def start(me: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", CONCURRENT_RUN, s3_store.uri, options, str(calls), str(go), me],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    procs = [start("1"), start("2")]
    deadline = time.monotonic() + 60
    while not all(os.path.exists(f"{go}.ready{me}") for me in "12") and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    expected = [{"id": i, "y": (i % 30) ** 2} for i in range(40)]
    for output in outputs:
        assert output["rows"] == expected  # every row once: no duplicate served, none missing
        assert output["computed"] + output["cached"] == 40
    # Both may compute a packet the other was computing (no lock on an object store), but
    # every committed result is kept: a third run computes nothing.
    assert set(map(int, calls.read_text().split())) == set(range(30))
    third = start("-")
    out, err = third.communicate(timeout=120)
    assert third.returncode == 0, err[-2000:]
    rerun = json.loads(out.strip().splitlines()[-1])
    assert (rerun["computed"], rerun["cached"], rerun["rows"]) == (0, 40, expected)
    db = DeltaTableDatabase(s3_store.uri, storage_options=s3_store.storage_options)
    for path in db.list_tables():  # what a reader sees: each record id once
        ids = db.get_column(path, RECORD_ID_COLUMN).to_pylist()
        assert len(ids) == len(set(ids)), path
