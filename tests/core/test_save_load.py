"""Saving and loading pipelines: round trips of every node kind, load statuses, the
PacketFunctionProxy (identity, invocation error, bind/unbind and every mismatch kind),
function configs, and bad saved files. The cross-process scenario is in
test_save_load_processes.py."""

from __future__ import annotations

import importlib
import itertools
import json
import sys
import textwrap
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from orcapod_core.databases import DeltaTableDatabase, InMemoryArrowDatabase
from orcapod_core.errors import (
    FunctionBindError,
    InputValidationError,
    PacketFunctionUnavailableError,
    PipelineLoadError,
    SourceUnavailableError,
)
from orcapod_core.function_pods import FunctionPod, function_pod_from_config
from orcapod_core.module_policy import allowed_module_prefixes, module_allowed
from orcapod_core.packet_function import PythonPacketFunction
from orcapod_core.operators import Batch, Join, MapPackets, PolarsFilter
from orcapod_core.packet_function_proxy import PacketFunctionProxy, resolve_packet_function_from_config
from orcapod_core.pipeline import AsyncPipelineOrchestrator, CacheMode, LoadStatus, Pipeline, SyncPipelineOrchestrator
from orcapod_core.pipeline.serialization import StoredSource
from orcapod_core.sources import CSVSource, DictSource

_counter = itertools.count()

FUNCS = '''
from orcapod_core import function_pod

CALLS = []

@function_pod(output_keys="y", function_name="double_it", version="v3")
def double(x: int) -> int:
    """Twice x."""
    CALLS.append(x)
    return x * 2

@function_pod(output_keys=["total", "n"], identity="declared")
def summarize(y: list[int]) -> tuple[int, int]:
    return sum(y), len(y)

@function_pod(output_keys="label")
def describe(y: int, z: str) -> str:
    return f"{z}:{y}"

NOT_A_FUNCTION = 42
'''


@pytest.fixture
def funcs(tmp_path, monkeypatch):
    """A fresh, importable module of packet functions (a unique name per test)."""
    name = f"saveload_funcs_{next(_counter)}"
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / f"{name}.py").write_text(FUNCS)
    monkeypatch.syspath_prepend(str(folder))
    module = importlib.import_module(name)
    module.path = folder / f"{name}.py"
    yield module
    sys.modules.pop(name, None)


def forget_module(module) -> None:
    """Make ``module`` unimportable: delete its file and drop it from ``sys.modules``."""
    module.path.unlink()
    sys.modules.pop(module.__name__, None)
    importlib.invalidate_caches()


def write_csv(path: Path, rows: list[tuple[int, int]]) -> Path:
    path.write_text("id,x\n" + "".join(f"{i},{x}\n" for i, x in rows))
    return path


def build(tmp_path, funcs, db=None):
    """CSV → double → (join with an in-memory source) → describe; plus a batch branch."""
    csv = write_csv(tmp_path / "data.csv", [(1, 10), (2, 20), (3, 30)])
    names = DictSource({"id": [1, 2, 3], "z": ["a", "b", "c"]}, tag_columns="id", source_id="names", label="names")
    db = db or DeltaTableDatabase(tmp_path / "store")
    with Pipeline("demo", db) as p:
        numbers = CSVSource(csv, tag_columns="id", schema={"x": int})
        doubled = funcs.double.pod(numbers, label="doubled")
        joined = Join()(doubled, names, label="joined")
        funcs.describe.pod(joined, label="described")
        batched = Batch(batch_size=2)(doubled.map_packets({"y": "y"}), label="batched")
        funcs.summarize.pod(batched, label="summary")
    return p


def tables_equal(a: pa.Table, b: pa.Table) -> bool:
    return a.sort_by([(c, "ascending") for c in a.column_names if c == "id"] or []).equals(
        b.sort_by([(c, "ascending") for c in b.column_names if c == "id"] or [])
    )


# --------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------


def test_round_trip_rebuilds_every_node_kind_with_identical_hashes_and_rows(tmp_path, funcs):
    p = build(tmp_path, funcs)
    first = p.run()
    assert first.failed == 0 and first.computed > 0
    saved = p.save(tmp_path / "pipeline.json")

    q = Pipeline.load(saved)
    assert list(q.nodes) == list(p.nodes)
    assert {n.label: n.kind for n in q} == {n.label: n.kind for n in p}
    for label, node in q.nodes.items():
        old = p.nodes[label]
        assert node.content_hash() == old.content_hash(), label
        assert node.pipeline_hash() == old.pipeline_hash(), label
        assert node.record_path == old.record_path, label
        assert node.layout == old.layout, label
        assert [u.label for u in node.upstream_nodes] == [u.label for u in old.upstream_nodes]
    statuses = {n.label: n.load_status for n in q}
    assert statuses["data"] is LoadStatus.FULL and statuses["doubled"] is LoadStatus.FULL
    assert statuses["names"] is LoadStatus.UNAVAILABLE
    assert statuses["joined"] is LoadStatus.CACHE_ONLY and statuses["described"] is LoadStatus.CACHE_ONLY
    assert statuses["summary"] is LoadStatus.FULL

    # Every node serves exactly what the original pipeline produced, without computing.
    calls = len(funcs.CALLS)
    for label in p.nodes:
        assert q.nodes[label].as_table(all_info=True).equals(p.nodes[label].as_table(all_info=True)), label
    again = q.run()
    assert again.computed == 0 and again.failed == 0 and again.cached == first.computed + first.cached
    assert len(funcs.CALLS) == calls


def test_saved_function_config_keeps_name_version_keys_identity_and_schemas(tmp_path, funcs):
    p = build(tmp_path, funcs)
    p.save(tmp_path / "p.json")
    description = json.loads((tmp_path / "p.json").read_text())
    nodes = {n["label"]: n for n in description["nodes"]}
    fn = nodes["doubled"]["function"]
    assert (fn["module"], fn["callable"], fn["function_name"], fn["version"]) == (funcs.__name__, "double", "double_it", "v3")
    assert fn["uri"] == p.doubled.packet_function.uri and fn["identity"] == "source"
    assert fn["input_schema"] == {"x": "int"} and fn["output_schema"] == {"y": "int"}
    summary = nodes["summary"]["function"]
    assert summary["identity"] == "declared" and summary["output_keys"] == ["total", "n"]
    assert summary["input_schema"] == {"y": "list[int]"}
    assert nodes["summary"]["output_schema"]["columns"]["total"] == "int64"
    assert nodes["batched"]["operator"] == {"class": "orcapod_core.operators.batch:Batch", "config": p.batched.operator.config(), "cache_mode": "off"}
    assert nodes["data"]["source"]["config"]["schema"] == {"x": "int"}
    assert nodes["names"]["source"]["stored_rows"] == 3
    assert ["doubled", "joined"] in description["edges"] and ["names", "joined"] in description["edges"]

    q = Pipeline.load(tmp_path / "p.json")
    for label in ("doubled", "summary", "described"):
        a, b = q.nodes[label].packet_function, p.nodes[label].packet_function
        assert isinstance(a, PythonPacketFunction)
        assert (a.function_name, a.version, a.output_keys, a.identity_mode, a.uri) == (b.function_name, b.version, b.output_keys, b.identity_mode, b.uri)
        assert a.input_schema == b.input_schema and a.output_schema == b.output_schema


@pytest.mark.parametrize("orchestrator", [SyncPipelineOrchestrator(), AsyncPipelineOrchestrator()], ids=["sync", "async"])
def test_loaded_pipeline_computes_only_new_rows_of_a_rebuilt_source(tmp_path, funcs, orchestrator):
    p = build(tmp_path, funcs)
    p.run(orchestrator=orchestrator)
    p.save(tmp_path / "p.json")
    write_csv(tmp_path / "data.csv", [(1, 10), (2, 20), (3, 30), (4, 40)])
    q = Pipeline.load(tmp_path / "p.json")
    funcs.CALLS.clear()
    result = q.run(orchestrator=orchestrator)
    assert funcs.CALLS == [40]
    assert result.stats["doubled"].computed == 1 and result.stats["doubled"].cached == 3
    assert sorted(q.doubled.as_table().column("y").to_pylist()) == [20, 40, 60, 80]
    # rows below the unavailable in-memory source are those it had when saved
    assert sorted(q.described.as_table().column("label").to_pylist()) == ["a:20", "b:40", "c:60"]


def test_operators_with_polars_and_renames_round_trip(tmp_path, funcs):
    src = DictSource({"id": [1, 2, 3], "x": [5, 15, 25]}, tag_columns="id", source_id="s")
    with Pipeline("ops", InMemoryArrowDatabase(), operator_cache_mode=CacheMode.LOG) as p:
        kept = PolarsFilter(pl.col("x") > 10)(src, label="kept")
        renamed = MapPackets({"x": "x"})(kept, label="renamed")
        funcs.double.pod(renamed, label="doubled")
    p.run()
    p.save(tmp_path / "ops.json")
    q = Pipeline.load(tmp_path / "ops.json", pipeline_database=p.pipeline_database)
    assert q.operator_cache_mode is CacheMode.LOG and q.kept.cache_mode is CacheMode.LOG
    assert q.kept.content_hash() == p.kept.content_hash()
    assert q.doubled.as_table().column("y").to_pylist() == [30, 50]


def test_derived_source_is_rebuilt_from_its_upstream_pipeline(tmp_path, funcs):
    db = DeltaTableDatabase(tmp_path / "store")
    upstream = build(tmp_path, funcs, db)
    upstream.run()
    with Pipeline("report", db) as report:
        funcs.summarize.pod(Batch()(upstream.doubled.as_source(), label="all"), label="total")
    report.run()
    report.save(tmp_path / "report.json")

    loaded = Pipeline.load(tmp_path / "report.json")
    source = next(iter(loaded)).source
    assert type(source).__name__ == "DerivedSource" and source.node.label == "doubled"
    assert source.node.pipeline.name == ("demo",)
    assert all(n.load_status is LoadStatus.FULL for n in loaded)
    assert loaded.total.content_hash() == report.total.content_hash()
    rows = loaded.total.as_table().to_pylist()
    assert rows == report.total.as_table().to_pylist()
    assert [(r["total"], r["n"]) for r in rows] == [(120, 3)]
    # the derived rows keep their provenance
    assert source.as_table(all_info=True).equals(upstream.doubled.as_source().as_table(all_info=True))


def test_unavailable_source_without_stored_rows_names_the_source(tmp_path, funcs):
    p = build(tmp_path, funcs, InMemoryArrowDatabase())
    p.save(tmp_path / "p.json")
    q = Pipeline.load(tmp_path / "p.json", pipeline_database=InMemoryArrowDatabase())  # rows not in this store
    assert isinstance(q.names.source, StoredSource)
    with pytest.raises(SourceUnavailableError, match="'names'.*DictSource"):
        q.joined.as_table()


# --------------------------------------------------------------------------------------
# Proxies in loaded pipelines
# --------------------------------------------------------------------------------------


def test_missing_function_module_loads_a_read_only_proxy_that_serves_cached_results(tmp_path, funcs):
    p = build(tmp_path, funcs)
    p.run()
    expected = {label: p.nodes[label].as_table(all_info=True) for label in p.nodes}
    p.save(tmp_path / "p.json")
    forget_module(funcs)

    # the downstream function lives in another module that still exists
    q = Pipeline.load(tmp_path / "p.json")
    proxy = q.doubled.packet_function
    assert isinstance(proxy, PacketFunctionProxy) and not proxy.is_bound
    assert q.doubled.load_status is LoadStatus.READ_ONLY
    assert q.summary.load_status is LoadStatus.READ_ONLY  # its module is gone too
    assert proxy.uri == p.doubled.packet_function.uri
    assert q.doubled.content_hash() == p.doubled.content_hash()
    assert q.doubled.as_table(all_info=True).equals(expected["doubled"])
    assert q.summary.as_table(all_info=True).equals(expected["summary"])
    result = q.run()
    assert result.computed == 0 and result.failed == 0


def test_new_packets_on_a_proxy_fail_clearly_and_compute_after_bind(tmp_path, funcs):
    p = build(tmp_path, funcs)
    p.run()
    p.save(tmp_path / "p.json")
    source_text = funcs.path.read_text()
    forget_module(funcs)
    write_csv(tmp_path / "data.csv", [(1, 10), (2, 20), (3, 30), (4, 40)])
    q = Pipeline.load(tmp_path / "p.json")

    with pytest.raises(PacketFunctionUnavailableError, match=rf"'double_it'.*{funcs.__name__}:double"):
        q.run(error_policy="fail_fast")
    result = q.run(error_policy="continue")
    assert result.stats["doubled"].failed == 1 and result.stats["doubled"].cached == 3
    assert "PacketFunctionUnavailableError" in result.stats["doubled"].errors[0]
    assert sorted(q.doubled.as_table().column("y").to_pylist()) == [20, 40, 60]  # the old rows are still served

    # The same code under another module name has the same identity: bind it and compute.
    restored = tmp_path / "code" / "restored_funcs_mod.py"
    restored.write_text(source_text)
    importlib.invalidate_caches()
    module = importlib.import_module("restored_funcs_mod")
    try:
        q.doubled.packet_function.bind(module.double.pod.packet_function)
        assert q.doubled.load_status is LoadStatus.FULL
        result = q.run()
        assert module.CALLS == [40] and result.stats["doubled"].computed == 1
        assert sorted(q.doubled.as_table().column("y").to_pylist()) == [20, 40, 60, 80]
        q.doubled.packet_function.unbind()
        assert q.doubled.load_status is LoadStatus.READ_ONLY
    finally:
        sys.modules.pop("restored_funcs_mod", None)


def test_a_loaded_pipeline_sees_rows_appended_after_load(tmp_path, funcs):
    """E5: the CSV source of a loaded pipeline is read at each run, not at load: a row appended
    after loading reaches the function — a proxy reports it instead of silently computing nothing."""
    p = build(tmp_path, funcs)
    p.run()
    p.save(tmp_path / "p.json")
    forget_module(funcs)
    q = Pipeline.load(tmp_path / "p.json")
    assert q.run().computed == 0 and q.run().failed == 0  # everything known is served
    with (tmp_path / "data.csv").open("a") as fh:
        fh.write("4,40\n")
    result = q.run()  # the same loaded object: this run reads the file as it is now
    assert result.stats["data"].total == 4 and result.stats["doubled"].failed == 1
    with pytest.raises(PacketFunctionUnavailableError, match="'double_it'"):
        q.run(error_policy="fail_fast")


# --------------------------------------------------------------------------------------
# The proxy on its own
# --------------------------------------------------------------------------------------


def saved_config(funcs, name="double"):
    return getattr(funcs, name).pod.packet_function.to_config()


def test_proxy_keeps_the_saved_identity_and_schemas(funcs):
    config = saved_config(funcs, "summarize")
    proxy = PacketFunctionProxy(config)
    real = funcs.summarize.pod.packet_function
    assert proxy.uri == real.uri and proxy.identity_hash() == real.identity_hash()
    assert (proxy.function_name, proxy.version, proxy.output_keys) == (real.function_name, real.version, real.output_keys)
    assert proxy.input_schema == real.input_schema and proxy.output_schema == real.output_schema
    assert proxy.output_arrow_schema.equals(real.output_arrow_schema)
    assert FunctionPod(proxy).identity_hash() == FunctionPod(real).identity_hash()
    assert proxy.function is None and proxy.to_config() == config


def test_proxy_turns_unknown_type_strings_into_object():
    config = {
        "type": "python", "module": "gone", "callable": "f", "function_name": "f", "version": "v0",
        "identity_hash": "orcapod_v1:" + "ab" * 32, "uri": "f/v0/abababababababab",
        "input_schema": {"a": "mylib.Thing", "b": "list[int]"}, "output_schema": {"y": "int"}, "output_keys": ["y"],
    }
    proxy = PacketFunctionProxy(config)
    assert proxy.input_schema == {"a": object, "b": list[int]}
    assert proxy.output_arrow_schema == pa.schema([pa.field("y", pa.int64(), False)])


def test_proxy_invocation_raises_naming_function_and_module(funcs):
    proxy = PacketFunctionProxy(saved_config(funcs), reason="module gone")
    with pytest.raises(PacketFunctionUnavailableError, match=rf"'double_it'.*{funcs.__name__}:double.*module gone"):
        proxy.call({"x": 1})
    batch = proxy.call_batch(pa.table({"x": [1, 2, 3]}))
    assert batch.table.num_rows == 0 and sorted(batch.errors) == [0, 1, 2]
    assert all(isinstance(e, PacketFunctionUnavailableError) for e in batch.errors.values())
    assert sorted(proxy.call_batch(pa.table({"x": [1, 2]}), fail_fast=True).errors) == [0]


def test_bind_delegates_and_unbind_reverts(funcs):
    proxy = PacketFunctionProxy(saved_config(funcs))
    assert proxy.bind(funcs.double.pod) is proxy  # a pod is accepted for its packet function
    assert proxy.is_bound and proxy.call({"x": 4}) == {"y": 8}
    assert proxy.call_batch(pa.table({"x": [1, 2]})).table.column("y").to_pylist() == [2, 4]
    proxy.unbind()
    with pytest.raises(PacketFunctionUnavailableError):
        proxy.call({"x": 4})


def _variant(tmp_path, monkeypatch, body: str):
    name = f"variant_{next(_counter)}"
    (tmp_path / f"{name}.py").write_text("from orcapod_core import function_pod\n" + textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    return importlib.import_module(name)


@pytest.mark.parametrize(
    "body, expected",
    [
        ('@function_pod(output_keys="y", function_name="other", version="v3")\ndef double(x: int) -> int:\n    return x * 2\n', ["function name", "identity"]),
        ('@function_pod(output_keys="y", function_name="double_it", version="v4")\ndef double(x: int) -> int:\n    return x * 2\n', ["version", "identity"]),
        ('@function_pod(output_keys="y", function_name="double_it", version="v3")\ndef double(x: float) -> int:\n    return int(x * 2)\n', ["input schema", "identity"]),
        ('@function_pod(output_keys="y", function_name="double_it", version="v3")\ndef double(x: int) -> float:\n    return x * 2.0\n', ["output schema", "identity"]),
        ('@function_pod(output_keys="z", function_name="double_it", version="v3")\ndef double(x: int) -> int:\n    return x * 2\n', ["output schema", "output keys", "identity"]),
        ('@function_pod(output_keys="y", function_name="double_it", version="v3")\ndef double(x: int) -> int:\n    return x * 3\n', ["identity"]),
        ('@function_pod(output_keys="y", function_name="double_it", version="v3")\ndef double(x: int, k: int = 2) -> int:\n    return x * k\n', ["input schema", "optional parameters", "identity"]),
        ('@function_pod(output_keys="z", function_name="other", version="v9")\ndef double(x: str) -> str:\n    return x\n',
         ["function name", "version", "input schema", "output schema", "output keys", "identity"]),
    ],
    ids=["name", "version", "input", "output", "keys", "body", "optional", "everything"],
)
def test_bind_lists_every_mismatch_in_one_error(tmp_path, monkeypatch, funcs, body, expected):
    proxy = PacketFunctionProxy(saved_config(funcs))
    other = _variant(tmp_path, monkeypatch, body).double.pod.packet_function
    with pytest.raises(FunctionBindError) as info:
        proxy.bind(other)
    message = str(info.value)
    for what in expected:
        assert f"{what}: saved" in message, (what, message)
    listed = {part.split(": saved")[0].strip() for part in message.split(";") if ": saved" in part}
    assert {w.split(": ")[-1] for w in listed} >= set(expected)
    assert len(listed) == len(expected), message
    assert not proxy.is_bound


def test_bind_rejects_what_is_not_a_packet_function(funcs):
    proxy = PacketFunctionProxy(saved_config(funcs))
    with pytest.raises(FunctionBindError, match="expected a PythonPacketFunction"):
        proxy.bind(lambda x: x)


# --------------------------------------------------------------------------------------
# resolve_packet_function_from_config / FunctionPod.from_config
# --------------------------------------------------------------------------------------


def test_resolve_imports_the_function_with_its_saved_options(funcs):
    config = saved_config(funcs)
    pf = resolve_packet_function_from_config(config)
    assert isinstance(pf, PythonPacketFunction) and pf.function is funcs.double and pf.uri == config["uri"]
    pod = FunctionPod.from_config(saved_config(funcs, "summarize"))
    assert pod.uri == funcs.summarize.pod.uri and pod.packet_function.identity_mode == "declared"


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"module": "no_such_module_xyz"}, "No module named 'no_such_module_xyz'"),
        ({"callable": "vanished"}, "has no attribute 'vanished'"),
        ({"callable": "outer.<locals>.inner"}, "defined inside a function"),
        ({"type": "rust"}, "unknown function type 'rust'"),
    ],
    ids=["import", "attribute", "locals", "type"],
)
def test_unloadable_functions_raise_or_fall_back_to_a_proxy(funcs, change, reason):
    config = {**saved_config(funcs), **change}
    with pytest.raises(PacketFunctionUnavailableError, match=reason):
        resolve_packet_function_from_config(config)
    proxy = resolve_packet_function_from_config(config, fallback_to_proxy=True)
    assert isinstance(proxy, PacketFunctionProxy) and reason in proxy.reason
    assert isinstance(FunctionPod.from_config(config, fallback_to_proxy=True).packet_function, PacketFunctionProxy)


def test_config_naming_a_non_function_is_an_error_even_with_fallback(funcs):
    config = {**saved_config(funcs), "callable": "NOT_A_FUNCTION"}
    for fallback in (False, True):
        with pytest.raises(PipelineLoadError, match="'callable'.*NOT_A_FUNCTION.*int, not a function"):
            resolve_packet_function_from_config(config, fallback_to_proxy=fallback)


def test_incomplete_function_config_names_the_missing_fields(funcs):
    config = saved_config(funcs)
    del config["uri"], config["output_keys"]
    with pytest.raises(PipelineLoadError, match=r"\['uri', 'output_keys'\]"):
        resolve_packet_function_from_config(config)


# --------------------------------------------------------------------------------------
# Bad saved files: specific errors, nothing in the store touched
# --------------------------------------------------------------------------------------


def _with_function(text: str, label: str, **change) -> str:
    description = json.loads(text)
    next(n for n in description["nodes"] if n["label"] == label)["function"].update(change)
    return json.dumps(description)


def _with_operator(text: str, label: str, class_path: str) -> str:
    description = json.loads(text)
    next(n for n in description["nodes"] if n["label"] == label)["operator"]["class"] = class_path
    return json.dumps(description)


def _with_source_path(text: str, path: str, relative: bool = True) -> str:
    description = json.loads(text)
    config = next(n for n in description["nodes"] if n["label"] == "data")["source"]["config"]
    config["path"] = path
    config["relative_to_file"] = relative
    return json.dumps(description)


def _store_state(db: DeltaTableDatabase) -> dict:
    return {path: db.table_version(path) for path in db.list_tables()}


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda text: text[: len(text) // 2], r"invalid JSON at line"),
        (lambda text: json.dumps({**json.loads(text), "format_version": 2}), r"'format_version' is 2.*newer orcapod"),
        (lambda text: json.dumps({**json.loads(text), "format": "other"}), r"not an orcapod pipeline description"),
        (lambda text: json.dumps({**json.loads(text), "pipeline_database": {"type": "delta", "base_uri": "/nonexistent/store"}}),
         r"'pipeline_database'.*'/nonexistent/store' does not exist"),
        (lambda text: json.dumps({**json.loads(text), "pipeline_database": {"type": "memory"}}), r"in-memory database.*pipeline_database="),
        (lambda text: json.dumps({**json.loads(text), "nodes": [{**n, "upstream": ["ghost"]} if n["label"] == "doubled" else n for n in json.loads(text)["nodes"]]}),
         r"node 'doubled': upstream node\(s\) \['ghost'\]"),
        (lambda text: json.dumps({**json.loads(text), "nodes": [{k: v for k, v in n.items() if k != "function"} if n["label"] == "doubled" else n for n in json.loads(text)["nodes"]]}),
         r"node 'doubled' lacks the field 'function'"),
        (lambda text: json.dumps({**json.loads(text), "nodes": [{**n, "function": {**n["function"], "callable": "NOT_A_FUNCTION"}} if n["label"] == "doubled" else n for n in json.loads(text)["nodes"]]}),
         r"NOT_A_FUNCTION.*not a function"),
        (lambda text: _with_function(text, "doubled", module="json", callable="dumps"),
         r"node 'doubled': .*json:dumps, a plain function, not an orcapod function pod"),
        (lambda text: _with_function(text, "doubled", module="os", callable="system"),
         r"node 'doubled': .*os:system, which is a builtin_function_or_method, not a function"),
        (lambda text: _with_function(text, "doubled", module="collections", callable="OrderedDict"),
         r"node 'doubled': .*collections:OrderedDict, which is a type, not a function"),
        (lambda text: _with_operator(text, "batched", "json:JSONDecoder"), r"node 'batched': 'json:JSONDecoder' is not an Operator"),
        (lambda text: _with_operator(text, "batched", "os:system"), r"node 'batched': 'os:system' is not a class"),
        (lambda text: _with_source_path(text, "../data.csv"),
         r"node 'data': field 'source.config.path' is '../data.csv', a relative path that climbs out of the pipeline file's folder"),
        (lambda text: _with_source_path(text, "inner/../../data.csv", relative=False),
         r"node 'data': field 'source.config.path' is 'inner/../../data.csv', a relative path that climbs out"),
        (lambda text: json.dumps({**json.loads(text), "pipeline_database": {"type": "delta", "base_uri": "../store", "relative_to_file": True}}),
         r"field 'pipeline_database': the database path is '../store', a relative path that climbs out"),
        (lambda text: json.dumps({**json.loads(text), "result_database": {"type": "delta", "base_uri": "store/../../x"}}),
         r"field 'result_database': the database path is 'store/../../x', a relative path that climbs out"),
    ],
    ids=["corrupt", "version", "format", "missing-db", "memory-db", "edge", "field", "non-function",
         "plain-function", "builtin", "class", "not-an-operator", "operator-builtin",
         "source-dotdot", "source-dotdot-inner", "db-dotdot", "result-db-dotdot"],
)
def test_bad_saved_files_raise_specific_errors_and_touch_nothing(tmp_path, funcs, mutate, match):
    p = build(tmp_path, funcs)
    p.run()
    saved = p.save(tmp_path / "p.json")
    db = DeltaTableDatabase(tmp_path / "store")
    before = _store_state(db)
    saved.write_text(mutate(saved.read_text()))
    with pytest.raises(PipelineLoadError, match=match) as info:
        Pipeline.load(saved)
    assert str(saved) in str(info.value)
    assert _store_state(DeltaTableDatabase(tmp_path / "store")) == before


def test_missing_file_is_a_load_error(tmp_path):
    with pytest.raises(PipelineLoadError, match="no such pipeline file"):
        Pipeline.load(tmp_path / "nope.json")


def test_saved_store_path_is_relative_to_the_file_so_the_folder_can_move(tmp_path, funcs):
    project = tmp_path / "project"
    project.mkdir()
    p = build(project, funcs)
    p.run()
    p.save(project / "p.json")
    description = json.loads((project / "p.json").read_text())
    assert description["pipeline_database"]["base_uri"] == "store" and description["pipeline_database"]["relative_to_file"]
    data = node_entry(description, "data")["source"]["config"]
    assert data["path"] == "data.csv" and data["relative_to_file"]
    moved = tmp_path / "moved"
    project.rename(moved)
    q = Pipeline.load(moved / "p.json")
    assert Path(q.pipeline_database.base_uri) == (moved / "store").resolve()
    assert q.run().computed == 0


def test_a_loaded_pipeline_with_proxies_and_stored_sources_saves_again_unchanged(tmp_path, funcs):
    p = build(tmp_path, funcs)
    p.run()
    p.save(tmp_path / "first.json")
    forget_module(funcs)
    q = Pipeline.load(tmp_path / "first.json")
    q.save(tmp_path / "second.json")
    first, second = (json.loads((tmp_path / f).read_text()) for f in ("first.json", "second.json"))
    for d in (first, second):
        d.pop("saved_at")
        for n in d["nodes"]:
            n.pop("load_status")
    assert first == second
    r = Pipeline.load(tmp_path / "second.json")
    assert r.doubled.as_table().equals(p.doubled.as_table())


# --------------------------------------------------------------------------------------
# Trust: what loading may import, and what it accepts
# --------------------------------------------------------------------------------------

PLAIN = '''
def triple(x: int) -> int:
    return x * 3
'''


@pytest.fixture
def make_module(tmp_path, monkeypatch):
    """``make_module(body, name=None)`` writes an importable module (dotted names become
    packages) whose import leaves a marker file; ``make_module.imported(name)`` tells whether
    it ran. Nothing is imported by the fixture itself."""
    folder = tmp_path / "lib"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    made: list[str] = []

    def make(body: str, name: str | None = None) -> str:
        name = name or f"trust_mod_{next(_counter)}"
        *packages, leaf = name.split(".")
        where = folder
        for part in packages:
            where = where / part
            where.mkdir(exist_ok=True)
            (where / "__init__.py").touch()
        marker = folder / f"{name}.imported"
        (where / f"{leaf}.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n" + textwrap.dedent(body))
        importlib.invalidate_caches()
        made.append(name)
        return name

    def forget(name: str) -> None:
        """Drop ``name`` (and its packages) from ``sys.modules`` and delete its marker."""
        for module in [m for m in sys.modules if m == name or name.startswith(m + ".") or m.startswith(name + ".")]:
            sys.modules.pop(module, None)
        (folder / f"{name}.imported").unlink(missing_ok=True)

    make.imported = lambda name: (folder / f"{name}.imported").exists()
    make.forget = forget
    yield make
    for name in made:
        forget(name)


def plain_pipeline(tmp_path, triple, name="plain") -> Pipeline:
    """CSV → a plain (undecorated) typed function, run and stored in ``tmp_path/store``."""
    csv = write_csv(tmp_path / "data.csv", [(1, 10), (2, 20)])
    with Pipeline(name, DeltaTableDatabase(tmp_path / "store")) as p:
        FunctionPod(PythonPacketFunction(triple, "y"))(CSVSource(csv, tag_columns="id"), label="tripled")
    p.run()
    return p


def edit_saved(path: Path, change) -> Path:
    """Apply ``change(description)`` to a saved pipeline file in place."""
    description = json.loads(path.read_text())
    change(description)
    path.write_text(json.dumps(description))
    return path


def node_entry(description: dict, label: str) -> dict:
    return next(n for n in description["nodes"] if n["label"] == label)


def test_default_load_refuses_a_plain_function_and_allowed_modules_accepts_it(tmp_path, make_module):
    name = make_module(PLAIN)
    module = importlib.import_module(name)
    saved = plain_pipeline(tmp_path, module.triple).save(tmp_path / "p.json")
    before = _store_state(DeltaTableDatabase(tmp_path / "store"))

    with pytest.raises(PipelineLoadError) as info:
        Pipeline.load(saved)
    message = str(info.value)
    assert message.startswith(f"{saved}: node 'tripled':") and f"{name}:triple" in message
    assert "a plain function, not an orcapod function pod" in message and "allowed_modules=" in message
    assert _store_state(DeltaTableDatabase(tmp_path / "store")) == before

    q = Pipeline.load(saved, allowed_modules=[name])  # explicit trust: plain functions are fine
    assert q.tripled.load_status is LoadStatus.FULL and q.tripled.packet_function.function is module.triple
    assert q.run().computed == 0
    assert sorted(q.tripled.as_table().column("y").to_pylist()) == [30, 60]


def test_pods_load_by_default_and_under_allowed_modules(tmp_path, funcs):
    p = build(tmp_path, funcs)
    p.run()
    saved = p.save(tmp_path / "p.json")
    for allowed in (None, [funcs.__name__]):
        # orcapod_core's own operators (Join, Batch, MapPackets here) need no listing
        q = Pipeline.load(saved, allowed_modules=allowed)
        assert {n.label: n.content_hash() for n in q} == {n.label: n.content_hash() for n in p}
        assert q.doubled.load_status is LoadStatus.FULL and q.batched.load_status is LoadStatus.FULL
        assert q.run().computed == 0


def test_allowed_modules_never_imports_a_module_outside_the_list(tmp_path, funcs, make_module):
    p = build(tmp_path, funcs)
    p.run()
    saved = p.save(tmp_path / "p.json")
    # The file is edited to take `double` from a module nobody has imported yet.
    other = make_module(f"from {funcs.__name__} import double\n")
    edit_saved(saved, lambda d: node_entry(d, "doubled")["function"].update(module=other))
    before = _store_state(DeltaTableDatabase(tmp_path / "store"))

    with pytest.raises(PipelineLoadError) as info:
        Pipeline.load(saved, allowed_modules=[funcs.__name__, "my_lab"])
    message = str(info.value)
    assert message.startswith(f"{saved}: node 'doubled':") and f"module {other!r}" in message
    assert f"[{funcs.__name__!r}, 'my_lab']" in message and "was not imported" in message
    assert not make_module.imported(other) and other not in sys.modules
    assert _store_state(DeltaTableDatabase(tmp_path / "store")) == before

    # Listed, it is imported, but `double` is defined in a module outside the list.
    with pytest.raises(PipelineLoadError, match=rf"{other}:double is defined in module '{funcs.__name__}', which is not in allowed_modules \['{other}'\]"):
        Pipeline.load(saved, allowed_modules=[other])
    assert make_module.imported(other)

    # The default imports any module (its top-level code runs) and accepts the pod it names.
    make_module.forget(other)
    q = Pipeline.load(saved)
    assert make_module.imported(other) and q.doubled.load_status is LoadStatus.FULL


@pytest.mark.parametrize(
    "allowed, accepted",
    [
        (["labpkg"], True),
        (["labpkg."], True),
        ("labpkg", True),  # one string is one prefix
        (["labpkg.steps"], True),
        (["elsewhere", "labpkg.steps."], True),
        (["labpk"], False),  # a string prefix that is not a module boundary
        (["labpkg.step"], False),
        (["labpkg.steps.inner"], False),
        (["labpkgs"], False),
        ([], False),
    ],
)
def test_allowed_modules_are_module_name_prefixes(tmp_path, make_module, allowed, accepted):
    name = make_module(PLAIN, "labpkg.steps")
    saved = plain_pipeline(tmp_path, importlib.import_module(name).triple).save(tmp_path / "p.json")
    make_module.forget(name)
    if accepted:
        assert Pipeline.load(saved, allowed_modules=allowed).tripled.load_status is LoadStatus.FULL
        assert make_module.imported(name)
    else:
        with pytest.raises(PipelineLoadError, match=r"module 'labpkg\.steps' is not in allowed_modules"):
            Pipeline.load(saved, allowed_modules=allowed)
        assert not make_module.imported(name) and "labpkg" not in sys.modules


@pytest.mark.parametrize("bad", [[""], ["."], [3]], ids=["empty", "dot", "not-a-string"])
def test_allowed_modules_that_would_allow_everything_or_are_not_names_raise(tmp_path, funcs, bad):
    p = build(tmp_path, funcs)
    saved = p.save(tmp_path / "p.json")
    with pytest.raises(InputValidationError, match="allowed_modules"):
        Pipeline.load(saved, allowed_modules=bad)


OPERATORS = '''
from orcapod_core.operators import MapPackets

class Renamer(MapPackets):
    """A user's operator."""
'''


def test_operators_from_an_unlisted_module_are_refused_before_import(tmp_path, funcs, make_module):
    ops = make_module(OPERATORS)
    renamer = importlib.import_module(ops).Renamer
    src = write_csv(tmp_path / "data.csv", [(1, 10), (2, 20)])
    with Pipeline("ops", DeltaTableDatabase(tmp_path / "store")) as p:
        renamed = renamer({"x": "x"})(CSVSource(src, tag_columns="id"), label="renamed")
        funcs.double.pod(renamed, label="doubled")
    p.run()
    saved = p.save(tmp_path / "p.json")
    make_module.forget(ops)
    before = _store_state(DeltaTableDatabase(tmp_path / "store"))

    with pytest.raises(PipelineLoadError) as info:
        Pipeline.load(saved, allowed_modules=[funcs.__name__])
    message = str(info.value)
    assert message.startswith(f"{saved}: node 'renamed': operator '{ops}:Renamer'")
    assert f"module {ops!r} is not in allowed_modules [{funcs.__name__!r}]" in message
    assert not make_module.imported(ops) and ops not in sys.modules
    assert _store_state(DeltaTableDatabase(tmp_path / "store")) == before

    for allowed in ([funcs.__name__, ops], None):
        q = Pipeline.load(saved, allowed_modules=allowed)
        assert type(q.renamed.operator).__qualname__ == "Renamer" and q.renamed.content_hash() == p.renamed.content_hash()
        assert q.run().computed == 0


def test_derived_sources_are_loaded_with_the_same_policy(tmp_path, funcs, make_module):
    plain = make_module(PLAIN)
    upstream = plain_pipeline(tmp_path, importlib.import_module(plain).triple, name="upstream")
    with Pipeline("report", upstream.pipeline_database) as report:
        funcs.summarize.pod(Batch()(upstream.tripled.as_source(), label="all"), label="total")
    report.run()
    saved = report.save(tmp_path / "report.json")

    # the plain function lives in the saved upstream pipeline only
    for allowed, match in [
        (None, rf"\(node 'tripled_source': its upstream pipeline\): node 'tripled': .*{plain}:triple, a plain function"),
        ([funcs.__name__], rf"\(node 'tripled_source': its upstream pipeline\): node 'tripled': .*module '{plain}' is not in allowed_modules"),
    ]:
        with pytest.raises(PipelineLoadError, match=match) as info:
            Pipeline.load(saved, allowed_modules=allowed)
        assert str(info.value).startswith(str(saved))
    q = Pipeline.load(saved, allowed_modules=[funcs.__name__, plain])
    assert q.total.as_table().to_pylist() == report.total.as_table().to_pylist()


def test_a_read_only_load_keeps_working_under_allowed_modules(tmp_path, funcs):
    p = build(tmp_path, funcs)
    p.run()
    saved = p.save(tmp_path / "p.json")
    forget_module(funcs)
    q = Pipeline.load(saved, allowed_modules=[funcs.__name__])  # listed but gone: a proxy, as without a list
    assert isinstance(q.doubled.packet_function, PacketFunctionProxy) and q.doubled.load_status is LoadStatus.READ_ONLY
    assert q.doubled.as_table().equals(p.doubled.as_table())
    assert q.run().failed == 0


def test_resolve_from_config_applies_the_policy(make_module):
    name = make_module(PLAIN)
    config = PythonPacketFunction(importlib.import_module(name).triple, "y").to_config()
    assert resolve_packet_function_from_config(config).function_name == "triple"  # no policy: as before
    with pytest.raises(PipelineLoadError, match=rf"{name}:triple, a plain function, not an orcapod function pod"):
        resolve_packet_function_from_config(config, require_pod=True)
    assert resolve_packet_function_from_config(config, allowed_modules=[name], require_pod=True).function_name == "triple"

    make_module.forget(name)
    refuse = [
        lambda: resolve_packet_function_from_config(config, fallback_to_proxy=True, allowed_modules=["other"]),
        lambda: FunctionPod.from_config(config, True, allowed_modules=["other"]),
        lambda: function_pod_from_config(config, True, allowed_modules=["other"]),
    ]
    for load in refuse:
        with pytest.raises(PipelineLoadError, match=rf"module '{name}' is not in allowed_modules \['other'\], so it was not imported"):
            load()
    assert not make_module.imported(name)
    # an allowed module that cannot be imported still gives a proxy
    gone = {**config, "module": "no_such_module_xyz"}
    for policy in ({"allowed_modules": ["no_such_module_xyz"]}, {"require_pod": True}):
        assert isinstance(resolve_packet_function_from_config(gone, fallback_to_proxy=True, **policy), PacketFunctionProxy)


def test_module_allowed_matches_whole_module_names():
    assert allowed_module_prefixes(None) is None
    assert allowed_module_prefixes(["my_lab.", " pkg.mod "]) == ("my_lab", "pkg.mod")
    prefixes = ("my_lab",)
    assert [module_allowed(m, prefixes) for m in ("my_lab", "my_lab.x", "my_lab.x.y", "my_labs", "my", "x.my_lab")] == [
        True, True, True, False, False, False,
    ]


# --------------------------------------------------------------------------------------
# Paths outside the pipeline file's folder
# --------------------------------------------------------------------------------------


def test_paths_outside_the_file_folder_are_saved_absolute_and_load_after_a_move(tmp_path, funcs):
    project = tmp_path / "project"
    project.mkdir()
    p = build(tmp_path, funcs, DeltaTableDatabase(project / "store"))  # data.csv beside the project
    p.run()
    saved = p.save(project / "p.json")
    description = json.loads(saved.read_text())
    store = description["pipeline_database"]
    data = node_entry(description, "data")["source"]["config"]
    assert (store["base_uri"], store["relative_to_file"]) == ("store", True)  # inside: relative
    assert data["path"] == str(tmp_path / "data.csv") and "relative_to_file" not in data  # outside: absolute
    assert ".." not in saved.read_text()

    moved = tmp_path / "moved"
    project.rename(moved)
    q = Pipeline.load(moved / "p.json")
    assert Path(q.pipeline_database.base_uri) == (moved / "store").resolve()
    assert q.data.load_status is LoadStatus.FULL and q.data.source.path == str(tmp_path / "data.csv")
    assert q.run().computed == 0
    assert q.doubled.as_table().equals(p.doubled.as_table())


def test_a_store_outside_the_file_folder_is_saved_absolute(tmp_path, funcs):
    p = build(tmp_path, funcs)  # store and data in tmp_path, the file one folder below
    p.run()
    saved = p.save(tmp_path / "shared" / "deep" / "p.json")
    description = json.loads(saved.read_text())
    assert description["pipeline_database"]["base_uri"] == str(tmp_path / "store")
    assert "relative_to_file" not in description["pipeline_database"]
    assert node_entry(description, "data")["source"]["config"]["path"] == str(tmp_path / "data.csv")
    q = Pipeline.load(saved)
    assert q.run().computed == 0 and q.summary.as_table().equals(p.summary.as_table())
    # saved again beside the data: relative again
    again = json.loads(q.save(tmp_path / "again.json").read_text())
    assert again["pipeline_database"]["base_uri"] == "store" and again["pipeline_database"]["relative_to_file"]


def test_a_symlinked_store_inside_the_folder_stays_relative(tmp_path, funcs):
    project = tmp_path / "project"
    project.mkdir()
    (tmp_path / "big_disk").mkdir()
    (project / "store").symlink_to(tmp_path / "big_disk", target_is_directory=True)
    p = build(project, funcs)
    p.run()
    description = json.loads(p.save(project / "p.json").read_text())
    assert description["pipeline_database"]["base_uri"] == "store"
    assert Pipeline.load(project / "p.json").run().computed == 0


def test_paths_are_checked_before_any_module_is_imported(tmp_path, funcs, make_module):
    """A '..' data path anywhere in the file is refused before the code of any node is imported
    (here the function node is listed before the source, and its module would run on import)."""
    p = build(tmp_path, funcs)
    p.run()
    saved = p.save(tmp_path / "p.json")
    other = make_module(f"from {funcs.__name__} import double\n")

    def edit(description):
        node_entry(description, "doubled")["function"].update(module=other)
        description["nodes"].sort(key=lambda n: n["kind"] != "function")  # functions first
        node_entry(description, "data")["source"]["config"]["path"] = "../elsewhere/data.csv"

    edit_saved(saved, edit)
    with pytest.raises(PipelineLoadError, match=r"node 'data': field 'source.config.path' is '../elsewhere/data.csv'"):
        Pipeline.load(saved)
    assert not make_module.imported(other)
