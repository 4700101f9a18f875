"""Pipelines end to end: recording and compiling, labels, memoization (per entry and per packet,
across runs and processes), pipeline records, operator cache modes, derived sources, failure
policies under both orchestrators, observers, executor overrides, bulk database access."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import threading

import pyarrow as pa
import pytest

from orcapod_core.databases import RECORD_ID_COLUMN, DeltaTableDatabase, InMemoryArrowDatabase
from orcapod_core.datagrams import Packet
from orcapod_core.errors import InvalidLabelError
from orcapod_core.executors import LocalPythonFunctionExecutor
from orcapod_core import function_pod
from orcapod_core.operators import Join
from orcapod_core.pipeline import (
    AsyncPipelineOrchestrator,
    CacheMode,
    CompositeObserver,
    DerivedSource,
    FunctionNode,
    FunctionNodeProtocol,
    LoggingObserver,
    NoOpObserver,
    OperatorNode,
    OperatorNodeProtocol,
    Pipeline,
    ProgressObserver,
    SourceNode,
    SourceNodeProtocol,
    StatusObserver,
    SyncPipelineOrchestrator,
    is_function_node,
    is_operator_node,
    is_source_node,
)
from orcapod_core.result_cache import ResultCache, result_record_path
from orcapod_core.sources import DictSource

ORCHESTRATORS = [SyncPipelineOrchestrator(), AsyncPipelineOrchestrator()]
ORCH_IDS = ["sync", "async"]


def source(xs, source_id="src", ids=None, **more):
    ids = list(range(1, len(xs) + 1)) if ids is None else ids
    return DictSource({"id": ids, "x": xs, **more}, tag_columns="id", source_id=source_id)


def doubler(calls: list, fail_on=None, name="double"):
    """``y = 2 * x``; records every call; raises (after printing) for ``x == fail_on``."""

    @function_pod(output_keys="y", function_name=name)
    def double(x: int) -> int:
        calls.append(x)
        if x == fail_on:
            print(f"about to fail on {x}")
            raise ValueError(f"x={x} is not allowed")
        return 2 * x

    return double


def rows(node, **kw):
    return node.as_table(columns={"sort_by_tags": True, **kw}).to_pylist()


# -- recording and compiling ---------------------------------------------------------------------


def test_with_block_records_and_compiles_into_node_kinds_in_topological_order():
    calls: list[int] = []
    double = doubler(calls)

    @function_pod(output_keys="z")
    def add(y: int, w: int) -> int:
        return y + w

    raw = source([1, 2, 3])
    other = DictSource({"id": [1, 2, 3], "w": [10, 20, 30]}, tag_columns="id", source_id="other", label="weights")
    with Pipeline("demo", pipeline_database=InMemoryArrowDatabase()) as p:
        doubled = double.pod(raw)
        added = add.pod(doubled, other)
        added.batch()
        assert p.nodes == {}  # compiled when the block closes
    # Nothing was computed while recording.
    assert calls == []
    assert list(p.nodes) == ["dict_source", "double", "weights", "add", "batch"]
    kinds = {label: type(node) for label, node in p.nodes.items()}
    assert kinds == {
        "dict_source": SourceNode,
        "double": FunctionNode,
        "weights": SourceNode,
        "add": FunctionNode,
        "batch": OperatorNode,
    }
    assert [n.kind for n in p] == ["source", "function", "source", "function", "operator"]
    for label, node in p.nodes.items():
        assert getattr(p, label) is node is p.nodes[label]
    # Topological: every node comes after its upstream nodes.
    order = list(p.nodes)
    for node in p:
        for up in node.upstream_nodes:
            assert order.index(up.label) < order.index(node.label)
    assert [u.label for u in p.add.upstream_nodes] == ["double", "weights"]
    assert p.dict_source.source is raw
    assert p.upstream_closure(["add"]) == ["dict_source", "double", "weights", "add"]
    with pytest.raises(AttributeError, match="no node or attribute 'nope'"):
        p.nope  # noqa: B018


def test_default_labels_are_function_operator_and_source_names_made_unique():
    double = doubler([])
    named = doubler([], name="twice")
    with Pipeline("demo", pipeline_database=InMemoryArrowDatabase()) as p:
        a = double.pod(source([1]))
        double.pod(a.map_packets({"y": "x"}))
        named.pod(source([2], source_id="other"))
        a.polars_filter(id=1)
        Join()(a, source([3], source_id="third").map_packets({"x": "q"}))
    assert list(p.nodes) == [
        "dict_source",
        "double",
        "map_packets",
        "double_1",
        "dict_source_1",
        "twice",
        "polars_filter",
        "dict_source_2",
        "map_packets_1",
        "join",
    ]


def test_explicit_labels_are_used_and_automatic_ones_avoid_them():
    double = doubler([])
    with Pipeline("demo", pipeline_database=InMemoryArrowDatabase()) as p:
        a = double.pod(source([1]), label="double_1")
        double.pod(a.map_packets({"y": "x"}, label="renamed"), label="dict_source")
    assert list(p.nodes) == ["dict_source_1", "double_1", "renamed", "dict_source"]
    assert p.double_1.upstream_nodes == (p.dict_source_1,)


def test_duplicate_explicit_label_is_an_error_naming_it():
    double = doubler([])
    with pytest.raises(InvalidLabelError, match="'twin'"):
        with Pipeline("demo", pipeline_database=InMemoryArrowDatabase()):
            double.pod(source([1]), label="twin")
            double.pod(source([2], source_id="b"), label="twin")


@pytest.mark.parametrize("label", ["1abc", "has space", "a/b", "", "run", "nodes", "upstream_closure", "pipeline_database"])
def test_invalid_labels_are_errors_naming_them(label):
    double = doubler([])
    with pytest.raises(InvalidLabelError) as info:
        with Pipeline("demo", pipeline_database=InMemoryArrowDatabase()):
            double.pod(source([1]), label=label)
    assert repr(label) in str(info.value)


def test_a_label_too_long_for_a_table_name_is_an_invalid_label():
    with pytest.raises(InvalidLabelError, match="a{20}"):
        with Pipeline("demo", pipeline_database=InMemoryArrowDatabase()):
            doubler([]).pod(source([1]), label="a" * 300)


def test_function_names_and_versions_outside_path_characters_still_run():
    @function_pod(output_keys="y", version="1.0 beta")
    def größe(x: int) -> int:
        return x + 1

    with Pipeline("demo", pipeline_database=InMemoryArrowDatabase()) as p:
        größe.pod(source([1, 2]))
    assert list(p.nodes) == ["dict_source", "gr__e"]
    assert p.run().computed == 2 and [r["y"] for r in rows(p.gr__e)] == [2, 3]
    path = result_record_path(größe.pod.packet_function)
    assert path == ("results", "gr__e", "1.0_beta", größe.pod.packet_function.identity_hash().to_hex(16))
    assert p.result_database.list_tables() == sorted([path, p.gr__e.record_path])


def test_invalid_pipeline_name_and_run_inside_the_block():
    with pytest.raises(InvalidLabelError, match="a/b"):
        Pipeline("a/b", pipeline_database=InMemoryArrowDatabase())
    double = doubler([])
    with pytest.raises(RuntimeError, match="after its `with` block"):
        with Pipeline("demo", pipeline_database=InMemoryArrowDatabase()) as p:
            double.pod(source([1]))
            p.run()
    with pytest.raises(ValueError, match="error_policy"):
        Pipeline("demo", pipeline_database=InMemoryArrowDatabase()).run(error_policy="ignore")


def test_node_protocols_and_typeguards_dispatch_on_node_kind():
    double = doubler([])
    with Pipeline("demo", pipeline_database=InMemoryArrowDatabase()) as p:
        double.pod(source([1])).batch()
    src, fn, op = p.dict_source, p.double, p.batch
    assert is_source_node(src) and not is_function_node(src) and not is_operator_node(src)
    assert is_function_node(fn) and not is_source_node(fn) and not is_operator_node(fn)
    assert is_operator_node(op) and not is_function_node(op) and not is_source_node(op)
    assert isinstance(src, SourceNodeProtocol) and isinstance(fn, FunctionNodeProtocol) and isinstance(op, OperatorNodeProtocol)
    # A stream that is not a node is none of them.
    plain = source([1])
    assert not (is_source_node(plain) or is_function_node(plain) or is_operator_node(plain))

    class Impostor:  # claims a kind without the methods
        kind = "function"
        label = "x"

    assert not is_function_node(Impostor())

    with Pipeline("demo2", pipeline_database=InMemoryArrowDatabase()) as q:
        double.pod(source([1]))
    q.dict_source.kind = "mystery"  # a node no protocol accepts: orchestrators refuse it
    with pytest.raises(TypeError, match="no known node protocol"):
        q.run()
    with pytest.raises(TypeError, match="no known node protocol"):
        q.run(orchestrator=AsyncPipelineOrchestrator())


# -- memoization --------------------------------------------------------------------------------


@pytest.mark.parametrize("orchestrator", ORCHESTRATORS, ids=ORCH_IDS)
def test_first_run_computes_second_run_serves_and_identical_packets_compute_once(orchestrator):
    calls: list[int] = []
    double = doubler(calls)
    db = InMemoryArrowDatabase()

    def build():
        with Pipeline("demo", pipeline_database=db) as p:
            double.pod(source([1, 2, 3, 3, 2]))
        return p

    p = build()
    first = p.run(orchestrator=orchestrator)
    assert sorted(calls) == [1, 2, 3]  # identical packets computed once
    # Counted in calls: 3 distinct packets computed; their 2 repeats in this run are cached.
    assert first.computed == 3 and first.cached == 2 and first.failed == 0
    assert first.stats["double"].total == 5 and first.stats["dict_source"].total == 5
    table = p.double.as_table()
    assert table.to_pylist() == [{"id": i, "y": y} for i, y in zip([1, 2, 3, 4, 5], [2, 4, 6, 6, 4])]

    second = p.run(orchestrator=orchestrator)
    assert second.computed == 0 and second.cached == 5 and sorted(calls) == [1, 2, 3]
    assert p.double.as_table().equals(table)
    # A freshly built pipeline over the same store: nothing computed either.
    q = build()
    third = q.run(orchestrator=orchestrator)
    assert third.computed == 0 and third.cached == 5 and sorted(calls) == [1, 2, 3]
    assert q.double.as_table(all_info=True).equals(p.double.as_table(all_info=True))


def test_new_rows_compute_only_the_new_packets():
    calls: list[int] = []
    double = doubler(calls)
    db = InMemoryArrowDatabase()

    def run(src):
        with Pipeline("demo", pipeline_database=db) as p:
            double.pod(src)
        return p, p.run()

    run(source([1, 2, 3], source_id="s"))
    calls.clear()
    # Same source id, one more row: the old rows are recorded entries, only the new one computes.
    p, result = run(source([1, 2, 3, 4], source_id="s"))
    assert calls == [4] and result.computed == 1 and result.cached == 3
    assert [r["y"] for r in rows(p.double)] == [2, 4, 6, 8]
    # A different source (new entry ids) with known packets: results come from the result cache.
    calls.clear()
    p, result = run(source([4, 5, 1], source_id="other"))
    assert calls == [5] and result.computed == 1 and result.cached == 2
    records = p.double.get_pipeline_records()
    assert records.num_rows == 7  # 4 entries of "s" + 3 of "other"


def test_same_packet_under_different_tags_is_one_computation_but_two_pipeline_records():
    calls: list[int] = []
    double = doubler(calls)
    with Pipeline("demo", pipeline_database=InMemoryArrowDatabase()) as p:
        double.pod(source([7, 7], ids=[1, 2]))
    result = p.run()
    assert calls == [7] and (result.computed, result.cached) == (1, 1)
    records = p.double.get_pipeline_records()
    assert records.num_rows == 2
    assert len(set(records[RECORD_ID_COLUMN].to_pylist())) == 2  # two entries ...
    assert len(set(records["__packet_hash"].to_pylist())) == 1  # ... linked to one result
    results = ResultCache(p.result_database, result_record_path(double.pod.packet_function)).get_all_records()
    assert results.num_rows == 1


def test_pipeline_records_hold_tags_system_tags_packet_hash_source_info_and_computed_flag():
    calls: list[int] = []
    double = doubler(calls)
    db = InMemoryArrowDatabase()
    src = source([5, 6])
    with Pipeline(("team", "demo"), pipeline_database=db) as p:
        double.pod(src)
    p.run()
    node = p.double
    assert node.record_path == ("team", "demo", "double", node.pipeline_hash().to_hex(16))
    records = node.get_pipeline_records()
    assert records is not None and db.get_all_records(node.record_path).num_rows == 2
    sys_tags = [c for c in records.column_names if c.startswith("_tag_")]
    assert sorted(sys_tags) == sorted(src.layout.system_tag_columns)
    assert pa.types.is_map(records.schema.field("__input_source_info").type)
    got = sorted(records.to_pylist(maps_as_pydicts="strict"), key=lambda r: r["id"])
    packet_hashes = [h.hex() for h in src.packet_hashes().to_pylist()]
    for i, rec in enumerate(got):
        assert rec["id"] == i + 1
        assert rec["__packet_hash"] == packet_hashes[i]
        assert rec["__input_source_info"] == {"x": f"src::row_{i}::x"}
        assert rec["__computed"] is True
        assert rec[f"_tag_record_id::{src.system_tag_hash}"] == f"row_{i}"
        assert rec[f"_tag_source_id::{src.system_tag_hash}"] == "src"
    assert len({r["__run_id"] for r in got}) == 1

    # A second pipeline over another source whose rows are known packets: computed=False records.
    other = source([6], source_id="other")
    with Pipeline(("team", "demo"), pipeline_database=db) as q:
        double.pod(other)
    result = q.run()
    assert result.computed == 0 and calls == [5, 6]
    assert q.double.record_path == node.record_path  # same shape: same table
    records = q.double.get_pipeline_records().to_pylist(maps_as_pydicts="strict")
    new = [r for r in records if r[f"_tag_source_id::{src.system_tag_hash}"] == "other"]
    assert len(records) == 3 and len(new) == 1 and new[0]["__computed"] is False
    assert new[0]["__input_source_info"] == {"x": "other::row_0::x"}
    # Rerunning records nothing new.
    q.run()
    assert q.double.get_pipeline_records().num_rows == 3
    # The output keeps system tags and points its source info at the function's result.
    out = q.double.as_table(all_info=True).to_pylist()[0]
    assert out["_source_y"] == f"{double.pod.uri}::{new[0]['__packet_hash']}::y"


def test_multi_input_function_node_joins_its_inputs_commutatively():
    calls: list[tuple] = []

    @function_pod(output_keys="z")
    def add(x: int, w: int) -> int:
        calls.append((x, w))
        return x + w

    db = InMemoryArrowDatabase()
    a = source([1, 2, 3], source_id="a")
    b = DictSource({"id": [2, 3, 4], "w": [20, 30, 40]}, tag_columns="id", source_id="b")
    with Pipeline("demo", pipeline_database=db) as p:
        add.pod(a, b)
    result = p.run()
    assert result.computed == 2 and sorted(calls) == [(2, 20), (3, 30)]
    assert rows(p.add) == [{"id": 2, "z": 22}, {"id": 3, "z": 33}]
    sys_tags = [c for c in p.add.as_table(columns={"system_tags": True}).column_names if c.startswith("_tag_")]
    # inputs of distinct origin: each keeps its source's own system-tag names
    assert sorted(sys_tags) == sorted([*a.layout.system_tag_columns, *b.layout.system_tag_columns])
    records = p.add.get_pipeline_records().to_pylist(maps_as_pydicts="strict")
    assert sorted(r["__input_source_info"]["w"] for r in records) == ["b::row_0::w", "b::row_1::w"]

    # The inputs in the other order: the same node (hashes, entry ids), nothing new.
    with Pipeline("demo", pipeline_database=db) as q:
        add.pod(b, a)
    assert q.add.content_hash() == p.add.content_hash() and q.add.record_path == p.add.record_path
    again = q.run()
    assert again.computed == 0 and len(calls) == 2
    assert q.add.get_pipeline_records().num_rows == 2
    assert q.add.as_table(all_info=True, columns={"sort_by_tags": True}).equals(
        p.add.as_table(all_info=True, columns={"sort_by_tags": True})
    )


def test_execute_packet_and_process_packet():
    calls: list[int] = []
    double = doubler(calls)
    with Pipeline("demo", pipeline_database=InMemoryArrowDatabase()) as p:
        double.pod(source([4, 5]))
    node = p.double
    tag, packet = next(iter(p.dict_source))
    assert node.process_packet(tag, packet) == {"y": 8} and calls == [4]
    out = node.execute_packet(tag, packet)
    assert isinstance(out, Packet) and out.as_dict() == {"y": 8} and calls == [4, 4]
    assert out.source_info["y"].startswith(double.pod.uri + "::")
    assert node.execute_packet(tag, packet).as_dict() == {"y": 8} and calls == [4, 4]  # recorded now
    assert node.get_pipeline_records().num_rows == 1
    assert p.run().computed == 1 and calls == [4, 4, 5]


# -- operator cache modes ------------------------------------------------------------------------


def test_operator_cache_modes_off_log_replay():
    calls: list[int] = []
    double = doubler(calls)
    db = InMemoryArrowDatabase()

    def build(src, mode):
        with Pipeline("demo", pipeline_database=db, operator_cache_mode=mode) as p:
            double.pod(src).batch()
        return p

    a = source([1, 2, 3], source_id="a")
    off = build(a, CacheMode.OFF)
    off.run()
    assert off.batch.cache_mode is CacheMode.OFF
    assert not db.has_table(off.batch.record_path)  # OFF stores nothing
    assert rows(off.batch) == [{"id": [1, 2, 3], "y": [2, 4, 6]}]

    log = build(a, CacheMode.LOG)
    log.run()
    log.run()
    stored = db.get_all_records(log.batch.record_path)
    assert stored.num_rows == 1  # deduplicated by row hash across runs
    # Another input of the same shape logs into the same table ...
    build(source([5], source_id="b"), CacheMode.LOG).run()
    assert db.get_all_records(log.batch.record_path).num_rows == 2

    # ... and REPLAY serves only the rows logged for its own input, without computing.
    calls.clear()
    replay = build(a, CacheMode.REPLAY)
    result = replay.run()
    assert rows(replay.batch) == [{"id": [1, 2, 3], "y": [2, 4, 6]}]
    assert result.stats["batch"].total == 1
    # REPLAY with nothing logged for this input serves nothing.
    nothing = build(source([9], source_id="never_logged"), CacheMode.REPLAY)
    nothing.run()
    assert nothing.batch.as_table().num_rows == 0
    # The async orchestrator replays the same rows.
    async_replay = build(a, CacheMode.REPLAY)
    async_replay.run(orchestrator=AsyncPipelineOrchestrator())
    assert rows(async_replay.batch) == [{"id": [1, 2, 3], "y": [2, 4, 6]}]


def test_replay_feeds_downstream_function_nodes_with_the_declared_schema(tmp_path):
    @function_pod(output_keys="n")
    def count(y: list[int]) -> int:
        return len(y)

    db = DeltaTableDatabase(tmp_path / "store")

    def build(mode):
        with Pipeline("demo", pipeline_database=db, operator_cache_mode=mode) as p:
            count.pod(doubler([]).pod(source([1, 2, 3])).batch())
        return p

    build(CacheMode.LOG).run()
    replay = build(CacheMode.REPLAY)
    replay.run()
    assert replay.batch._table().schema == replay.batch.layout.schema
    assert rows(replay.count) == [{"id": [1, 2, 3], "n": 3}]


# -- derived sources -------------------------------------------------------------------------------


def test_as_source_keeps_system_tags_and_source_info_and_has_a_schema_only_pipeline_hash():
    calls: list[int] = []
    double = doubler(calls)

    @function_pod(output_keys="z")
    def inc(y: int) -> int:
        return y + 1

    db = InMemoryArrowDatabase()

    def upstream(src, name):
        with Pipeline(name, pipeline_database=db) as p:
            double.pod(src)
        p.run()
        return p

    p1 = upstream(source([1, 2]), "one")
    p2 = upstream(source([7, 8, 9], source_id="elsewhere"), "two")
    d1, d2 = p1.double.as_source(), p2.double.as_source()
    assert isinstance(d1, DerivedSource)
    assert d1.as_table(all_info=True).equals(p1.double.as_table(all_info=True))
    assert d1.layout.system_tag_columns == p1.double.layout.system_tag_columns != ()
    assert d1.as_table(columns={"source": True})["_source_y"].to_pylist() == p1.double.as_table(columns={"source": True})[
        "_source_y"
    ].to_pylist()
    # Schema-only pipeline hash: same shape, different data → equal; content hashes differ.
    assert d1.pipeline_hash() == d2.pipeline_hash()
    assert d1.content_hash() != d2.content_hash()
    assert d1.pipeline_hash() != p1.double.pipeline_hash()

    # Used as a source of another pipeline, provenance flows through.
    with Pipeline("report", pipeline_database=db) as r:
        inc.pod(d1)
    assert isinstance(r.double_source, SourceNode) and r.double_source.source is d1
    r.run()
    out = r.inc.as_table(all_info=True, columns={"sort_by_tags": True}).to_pylist()
    upstream_rows = p1.double.as_table(all_info=True, columns={"sort_by_tags": True}).to_pylist()
    for got, up in zip(out, upstream_rows, strict=True):
        assert got["z"] == up["y"] + 1
        for col in p1.double.layout.system_tag_columns:
            assert got[col] == up[col]
    records = r.inc.get_pipeline_records().to_pylist(maps_as_pydicts="strict")
    assert sorted(rec["__input_source_info"]["y"] for rec in records) == sorted(u["_source_y"] for u in upstream_rows)

    # An operator node's derived source works the same.
    with Pipeline("ops", pipeline_database=db) as o:
        double.pod(source([1, 2])).polars_filter(id=2)
    o.run()
    derived = o.polars_filter.as_source()
    assert derived.as_table(all_info=True).equals(o.polars_filter.as_table(all_info=True))
    assert o.dict_source.as_source() is o.dict_source.source


# -- failures ------------------------------------------------------------------------------------------


class Recorder(NoOpObserver):
    """Records every event it receives."""

    wants_captured_output = True

    def __init__(self):
        self.events: list[tuple] = []
        self.crashes: list[tuple] = []
        self.ends: list[tuple] = []

    def on_run_start(self, pipeline, run_id):
        self.events.append(("run_start", run_id))

    def on_run_end(self, pipeline, run_id, stats, error):
        self.events.append(("run_end", run_id, dict(stats), error))

    def on_node_start(self, node, total):
        self.events.append(("node_start", node.label))

    def on_node_end(self, node, stats):
        self.events.append(("node_end", node.label, stats.computed, stats.cached, stats.failed))

    def on_packet_start(self, node, tag, packet):
        self.events.append(("packet_start", node.label, dict(tag)))

    def on_packet_end(self, node, tag, packet, output, cached, captured=None):
        self.ends.append((node.label, dict(tag), dict(packet), output, cached, captured))

    def on_packet_crash(self, node, tag, packet, error, captured=None):
        self.crashes.append((node.label, dict(tag), dict(packet), error, captured))


@pytest.mark.parametrize("orchestrator", ORCHESTRATORS, ids=ORCH_IDS)
def test_continue_reports_the_failing_packet_and_stores_all_others(orchestrator):
    calls: list[int] = []
    double = doubler(calls, fail_on=3)

    @function_pod(output_keys="z")
    def inc(y: int) -> int:
        return y + 1

    db = InMemoryArrowDatabase()
    with Pipeline("demo", pipeline_database=db) as p:
        inc.pod(double.pod(source([1, 2, 3, 4])))
    observer = Recorder()
    result = p.run(orchestrator=orchestrator, observer=observer)
    assert result.failed == 1 and result.error is None
    assert result.stats["double"].failed == 1 and result.stats["double"].computed == 3
    assert result.stats["double"].errors == ["ValueError: x=3 is not allowed"]
    assert result.stats["inc"].computed == 3 and result.stats["inc"].failed == 0
    assert [r["y"] for r in rows(p.double)] == [2, 4, 8]
    assert [r["z"] for r in rows(p.inc)] == [3, 5, 9]
    # The observer got the crash with the captured output and traceback.
    ((label, tag, packet, error, captured),) = observer.crashes
    assert (label, tag, packet) == ("double", {"id": 3}, {"x": 3})
    assert isinstance(error, ValueError) and str(error) == "x=3 is not allowed"
    assert captured["stdout"] == "about to fail on 3\n"
    assert "Traceback" in captured["traceback"] and "x=3 is not allowed" in captured["traceback"]
    assert "in double" in captured["traceback"]
    assert {(e[0], e[1]["id"]) for e in observer.ends} == {("double", 1), ("double", 2), ("double", 4), ("inc", 1), ("inc", 2), ("inc", 4)}
    assert all(e[4] is False for e in observer.ends)
    assert observer.events[-1][0] == "run_end" and observer.events[-1][3] is None
    # Stored: three results and three pipeline records (the failed row has neither).
    results = ResultCache(db, result_record_path(double.pod.packet_function)).get_all_records()
    assert sorted(results["y"].to_pylist()) == [2, 4, 8]
    assert p.double.get_pipeline_records().num_rows == 3

    # A rerun with the same code computes only the failed packet (and fails on it again).
    calls.clear()
    again = p.run(orchestrator=orchestrator)
    assert calls == [3] and again.failed == 1 and again.computed == 0 and again.stats["double"].cached == 3


def test_declared_identity_fix_recomputes_only_the_failed_packet():
    calls: list[int] = []

    @function_pod(output_keys="y", function_name="parse", version="v1", identity="declared")
    def broken(x: int) -> int:
        calls.append(x)
        if x == 2:
            raise ValueError("bug")
        return x

    @function_pod(output_keys="y", function_name="parse", version="v1", identity="declared")
    def fixed(x: int) -> int:
        calls.append(x)
        return x

    db = InMemoryArrowDatabase()
    with Pipeline("demo", pipeline_database=db) as p:
        broken.pod(source([1, 2, 3]), label="parse")
    assert p.run().failed == 1
    calls.clear()
    with Pipeline("demo", pipeline_database=db) as q:
        fixed.pod(source([1, 2, 3]), label="parse")
    assert q.parse.record_path == p.parse.record_path  # same declared identity: same tables
    result = q.run()
    assert calls == [2] and result.failed == 0 and result.computed == 1 and result.cached == 2
    assert [r["y"] for r in rows(q.parse)] == [1, 2, 3]


def test_run_selected_nodes_runs_their_upstream_closure_only():
    calls: list[int] = []
    double = doubler(calls)

    @function_pod(output_keys="z")
    def inc(y: int) -> int:
        calls.append(-y)
        return y + 1

    with Pipeline("demo", pipeline_database=InMemoryArrowDatabase()) as p:
        d = double.pod(source([1, 2]))
        inc.pod(d)
        d.batch()
    for orchestrator in ORCHESTRATORS:
        result = p.run(orchestrator=orchestrator, nodes=["batch"])
        assert list(result.stats) == ["dict_source", "double", "batch"]
    assert sorted(calls) == [1, 2]
    with pytest.raises(InvalidLabelError, match="'nope'"):
        p.run(nodes=["nope"])


@pytest.mark.parametrize("orchestrator", ORCHESTRATORS, ids=ORCH_IDS)
def test_fail_fast_raises_the_users_exception_after_committing_what_was_computed(orchestrator, tmp_path):
    calls: list[int] = []
    double = doubler(calls, fail_on=3)
    store = tmp_path / "store"
    with Pipeline("demo", pipeline_database=DeltaTableDatabase(store)) as p:
        double.pod(source([1, 2, 3, 4, 5]))
    observer = Recorder()
    with pytest.raises(ValueError, match="x=3 is not allowed") as info:
        p.run(orchestrator=orchestrator, error_policy="fail_fast", observer=observer)
    assert any("'double'" in note and "{'id': 3}" in note for note in getattr(info.value, "__notes__", []))
    assert calls == [1, 2, 3]  # stopped at the failure
    assert observer.events[-1][0] == "run_end" and observer.events[-1][3] is info.value
    # What was computed before the failure is committed: a fresh handle sees it, and a
    # new run computes only what is missing.
    fresh = DeltaTableDatabase(store)
    results = ResultCache(fresh, result_record_path(double.pod.packet_function)).get_all_records()
    assert sorted(results["y"].to_pylist()) == [2, 4]
    assert fresh.get_all_records(p.double.record_path).num_rows == 2
    calls.clear()
    with Pipeline("demo", pipeline_database=fresh) as q:
        double.pod(source([1, 2, 3, 4, 5]))
    result = q.run(orchestrator=orchestrator)
    assert calls == [3, 4, 5] and result.failed == 1 and result.computed == 2 and result.cached == 2


def within(seconds, fn):
    """``fn()`` on a daemon thread; fails the test (instead of hanging it) if it does not finish."""
    outcome: list = []

    def target():
        try:
            outcome.append(("ok", fn()))
        except BaseException as exc:  # handed back to the test
            outcome.append(("error", exc))

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"did not finish within {seconds} s (deadlock?)"
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value


@pytest.mark.parametrize("orchestrator", ORCHESTRATORS, ids=ORCH_IDS)
def test_async_functions_and_wrong_outputs_are_reported_per_packet_with_captured_output(orchestrator):
    import asyncio

    @function_pod(output_keys="y")
    async def fetch(x: int) -> int:
        print("fetching", x)
        await asyncio.sleep(0.005)
        if x == 2:
            raise ConnectionError("host down")
        return x * 10

    @function_pod(output_keys="y")
    def sloppy(x: int) -> int:
        print("sloppy", x)
        return "oops" if x == 1 else x

    with Pipeline("demo", pipeline_database=InMemoryArrowDatabase()) as p:
        fetch.pod(source([1, 2, 3]))
        sloppy.pod(source([1, 2, 3]))
    observer = Recorder()
    result = p.run(orchestrator=orchestrator, observer=observer)
    assert [r["y"] for r in rows(p.fetch)] == [10, 30] and [r["y"] for r in rows(p.sloppy)] == [2, 3]
    assert result.failed == 2
    crashes = {c[0]: c for c in observer.crashes}
    _, tag, _, error, captured = crashes["fetch"]
    assert tag == {"id": 2} and isinstance(error, ConnectionError)
    assert captured["stdout"] == "fetching 2\n" and "host down" in captured["traceback"]
    _, tag, _, error, captured = crashes["sloppy"]
    assert tag == {"id": 1} and "output key 'y'" in str(error)
    assert captured["stdout"] == "sloppy 1\n" and "output key 'y'" in captured["traceback"]
    assert sorted((e[0], e[5]["stdout"]) for e in observer.ends) == [
        ("fetch", "fetching 1\n"),
        ("fetch", "fetching 3\n"),
        ("sloppy", "sloppy 2\n"),
        ("sloppy", "sloppy 3\n"),
    ]


def _outcome(orchestrator, policy, fail_on):
    calls: list[int] = []
    double = doubler(calls, fail_on=fail_on)

    @function_pod(output_keys="z")
    def add(y: int, x: int) -> int:
        return y + x

    db = InMemoryArrowDatabase()
    src = source([5, 1, 2, 3, 3, 4, 6])
    with Pipeline("same", pipeline_database=db) as p:
        d = double.pod(src)
        add.pod(d, src).batch()
    error = None
    try:
        result = p.run(orchestrator=orchestrator, error_policy=policy)
        stats = {k: (s.total, s.computed, s.cached, s.failed, s.errors) for k, s in result.stats.items()}
    except ValueError as exc:
        error, stats = (type(exc), str(exc), exc.__notes__), None
    tables = {
        path: db.get_all_records(path).drop_columns([c for c in ("__run_id", "__stored_at") if c in db.get_all_records(path).column_names])
        for path in db.list_tables()
    }
    tables = {k: t.sort_by([(RECORD_ID_COLUMN, "ascending")]) for k, t in tables.items()}
    outputs = {label: node.as_table(all_info=True) for label, node in p.nodes.items()} if error is None else None
    return error, stats, tables, outputs, sorted(calls)


@pytest.mark.parametrize("policy", ["continue", "fail_fast"])
def test_both_orchestrators_give_identical_tables_and_errors(policy):
    sync = _outcome(SyncPipelineOrchestrator(), policy, fail_on=3)
    async_ = _outcome(AsyncPipelineOrchestrator(), policy, fail_on=3)
    small = within(60, lambda: _outcome(AsyncPipelineOrchestrator(buffer_size=1, chunk_rows=2), policy, fail_on=None))
    assert sync[0] == async_[0]
    assert sync[1] == async_[1]
    assert sync[2].keys() == async_[2].keys()
    for path in sync[2]:
        assert sync[2][path].equals(async_[2][path]), path
    assert sync[3] is None or all(sync[3][k].equals(async_[3][k]) for k in sync[3])
    assert sync[4] == async_[4]
    if policy == "continue":
        assert sync[0] is None and sync[1]["double"][3] == 1  # one packet (x=3, in two rows) raised
        assert sync[1]["add"][:4] == (5, 5, 0, 0)
    else:
        assert sync[0][0] is ValueError and sync[1] is None
    # Tiny channels and chunks (repeated packets land in different chunks) give the same
    # stored tables, outputs and counts as the sync run.
    reference = _outcome(SyncPipelineOrchestrator(), policy, fail_on=None)
    assert small[1] == reference[1] and small[4] == reference[4]
    assert small[2].keys() == reference[2].keys()
    for path in reference[2]:
        assert small[2][path].equals(reference[2][path]), path
    assert all(small[3][k].equals(reference[3][k]) for k in reference[3])


def test_async_orchestrator_does_not_deadlock_on_a_diamond_with_full_channels():
    @function_pod(output_keys="z")
    def add(y: int, x: int) -> int:
        return y + x

    src = source(list(range(40)))
    with Pipeline("diamond", pipeline_database=InMemoryArrowDatabase()) as p:
        add.pod(doubler([]).pod(src), src)  # add reads double (first) and the source
    result = within(60, lambda: p.run(orchestrator=AsyncPipelineOrchestrator(buffer_size=1, chunk_rows=1)))
    assert result.stats["add"].computed == 40
    assert [r["z"] for r in rows(p.add)] == [3 * x for x in range(40)]


# -- observers -----------------------------------------------------------------------------------------


def test_on_run_end_fires_when_the_run_raises_and_observer_errors_are_not_hidden():
    class Boom(NoOpObserver):
        def __init__(self):
            self.ended = []

        def on_node_start(self, node, total):
            if node.label == "double":
                raise RuntimeError("observer exploded")

        def on_run_end(self, pipeline, run_id, stats, error):
            self.ended.append(error)

    with Pipeline("demo", pipeline_database=InMemoryArrowDatabase()) as p:
        doubler([]).pod(source([1]))
    for orchestrator in ORCHESTRATORS:
        boom = Boom()
        with pytest.raises(RuntimeError, match="observer exploded"):
            p.run(orchestrator=orchestrator, observer=boom)
        assert len(boom.ended) == 1 and isinstance(boom.ended[0], RuntimeError)


def test_packet_events_only_for_observers_that_want_them():
    assert NoOpObserver().wants_packet_events is False
    assert NoOpObserver().wants_captured_output is False

    class Ends(NoOpObserver):
        def __init__(self):
            self.seen = []

        def on_packet_end(self, node, tag, packet, output, cached, captured=None):
            self.seen.append((dict(tag), output, captured))

    class NodesOnly(NoOpObserver):
        wants_packet_events = False  # a subclass can opt out explicitly

        def __init__(self):
            self.nodes = []

        def on_node_end(self, node, stats):
            self.nodes.append(node.label)

        def on_packet_end(self, *args):  # would fail the test if called: not wanted below
            raise AssertionError("packet event delivered to an observer that did not ask")

    ends = Ends()
    assert ends.wants_packet_events is True
    with Pipeline("demo", pipeline_database=InMemoryArrowDatabase()) as p:
        doubler([]).pod(source([1, 2]))
    p.run(observer=ends)
    assert ends.seen == [({"id": 1}, {"y": 2}, None), ({"id": 2}, {"y": 4}, None)]  # no capture asked

    nodes_only = NodesOnly()
    composite = CompositeObserver(nodes_only, None, Ends())
    assert composite.wants_packet_events is True and composite.wants_captured_output is False
    with Pipeline("demo2", pipeline_database=InMemoryArrowDatabase()) as q:
        doubler([]).pod(source([3]))
    q.run(observer=composite)
    assert nodes_only.nodes == ["dict_source", "double"]
    assert composite.observers[1].seen == [({"id": 1}, {"y": 6}, None)]
    # Served from the store: no packet events at all.
    again = Ends()
    q.run(observer=again)
    assert again.seen == []


def test_status_progress_and_logging_observers():
    double = doubler([], fail_on=2)
    db = InMemoryArrowDatabase()
    with Pipeline("demo", pipeline_database=db) as p:
        double.pod(source([1, 2, 3]))
    status, out, logger = StatusObserver(), io.StringIO(), LoggingObserver()
    assert status.state == "idle"
    result = p.run(observer=CompositeObserver(status, ProgressObserver(out, every_s=0), logger))
    assert status.state == "succeeded" and status.run_id == result.run_id
    assert status.nodes["double"]["computed"] == 2 and status.nodes["double"]["failed"] == 1
    assert status.nodes["double"]["state"] == "failed" and status.nodes["dict_source"]["state"] == "done"
    assert status.failures == [{"node": "double", "tag": "{'id': 2}", "error": "ValueError('x=2 is not allowed')"}]
    text = out.getvalue()
    assert "double [function]: 3 rows — 2 computed, 0 cached, 1 failed" in text
    assert "computed 3/3 new packets" in text
    summary = text.splitlines()[-4:]  # header, rule, one line per node
    assert summary[0].split() == ["node", "kind", "rows", "computed", "cached", "failed", "seconds"]
    assert summary[-1].split()[:6] == ["double", "function", "3", "2", "0", "1"]
    assert result.summary().splitlines()[-1].split()[:6] == ["double", "function", "3", "2", "0", "1"]
    logs = sorted(LoggingObserver.read(p).to_pylist(), key=lambda r: r["tag"])
    assert [(r["node"], r["status"], r["run_id"]) for r in logs] == [("double", s, result.run_id) for s in ("ok", "failed", "ok")]
    assert logs[1]["stdout"] == "about to fail on 2\n" and "ValueError: x=2 is not allowed" in logs[1]["traceback"]

    # A run that raises: the status says so and the progress output names the error.
    status, out = StatusObserver(), io.StringIO()
    with pytest.raises(ValueError):
        p.run(observer=CompositeObserver(status, ProgressObserver(out)), error_policy="fail_fast")
    assert status.state == "failed" and "failed: ValueError: x=2 is not allowed" in out.getvalue()


@pytest.mark.parametrize("orchestrator", ORCHESTRATORS, ids=ORCH_IDS)
def test_a_node_holds_its_rows_when_its_end_event_fires(orchestrator):
    """An observer may read a node's output at its end event (a Dagster step snapshots it then)."""

    @function_pod(output_keys="z")
    def add(x: int, w: int) -> int:
        return x + w

    double = doubler([])
    with Pipeline("ends", pipeline_database=InMemoryArrowDatabase()) as p:
        doubled = double.pod(source([1, 2, 3]), label="doubled")  # streamed by the async orchestrator
        add.pod(source([1, 2, 3]), source([10, 20, 30], source_id="w").map_packets({"x": "w"}), label="added")  # joined first
    for label in ("doubled", "added"):  # reading them must not compute them again from the store
        p.nodes[label]._compute_table = lambda label=label: pytest.fail(f"{label}'s rows were not set at its end event")
    seen: dict[str, list] = {}

    class Reader(NoOpObserver):
        def on_node_end(self, node, stats):
            if node.kind == "function":
                seen[node.label] = sorted(node.as_table().column(-1).to_pylist())

    p.run(orchestrator=orchestrator, observer=Reader())
    assert seen == {"doubled": [2, 4, 6], "added": [11, 22, 33]}


def test_logging_observer_filters_and_failures_only():
    double = doubler([], fail_on=2)
    with Pipeline("logs", pipeline_database=InMemoryArrowDatabase()) as p:
        double.pod(source([1, 2, 3]), label="double")
    assert LoggingObserver.read(p) is None  # nothing logged yet
    quiet = LoggingObserver(capture_output=False, failures_only=True)
    assert not quiet.wants_captured_output and LoggingObserver().wants_captured_output
    first = p.run(observer=quiet)
    failed = LoggingObserver.read(p, node="double", run_id=first.run_id, status="failed").to_pylist()
    assert len(failed) == 1 and json.loads(failed[0]["tag"]) == {"id": 2}
    assert "ValueError: x=2 is not allowed" in failed[0]["traceback"] and failed[0]["stdout"] == ""  # not captured
    assert LoggingObserver.read(p, status="ok").num_rows == 0
    second = p.run(observer=LoggingObserver())  # the failed packet again, captured this time
    assert LoggingObserver.read(p, run_id=second.run_id).to_pylist()[0]["stdout"] == "about to fail on 2\n"
    assert LoggingObserver.read(p, node="double").num_rows == 2 and LoggingObserver.read(p, node="other").num_rows == 0


def test_summary_and_progress_show_counts_for_function_nodes_only():
    with Pipeline("kinds", pipeline_database=InMemoryArrowDatabase()) as p:
        doubler([]).pod(source([1, 2]), label="double").batch(label="batched")
    out = io.StringIO()
    result = p.run(observer=ProgressObserver(out, every_s=0))
    lines = {line.split()[0]: line.split() for line in result.summary().splitlines()[2:]}
    assert lines["double"][:6] == ["double", "function", "2", "2", "0", "0"]
    assert lines["batched"][:6] == ["batched", "operator", "1", "-", "-", "-"]
    assert lines["dict_source"][3:6] == ["-", "-", "-"]
    text = out.getvalue()
    assert "batched [operator]: 1 rows in " in text and "double [function]: 2 rows — 2 computed, 0 cached, 0 failed in " in text


def test_captured_output_stays_with_its_packet_on_a_thread_pool():
    @function_pod(output_keys="y")
    def chatty(x: int) -> int:
        import time

        for i in range(3):
            print(f"packet {x} line {i}")
            time.sleep(0.001)
        return x

    class Captures(NoOpObserver):
        wants_captured_output = True

        def __init__(self):
            self.out = {}

        def on_packet_end(self, node, tag, packet, output, cached, captured=None):
            self.out[packet["x"]] = captured["stdout"]

    with Pipeline("demo", pipeline_database=InMemoryArrowDatabase()) as p:
        chatty.pod(source(list(range(12))))
    observer = Captures()
    p.run(observer=observer, executor=LocalPythonFunctionExecutor(max_workers=4))
    assert observer.out == {x: "".join(f"packet {x} line {i}\n" for i in range(3)) for x in range(12)}
    assert sys.stdout is not None and not type(sys.stdout).__name__.startswith("_ThreadRouter")


# -- executors -----------------------------------------------------------------------------------------


def test_executor_override_gives_the_same_results_and_is_recorded():
    import time

    @function_pod(output_keys="y")
    def slow(x: int) -> int:
        time.sleep(0.002)
        return x * 3

    def build(db):
        with Pipeline("demo", pipeline_database=db) as p:
            slow.pod(source(list(range(20))))
        return p

    plain, pooled = build(InMemoryArrowDatabase()), build(InMemoryArrowDatabase())
    plain.run()
    executor = LocalPythonFunctionExecutor(max_workers=4)
    result = pooled.run(executor=executor)
    assert result.computed == 20
    assert pooled.slow.as_table(all_info=True).equals(plain.slow.as_table(all_info=True))
    assert slow.pod.packet_function.executor == LocalPythonFunctionExecutor()  # not changed by the run
    stored = ResultCache(pooled.result_database, result_record_path(slow.pod.packet_function)).get_all_records()
    infos = stored["__execution_executor_info"].to_pylist(maps_as_pydicts="strict")
    assert {info["max_workers"] for info in infos} == {"4"}


def test_result_database_can_be_separate_from_the_pipeline_database():
    calls: list[int] = []
    double = doubler(calls)
    results = InMemoryArrowDatabase()
    with Pipeline("a", pipeline_database=InMemoryArrowDatabase(), result_database=results) as p:
        double.pod(source([1, 2]))
    p.run()
    assert results.list_tables() == [result_record_path(double.pod.packet_function)]
    assert p.pipeline_database.list_tables() == [p.double.record_path]
    # Another pipeline (own pipeline database) sharing the result database computes nothing.
    with Pipeline("b", pipeline_database=InMemoryArrowDatabase(), result_database=results) as q:
        double.pod(source([2, 1], source_id="other"))
    assert q.run().computed == 0 and calls == [1, 2]


# -- bulk database access --------------------------------------------------------------------------------


class CountingDatabase:
    """Forwards to a real database and counts the reads."""

    READS = ("get_records_by_ids", "get_records_by_values", "get_records_where", "get_all_records", "get_column")

    def __init__(self, inner):
        self.inner = inner
        self.reads: list[tuple] = []

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name in self.READS:

            def counted(*args, **kwargs):
                self.reads.append((name, args[0]))
                return attr(*args, **kwargs)

            return counted
        return attr


@pytest.mark.parametrize("orchestrator", ORCHESTRATORS, ids=ORCH_IDS)
def test_a_warm_run_does_a_constant_number_of_database_reads(orchestrator):
    @function_pod(output_keys="z")
    def inc(y: int) -> int:
        return y + 1

    def warm_reads(n):
        db = CountingDatabase(InMemoryArrowDatabase())
        with Pipeline("demo", pipeline_database=db) as p:
            inc.pod(doubler([]).pod(source(list(range(n)))))
        p.run(orchestrator=orchestrator)
        db.reads.clear()
        result = p.run(orchestrator=orchestrator)
        assert result.computed == 0 and result.cached == 2 * n
        return list(db.reads)

    small, large = warm_reads(10), warm_reads(500)
    assert len(small) == len(large)
    assert len(large) <= 4  # per function node: one read of its records (their keys and entry ids) + one result lookup
    assert {name for name, _ in large} <= {"get_all_records", "get_column", "get_records_by_ids"}


def test_an_async_run_reads_the_store_once_per_node_however_many_batches_its_input_arrives_in():
    @function_pod(output_keys="z")
    def inc(y: int) -> int:
        return y + 1

    # Tiny channels and chunks: every function node assembles its input in many batches.
    orchestrator = AsyncPipelineOrchestrator(buffer_size=1, chunk_rows=8)

    def reads(n, warm):
        db = CountingDatabase(InMemoryArrowDatabase())
        with Pipeline("demo", pipeline_database=db) as p:
            inc.pod(doubler([]).pod(source([i % (n // 2) for i in range(n)])))  # packets repeat
        if warm:
            p.run(orchestrator=orchestrator)
        db.reads.clear()
        result = p.run(orchestrator=orchestrator)
        # Cold: each node calls its n/2 distinct packets once; their repeats are cached.
        assert (result.computed, result.cached) == ((0, 2 * n) if warm else (n, n))
        assert [r["z"] for r in rows(p.inc)] == [2 * (i % (n // 2)) + 1 for i in range(n)]
        return list(db.reads)

    for warm in (False, True):
        small, large = reads(100, warm), reads(1000, warm)
        assert len(small) == len(large) <= 6  # per function node: entry ids, a lookup, the result table
        assert {name for name, _ in large} <= {"get_column", "get_records_by_ids", "get_all_records"}


@pytest.mark.parametrize("orchestrator", [SyncPipelineOrchestrator(), AsyncPipelineOrchestrator(buffer_size=1, chunk_rows=4)], ids=ORCH_IDS)
def test_node_start_totals_and_cumulative_progress(orchestrator):
    class Counts(NoOpObserver):
        def __init__(self):
            self.starts, self.progress = {}, {}

        def on_node_start(self, node, total):
            self.starts[node.label] = total

        def on_node_progress(self, node, done, total):
            self.progress.setdefault(node.label, []).append((done, total))

    @function_pod(output_keys="z")
    def inc(y: int) -> int:
        return y + 1

    @function_pod(output_keys="s")
    def add(y: int, w: int) -> int:
        return y + w

    n = 40
    with Pipeline("demo", pipeline_database=InMemoryArrowDatabase()) as p:
        double = doubler([]).pod(source([i % 30 for i in range(n)]))
        inc.pod(double)  # fed by a function node
        other = DictSource({"id": list(range(1, n + 1)), "w": list(range(n))}, tag_columns="id", source_id="other")
        add.pod(Join()(double, other))  # fed by an operator node
    counts = Counts()
    result = p.run(orchestrator=orchestrator, observer=counts)
    streamed = isinstance(orchestrator, AsyncPipelineOrchestrator)
    # Input row counts: exact, except (async only) for a function node fed by a streaming
    # function node, whose count is not known when it starts.
    sources = {label: total for label, total in counts.starts.items() if p.nodes[label].kind == "source"}
    assert len(sources) == 2 and set(sources.values()) == {n}
    assert {label: counts.starts[label] for label in ("double", "join", "add", "inc")} == {
        "double": n, "join": 2 * n, "add": n, "inc": None if streamed else n,
    }
    assert all(result.stats[label].total == n for label in ("double", "inc", "add"))
    for label, distinct in (("double", 30), ("inc", 30), ("add", n)):
        events = counts.progress[label]
        assert events[-1] == (distinct, distinct)  # done / total of the distinct new packets
        assert all(done <= total for done, total in events)
        assert [d for d, _ in events] == sorted(d for d, _ in events)  # cumulative over batches


@pytest.mark.parametrize("orchestrator", ORCHESTRATORS, ids=ORCH_IDS)
def test_pipeline_records_are_committed_during_the_run_in_step_with_their_results(orchestrator, tmp_path, monkeypatch):
    store = tmp_path / "store"
    seen: dict = {}
    # Chunks grow slowly here (1, 2, 4, ...), so several result batches are stored before x == 150.
    monkeypatch.setattr(FunctionNode, "max_growth", 2)

    @function_pod(output_keys="y")
    def watched(x: int) -> int:
        if x == 150:  # mid-run: what would survive a kill now (committed rows only)?
            fresh = DeltaTableDatabase(store)
            records = fresh.get_all_records(seen["records"])
            results = fresh.get_all_records(seen["results"])
            seen["mid_run"] = (records, results)
        return 2 * x

    db = DeltaTableDatabase(store, batch_size=32, max_batch_age_s=None)
    with Pipeline("demo", pipeline_database=db) as p:
        watched.pod(source(list(range(200))))
    seen["records"] = p.watched.record_path
    seen["results"] = result_record_path(watched.pod.packet_function)
    p.run(orchestrator=orchestrator)
    records, results = seen["mid_run"]
    # Committed mid-run, right after their results: one record per committed result, each
    # linking to it (one row per packet here).
    assert records is not None and 32 <= records.num_rows < 150
    assert sorted(records["__packet_hash"].to_pylist()) == sorted(results["__record_id"].to_pylist())  # a result's id is its packet hash
    assert DeltaTableDatabase(store).get_all_records(seen["records"]).num_rows == 200


# -- fresh processes --------------------------------------------------------------------------------------

_MODULE = '''
from orcapod_core import function_pod

CALLS = []


@function_pod(output_keys="y")
def transform(x: int) -> int:
    """{doc}"""
    CALLS.append(x)
    return {body}
'''

_RUNNER = """
import json, sys
from orcapod_core.databases import DeltaTableDatabase
from orcapod_core.pipeline import Pipeline
from orcapod_core.sources import DictSource
from fnmod import transform, CALLS

mode = sys.argv[2]
src = DictSource({"id": [1, 2, 3, 4], "x": [1, 2, 3, 3]}, tag_columns="id", source_id="src")
with Pipeline("demo", pipeline_database=DeltaTableDatabase(sys.argv[1])) as p:
    transform.pod(src)
out = {}
if mode == "run":
    result = p.run()
    out["computed"], out["cached"] = result.computed, result.cached
out["rows"] = p.transform.as_table(all_info=True).to_pylist()
out["iter"] = [[t.as_dict(), pk.as_dict()] for t, pk in p.transform.iter_packets()]
out["calls"] = CALLS
out["identity"] = transform.pod.identity_hash().to_string()
p.flush()
print(json.dumps(out), flush=True)
"""


def _write_module(tmp_path, body="x * 10", doc="Multiply."):
    (tmp_path / "fnmod.py").write_text(_MODULE.format(body=body, doc=doc))


def _run(tmp_path, mode="run"):
    (tmp_path / "runner.py").write_text(textwrap.dedent(_RUNNER))
    done = subprocess.run(
        [sys.executable, "runner.py", str(tmp_path / "store"), mode],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_fresh_processes_serve_stored_rows_and_function_edits_invalidate_only_real_changes(tmp_path):
    _write_module(tmp_path)
    first = _run(tmp_path)
    assert first["computed"] == 3 and first["cached"] == 1 and sorted(first["calls"]) == [1, 2, 3]
    assert [r["y"] for r in first["rows"]] == [10, 20, 30, 30]

    # A fresh process: nothing computed, identical rows.
    second = _run(tmp_path)
    assert second["computed"] == 0 and second["cached"] == 4 and second["calls"] == []
    assert second["rows"] == first["rows"]

    # Reading the compiled node in a fresh process, without running: stored rows, no calls.
    read = _run(tmp_path, mode="read")
    assert read["calls"] == [] and read["rows"] == first["rows"]
    assert read["iter"] == [[{"id": r["id"]}, {"y": r["y"]}] for r in first["rows"]]

    # Docstring, comment and formatting edits: same identity, nothing recomputed.
    _write_module(tmp_path, body="(x *   10)  # same thing", doc="Multiply by ten, now documented.")
    cosmetic = _run(tmp_path)
    assert cosmetic["identity"] == first["identity"]
    assert cosmetic["computed"] == 0 and cosmetic["calls"] == []

    # A body edit: a new identity, every packet recomputed, the new values served.
    _write_module(tmp_path, body="x * 100")
    edited = _run(tmp_path)
    assert edited["identity"] != first["identity"]
    assert edited["computed"] == 3 and sorted(edited["calls"]) == [1, 2, 3]
    assert [r["y"] for r in edited["rows"]] == [100, 200, 300, 300]
    # ... and reading without running serves the edited function's rows, never the stale ones.
    read = _run(tmp_path, mode="read")
    assert [r["y"] for r in read["rows"]] == [100, 200, 300, 300] and read["calls"] == []


# -- honest counts (E4) -------------------------------------------------------------------------


class _Counting(NoOpObserver):
    def __init__(self):
        self.ended, self.packets, self.crashes = {}, 0, 0

    def on_node_end(self, node, stats):
        self.ended[node.label] = (stats.total, stats.computed, stats.cached, stats.failed)

    def on_packet_end(self, node, tag, packet, output, cached, captured=None):
        self.packets += 1

    def on_packet_crash(self, node, tag, packet, error, captured=None):
        self.crashes += 1


@pytest.mark.parametrize(
    "orchestrator",
    [SyncPipelineOrchestrator(), AsyncPipelineOrchestrator(), AsyncPipelineOrchestrator(buffer_size=1, chunk_rows=3)],
    ids=["sync", "async", "async-small-batches"],
)
def test_counts_are_function_calls_not_rows(orchestrator, tmp_path):
    """100 rows over 7 distinct packets, one of which (x=6, in 14 rows) raises: 6 computed (one
    call each), 80 cached (the other rows of those packets), 1 failed (one call) — in RunResult,
    node stats, observers, progress lines and the stored logs, even when the rows of one packet
    arrive in different batches."""
    calls: list[int] = []
    double = doubler(calls, fail_on=6)
    xs = [i % 7 for i in range(100)]  # x == 6 appears 14 times
    with Pipeline("counts", pipeline_database=DeltaTableDatabase(tmp_path / "store")) as p:
        double.pod(source(xs), label="double")
    counting, progress = _Counting(), io.StringIO()
    logs = LoggingObserver()
    result = p.run(orchestrator=orchestrator, observer=CompositeObserver(counting, ProgressObserver(progress), logs))
    assert sorted(calls) == [0, 1, 2, 3, 4, 5, 6]  # one call per distinct packet, the failing one once
    assert (result.computed, result.cached, result.failed) == (6, 80, 1)
    assert counting.ended["double"] == (100, 6, 80, 1)
    assert counting.packets == 6 and counting.crashes == 1
    assert "100 rows — 6 computed, 80 cached, 1 failed" in progress.getvalue()
    assert LoggingObserver.read(p).num_rows == 7  # one log record per call
    again = p.run(orchestrator=orchestrator)
    assert (again.computed, again.cached, again.failed) == (0, 86, 1) and sorted(calls) == [0, 1, 2, 3, 4, 5, 6, 6]


def test_a_wrong_output_value_is_a_per_packet_failure_and_nothing_is_stored(tmp_path):
    """E2: `-> int` returning 2.5 (Arrow alone would store 2), `list[int]` returning [1.5] and a map
    with a repeated key fail their packet naming function, key, type and value."""
    from orcapod_core.errors import OutputTypeError

    @function_pod(output_keys="half")
    def half(x: int) -> int:
        return x / 2  # 2.0 is stored as 2; 2.5 is not an int

    @function_pod(output_keys="halves")
    def halves(x: int) -> list[int]:
        return [x / 2]

    @function_pod(output_keys="counts")
    def counts(x: int) -> dict[str, int]:
        return [("k", x), ("k", x)] if x == 3 else {"k": x}

    for fn, key, declared in ((half, "half", "int"), (halves, "halves", "list[int]"), (counts, "counts", "dict[str, int]")):
        crashes = []

        class Crashes(NoOpObserver):
            def on_packet_crash(self, node, tag, packet, error, captured=None):
                crashes.append(error)

        with Pipeline("strict", pipeline_database=DeltaTableDatabase(tmp_path / fn.__name__)) as p:
            fn.pod(source([2, 3, 4]), label="out")
        result = p.run(observer=Crashes())
        assert (result.computed, result.failed) == (2, 1), fn.__name__
        assert [r["id"] for r in rows(p.out)] == [1, 3]  # the row of x=3 has no result
        (error,) = crashes
        assert isinstance(error, OutputTypeError)
        assert (error.function_name, error.output_key, error.expected) == (fn.__name__, key, declared)
        assert f"function {fn.__name__!r}" in str(error) and f"output key {key!r}" in str(error) and declared in str(error)
        stored = ResultCache(p.result_database, result_record_path(fn.pod.packet_function)).get_all_records()
        assert stored.num_rows == 2  # nothing stored for the failed packet
        with pytest.raises(OutputTypeError):
            fn.pod.packet_function.call({"x": 3})
        with pytest.raises(OutputTypeError):
            p.run(error_policy="fail_fast")


def test_a_store_written_with_the_old_long_system_tag_names_keeps_working(tmp_path, monkeypatch):
    """Before system tags kept their origin names, each join appended
    ``::<input pipeline hash[:12]>:<position>``; such a store holds those names in non-nullable
    columns. A run now stores below the join at fresh paths (the join's identity changed with
    its naming), reuses every stored result, and the old tables are left as they were."""
    from orcapod_core.operators import join as join_module

    def old_names(ordered):
        return [{c: f"{c}::{s.pipeline_hash().to_hex(12)}:{i}" for c in s.layout.system_tag_columns} for i, s in enumerate(ordered)]

    calls: list[int] = []

    @function_pod(output_keys="z")
    def add(x: int, w: int) -> int:
        calls.append(x)
        return x + w

    def build():
        a = source([1, 2, 3], source_id="a")
        b = DictSource({"id": [2, 3, 4], "w": [20, 30, 40]}, tag_columns="id", source_id="b")
        db = DeltaTableDatabase(tmp_path / "store")
        with Pipeline("demo", pipeline_database=db, result_database=db) as p:
            add.pod(a.join(b), label="add")
        return p

    with monkeypatch.context() as m:
        m.setattr(join_module, "system_tag_names", old_names)
        m.setattr(join_module._SystemTagNaming, "identity_structure", lambda self: join_module.Operator.identity_structure(self))
        old = build()
        assert old.run().computed == 2
        assert all(c.count("::") == 2 for c in old.add.layout.system_tag_columns)
        old_records = old.add.get_pipeline_records()

    new = build()
    assert new.add.record_path != old.add.record_path
    result = new.run()
    assert (result.computed, result.cached) == (0, 2) and len(calls) == 2
    assert all(c.count("::") == 1 for c in new.add.layout.system_tag_columns)
    assert new.add.get_pipeline_records().num_rows == 2
    assert sorted(r["z"] for r in new.add.as_table().to_pylist()) == [22, 33]
    # the old records are untouched
    reread = DeltaTableDatabase(tmp_path / "store").get_all_records(old.add.record_path)
    assert reread.num_rows == old_records.num_rows == 2


@pytest.mark.parametrize("orchestrator", ORCHESTRATORS, ids=ORCH_IDS)
def test_a_function_node_ends_with_the_entry_ids_and_missing_packets_of_its_run(orchestrator, monkeypatch):
    # An observer reading them at on_node_end (a snapshot's data version, on a Dagster step's
    # thread) gets the run's own: no output row is hashed again, nothing is derived again.
    import orcapod_core.pipeline.function_node as function_node

    hashed: list[str] = []
    for name in ("entry_ids_of", "input_packet_hashes"):
        real = getattr(function_node, name)
        monkeypatch.setattr(function_node, name, lambda *a, _real=real, _name=name, **k: hashed.append(_name) or _real(*a, **k))

    class AtTheEnd(NoOpObserver):
        def __init__(self):
            self.seen = {}

        def on_node_end(self, node, stats):
            if node.kind == "function":
                before = len(hashed)
                self.seen[node.label] = (node.output_entry_ids().to_pylist(), node.missing_packets(), hashed[before:])

    with Pipeline("ends", pipeline_database=InMemoryArrowDatabase()) as p:
        doubler([], fail_on=2).pod(source([1, 2, 3, 2]), label="doubled")
    observer = AtTheEnd()
    result = p.run(orchestrator=orchestrator, observer=observer)
    assert result.failed == 1 and result.stats["doubled"].total == 4
    ids, missing, hashed_at_end = observer.seen["doubled"]
    assert hashed_at_end == []
    assert len(ids) == 2 and ids == p.doubled.output_entry_ids().to_pylist()
    assert len(missing) == 1 and missing == p.doubled.missing_packets()
