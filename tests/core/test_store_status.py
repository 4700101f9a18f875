"""What the store holds per node (``store_status``, ``orcapod status``) and the databases'
``table_stats`` it reads: real Delta tables in temp dirs and the in-memory database."""

from __future__ import annotations

import datetime
from pathlib import Path

import pyarrow as pa
import pytest

from orcapod_core import CacheMode, DeltaTableDatabase, DictSource, InMemoryArrowDatabase, Pipeline, function_pod
from orcapod_core.pipeline.store_status import store_status


@function_pod(output_keys="y")
def triple(x: int) -> int:
    return 3 * x


@pytest.fixture(params=["delta", "memory"])
def database(request: pytest.FixtureRequest, tmp_path: Path):
    return DeltaTableDatabase(tmp_path / "store") if request.param == "delta" else InMemoryArrowDatabase()


def test_table_stats_count_committed_rows_and_bytes(database):
    assert database.table_stats(("t", "a")) is None
    database.add_records(("t", "a"), pa.table({"__record_id": ["r1", "r2"], "v": [1, 2]}), flush=True)
    first = database.table_stats(("t", "a"))
    database.add_records(("t", "a"), pa.table({"__record_id": ["r3"], "v": [3]}), flush=True)
    database.add_records(("t", "a"), pa.table({"__record_id": ["r4"], "v": [4]}))  # pending: not counted
    second = database.table_stats(("t", "a"))
    assert (first.rows, first.version, second.rows, second.version) == (2, 0, 3, 1)
    assert 0 < first.bytes < second.bytes
    if isinstance(database, DeltaTableDatabase):
        now = datetime.datetime.now(datetime.UTC)
        assert now - datetime.timedelta(minutes=5) < second.modified <= now + datetime.timedelta(seconds=5)
    else:
        assert second.modified is None


def test_store_status_per_node(database):
    source = DictSource({"id": [1, 2, 3], "x": [1, 1, 2]}, tag_columns="id", source_id="xs", label="xs")
    with Pipeline("st", pipeline_database=database, operator_cache_mode=CacheMode.LOG) as p:
        tripled = triple.pod(source, label="tripled")
        tripled.map_packets({"y": "z"}, label="renamed")
    assert [(s.label, s.records, s.results, s.last_run_id) for s in store_status(p)] == [
        ("xs", None, None, None),
        ("tripled", None, None, None),
        ("renamed", None, None, None),
    ]
    result = p.run()
    statuses = {s.label: s for s in store_status(p)}
    assert statuses["xs"].records is None and statuses["xs"].bytes == 0  # a source stores nothing of its own
    tripled = statuses["tripled"]
    assert (tripled.records.rows, tripled.results.rows) == (3, 2)  # 3 rows recorded, 2 distinct packets
    assert tripled.bytes == tripled.records.bytes + tripled.results.bytes > 0
    assert tripled.last_run_id == result.run_id
    renamed = statuses["renamed"]  # CacheMode.LOG: the operator's output rows are logged
    assert (renamed.records.rows, renamed.results, renamed.last_run_id) == (3, None, None)
    # A warm run serves everything from the store and records nothing: "last run" stays.
    assert p.run().cached == 3
    assert {s.label: s.last_run_id for s in store_status(p)}["tripled"] == result.run_id
