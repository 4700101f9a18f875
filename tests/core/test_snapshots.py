"""Snapshots pin a node's output by reference — function nodes and operators by their inputs'
snapshots (function results looked up again), Delta sources by table version — and read back
exactly the rows pinned."""

from __future__ import annotations

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from orcapod_core import CSVSource, DeltaTableDatabase, DeltaTableSource, DictSource, Join, Pipeline, function_pod
from orcapod_core.pipeline import load_snapshot, save_snapshot

FAIL = set()


@function_pod(output_keys="y")
def triple(x: int) -> int:
    if x in FAIL:
        raise ValueError(f"no {x}")
    return 3 * x


@function_pod(output_keys="z")
def total(y: int, w: int) -> int:
    return y + w


def tables(db, base):
    return {path[-1]: db.get_all_records(path) for path in db.list_tables() if path[: len(base)] == tuple(base)}


def test_every_kind_round_trips_exactly_and_only_copied_sources_store_rows(tmp_path):
    delta = tmp_path / "weights"
    write_deltalake(delta, pa.table({"id": [1, 2, 3], "w": [10, 20, 30]}))
    (tmp_path / "xs.csv").write_text("id,x\n1,1\n2,2\n3,3\n")
    db = DeltaTableDatabase(tmp_path / "store")
    with Pipeline("snap", db) as p:
        tripled = triple.pod(CSVSource(tmp_path / "xs.csv", tag_columns="id", label="xs"), label="tripled")
        joined = Join()(tripled, DeltaTableSource(delta, tag_columns="id", label="weights"), label="joined")
        total.pod(joined, label="total")
    p.run()
    for label, node in p.nodes.items():
        snap = save_snapshot(node)
        back = load_snapshot(DeltaTableDatabase(tmp_path / "store"), snap.path, snap.data_version)
        assert back._table().equals(node._table()), label  # every column, order, exact schema
        assert back.layout == node.layout, label
        stored = tables(db, snap.path)
        if label == "xs":  # a CSV file cannot be referenced: its rows are copied (user columns + ids)
            assert stored["copies"].num_rows == 3
            assert not any(c.startswith("_source_") for c in stored["copies"].column_names)  # derived on read
        else:
            assert "copies" not in stored, label
        assert stored["versions"].num_rows == 1  # one small record is all a pin stores


def test_a_pin_stays_exact_when_the_store_and_the_source_move_on(tmp_path):
    delta = tmp_path / "xs"
    write_deltalake(delta, pa.table({"id": [1, 2, 3], "x": [1, 2, 3]}))
    db = DeltaTableDatabase(tmp_path / "store")

    def build():
        with Pipeline("moving", db) as p:
            triple.pod(DeltaTableSource(delta, tag_columns="id", label="xs"), label="tripled")
        return p

    FAIL.add(2)
    try:
        p = build()
        p.run()
        partial = p.tripled._table()
        source_pin, function_pin = save_snapshot(p.xs), save_snapshot(p.tripled)
    finally:
        FAIL.clear()
    assert partial.num_rows == 2  # x=2 failed
    write_deltalake(delta, pa.table({"id": [4], "x": [4]}), mode="append")
    q = build()
    q.run()  # computes x=2 and the new x=4
    assert q.tripled._table().num_rows == 4
    assert load_snapshot(db, function_pin.path, function_pin.data_version)._table().equals(partial)
    assert load_snapshot(db, source_pin.path, source_pin.data_version)._table().num_rows == 3  # the table at version 0
    newer = save_snapshot(q.tripled)
    assert newer.data_version != function_pin.data_version and newer.stored


def test_data_versions_follow_the_rows_not_the_run(tmp_path):
    db = DeltaTableDatabase(tmp_path / "store")

    def build(xs):
        with Pipeline("versions", db) as p:
            triple.pod(DictSource({"id": list(range(len(xs))), "x": xs}, "id", source_id="xs"), label="tripled")
        return p

    a, b = build([1, 2]), build([1, 2])
    a.run()
    b.run()
    assert save_snapshot(a.tripled).data_version == save_snapshot(b.tripled).data_version
    c = build([1, 5])
    c.run()
    assert save_snapshot(c.tripled).data_version != save_snapshot(a.tripled).data_version
    with pytest.raises(Exception, match="not in the store"):
        load_snapshot(db, save_snapshot(a.tripled).path, "0" * 32)


def test_an_unchanged_file_is_pinned_by_its_fingerprint_without_hashing_its_rows(tmp_path, monkeypatch):
    from orcapod_core.pipeline import snapshots

    csv = tmp_path / "xs.csv"
    csv.write_text("id,x\n1,1\n2,2\n")
    db = DeltaTableDatabase(tmp_path / "store")

    def build():
        with Pipeline("fp", db) as p:
            triple.pod(CSVSource(csv, tag_columns="id", label="xs"), label="tripled")
        return p

    first = build()
    first.run()
    pin = save_snapshot(first.xs)
    assert pin.stored
    hashed = []
    monkeypatch.setattr(snapshots, "data_version", lambda table: hashed.append(table.num_rows) or "x" * 32)
    again = build()  # another process, say: nothing cached
    again.run()
    same = save_snapshot(again.xs)
    assert (same.data_version, same.stored, hashed) == (pin.data_version, False, [])
    csv.write_text("id,x\n1,1\n2,2\n3,3\n")  # the file changes: its rows are hashed and copied
    monkeypatch.undo()
    changed = build()
    changed.run()
    new = save_snapshot(changed.xs)
    assert new.stored and new.data_version != pin.data_version and new.row_count == 3
    assert load_snapshot(db, pin.path, pin.data_version)._table().num_rows == 2


def test_a_function_nodes_data_version_is_the_documented_hash_of_its_sorted_entry_ids(tmp_path):
    # concepts.md: sha256("orcapod-data-version-v2:function:" + the sorted hex entry ids, concatenated)[:32]
    # — the ids are joined in Arrow now; the versions of stored data must not change.
    import hashlib
    import random

    from orcapod_core.pipeline.snapshots import _sorted_ids

    xs = list(range(300))
    random.Random(1).shuffle(xs)
    with Pipeline("documented", DeltaTableDatabase(tmp_path / "store")) as p:
        triple.pod(DictSource({"id": list(range(len(xs))), "x": xs}, "id", source_id="xs"), label="tripled")
    p.run()
    ids = p.tripled.output_entry_ids().to_pylist()
    expected = hashlib.sha256(b"orcapod-data-version-v2:function:" + "".join(sorted(ids)).encode("ascii")).hexdigest()[:32]
    assert save_snapshot(p.tripled).data_version == expected
    # Chunked, sliced and empty id arrays join to the same bytes as the Python strings do.
    hexes = pa.array(ids, pa.large_string())
    for arr in (hexes.slice(7, 50), pa.chunked_array([hexes.slice(0, 3), hexes.slice(3)]), hexes.slice(0, 0), pa.array(ids[:5])):
        assert _sorted_ids(arr) == "".join(sorted(arr.to_pylist())).encode("ascii")
    with pytest.raises(ValueError, match="1 of 2 ids are null"):
        _sorted_ids(pa.array(["a", None]))
