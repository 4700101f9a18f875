"""Entry ids from the stored pipeline records: a warm run takes each row's entry id from the
record with the same tags, system tags, input packet and node content instead of hashing the
row again — positionally when the input is unchanged (rows appended since are hashed), by a
join when it was reordered; float or file tags, and records of an older orcapod, are hashed.
Whatever the path, the entry ids and "is it recorded" answers equal those of hashing every row."""

from __future__ import annotations

import pyarrow as pa
import pytest

from orcapod_core import function_pod
from orcapod_core.databases import DeltaTableDatabase, InMemoryArrowDatabase
from orcapod_core.hashing import digests_to_hex
from orcapod_core.pipeline import Pipeline
from orcapod_core.pipeline.node_run import NodeRun
from orcapod_core.pipeline.nodes import ENTRY_ID_COLUMN, NODE_CONTENT_COLUMN
from orcapod_core.sources import ArrowTableSource


@function_pod(output_keys="y", function_name="double_it")
def double_it(x: int) -> int:
    return 2 * x


def _pipeline(db, table, tags=("id",)):
    # record ids from the id column: a row keeps its system tags wherever it moves in the table
    record_ids = "id" if "id" in tags else None
    with Pipeline("entries", pipeline_database=db) as p:
        double_it.pod(ArrowTableSource(table, tag_columns=list(tags), source_id="rows", record_id_column=record_ids), label="double")
    return p


def _entries(node, *, shortcut):
    """(entry ids, recorded) for the node's current input, with or without the stored records."""
    stream = node.join_inputs(node.upstream_nodes)
    table, layout = stream._table(), stream.layout
    digests = node._packet_hashes(stream)
    state = NodeRun(node, None)
    if not shortcut:
        state.stored_entries = lambda *a: None
    return node._entries(table, layout, digests, digests_to_hex(digests), state), state


def _stored_path_used(node):
    stream = node.join_inputs(node.upstream_nodes)
    table = stream._table()
    hexes = digests_to_hex(node._packet_hashes(stream))
    return NodeRun(node, None).stored_entries(table, stream.layout, hexes, node.content_hash().to_string())


def _rows(ids, xs):
    return pa.table({"id": pa.array(ids, pa.int64()), "x": pa.array(xs, pa.int64())})


@pytest.mark.parametrize(
    "second",
    [
        pytest.param(lambda: _rows(range(50), range(50)), id="unchanged"),
        pytest.param(lambda: _rows(range(60), range(60)), id="rows-appended"),
        pytest.param(lambda: _rows(list(range(49, -1, -1)), list(range(49, -1, -1))), id="reordered"),
        pytest.param(lambda: _rows([*range(10), *range(100, 140)], [*range(10), *range(100, 140)]), id="partly-new"),
    ],
)
def test_stored_entry_ids_equal_hashed_ones_and_runs_record_exactly_the_new_rows(tmp_path, second):
    store = tmp_path / "store"
    first = _pipeline(DeltaTableDatabase(store), _rows(range(50), range(50)))
    assert first.run().computed == 50
    p = _pipeline(DeltaTableDatabase(store), second())
    node = p.nodes["double"]
    assert _stored_path_used(node) is not None
    (ids, recorded), _ = _entries(node, shortcut=True)
    (expected_ids, expected_recorded), _ = _entries(node, shortcut=False)
    assert ids.equals(expected_ids) and recorded.equals(expected_recorded)
    known = set(range(50))
    new_rows = sum(1 for i in second()["id"].to_pylist() if i not in known)
    assert recorded.to_pylist().count(False) == new_rows
    p.run()
    records = DeltaTableDatabase(store).get_all_records(node.record_path)
    assert records.num_rows == 50 + new_rows  # every input row recorded exactly once
    assert set(records[ENTRY_ID_COLUMN].to_pylist()) >= set(expected_ids.to_pylist())
    assert set(records[NODE_CONTENT_COLUMN].to_pylist()) == {node.content_hash().to_string()}


def test_float_tags_are_hashed_so_minus_zero_and_zero_stay_two_rows():
    db = InMemoryArrowDatabase()
    table = pa.table({"t": pa.array([0.0, -0.0, float("nan")]), "x": pa.array([1, 1, 1], pa.int64())})
    p = _pipeline(db, table, tags=("t",))
    p.run()
    node = p.nodes["double"]
    assert _stored_path_used(node) is None  # a float tag: no by-value match
    assert db.get_all_records(node.record_path).num_rows == 3
    again = _pipeline(db, table, tags=("t",))
    again.run()
    assert db.get_all_records(node.record_path).num_rows == 3


def test_records_of_another_node_content_are_not_taken():
    """Records made for another content of the node (same table: same pipeline hash) match
    tags, system tags and packet, yet their entry ids are not this content's."""
    db = InMemoryArrowDatabase()
    p = _pipeline(db, _rows(range(5), range(5)))
    p.run()
    node = p.nodes["double"]
    stream = node.join_inputs(node.upstream_nodes)
    hexes = digests_to_hex(node._packet_hashes(stream))
    ids, every = NodeRun(node, None).stored_entries(stream._table(), stream.layout, hexes, "sha256:" + "0" * 64)
    assert ids.null_count == 5 and len(every) == 5


def test_records_without_the_node_content_column_are_hashed(tmp_path):
    """Pipeline records of an older orcapod (no node content column): every row is hashed and
    found recorded by its entry id, so a warm run records nothing again."""
    db = InMemoryArrowDatabase()
    p = _pipeline(db, _rows(range(8), range(8)))
    node = p.nodes["double"]
    (ids, _), state = _entries(node, shortcut=False)
    stream = node.join_inputs(node.upstream_nodes)
    old = stream._table().select(["id", *stream.layout.system_tag_columns])
    old = old.append_column(ENTRY_ID_COLUMN, ids)
    db.add_records(node.record_path, old, flush=True)
    assert _stored_path_used(node) is None
    (_, recorded), _ = _entries(node, shortcut=True)
    assert recorded.to_pylist() == [True] * 8
