"""Contract tests of the record databases (in-memory, real Delta tables in temp dirs, and Delta
tables on a local S3-compatible server)."""

from __future__ import annotations

import datetime
import os
import pickle
import subprocess
import sys
import textwrap
import time

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from orcapod_core.databases import (
    MAX_PATH_DEPTH,
    RECORD_ID_COLUMN,
    ArrowDatabase,
    DeltaTableDatabase,
    InMemoryArrowDatabase,
    database_from_config,
)
from orcapod_core.errors import (
    CorruptStoreError,
    DuplicateTagError,
    InputValidationError,
    InvalidPathError,
    SchemaMismatchError,
    UnsupportedTypeError,
)

PATH = ("pipe", "node", "sha256:0a1b")


def records(ids, string_type=pa.large_string(), **columns) -> pa.Table:
    data = {RECORD_ID_COLUMN: pa.array([str(i) for i in ids], string_type)}
    data.update(columns)
    return pa.table(data)


def ids_of(table: pa.Table | None) -> list[str]:
    assert table is not None
    return table[RECORD_ID_COLUMN].to_pylist()


@pytest.fixture
def make_db(tmp_path, request):
    """``make_db(kind, **settings)`` → a fresh database of that kind (one Delta store per test;
    ``"s3"``: in a fresh bucket of the local S3 test server)."""

    def make(kind: str, **settings):
        if kind == "memory":
            return InMemoryArrowDatabase(**settings)
        if kind == "s3":
            store = request.getfixturevalue("s3_store")
            return DeltaTableDatabase(store.uri, storage_options=store.storage_options, **settings)
        return DeltaTableDatabase(tmp_path / "store", **settings)

    return make


@pytest.fixture(params=["memory", "delta", "s3"])
def kind(request) -> str:
    return request.param


@pytest.fixture
def db(make_db, kind):
    return make_db(kind)


# ---- the contract, on both implementations --------------------------------------------------


def test_both_implement_the_protocol(db):
    assert isinstance(db, ArrowDatabase)


def test_add_counts_and_skips_committed_and_pending_duplicates(db):
    assert db.add_records(PATH, records(["a", "b"], x=[1, 2])) == 2
    assert db.add_records(PATH, records(["b", "c"], x=[20, 3])) == 1  # b is pending
    db.flush()
    assert db.add_records(PATH, records(["a", "d"], x=[10, 4]), flush=True) == 1  # a is committed
    table = db.get_all_records(PATH)
    assert ids_of(table) == ["a", "b", "c", "d"]
    assert table["x"].to_pylist() == [1, 2, 3, 4]  # the first copy of each id wins


def test_duplicates_within_one_call_keep_the_first(db):
    assert db.add_records(PATH, records(["a", "b", "a", "a"], x=[1, 2, 3, 4])) == 2
    assert db.get_all_records(PATH)["x"].to_pylist() == [1, 2]


def test_skip_duplicates_false_raises_and_adds_nothing(db):
    db.add_records(PATH, records(["a"], x=[1]), flush=True)
    with pytest.raises(DuplicateTagError, match="'a'"):
        db.add_records(PATH, records(["b", "a"], x=[2, 3]), skip_duplicates=False)
    with pytest.raises(DuplicateTagError, match="'c'"):
        db.add_records(PATH, records(["c", "c"], x=[2, 3]), skip_duplicates=False)
    assert ids_of(db.get_all_records(PATH)) == ["a"]
    assert db.add_records(PATH, records(["b"], x=[2]), skip_duplicates=False) == 1


def test_record_id_column_is_copied_into_the_id_column(db):
    table = pa.table({"entry": ["e1", "e2", "e1"], "x": [1, 2, 3]})
    assert db.add_records(PATH, table, record_id_column="entry") == 2
    got = db.get_records_by_values(PATH, "entry", ["e2"])
    assert got.to_pylist() == [{RECORD_ID_COLUMN: "e2", "entry": "e2", "x": 2}]
    with pytest.raises(InputValidationError, match="'nope'"):
        db.add_records(PATH, table, record_id_column="nope")
    with pytest.raises(InputValidationError, match=RECORD_ID_COLUMN):
        db.add_records(PATH, pa.table({"x": [1]}))
    with pytest.raises(InputValidationError, match="nulls"):
        db.add_records(PATH, pa.table({RECORD_ID_COLUMN: ["a", None]}))


def test_lookup_by_many_ids_in_one_call(db):
    db.add_records(PATH, records(range(100), x=list(range(100))), flush=True)
    db.add_records(PATH, records(range(100, 120), x=list(range(100, 120))))  # pending
    got = db.get_records_by_ids(PATH, ["5", "110", "missing", "7"])
    assert sorted(ids_of(got)) == ["110", "5", "7"]
    assert ids_of(db.get_records_by_ids(PATH, pa.array(["119", "0"]))) == ["0", "119"]
    assert db.get_records_by_ids(PATH, ["missing"]).num_rows == 0
    assert db.get_records_by_ids(PATH, []).num_rows == 0
    assert db.get_records_by_ids(("other",), ["5"]) is None


def test_lookup_by_values_and_equalities(db):
    table = records(
        ["r1", "r2", "r3", "r4"],
        h=["x", "y", "x", "z"],
        v=pa.array([1, 2, 2, None], pa.int64()),
    )
    db.add_records(PATH, table.slice(0, 2), flush=True)
    db.add_records(PATH, table.slice(2))
    assert ids_of(db.get_records_by_values(PATH, "h", ["x", "z"])) == ["r1", "r3", "r4"]
    assert ids_of(db.get_records_by_values(PATH, "v", pa.array([2], pa.int32()))) == ["r2", "r3"]
    assert ids_of(db.get_records_where(PATH, {"h": "x", "v": 2})) == ["r3"]
    assert ids_of(db.get_records_where(PATH, {"v": None})) == ["r4"]
    assert ids_of(db.get_records_where(PATH, {})) == ["r1", "r2", "r3", "r4"]
    with pytest.raises(InputValidationError, match="'nope'"):
        db.get_records_where(PATH, {"nope": 1})
    with pytest.raises(InputValidationError, match="'v'"):
        db.get_records_by_values(PATH, "v", ["not an int"])


def test_filter_rows_keeps_the_rows_arrows_filter_expression_keeps():
    from orcapod_core.databases.tables import _expression, filter_rows

    # Two chunks, nulls in keys; value sets small (Arrow's kernels) and large (polars joins).
    keys = [f"k{i % 7000}" if i % 11 else None for i in range(9000)]
    table = pa.concat_tables([
        pa.table({"k": pa.array(keys[:4000], pa.large_string()), "x": pa.array(range(4000), pa.int64())}),
        pa.table({"k": pa.array(keys[4000:], pa.large_string()), "x": pa.array([None] * 5000, pa.int64())}),
    ])
    many = pa.array([f"k{i}" for i in range(0, 7000, 2)] + [None], pa.large_string())
    cases = [
        [("k", pa.array(["k5"], pa.large_string()))],
        [("k", pa.array([None], pa.large_string()))],
        [("k", pa.array(["k5", None, "absent"], pa.large_string()))],
        [("k", many)],
        [("k", many.slice(0, 3000))],
        [("x", None)],
        [("x", None), ("k", pa.array(["k3", "k4"], pa.large_string()))],
        [("x", pa.array([3], pa.int64())), ("k", pa.array(["k3"], pa.large_string()))],
        [("k", pa.array([], pa.large_string()))],
        [],
    ]
    for conds in cases:
        expected = table if not conds else table.filter(_expression(conds))
        assert filter_rows(table, conds).to_pylist() == expected.to_pylist(), conds


def spy_on_scans(db) -> list:
    """The column lists of every committed-data scan ``db`` makes from now on."""
    scanned = []
    original = db._scan

    def spy(key, columns, expr):
        scanned.append(columns)
        return original(key, columns, expr)

    db._scan = spy
    return scanned


def test_get_column_reads_one_column(db):
    db.add_records(PATH, records(["a", "b"], x=[1, 2], y=["p", "q"]), flush=True)
    db.add_records(PATH, records(["c"], x=[3], y=["r"]))
    assert db.get_column(PATH, "x").to_pylist() == [1, 2, 3]
    ids = db.get_column(PATH, RECORD_ID_COLUMN)
    assert isinstance(ids, pa.Array) and ids.to_pylist() == ["a", "b", "c"]
    assert db.get_column(("other",), "x") is None
    with pytest.raises(InputValidationError, match="'nope'"):
        db.get_column(PATH, "nope")

    scanned = spy_on_scans(db)
    db.get_column(PATH, "x")
    assert scanned == [["x", RECORD_ID_COLUMN]]


def test_lookups_read_only_the_requested_columns(db):
    db.add_records(PATH, records(["a", "b"], x=[1, 2], y=["p", "q"], z=[True, False]), flush=True)
    db.add_records(PATH, records(["c"], x=[3], y=["r"], z=[True]))  # pending
    many = [str(i) for i in range(2000)] + ["a", "c"]  # above the pushdown limit: filtered after reading
    for got in (
        db.get_records_by_ids(PATH, ["c", "a"], columns=["y"]),
        db.get_records_by_ids(PATH, many, columns=["y"]),
        db.get_records_by_values(PATH, "z", [True], columns=["y"]),
        db.get_records_where(PATH, {"z": True}, columns=["y"]),
    ):
        assert got.column_names == ["y", RECORD_ID_COLUMN]
        assert got.to_pylist() == [{"y": "p", RECORD_ID_COLUMN: "a"}, {"y": "r", RECORD_ID_COLUMN: "c"}]
    assert db.get_all_records(PATH, columns=[RECORD_ID_COLUMN, "x"]).column_names == [RECORD_ID_COLUMN, "x"]
    assert db.get_all_records(PATH, columns=["x"])["x"].to_pylist() == [1, 2, 3]
    assert db.get_records_by_ids(("other",), ["a"], columns=["x"]) is None
    with pytest.raises(InputValidationError, match="'nope'"):
        db.get_records_by_ids(PATH, ["a"], columns=["nope"])
    with pytest.raises(InputValidationError, match="sequence of column names"):
        db.get_all_records(PATH, columns="x")

    scanned = spy_on_scans(db)
    db.get_records_by_ids(PATH, ["a"], columns=["y"])
    db.get_records_by_ids(PATH, many, columns=["y"])
    assert scanned == [["y", RECORD_ID_COLUMN], ["y", RECORD_ID_COLUMN]]


def test_pending_rows_are_visible_before_flush(db):
    db.add_records(PATH, records(["a"], x=[1]))
    assert db.table_version(PATH) is None
    assert db.has_table(PATH)
    assert ids_of(db.get_all_records(PATH)) == ["a"]
    assert db.list_tables() == [PATH]
    db.flush_path(PATH)
    assert db.table_version(PATH) == 0
    assert db.pending_count() == 0
    assert ids_of(db.get_all_records(PATH)) == ["a"]


def test_missing_table(db):
    assert not db.has_table(PATH)
    assert db.get_all_records(PATH) is None
    assert db.table_version(PATH) is None
    assert db.list_tables() == []
    db.flush()  # nothing pending: a no-op


def test_string_and_large_string_batches_concatenate(db):
    db.add_records(PATH, records(["a"], string_type=pa.string(), s=pa.array(["x"], pa.string())), flush=True)
    db.add_records(PATH, records(["b"], s=pa.array(["y"], pa.large_string())))  # pending
    db.add_records(PATH, pa.table({RECORD_ID_COLUMN: pa.array(["c"]).dictionary_encode(), "s": ["z"]}))
    table = db.get_all_records(PATH)
    assert table.schema.field("s").type == pa.large_string()
    assert table.schema.field(RECORD_ID_COLUMN).type == pa.large_string()
    assert table["s"].to_pylist() == ["x", "y", "z"]
    assert ids_of(db.get_records_by_ids(PATH, pa.array(["a", "c"], pa.string()))) == ["a", "c"]


def test_rich_types_round_trip(db):
    table = pa.Table.from_pylist(
        [
            {
                RECORD_ID_COLUMN: "a",
                "i": 1,
                "f": None,
                "b": b"\x00",
                "d": datetime.date(2024, 1, 2),
                "ts": datetime.datetime(2024, 1, 2, 3, 4, 5, 6),
                "l": [["x"], []],
                "m": {"k": "v"},
                "ok": True,
            }
        ],
        schema=pa.schema(
            [
                pa.field(RECORD_ID_COLUMN, pa.large_string(), nullable=False),
                pa.field("i", pa.int64(), nullable=False),
                pa.field("f", pa.float64()),
                pa.field("b", pa.large_binary()),
                pa.field("d", pa.date32()),
                pa.field("ts", pa.timestamp("us")),
                pa.field("l", pa.large_list(pa.large_list(pa.large_string()))),
                pa.field("m", pa.map_(pa.large_string(), pa.large_string())),
                pa.field("ok", pa.bool_()),
            ]
        ),
    )
    db.add_records(PATH, table, flush=True)
    db.add_records(PATH, table.set_column(0, RECORD_ID_COLUMN, pa.array(["b"], pa.large_string())))
    got = db.get_all_records(PATH)
    assert got.schema == table.schema
    assert [str(f.type) for f in got.schema] == [str(f.type) for f in table.schema]
    assert got.slice(0, 1).to_pylist() == table.to_pylist()


def test_batches_commit_once_per_batch_size(make_db, kind):
    db = make_db(kind, batch_size=10, max_batch_age_s=None)
    for i in range(25):
        db.add_records(PATH, records([i], x=[i]))
    assert db.table_version(PATH) == 1  # two full batches committed: versions 0 and 1
    assert db.pending_count(PATH) == 5
    db.flush()
    assert db.table_version(PATH) == 2  # ceil(25 / 10) = 3 commits, not 25
    assert db.get_all_records(PATH)["x"].to_pylist() == list(range(25))


def test_old_pending_rows_are_committed_on_add(make_db, kind):
    # (an age well above an object store's round trips, so the first two adds stay pending)
    db = make_db(kind, batch_size=1000, max_batch_age_s=0.5)
    db.add_records(PATH, records(["a"], x=[1]))
    db.add_records(("other",), records(["z"], x=[1]))
    assert db.table_version(PATH) is None
    time.sleep(0.6)
    db.add_records(("other",), records(["y"], x=[2]))  # any add commits batches that are too old
    assert db.table_version(PATH) == 0
    assert db.table_version(("other",)) == 0


def test_new_nullable_column_is_merged(db):
    db.add_records(PATH, records(["a"], x=[1]), flush=True)
    db.add_records(PATH, records(["b"], x=[2], note=["hi"]))
    assert db.get_all_records(PATH)["note"].to_pylist() == [None, "hi"]
    assert db.get_records_where(PATH, {"note": "hi"})["x"].to_pylist() == [2]
    assert ids_of(db.get_records_where(PATH, {"note": None})) == ["a"]
    db.flush()
    db.add_records(PATH, records(["c"], x=[3]), flush=True)  # later batches may omit it
    table = db.get_all_records(PATH)
    assert table["note"].to_pylist() == [None, "hi", None]
    assert table.schema.field("note").nullable


def test_incompatible_type_change_is_refused_and_nothing_changes(db):
    db.add_records(PATH, records(["a"], x=[1]), flush=True)
    before = db.get_all_records(PATH)
    with pytest.raises(SchemaMismatchError, match=r"'x'.*pipe/node/sha256:0a1b|pipe/node/sha256:0a1b.*'x'"):
        db.add_records(PATH, records(["b"], x=[1.5]))
    with pytest.raises(SchemaMismatchError, match="'x'"):
        db.add_records(PATH, records(["b"], x=["one"]), flush=True)
    assert db.get_all_records(PATH).equals(before)
    assert db.table_version(PATH) == 0
    assert db.pending_count() == 0


def test_non_nullable_column_rules(db):
    schema = pa.schema([pa.field(RECORD_ID_COLUMN, pa.large_string(), False), pa.field("x", pa.int64(), False)])
    db.add_records(PATH, pa.table({RECORD_ID_COLUMN: ["a"], "x": [1]}, schema=schema), flush=True)
    with pytest.raises(SchemaMismatchError, match="'x'"):
        db.add_records(PATH, records(["b"], x=pa.array([None], pa.int64())))
    with pytest.raises(SchemaMismatchError, match="'x'"):
        db.add_records(PATH, records(["b"], y=[1]))
    assert db.add_records(PATH, records(["b"], x=[2])) == 1  # nullable without nulls is fine


@pytest.mark.parametrize(
    "component",
    ["", ".", "..", "a/b", "a\\b", "a\x00b", "has space", "caf\u00e9", "_delta_log", "x" * 300, 7],
)
def test_invalid_path_components_are_named(db, component):
    with pytest.raises(InvalidPathError) as err:
        db.add_records(("ok", component), records(["a"]))
    assert repr(component) in str(err.value)
    with pytest.raises(InvalidPathError):
        db.get_all_records((component,))


def test_invalid_paths(db):
    with pytest.raises(InvalidPathError, match="a/b"):
        db.get_all_records("a/b")
    with pytest.raises(InvalidPathError, match="at least one"):
        db.get_all_records(())
    with pytest.raises(InvalidPathError, match=str(MAX_PATH_DEPTH)):
        db.get_all_records(("a",) * (MAX_PATH_DEPTH + 1))
    deep = tuple(f"c{i}" for i in range(MAX_PATH_DEPTH))
    db.add_records(deep, records(["a"]), flush=True)  # the maximum depth itself is fine
    assert db.list_tables() == [deep]


def test_nested_tables_and_listing(db):
    db.add_records(("p",), records(["a"]), flush=True)
    db.add_records(("p", "child"), records(["b"]), flush=True)
    db.add_records(("q", "r=1", "s:t"), records(["c"]))
    assert db.list_tables() == [("p",), ("p", "child"), ("q", "r=1", "s:t")]
    assert ids_of(db.get_all_records(("p",))) == ["a"]
    assert ids_of(db.get_all_records(("p", "child"))) == ["b"]


def test_config_round_trip(db):
    rebuilt = database_from_config(db.to_config())
    assert type(rebuilt) is type(db)
    assert rebuilt.to_config() == db.to_config()
    with pytest.raises(InputValidationError, match="'nosql'"):
        database_from_config({"type": "nosql"})


def test_threads_adding_overlapping_records(db):
    from concurrent.futures import ThreadPoolExecutor

    def add(start):
        for lo in range(start, start + 200, 20):
            db.add_records(PATH, records(range(lo, lo + 20)))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(add, [0, 100, 100, 200]))
    db.flush()
    assert sorted(map(int, ids_of(db.get_all_records(PATH)))) == list(range(400))


# ---- Delta Lake specifics ----------------------------------------------------------------------


def delta_versions(db: DeltaTableDatabase, path) -> int:
    return len(DeltaTable(db.table_uri(path)).history())


def test_delta_commits_one_transaction_per_batch(tmp_path):
    db = DeltaTableDatabase(tmp_path, batch_size=100, max_batch_age_s=None)
    for lo in range(0, 1000, 10):
        db.add_records(PATH, records(range(lo, lo + 10), x=list(range(lo, lo + 10))))
    db.flush()
    assert delta_versions(db, PATH) == 10  # 1000 records, batch_size 100: 10 commits, not 1000
    assert DeltaTable(db.table_uri(PATH)).to_pyarrow_table().num_rows == 1000


def test_second_handle_sees_commits_immediately(tmp_path):
    writer = DeltaTableDatabase(tmp_path)
    reader = DeltaTableDatabase(tmp_path)
    writer.add_records(PATH, records(["a"], x=[1]), flush=True)
    assert ids_of(reader.get_all_records(PATH)) == ["a"]  # the reader has now opened the table
    reader.add_records(PATH, records(["r"], x=[0]))  # and has a pending row of its own
    writer.add_records(PATH, records(["b", "c"], x=[2, 3]), flush=True)
    assert ids_of(reader.get_all_records(PATH)) == ["a", "b", "c", "r"]
    assert ids_of(reader.get_records_by_ids(PATH, ["c", "r"])) == ["c", "r"]
    assert reader.get_column(PATH, "x").to_pylist() == [1, 2, 3, 0]
    assert reader.table_version(PATH) == 1
    # the reader's pending copy of an id the writer committed meanwhile is not written twice
    reader.add_records(PATH, records(["d"], x=[4]))
    writer.add_records(PATH, records(["d"], x=[40]), flush=True)
    reader.flush()
    assert DeltaTable(writer.table_uri(PATH)).to_pyarrow_table().num_rows == 5
    assert writer.get_records_by_ids(PATH, ["d"])["x"].to_pylist() == [40]


def run_python(code: str, *args: str, wait: bool = True):
    cmd = [sys.executable, "-c", textwrap.dedent(code), *args]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def test_another_process_sees_commits_and_vice_versa(tmp_path):
    db = DeltaTableDatabase(tmp_path)
    db.add_records(PATH, records(["a"], x=[1]), flush=True)
    assert ids_of(db.get_all_records(PATH)) == ["a"]
    out = run_python(
        """
        import sys, pyarrow as pa
        from orcapod_core.databases import DeltaTableDatabase
        db = DeltaTableDatabase(sys.argv[1])
        path = ("pipe", "node", "sha256:0a1b")
        print(",".join(db.get_column(path, "__record_id").to_pylist()))
        db.add_records(path, pa.table({"__record_id": ["b", "c"], "x": [2, 3]}))
        # no explicit flush: pending records are committed at interpreter exit
        """,
        str(tmp_path),
    )
    assert out.stdout.strip() == "a"
    assert ids_of(db.get_all_records(PATH)) == ["a", "b", "c"]


CONCURRENT_WRITER = """
import os, sys, time, pyarrow as pa
from orcapod_core.databases import DeltaTableDatabase
base, start, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
db = DeltaTableDatabase(base, batch_size=100, max_batch_age_s=None)
path = ("pipe", "shared")
open(f"{go}.ready{start}", "w").close()
while not os.path.exists(go):  # start writing together
    time.sleep(0.005)
for lo in range(start, start + 1000, 50):
    ids = [f"r{i:05d}" for i in range(lo, lo + 50)]
    db.add_records(path, pa.table({"__record_id": ids, "writer": [start] * 50}))
db.flush()
"""


def test_two_processes_writing_overlapping_records(tmp_path):
    go = tmp_path / "go"
    procs = [
        run_python(CONCURRENT_WRITER, str(tmp_path / "store"), start, str(go), wait=False)
        for start in ("0", "500")
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"go.ready{s}").exists() for s in ("0", "500")) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    db = DeltaTableDatabase(tmp_path / "store")
    stored = DeltaTable(db.table_uri(("pipe", "shared"))).to_pyarrow_table()  # physically stored rows
    assert stored.num_rows == 1500
    assert len(set(stored[RECORD_ID_COLUMN].to_pylist())) == 1500
    assert sorted(ids_of(db.get_all_records(("pipe", "shared")))) == [f"r{i:05d}" for i in range(1500)]


def test_reads_hide_racing_duplicate_appends(tmp_path):
    # What two object-store writers racing past each other's id check would leave behind.
    db = DeltaTableDatabase(tmp_path)
    db.add_records(PATH, records(["a", "b"], x=[1, 2]), flush=True)
    write_deltalake(db.table_uri(PATH), records(["b", "c"], x=[20, 3]), mode="append")
    assert ids_of(db.get_all_records(PATH)) == ["a", "b", "c"]
    assert db.get_records_by_ids(PATH, ["b"])["x"].to_pylist() == [2]  # first committed wins
    assert db.get_column(PATH, "x").to_pylist() == [1, 2, 3]
    assert db.add_records(PATH, records(["c", "d"], x=[0, 4])) == 1


def test_corrupt_log_raises_corrupt_store_error(tmp_path):
    db = DeltaTableDatabase(tmp_path)
    log = tmp_path.joinpath(*PATH, "_delta_log")
    log.mkdir(parents=True)
    (log / "00000000000000000000.json").write_text("this is not json{")
    for call in (
        lambda: db.get_all_records(PATH),
        lambda: db.add_records(PATH, records(["a"])),
        lambda: db.has_table(PATH),
    ):
        with pytest.raises(CorruptStoreError, match="sha256:0a1b"):
            call()


def test_non_delta_directory_raises_corrupt_store_error(tmp_path):
    db = DeltaTableDatabase(tmp_path)
    table_dir = tmp_path.joinpath("plain")
    table_dir.mkdir()
    (table_dir / "data.csv").write_text("a,b\n1,2\n")
    with pytest.raises(CorruptStoreError, match="plain"):
        db.get_all_records(("plain",))
    with pytest.raises(CorruptStoreError, match="plain"):
        db.add_records(("plain",), records(["a"]))


def test_damaged_data_file_raises_corrupt_store_error(tmp_path):
    db = DeltaTableDatabase(tmp_path)
    db.add_records(PATH, records(["a"]), flush=True)
    for name in os.listdir(db.table_uri(PATH)):
        if name.endswith(".parquet"):
            with open(os.path.join(db.table_uri(PATH), name), "wb") as f:
                f.write(b"garbage")
    with pytest.raises(CorruptStoreError, match="sha256:0a1b"):
        db.get_all_records(PATH)


def test_types_delta_cannot_store_are_refused_up_front(tmp_path):
    db = DeltaTableDatabase(tmp_path)
    with pytest.raises(UnsupportedTypeError, match="'t'"):
        db.add_records(PATH, records(["a"], t=pa.array([datetime.time(1, 2)], pa.time64("us"))))
    assert db.pending_count() == 0
    # types Delta stores differently are converted before buffering: pending == committed
    db.add_records(PATH, records(["a"], n=pa.array([1], pa.uint32())), flush=True)
    db.add_records(PATH, records(["b"], n=pa.array([2], pa.uint32())))
    assert db.get_all_records(PATH)["n"].to_pylist() == [1, 2]


def test_local_lock_file_is_not_a_table_or_corruption(tmp_path):
    db = DeltaTableDatabase(tmp_path)
    with db._commit_lock(PATH):
        pass
    assert not db.has_table(PATH)
    assert db.list_tables() == []
    db.add_records(PATH, records(["a"]), flush=True)
    assert db.list_tables() == [PATH]


def test_pending_records_are_committed_when_the_handle_is_released(tmp_path):
    import gc

    db = DeltaTableDatabase(tmp_path)
    db.add_records(PATH, records(["a"]))
    del db
    gc.collect()
    assert ids_of(DeltaTableDatabase(tmp_path).get_all_records(PATH)) == ["a"]


def test_handle_pickles_to_a_fresh_handle_on_the_same_store(tmp_path):
    db = DeltaTableDatabase(tmp_path, storage_options={"timeout": "30s"}, batch_size=7)
    db.add_records(PATH, records(["a"]), flush=True)
    copy = pickle.loads(pickle.dumps(db))
    assert copy.batch_size == 7 and copy.storage_options == {"timeout": "30s"}
    assert ids_of(copy.get_all_records(PATH)) == ["a"]


def test_delta_config_round_trip_keeps_secrets_out(tmp_path):
    db = DeltaTableDatabase(str(tmp_path), storage_options={"secret": "x"}, batch_size=5, max_batch_age_s=1.0)
    config = db.to_config()
    assert config == {"type": "delta", "base_uri": str(tmp_path), "batch_size": 5, "max_batch_age_s": 1.0}
    rebuilt = database_from_config(config, storage_options={"secret": "x"})
    assert isinstance(rebuilt, DeltaTableDatabase) and rebuilt.storage_options == {"secret": "x"}


READ_THEN_EXIT = """
import sys, pyarrow as pa
from orcapod_core.databases import DeltaTableDatabase
base = sys.argv[1]
db = DeltaTableDatabase(base)
path = ("pipe", "node")
for i in range(10):
    ids = [f"r{i}_{j}" for j in range(200)]
    db.add_records(path, pa.table({"__record_id": ids, "x": list(range(200))}), flush=True)
for i in range(10):
    assert DeltaTableDatabase(base).get_all_records(path).num_rows == 2000
    assert db.get_records_by_ids(path, [f"r{i}_1"]).num_rows == 1
    assert db.get_records_where(path, {"x": 3}).num_rows == 10
print("done")
"""


@pytest.mark.slow
def test_processes_reading_delta_tables_exit_cleanly(tmp_path):
    # Regression: local reads through pyarrow.fs.PyFileSystem(DeltaStorageHandler) made Arrow's
    # I/O threads call into Python, and 5-40% of such processes aborted at interpreter exit with
    # "terminate called without an active exception" (SIGABRT).
    runs, failures = 30, []
    for first in range(0, runs, 3):  # three processes at a time
        procs = [
            (run, run_python(READ_THEN_EXIT, str(tmp_path / f"store{run}"), wait=False))
            for run in range(first, min(first + 3, runs))
        ]
        for run, proc in procs:
            out, err = proc.communicate(timeout=120)
            if proc.returncode != 0 or "terminate called" in err or out.strip() != "done":
                failures.append((run, proc.returncode, err[-300:]))
    assert not failures, f"{len(failures)}/{runs} runs failed: {failures[:3]}"


def test_local_reads_use_the_native_filesystem(tmp_path, monkeypatch):
    import deltalake.fs

    from orcapod_core.databases import delta

    def refuse(*args, **kwargs):
        raise AssertionError("local reads must not go through DeltaStorageHandler")

    monkeypatch.setattr(delta, "DeltaStorageHandler", refuse)
    monkeypatch.setattr(deltalake.fs, "DeltaStorageHandler", refuse)
    db = DeltaTableDatabase(tmp_path / "store")
    assert db.list_tables() == [] and not db.has_table(PATH)
    db.add_records(PATH, records(["a", "b"], x=[1, 2]), flush=True)
    db.add_records(PATH, records(["c"], x=[3], y=["new"]), flush=True)  # schema evolution
    other = DeltaTableDatabase(tmp_path / "store")
    other.add_records(PATH, records(["a", "d"], x=[10, 4]), flush=True)  # another handle commits
    assert ids_of(db.get_all_records(PATH)) == ["a", "b", "c", "d"]
    assert db.get_all_records(PATH)["y"].to_pylist() == [None, None, "new", None]
    assert ids_of(db.get_records_where(PATH, {"x": 3})) == ["c"]
    assert db.add_records(PATH, records(["d", "e"], x=[0, 5])) == 1
    assert db.list_tables() == [PATH]


def test_partitioned_table_written_elsewhere_is_read_at_its_current_version(tmp_path):
    db = DeltaTableDatabase(tmp_path)
    uri = db.table_uri(PATH)
    table = pa.table({RECORD_ID_COLUMN: ["a", "b", "c"], "p": ["x", "y z", "x"], "v": [1, 2, 3]})
    write_deltalake(uri, table, partition_by=["p"])
    assert sorted(ids_of(db.get_all_records(PATH))) == ["a", "b", "c"]
    assert db.get_records_by_ids(PATH, ["b"])["p"].to_pylist() == ["y z"]
    assert sorted(ids_of(db.get_records_where(PATH, {"p": "x"}))) == ["a", "c"]
    # the id index reads every data file, including the one under the escaped "p=y%20z"
    assert db.add_records(PATH, pa.table({RECORD_ID_COLUMN: ["b", "d"], "p": ["y z", "x"], "v": [0, 4]})) == 1
    db.flush()
    # an overwrite removes the old files: only the current version's active files are read
    write_deltalake(uri, table.slice(2), partition_by=["p"], mode="overwrite")
    assert ids_of(db.get_all_records(PATH)) == ["c"]
    assert db.add_records(PATH, pa.table({RECORD_ID_COLUMN: ["a"], "p": ["x"], "v": [9]})) == 1


def test_small_tables_are_read_once_per_version(tmp_path, monkeypatch):
    from orcapod_core.databases import delta

    db = DeltaTableDatabase(tmp_path)
    db.add_records(PATH, records(["a", "b", "c"], x=[1, 2, 3]), flush=True)
    reads = []
    read = DeltaTableDatabase._read
    monkeypatch.setattr(DeltaTableDatabase, "_read", lambda self, key, *rest: reads.append(key) or read(self, key, *rest))
    assert ids_of(db.get_records_by_ids(PATH, ["b"])) == ["b"]
    assert db.get_column(PATH, "x").to_pylist() == [1, 2, 3]
    assert ids_of(db.get_records_where(PATH, {"x": 3})) == ["c"]
    assert db.get_records_by_ids(PATH, ["c"], columns=["x"]).column_names == ["x", RECORD_ID_COLUMN]
    assert reads == [PATH]  # one read of the version, the rest answered from memory
    DeltaTableDatabase(tmp_path).add_records(PATH, records(["d"], x=[4]), flush=True)  # another handle commits
    assert db.get_column(PATH, "x").to_pylist() == [1, 2, 3, 4]  # the new version is read, never a stale copy
    assert reads == [PATH, PATH]
    # A larger table is read as asked, every time; a full cache drops the least recently read table.
    monkeypatch.setattr(delta, "SMALL_TABLE_BYTES", 0)
    assert ids_of(db.get_records_by_ids(PATH, ["a"])) == ["a"]  # (still cached: same version)
    db.add_records(PATH, records(["e"], x=[5]), flush=True)
    assert ids_of(db.get_records_by_ids(PATH, ["e"])) == ["e"] and ids_of(db.get_records_by_ids(PATH, ["a"])) == ["a"]
    assert len(reads) == 4
    monkeypatch.setattr(delta, "SMALL_TABLE_BYTES", 1 << 20)
    monkeypatch.setattr(delta, "READ_CACHE_BYTES", 1)
    other = ("other",)
    db.add_records(other, records(["z"], x=[0]), flush=True)
    assert ids_of(db.get_all_records(PATH)) == ["a", "b", "c", "d", "e"] and ids_of(db.get_all_records(other)) == ["z"]
    assert list(db._read_cache) == [other]


def _digest_rows(n: int, start: int = 0) -> pa.Table:
    import hashlib

    ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(start, start + n)]
    links = [hashlib.sha256(f"p{i % 7}".encode()).hexdigest()[:32] for i in range(start, start + n)]
    return pa.table({RECORD_ID_COLUMN: ids, "link": links, "x": list(range(start, start + n))})


@pytest.mark.parametrize("small", [True, False], ids=["cached", "read"])
def test_digest_columns_read_back_as_the_same_hex(db, small, monkeypatch):
    from orcapod_core.databases import delta

    if not small:
        monkeypatch.setattr(delta, "SMALL_TABLE_BYTES", -1)  # every read goes to the files
    rows = _digest_rows(1500)
    assert db.add_records(PATH, rows, digest_columns=[RECORD_ID_COLUMN, "link"], flush=True) == 1500
    assert db.get_all_records(PATH).select(rows.column_names).to_pylist() == rows.to_pylist()
    few, many = rows[RECORD_ID_COLUMN].to_pylist()[:3], rows[RECORD_ID_COLUMN].to_pylist()[::-1]
    assert ids_of(db.get_records_by_ids(PATH, few)) == few  # pushed into the scan
    assert ids_of(db.get_records_by_ids(PATH, many)) == many[::-1]  # (over 1,000 values: filtered after reading)
    link = rows["link"][3].as_py()
    assert db.get_records_by_values(PATH, "link", [link])["x"].to_pylist() == [i for i in range(1500) if i % 7 == 3]
    assert db.get_column(PATH, "link").to_pylist() == rows["link"].to_pylist()
    # committed ids are known as hex too: repeats are skipped, new ones added
    assert db.add_records(PATH, _digest_rows(20, start=1490), digest_columns=[RECORD_ID_COLUMN, "link"], flush=True) == 10


@pytest.mark.parametrize("bad", ["ABCD", "abc", "xyz0", None])
def test_digest_columns_must_hold_lowercase_hex(db, bad):
    db.add_records(PATH, _digest_rows(2), digest_columns=["link"], flush=True)
    rows = _digest_rows(2, start=5)
    rows = rows.set_column(1, "link", pa.array([rows["link"][0].as_py(), bad], pa.large_string()))
    with pytest.raises(InputValidationError, match="digest column 'link'"):
        db.add_records(PATH, rows, digest_columns=["link"])
    with pytest.raises(InputValidationError, match="'nope' is not a column"):
        db.add_records(PATH, _digest_rows(1, start=9), digest_columns=["nope"])
    assert db.get_all_records(PATH).num_rows == 2 and db.pending_count(PATH) == 0


def test_delta_stores_digests_as_bytes_marked_in_the_schema(tmp_path):
    db = DeltaTableDatabase(tmp_path)
    rows = _digest_rows(100)
    db.add_records(PATH, rows, digest_columns=[RECORD_ID_COLUMN, "link"], flush=True)
    raw = DeltaTable(db.table_uri(PATH)).to_pyarrow_table()
    assert raw.schema.field(RECORD_ID_COLUMN).type in (pa.binary(), pa.large_binary())
    assert raw[RECORD_ID_COLUMN].to_pylist()[0] == bytes.fromhex(rows[RECORD_ID_COLUMN][0].as_py())  # 32 bytes, not 64
    assert raw.schema.field("link").metadata == {b"orcapod.encoding": b"hex"}
    # Another handle that does not declare them still writes (and is checked for) digests,
    # and reads them back as text.
    other = DeltaTableDatabase(tmp_path)
    assert ids_of(other.get_all_records(PATH))[:2] == rows[RECORD_ID_COLUMN].to_pylist()[:2]
    other.add_records(PATH, _digest_rows(5, start=100), flush=True)
    bad = _digest_rows(1, start=200).set_column(1, "link", pa.array(["not hex"], pa.large_string()))
    with pytest.raises(InputValidationError, match="digest column 'link'"):
        other.add_records(PATH, bad)
    assert db.get_all_records(PATH).num_rows == 105
    assert DeltaTable(db.table_uri(PATH)).to_pyarrow_table().schema.field("link").type in (pa.binary(), pa.large_binary())
    # A table that holds such a column as text keeps it as text.
    db.add_records(("text",), _digest_rows(3), flush=True)
    db.add_records(("text",), _digest_rows(3, start=3), digest_columns=[RECORD_ID_COLUMN], flush=True)
    assert DeltaTable(db.table_uri(("text",))).to_pyarrow_table().schema.field(RECORD_ID_COLUMN).type in (pa.string(), pa.large_string())
    assert ids_of(db.get_all_records(("text",))) == _digest_rows(6)[RECORD_ID_COLUMN].to_pylist()


def _id_rows(ids, value=0):
    return pa.table({"__record_id": pa.array([f"{i:032x}" for i in ids], pa.large_string()), "v": [value] * len(ids)})


def test_a_fresh_handle_skips_ids_committed_in_many_files_and_by_another_handle_meanwhile(tmp_path):
    # Committed ids are looked up against the table's id column (sorted once per version),
    # not a Python set: the same skips, across files, handles and digest-encoded ids.
    first = DeltaTableDatabase(tmp_path)
    for start in (0, 2000, 4000):  # three commits, three files
        assert first.add_records(("t",), _id_rows(range(start, start + 2000)), flush=True, digest_columns=("__record_id",)) == 2000
    second = DeltaTableDatabase(tmp_path)
    asked = [*range(1000, 1500), *range(5500, 6500), 6100]  # 1,000 stored in two files, 500 new, one repeat
    assert second.add_records(("t",), _id_rows(asked, 1), digest_columns=("__record_id",)) == 500
    assert second.add_records(("t",), _id_rows(range(6400, 6600), 1)) == 100  # 100 pending already
    # Meanwhile the first handle commits some of the ids the second one holds pending.
    assert first.add_records(("t",), _id_rows(range(6550, 6700), 2), flush=True) == 150
    second.flush()
    stored = DeltaTableDatabase(tmp_path).get_all_records(("t",))
    ids = stored["__record_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 6700
    values = dict(zip(ids, stored["v"].to_pylist()))
    assert values[f"{1200:032x}"] == 0 and values[f"{6000:032x}"] == 1 and values[f"{6560:032x}"] == 2
    assert values[f"{6520:032x}"] == 1


def test_committed_id_lookups_stay_exact_when_id_hashes_collide(tmp_path, monkeypatch):
    # The id index orders ids by a 64-bit hash and confirms matches by comparing the ids; with
    # every id of one length sharing a hash, lookups still find exactly the committed ones.
    from orcapod_core.databases import tables

    monkeypatch.setattr(tables, "_id_hashes", lambda ids: ids.str.len_bytes().cast(pl.UInt64))
    first = DeltaTableDatabase(tmp_path)
    assert first.add_records(("t",), _id_rows(range(0, 300)), flush=True) == 300
    assert first.add_records(("t",), _id_rows(range(300, 400)), flush=True) == 100
    second = DeltaTableDatabase(tmp_path)
    assert second.add_records(("t",), _id_rows([*range(250, 450), 420], 1)) == 50
    second.flush()
    ids = DeltaTableDatabase(tmp_path).get_all_records(("t",))["__record_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 450
