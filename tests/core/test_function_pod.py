import asyncio
import importlib.util
import itertools
import textwrap

import pyarrow as pa
import pytest

from orcapod_core.errors import FunctionDefinitionError, SchemaMismatchError, UnsupportedTypeError
from orcapod_core.function_pods import FunctionPod, FunctionPodStream, function_pod
from orcapod_core.packet_function import PythonPacketFunction
from orcapod_core.sources import DictSource
from orcapod_core.tracking import tracking
from orcapod_core.types import arrow_schema


def make_source(source_id="src", **data):
    data = data or {"id": [1, 2, 3], "x": [1, 2, 1], "y": [10, 20, 10]}
    return DictSource(data, tag_columns=["id"], source_id=source_id)


_counter = itertools.count()


@pytest.fixture
def load(tmp_path):
    """Import a function from source text written to its own module file (getsource needs a file)."""

    def _load(source, name="f"):
        path = tmp_path / f"fp_variant_{next(_counter)}.py"
        path.write_text("from orcapod_core import function_pod\n" + textwrap.dedent(source))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return getattr(module, name)

    return _load


# -- shape and values ------------------------------------------------------------------


def test_function_stays_callable_and_single_output_key_is_the_whole_return_value():
    @function_pod(output_keys="total")
    def add(x: int, y: int) -> int:
        return x + y

    assert add(1, 2) == 3
    assert isinstance(add.pod, FunctionPod)
    out = add.pod(make_source(), label="sum")
    assert isinstance(out, FunctionPodStream) and out.label == "sum"
    assert out.output_schema() == ({"id": int}, {"total": int})
    assert out.as_table().to_pylist() == [{"id": 1, "total": 11}, {"id": 2, "total": 22}, {"id": 3, "total": 11}]
    assert add.pod.process(make_source()).as_table().column("total").to_pylist() == [11, 22, 11]


def test_several_output_keys_unpack_a_tuple():
    @function_pod(output_keys=["lo", "hi"], function_name="bounds", version="v2")
    def f(x: int, y: int) -> tuple[float, float | None]:
        return min(x, y), (None if x == 2 else float(max(x, y)))

    pf = f.pod.packet_function
    assert pf.output_keys == ("lo", "hi")
    assert pf.output_schema == {"lo": float, "hi": float | None}
    assert pf.function_name == "bounds" and pf.version == "v2" and pf.function_type == "python"
    assert pf.uri.startswith("bounds/v2/") and "::" not in pf.uri
    out = f.pod(make_source())
    assert out.as_table().to_pylist() == [
        {"id": 1, "lo": 1.0, "hi": 10.0},
        {"id": 2, "lo": 2.0, "hi": None},
        {"id": 3, "lo": 1.0, "hi": 10.0},
    ]
    fields = out.as_table().schema
    assert not fields.field("lo").nullable and fields.field("hi").nullable


def test_input_schema_from_annotations_with_defaults_as_optional_fields():
    @function_pod(output_keys="y")
    def scale(x: float, tags: list[str], factor: float = 2.0) -> float:
        return x * factor * len(tags)

    pf = scale.pod.packet_function
    assert pf.input_schema == {"x": float, "tags": list[str], "factor": float}
    assert pf.input_schema.optional_fields == {"factor"}
    assert pf.is_async is False
    # the optional column may be absent (the default applies) or present; ints widen to float
    s = DictSource({"id": [1], "x": [3], "tags": [["a", "b"]]}, tag_columns="id", schema={"tags": list[str]})
    assert scale.pod(s).as_table().column("y").to_pylist() == [12.0]
    s2 = DictSource({"id": [1], "x": [3.0], "tags": [["a"]], "factor": [10.0]}, tag_columns="id", schema={"tags": list[str]})
    assert scale.pod(s2).as_table().column("y").to_pylist() == [30.0]


def test_int_column_reaches_a_float_parameter_as_float():
    seen = []

    @function_pod(output_keys="y")
    def f(x: float) -> float:
        seen.append(type(x))
        return x

    f.pod(make_source(id=[1], x=[3]))._table()
    assert seen == [float]


def test_tags_and_system_tags_pass_through_unchanged():
    @function_pod(output_keys="z")
    def f(x: int, y: int) -> str:
        return f"{x}-{y}"

    src = make_source()
    out = f.pod(src)
    cfg = {"system_tags": True}
    src_tags = src.as_table(columns=cfg)
    tag_names = [n for n in src_tags.column_names if n not in ("x", "y")]
    out_table = out.as_table(columns=cfg)
    assert out_table.select(tag_names).equals(src_tags.select(tag_names))
    assert out_table.schema.names == [*tag_names, "z"]
    assert out.output_schema(columns=cfg)[0] == src.output_schema(columns=cfg)[0]
    # iterating gives Tags with the same system tags
    assert [t.system_tags for t, _ in out] == [t.system_tags for t, _ in src]


def test_source_info_points_at_the_function_and_the_input_packet():
    @function_pod(output_keys=["a", "b"])
    def f(x: int, y: int) -> tuple[int, int]:
        return x + y, x * y

    src = make_source()
    out = f.pod(src)
    table = out.as_table(columns={"source": True})
    uri = f.pod.packet_function.uri
    expected_ids = [d.hex() for d in src.packet_hashes().to_pylist()]
    for key in ("a", "b"):
        assert table.column(f"_source_{key}").to_pylist() == [f"{uri}::{h}::{key}" for h in expected_ids]
    _, packet = next(iter(out))
    assert packet.source_info == {"a": f"{uri}::{expected_ids[0]}::a", "b": f"{uri}::{expected_ids[0]}::b"}
    # the record id is the input packet's own content hash
    _, in_packet = next(iter(src))
    assert expected_ids[0] == in_packet.content_hash().to_hex()


def test_identical_input_packets_are_computed_once():
    calls = []

    @function_pod(output_keys="z")
    def f(x: int, y: int) -> int:
        calls.append((x, y))
        return x + y

    src = make_source(id=[1, 2, 3, 4, 5], x=[1, 2, 1, 1, 2], y=[10, 20, 10, 10, 20])
    assert f.pod(src).as_table().column("z").to_pylist() == [11, 22, 11, 11, 22]
    assert sorted(calls) == [(1, 10), (2, 20)]


def test_pod_streams_are_lazy():
    calls = []

    @function_pod(output_keys="z")
    def f(x: int, y: int) -> int:
        calls.append(x)
        return x

    out = f.pod(make_source())
    out.keys(), out.output_schema(all_info=True), out.content_hash(), out.pipeline_hash()
    assert calls == []
    list(out)
    assert len(calls) == 2  # (1, 10) twice → computed once
    out.as_table(), len(out)
    assert len(calls) == 2  # computed rows are cached


def test_empty_stream():
    @function_pod(output_keys="z")
    def f(x: int) -> int:
        return x

    s = DictSource({"id": [], "x": []}, tag_columns="id", schema={"id": int, "x": int})
    assert f.pod(s).as_table().num_rows == 0


def test_content_and_pipeline_hash_follow_function_and_input():
    @function_pod(output_keys="z")
    def f(x: int, y: int) -> int:
        return x

    @function_pod(output_keys="z")
    def g(x: int, y: int) -> int:
        return y

    a, b = make_source("a"), make_source("b")
    assert f.pod(a).content_hash() == f.pod(make_source("a")).content_hash()
    assert f.pod(a).content_hash() != f.pod(b).content_hash()
    assert f.pod(a).pipeline_hash() == f.pod(b).pipeline_hash()
    assert f.pod(a).content_hash() != g.pod(a).content_hash()
    assert f.pod(a).pipeline_hash() != g.pod(a).pipeline_hash()


def test_each_call_is_recorded():
    class Recorder:
        def __init__(self):
            self.invocations = []

        def record(self, invocation):
            self.invocations.append(invocation)

    @function_pod(output_keys="z")
    def f(x: int, y: int) -> int:
        return x

    rec, src = Recorder(), make_source()
    with tracking(rec):
        out = f.pod(src, label="first")
    (inv,) = rec.invocations
    assert inv.pod is f.pod and inv.inputs == (src,) and inv.output is out and inv.label == "first"


def test_several_inputs_are_joined_first_and_recorded_as_one_invocation():
    class Recorder:
        def __init__(self):
            self.invocations = []

        def record(self, invocation):
            self.invocations.append(invocation)

    @function_pod(output_keys="s")
    def add(x: int, y: int) -> int:
        return x + y

    left = DictSource({"id": [1, 2, 3], "x": [1, 2, 3]}, tag_columns="id", source_id="left")
    right = DictSource({"id": [3, 1], "y": [30, 10]}, tag_columns="id", source_id="right")
    rec = Recorder()
    with tracking(rec):
        out = add.pod(left, right)
    assert [inv.pod for inv in rec.invocations] == [add.pod]  # the internal join is not a separate node
    assert rec.invocations[0].inputs == (left, right)
    assert out.upstreams == (left, right)
    rows = sorted(out.as_table().to_pylist(), key=lambda r: r["id"])
    assert rows == [{"id": 1, "s": 11}, {"id": 3, "s": 33}]
    # input order does not matter (the join is commutative)
    assert out.content_hash() == add.pod(right, left).content_hash()
    assert out.as_table(columns={"system_tags": True}).sort_by("id").equals(
        add.pod(right, left).as_table(columns={"system_tags": True}).sort_by("id")
    )


# -- identity ---------------------------------------------------------------------------

BASE = '''
@function_pod(output_keys="y")
def f(x: int) -> int:
    """Double it."""
    z = x * 2
    return z
'''


def test_identity_ignores_comments_docstrings_formatting_and_decorators(load):
    base = load(BASE).pod.packet_function.identity_hash()
    variants = [
        '''
        @function_pod(output_keys="y")
        def f(x: int) -> int:
            # a comment
            z = x * 2  # trailing comment
            return z
        ''',
        '''
        @function_pod(output_keys="y")
        def f(x: int) -> int:
            """A completely different docstring.

            Over several lines.
            """
            z = x * 2
            return z
        ''',
        '''
        @function_pod(
            output_keys="y",
        )
        def f(
            x: int,
        ) -> int:
            z = (x *
                 2)
            return z
        ''',
    ]
    for variant in variants:
        assert load(variant).pod.packet_function.identity_hash() == base, variant


def test_nested_docstrings_are_ignored_but_nested_code_is_not(load):
    nested = '''
    @function_pod(output_keys="y")
    def f(x: int) -> int:
        def helper(v):
            """Nested docstring."""
            return v * 2
        return helper(x)
    '''
    a = load(nested).pod.packet_function.identity_hash()
    assert load(nested.replace("Nested docstring.", "Other words.")).pod.packet_function.identity_hash() == a
    assert load(nested.replace("v * 2", "v * 4")).pod.packet_function.identity_hash() != a


def test_identity_changes_when_the_body_changes(load):
    base = load(BASE).pod.packet_function
    edited = load(BASE.replace("x * 2", "x * 3")).pod.packet_function
    assert edited.identity_hash() != base.identity_hash()
    assert edited.uri != base.uri


def test_declared_identity_ignores_the_body_but_not_the_version(load):
    declared = BASE.replace('output_keys="y"', 'output_keys="y", identity="declared"')
    a = load(declared).pod.packet_function
    b = load(declared.replace("x * 2", "x * 3")).pod.packet_function
    assert a.identity_hash() == b.identity_hash()
    assert a.identity_hash() != load(BASE).pod.packet_function.identity_hash()
    bumped = load(declared.replace('identity="declared"', 'identity="declared", version="v1"')).pod.packet_function
    assert bumped.identity_hash() != a.identity_hash()


def test_identity_covers_version_name_schemas_and_output_keys(load):
    base = load(BASE).pod.packet_function.identity_hash()
    changed = [
        BASE.replace('output_keys="y"', 'output_keys="y", version="v1"'),
        BASE.replace('output_keys="y"', 'output_keys="y", function_name="g"'),
        BASE.replace('output_keys="y"', 'output_keys="w"'),
        BASE.replace("-> int", "-> float"),
    ]
    hashes = {load(v).pod.packet_function.identity_hash() for v in changed}
    assert len(hashes) == len(changed) and base not in hashes


def test_identity_is_stable_across_loads_and_pinned(load):
    pf = load(BASE).pod.packet_function
    assert pf.identity_hash() == load(BASE).pod.packet_function.identity_hash()
    # Golden value: stored results are keyed by it, so a change here invalidates every cache.
    # (The normalized source comes from ast.unparse, so a new Python version may move it.)
    assert pf.identity_hash().to_string() == (
        "orcapod_v1:6788815602808a514ead1a89f000aef8cf151788c1146221a04d29629bb5f4a4"
    )
    assert pf.uri == "f/v0/6788815602808a51"


# -- definition errors ---------------------------------------------------------------------


def test_bad_function_definitions_are_rejected_with_clear_errors():
    with pytest.raises(FunctionDefinitionError, match="lambda"):
        PythonPacketFunction(lambda x: x, output_keys="y")

    def star(*xs: int) -> int:
        return 0

    with pytest.raises(FunctionDefinitionError, match=r"star.*\*xs"):
        PythonPacketFunction(star, output_keys="y")

    def kw(x: int, **rest: int) -> int:
        return 0

    with pytest.raises(FunctionDefinitionError, match=r"kw.*\*\*rest"):
        PythonPacketFunction(kw, output_keys="y")

    def untyped(x, y: int) -> int:
        return 0

    with pytest.raises(FunctionDefinitionError, match="untyped.*parameter 'x'"):
        PythonPacketFunction(untyped, output_keys="y")

    def no_return(x: int):
        return x

    with pytest.raises(FunctionDefinitionError, match="no_return.*return type"):
        PythonPacketFunction(no_return, output_keys="y")

    def pair(x: int) -> int:
        return x

    with pytest.raises(FunctionDefinitionError, match=r"tuple\[\.\.\.\] of 2"):
        PythonPacketFunction(pair, output_keys=["a", "b"])

    def weird(x: complex) -> int:
        return 0

    with pytest.raises(UnsupportedTypeError, match="parameter 'x'"):
        PythonPacketFunction(weird, output_keys="y")

    def weird_out(x: int) -> set[int]:
        return {x}

    with pytest.raises(UnsupportedTypeError, match="output 'y'"):
        PythonPacketFunction(weird_out, output_keys="y")

    with pytest.raises(FunctionDefinitionError, match="repeated"):
        PythonPacketFunction(pair, output_keys=["a", "a"])


def test_stream_columns_must_match_the_parameters():
    @function_pod(output_keys="out")
    def f(name: str, y: int) -> str:
        return name

    bad_type = DictSource({"id": [1], "name": [5], "y": [1]}, tag_columns="id")
    with pytest.raises(SchemaMismatchError) as info:
        f.pod(bad_type)
    msg = str(info.value)
    assert "'name'" in msg and "int" in msg and "str" in msg and "'f'" in msg

    missing_and_extra = DictSource({"id": [1], "nom": ["a"], "y": [1]}, tag_columns="id")
    with pytest.raises(SchemaMismatchError) as info:
        f.pod(missing_and_extra)
    assert "'name'" in str(info.value) and "'nom'" in str(info.value)

    nullable = DictSource({"id": [1, 2], "name": ["a", None], "y": [1, 2]}, tag_columns="id")
    with pytest.raises(SchemaMismatchError, match="str | None"):
        f.pod(nullable)


def test_output_keys_must_not_collide_with_tags():
    @function_pod(output_keys="id")
    def f(x: int, y: int) -> int:
        return x

    with pytest.raises(SchemaMismatchError, match="'id'"):
        f.pod(make_source())


# -- runtime errors ------------------------------------------------------------------------


def test_user_exceptions_propagate_with_a_note_naming_function_and_tag():
    @function_pod(output_keys="z")
    def fragile(x: int, y: int) -> int:
        if x == 2:
            raise ZeroDivisionError("boom")
        return x

    out = fragile.pod(make_source())
    with pytest.raises(ZeroDivisionError, match="boom") as info:
        out.as_table()
    notes = " ".join(info.value.__notes__)
    assert "fragile" in notes and "{'id': 2}" in notes


def test_wrong_output_values_name_function_and_key():
    @function_pod(output_keys="z")
    def wrong(x: int, y: int) -> int:
        return "oops" if x == 2 else x

    with pytest.raises(SchemaMismatchError) as info:
        wrong.pod(make_source()).as_table()
    msg = str(info.value)
    assert "'wrong'" in msg and "'z'" in msg and "str" in msg

    @function_pod(output_keys="z")
    def null(x: int, y: int) -> int:
        return None

    with pytest.raises(SchemaMismatchError, match="None"):
        null.pod(make_source()).as_table()

    @function_pod(output_keys=["a", "b"])
    def short(x: int, y: int) -> tuple[int, int]:
        return (x,)

    with pytest.raises(SchemaMismatchError, match="tuple of 2"):
        short.pod(make_source()).as_table()


def test_call_batch_reports_failed_rows_and_keeps_the_rest():
    def f(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return "bad" if x == 4 else x * 10

    pf = PythonPacketFunction(f, output_keys="y")
    result = pf.call_batch(pa.table({"x": [1, 2, 3, 4, 5]}))
    assert list(result.rows) == [0, 2, 4]
    assert result.table.column("y").to_pylist() == [10, 30, 50]
    assert sorted(result.errors) == [1, 3]
    assert isinstance(result.errors[1], ValueError) and isinstance(result.errors[3], SchemaMismatchError)


# -- single-packet path, async, execution context -------------------------------------------


def test_call_is_the_pure_single_packet_path():
    def f(x: int, scale: int = 2) -> tuple[int, str]:
        return x * scale, str(x)

    pf = PythonPacketFunction(f, output_keys=["y", "s"])
    assert pf.call({"x": 3}) == {"y": 6, "s": "3"}
    assert pf.call({"x": 3, "scale": 3}) == {"y": 9, "s": "3"}
    with pytest.raises(SchemaMismatchError, match="'x'"):
        pf.call({"scale": 3})
    # A key that is not a parameter is not read (as a stream's extra columns are not).
    assert pf.call({"x": 1, "w": 3}) == {"y": 2, "s": "1"}
    assert asyncio.run(pf.async_call({"x": 1})) == {"y": 2, "s": "1"}


def test_async_functions_run_concurrently():
    in_flight, peak = [0], [0]

    @function_pod(output_keys="z")
    async def slow(x: int, y: int) -> int:
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        await asyncio.sleep(0.01)
        in_flight[0] -= 1
        return x + y

    pf = slow.pod.packet_function
    assert pf.is_async
    src = make_source(id=list(range(20)), x=list(range(20)), y=[1] * 20)
    assert slow.pod(src).as_table().column("z").to_pylist() == [i + 1 for i in range(20)]
    assert peak[0] == 20
    assert pf.call({"x": 1, "y": 2}) == {"z": 3}
    assert asyncio.run(pf.async_call({"x": 1, "y": 2})) == {"z": 3}
    assert asyncio.run(slow(1, 1)) == 2  # still the plain coroutine function


def test_async_function_inside_a_running_event_loop():
    @function_pod(output_keys="z")
    async def f(x: int, y: int) -> int:
        await asyncio.sleep(0)
        return x * y

    async def main():
        stream = f.pod(make_source())
        return stream.as_table().column("z").to_pylist(), f.pod.packet_function.call({"x": 2, "y": 3})

    assert asyncio.run(main()) == ([10, 40, 10], {"z": 6})


def test_execution_context_schemas_round_trip_through_arrow():
    @function_pod(output_keys="z")
    def f(x: int) -> int:
        return x

    pf = f.pod.packet_function
    variation = pf.get_function_variation_data()
    assert set(variation) == {"function_name", "function_signature_hash", "function_content_hash", "git_hash"}
    assert variation["function_name"] == "f" and all(isinstance(v, str) for v in variation.values())
    assert pf.get_function_variation_data_schema() == {k: str for k in variation}
    assert len(variation["git_hash"]) in (0, 40)

    execution = pf.get_execution_data()
    schema = pf.get_execution_data_schema()
    assert schema == {"executor_type": str, "executor_info": dict[str, str], "python_version": str, "extra_info": dict[str, str]}
    assert execution["executor_type"] == "local"
    assert execution["executor_info"] == pf.executor.get_executor_data()

    for data, sch in ((variation, pf.get_function_variation_data_schema()), (execution, schema)):
        arrow = arrow_schema(sch)
        table = pa.Table.from_pylist([data], schema=arrow)
        assert table.to_pylist(maps_as_pydicts="strict") == [data]
    assert pa.types.is_map(arrow_schema(schema).field("executor_info").type)
