"""ResultCache, CachedPacketFunction and CachedFunctionPod against real databases (in memory and
Delta tables in temp dirs), including a cache shared by two processes."""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest

from orcapod_core.databases import RECORD_ID_COLUMN, DeltaTableDatabase, InMemoryArrowDatabase
from orcapod_core.executors import LocalPythonFunctionExecutor
from orcapod_core.function_pods import FunctionPod, FunctionPodStream, function_pod
from orcapod_core.packet_function import PythonPacketFunction
from orcapod_core.hashing import digests_to_hex, hash_rows
from orcapod_core.result_cache import (
    PACKET_HASH_COLUMN,
    STORED_AT_COLUMN,
    CachedFunctionPod,
    CachedPacketFunction,
    ResultCache,
    _most_recent,
    result_record_path,
)
from orcapod_core.sources import DictSource


@pytest.fixture(params=["memory", "delta"])
def db(request, tmp_path):
    return InMemoryArrowDatabase() if request.param == "memory" else DeltaTableDatabase(tmp_path / "store")


def counted(calls: list, fail_on: int | None = None) -> PythonPacketFunction:
    """A packet function ``y = 2 * x`` that appends every call to ``calls``."""

    @function_pod(output_keys="y", function_name="double")
    def double(x: int) -> int:
        calls.append(x)
        if x == fail_on:
            raise ValueError(f"x={x} is not allowed")
        return 2 * x

    return double.pod.packet_function


def hexes_of(xs: list[int]) -> pa.Array:
    return digests_to_hex(hash_rows(pa.table({"x": pa.array(xs, pa.int64())})))


def context_of(pf: PythonPacketFunction) -> dict:
    return dict(
        variation_data=pf.get_function_variation_data(),
        execution_data=pf.get_execution_data(),
        variation_schema=pf.get_function_variation_data_schema(),
        execution_schema=pf.get_execution_data_schema(),
    )


# -- ResultCache ------------------------------------------------------------------------------


def test_record_path_is_results_name_version_identity16():
    pf = counted([])
    path = result_record_path(pf)
    assert path == ("results", "double", "v0", pf.identity_hash().to_hex(16))
    assert result_record_path(pf, prefix=("a", "b"))[:2] == ("a", "b")


def test_store_and_lookup_round_trip_with_typed_execution_context(db):
    pf = counted([])
    cache = ResultCache(db, result_record_path(pf))
    assert cache.get_all_records() is None
    assert cache.lookup(hexes_of([1])).num_rows == 0  # no table yet: an empty result, not an error

    hashes = hexes_of([1, 2, 3])
    outputs = pa.table({"y": pa.array([2, 4, 6], pa.int64())})
    assert cache.store(hashes, outputs, **context_of(pf), flush=True) == 3
    # Storing the same hashes again adds nothing.
    assert cache.store(hashes, outputs, **context_of(pf), flush=True) == 0

    found = cache.lookup(hashes.take([2, 0]))
    assert sorted(found[PACKET_HASH_COLUMN].to_pylist()) == sorted([hashes[0].as_py(), hashes[2].as_py()])
    by_hash = {r[PACKET_HASH_COLUMN]: r for r in found.to_pylist(maps_as_pydicts="strict")}
    row = by_hash[hashes[2].as_py()]
    assert row["y"] == 6
    assert row[RECORD_ID_COLUMN] == hashes[2].as_py()

    # Execution context: typed columns, dict[str, str] values as Arrow maps, exact round trip.
    schema = found.schema
    assert pa.types.is_map(schema.field("__execution_executor_info").type)
    assert pa.types.is_map(schema.field("__execution_extra_info").type)
    assert pa.types.is_timestamp(schema.field(STORED_AT_COLUMN).type)
    assert row["__execution_executor_info"] == pf.get_execution_data()["executor_info"] == {
        "executor_type": "local",
        "max_workers": "1",
    }
    assert row["__execution_extra_info"] == pf.get_execution_data()["extra_info"]
    assert row["__execution_executor_type"] == "local"
    assert row["__execution_python_version"] == platform.python_version()
    for key, value in pf.get_function_variation_data().items():
        assert row[f"__variation_{key}"] == value
    assert row["__variation_function_content_hash"] == pf.source_hash() != ""

    # Lookups accept 32-byte digests as well as hex strings.
    digests = hash_rows(pa.table({"x": pa.array([2], pa.int64())}))
    assert cache.lookup(digests)["y"].to_pylist() == [4]

    assert sorted(cache.get_all_records()["y"].to_pylist()) == [2, 4, 6]


def test_store_without_schema_types_context_as_strings_and_refuses_length_mismatch(db):
    cache = ResultCache(db, ("results", "f", "v0", "abc"))
    cache.store(hexes_of([1]), pa.table({"y": [1]}), {"function_name": "f"}, {"executor_type": "local"})
    row = cache.lookup(hexes_of([1])).to_pylist()[0]
    assert row["__variation_function_name"] == "f" and row["__execution_executor_type"] == "local"
    with pytest.raises(ValueError, match="2 packet hashes for 1 output rows"):
        cache.store(hexes_of([1, 2]), pa.table({"y": [1]}))


def test_additional_constraints_filter_the_lookup(db):
    pf = counted([])
    cache = ResultCache(db, result_record_path(pf))
    hashes = hexes_of([1, 2])
    cache.store(hashes, pa.table({"y": pa.array([2, 4], pa.int64())}), **context_of(pf))
    assert cache.lookup(hashes, {"__variation_function_name": "double"}).num_rows == 2
    assert cache.lookup(hashes, {"__execution_executor_type": "local", "y": 4})["y"].to_pylist() == [4]
    assert cache.lookup(hashes, {"__variation_function_name": "other"}).num_rows == 0
    assert cache.lookup(hashes, {"__variation_git_hash": None}).num_rows == 0  # is-null test
    assert cache.lookup(hashes, {"no_such_column": 1}).num_rows == 0


def test_lookup_of_some_columns_reads_only_those(db):
    pf = counted([])
    cache = ResultCache(db, result_record_path(pf))
    hashes = hexes_of([1, 2])
    cache.store(hashes, pa.table({"y": pa.array([2, 4], pa.int64())}), **context_of(pf))
    reads = []
    original = db.get_records_by_ids

    def spy(record_path, ids, columns=None):
        reads.append(columns)
        return original(record_path, ids, columns=columns)

    db.get_records_by_ids = spy
    found = cache.lookup(hashes, columns=["y"])
    assert found.column_names == [PACKET_HASH_COLUMN, "y"]
    assert found.to_pylist() == [{PACKET_HASH_COLUMN: h, "y": y} for h, y in zip(hashes.to_pylist(), [2, 4])]
    assert reads == [["y", STORED_AT_COLUMN]]  # no execution context; the packet hash is the record id
    # Constraints may name any column: those lookups read whole records, then narrow them.
    assert cache.lookup(hashes, {"__execution_executor_type": "local", "y": 4}, columns=["y"]).to_pylist() == [
        {PACKET_HASH_COLUMN: hashes[1].as_py(), "y": 4}
    ]
    assert cache.lookup(hashes, {"no_such_column": 1}, columns=["y"]).num_rows == 0
    assert cache.get_all_records(columns=["y"]).column_names == [PACKET_HASH_COLUMN, "y"]


def test_first_stored_record_wins_with_the_shipped_databases(db):
    # Both databases keep one record per id (the packet hash): re-storing a hash is a no-op.
    cache = ResultCache(db, ("results", "f", "v0", "abc"))
    assert cache.store(hexes_of([1]), pa.table({"y": [10]})) == 1
    assert cache.store(hexes_of([1]), pa.table({"y": [20]})) == 0
    assert cache.lookup(hexes_of([1]))["y"].to_pylist() == [10]


class AppendOnlyDatabase(InMemoryArrowDatabase):
    """A database that keeps every copy of a record id (like two writers racing on an object
    store without a commit lock) — the case ResultCache's "most recent wins" exists for."""

    def __init__(self):
        super().__init__()
        self.rows: list[pa.Table] = []

    def add_records(self, record_path, table, record_id_column=None, skip_duplicates=True, flush=False, digest_columns=()):
        if record_id_column is not None:
            table = table.add_column(0, RECORD_ID_COLUMN, table[record_id_column])
        self.rows.append(table)
        return table.num_rows

    def _everything(self):
        return pa.concat_tables(self.rows) if self.rows else None

    def get_records_by_ids(self, record_path, ids, columns=None):
        table = self._everything()
        if table is None:
            return None
        found = table.filter(pa.compute.is_in(table[RECORD_ID_COLUMN], value_set=pa.array(ids, pa.large_string())))
        return found if columns is None else found.select([*columns, RECORD_ID_COLUMN])

    def get_all_records(self, record_path, columns=None):
        table = self._everything()
        return table if table is None or columns is None else table.select([*columns, RECORD_ID_COLUMN])


def test_most_recent_record_wins_when_a_hash_has_several():
    cache = ResultCache(AppendOnlyDatabase(), ("results", "f", "v0", "abc"))
    h = hexes_of([1, 2])
    cache.store(h, pa.table({"y": [10, 20]}))
    cache.store(h.slice(0, 1), pa.table({"y": [11]}))  # a later record for hash 1
    assert cache.database.get_records_by_ids((), h).num_rows == 3
    found = cache.lookup(h)
    assert dict(zip(found[PACKET_HASH_COLUMN].to_pylist(), found["y"].to_pylist())) == {h[0].as_py(): 11, h[1].as_py(): 20}
    assert cache.lookup(h, columns=["y"]).to_pylist() == found.select([PACKET_HASH_COLUMN, "y"]).to_pylist()
    everything = cache.get_all_records()
    assert everything.num_rows == 2 and sorted(everything["y"].to_pylist()) == [11, 20]


def test_most_recent_keeps_the_newest_per_hash_and_input_order():
    t0 = datetime.datetime(2024, 1, 1)
    table = pa.table(
        {
            PACKET_HASH_COLUMN: ["a", "b", "a", "c", "b"],
            "y": [1, 2, 3, 4, 5],
            STORED_AT_COLUMN: pa.array([t0, t0 + datetime.timedelta(1), t0 + datetime.timedelta(2), t0, t0], pa.timestamp("us")),
        }
    )
    # b: the record at t0+1 is newer than the one at t0 (which comes later in the table).
    assert _most_recent(table)["y"].to_pylist() == [2, 3, 4]
    unique = table.slice(0, 2)
    assert _most_recent(unique) is unique  # no duplicates: returned as it is
    # Equal timestamps: the first copy is kept (deterministic).
    tie = pa.table({PACKET_HASH_COLUMN: ["a", "a"], "y": [1, 2], STORED_AT_COLUMN: pa.array([t0, t0], pa.timestamp("us"))})
    assert _most_recent(tie)["y"].to_pylist() == [1]


# -- CachedPacketFunction -------------------------------------------------------------------------


def test_cached_packet_function_computes_once_then_serves_from_the_cache(db):
    calls: list[int] = []
    pf = counted(calls)
    cached = CachedPacketFunction(pf, ResultCache(db, result_record_path(pf)))
    assert cached.call({"x": 3}) == {"y": 6}
    assert cached.call({"x": 3}) == {"y": 6}
    assert calls == [3]
    # The wrapper exposes the wrapped function's description.
    assert cached.uri == pf.uri and cached.output_keys == ("y",) and cached.packet_function is pf
    # A fresh wrapper over the same store serves it too.
    again = CachedPacketFunction(counted(calls), ResultCache(db, result_record_path(pf)))
    assert again.call({"x": 3}) == {"y": 6} and calls == [3]


def test_call_checks_the_packet_like_the_uncached_function(db):
    from orcapod_core.errors import SchemaMismatchError

    calls: list[int] = []
    pf = counted(calls)
    cached = CachedPacketFunction(pf, ResultCache(db, result_record_path(pf)))
    with pytest.raises(SchemaMismatchError) as cached_error:
        cached.call({})
    with pytest.raises(SchemaMismatchError) as plain_error:
        pf.call({})
    assert str(cached_error.value) == str(plain_error.value) and "'x'" in str(cached_error.value)
    # A key that is not a parameter is not read, nor part of the key: one computation for both.
    assert cached.call({"x": 1, "junk": 2}) == pf.call({"x": 1, "junk": 3}) == {"y": 2}
    assert cached.call({"x": 1}) == {"y": 2} and calls == [1, 1]


def test_call_raises_the_users_exception_and_stores_nothing_for_it(db):
    calls: list[int] = []
    pf = counted(calls, fail_on=4)
    cache = ResultCache(db, result_record_path(pf))
    cached = CachedPacketFunction(pf, cache)
    with pytest.raises(ValueError, match="x=4 is not allowed"):
        cached.call({"x": 4})
    assert cache.get_all_records() is None
    with pytest.raises(ValueError):
        cached.call({"x": 4})
    assert calls == [4, 4]  # failures are not cached


def test_call_batch_mixes_hits_and_misses_in_row_order_and_reports_errors_per_row(db):
    calls: list[int] = []
    pf = counted(calls, fail_on=5)
    cache = ResultCache(db, result_record_path(pf))
    cached = CachedPacketFunction(pf, cache)
    cached.call_batch(pa.table({"x": pa.array([2, 4], pa.int64())}))
    calls.clear()

    table = pa.table({"x": pa.array([1, 2, 3, 4, 5, 6], pa.int64())})
    result = cached.call_batch(table)
    assert calls == [1, 3, 5, 6]  # hits (2, 4) are not called
    assert list(result.rows) == [0, 1, 2, 3, 5]
    assert result.table["y"].to_pylist() == [2, 4, 6, 8, 12]
    assert result.table.schema == pf.output_arrow_schema
    assert list(result.errors) == [4] and "x=5" in str(result.errors[4])
    # The successful misses were stored; the failure was not.
    assert sorted(cache.get_all_records()["y"].to_pylist()) == [2, 4, 6, 8, 12]

    calls.clear()
    again = cached.call_batch(table)
    assert calls == [5]
    assert again.table["y"].to_pylist() == [2, 4, 6, 8, 12] and list(again.errors) == [4]


def test_call_batch_all_hits_and_all_misses(db):
    calls: list[int] = []
    pf = counted(calls)
    cached = CachedPacketFunction(pf, ResultCache(db, result_record_path(pf)))
    table = pa.table({"x": pa.array([7, 8], pa.int64())})
    assert cached.call_batch(table).table["y"].to_pylist() == [14, 16]
    hit = cached.call_batch(table.take([1, 0]))
    assert hit.table["y"].to_pylist() == [16, 14] and list(hit.rows) == [0, 1] and calls == [7, 8]


def test_call_batch_with_capture_and_executor_override_records_that_executor(db):
    def loud(x: int) -> int:
        print("computing", x)
        return x + 1

    pf = PythonPacketFunction(loud, output_keys="y")
    cache = ResultCache(db, result_record_path(pf))
    cached = CachedPacketFunction(pf, cache)
    executor = LocalPythonFunctionExecutor(max_workers=3)
    result = cached.call_batch(pa.table({"x": pa.array([1, 2, 3], pa.int64())}), executor=executor, capture=True)
    assert result.table["y"].to_pylist() == [2, 3, 4]
    assert {i: c["stdout"] for i, c in result.captured.items()} == {0: "computing 1\n", 1: "computing 2\n", 2: "computing 3\n"}
    stored = cache.get_all_records().to_pylist(maps_as_pydicts="strict")
    assert {r["__execution_executor_info"]["max_workers"] for r in stored} == {"3"}


# -- CachedFunctionPod ------------------------------------------------------------------------


def test_cached_function_pod_computes_a_packet_once_across_tags_and_streams(db):
    calls: list[int] = []
    pf = counted(calls)
    pod = CachedFunctionPod(pf, ResultCache(db, result_record_path(pf)))
    assert pod.packet_function is pf and pod.uri == pf.uri
    first = pod(DictSource({"id": [1, 2, 3], "x": [5, 5, 6]}, tag_columns="id", source_id="a"))
    assert isinstance(first, FunctionPodStream)
    assert first.as_table().to_pylist() == [{"id": 1, "y": 10}, {"id": 2, "y": 10}, {"id": 3, "y": 12}]
    assert sorted(calls) == [5, 6]
    # The same packets under other tags, from another source: served from the cache.
    other = pod(DictSource({"key": ["p", "q"], "x": [6, 5]}, tag_columns="key", source_id="b"))
    assert other.as_table().to_pylist() == [{"key": "p", "y": 12}, {"key": "q", "y": 10}]
    assert sorted(calls) == [5, 6]
    # Wrapping a FunctionPod (not its packet function) works the same and shares the store.
    pod2 = CachedFunctionPod(FunctionPod(pf), ResultCache(db, result_record_path(pf)))
    assert pod2(DictSource({"id": [9], "x": [5]}, tag_columns="id")).as_table()["y"].to_pylist() == [10]
    assert sorted(calls) == [5, 6]


# -- two processes share one store ---------------------------------------------------------------

_PROCESS_SCRIPT = """
import json, sys
import pyarrow as pa
from orcapod_core.databases import DeltaTableDatabase
from orcapod_core.result_cache import CachedPacketFunction, ResultCache, result_record_path
from shared_fn import square, calls

pf = square.pod.packet_function
cached = CachedPacketFunction(pf, ResultCache(DeltaTableDatabase(sys.argv[1]), result_record_path(pf)))
xs = json.loads(sys.argv[2])
result = cached.call_batch(pa.table({"x": pa.array(xs, pa.int64())}))
cached.result_cache.flush()
print(json.dumps({"calls": calls, "y": result.table["y"].to_pylist(), "uri": pf.uri}), flush=True)
"""

_SHARED_FN = '''
from orcapod_core import function_pod

calls = []


@function_pod(output_keys="y")
def square(x: int) -> int:
    calls.append(x)
    return x * x
'''


def test_cache_is_shared_by_two_processes_on_one_delta_store(tmp_path):
    (tmp_path / "shared_fn.py").write_text(_SHARED_FN)
    (tmp_path / "run.py").write_text(textwrap.dedent(_PROCESS_SCRIPT))
    store = str(tmp_path / "store")

    def run(xs):
        done = subprocess.run(
            [sys.executable, "run.py", store, json.dumps(xs)], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    first = run([1, 2, 3])
    assert first["calls"] == [1, 2, 3] and first["y"] == [1, 4, 9]
    second = run([3, 4, 1])
    assert second["calls"] == [4] and second["y"] == [9, 16, 1]
    assert second["uri"] == first["uri"]
    # And this process, with its own handle, sees everything the two others stored.
    sys.path.insert(0, str(tmp_path))
    try:
        from shared_fn import square  # noqa: PLC0415
    finally:
        sys.path.remove(str(tmp_path))
    pf = square.pod.packet_function
    assert pf.uri == first["uri"]
    records = ResultCache(DeltaTableDatabase(store), result_record_path(pf)).get_all_records()
    assert sorted(records["y"].to_pylist()) == [1, 4, 9, 16]


def test_a_results_table_of_the_first_wave_keeps_taking_new_results(tmp_path):
    """Stores written before packet hashes were kept as record ids only have a non-nullable
    ``__packet_hash`` column: new results are still stored there (with it) and read back."""
    from deltalake import write_deltalake

    path = ("results", "f", "v0", "abc")
    old = pa.table(
        {
            RECORD_ID_COLUMN: pa.array(["aa" * 32], pa.large_string()),
            "__packet_hash": pa.array(["aa" * 32], pa.large_string()),
            "y": pa.array([1], pa.int64()),
            "__stored_at": pa.array([datetime.datetime(2026, 1, 1)], pa.timestamp("us")),
        },
        schema=pa.schema(
            [
                pa.field(RECORD_ID_COLUMN, pa.large_string(), False),
                pa.field("__packet_hash", pa.large_string(), False),
                pa.field("y", pa.int64(), False),
                pa.field("__stored_at", pa.timestamp("us"), False),
            ]
        ),
    )
    database = DeltaTableDatabase(tmp_path / "store")
    write_deltalake(database.table_uri(path), old)
    cache = ResultCache(database, path)
    assert cache.store(pa.array(["bb" * 32], pa.large_string()), pa.table({"y": pa.array([2], pa.int64())}), flush=True) == 1
    fresh = ResultCache(DeltaTableDatabase(tmp_path / "store"), path)
    found = fresh.lookup(pa.array(["aa" * 32, "bb" * 32], pa.large_string()), columns=["y"])
    assert dict(zip(found.column(PACKET_HASH_COLUMN).to_pylist(), found.column("y").to_pylist())) == {"aa" * 32: 1, "bb" * 32: 2}


def test_delta_results_keep_statistics_for_ids_and_outputs_not_for_the_execution_context(tmp_path):
    # The nine context columns repeat one value per run and are never looked up by: their
    # Parquet statistics only cost write time. The record id and the outputs keep theirs.
    import pyarrow.parquet as pq

    pf = counted([])
    cache = ResultCache(DeltaTableDatabase(tmp_path / "store"), result_record_path(pf))
    hashes = hexes_of([1, 2, 3])
    cache.store(hashes, pa.table({"y": pa.array([2, 4, 6], pa.int64())}), **context_of(pf), flush=True)
    (data_file,) = (tmp_path / "store").rglob("*.parquet")
    group = pq.read_metadata(data_file).row_group(0)
    stats = {group.column(i).path_in_schema: group.column(i).is_stats_set for i in range(group.num_columns)}
    assert stats[RECORD_ID_COLUMN] and stats["y"] and stats[STORED_AT_COLUMN]
    flat_context = [c for c in stats if c.startswith(("__variation_", "__execution_")) and "." not in c]
    assert len(flat_context) >= 6 and not any(stats[c] for c in flat_context)
    assert cache.lookup(hashes, {"__execution_executor_type": "local"}).num_rows == 3  # still filterable
