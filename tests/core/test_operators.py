import itertools

import polars as pl
import pyarrow as pa
import pytest

from orcapod_core.errors import InputValidationError, SchemaMismatchError
from orcapod_core.operators import (
    Batch,
    DropPacketColumns,
    DropTagColumns,
    Join,
    MapPackets,
    MapTags,
    MergeJoin,
    Operator,
    OperatorStream,
    PolarsFilter,
    SelectPacketColumns,
    SelectTagColumns,
    SemiJoin,
)
from orcapod_core.sources import DictSource
from orcapod_core.streams import TableStream
from orcapod_core.tracking import tracking

RICH_SCHEMA = {
    "id": int,
    "meta": dict[str, str] | None,
    "nested": list[list[int | None]],
    "maybe": int | None,
    "name": str,
}


def subjects(source_id="subjects"):
    return DictSource({"id": [1, 2, 3], "age": [30, 40, 50]}, tag_columns="id", source_id=source_id)


def scores(source_id="scores"):
    return DictSource({"id": [3, 1, 4, 1], "score": [0.3, 0.1, 0.4, 0.15]}, tag_columns="id", source_id=source_id)


def rich(source_id="rich"):
    return DictSource(
        {
            "id": [1, 2, 3],
            "meta": [{"k": "v"}, None, {}],
            "nested": [[[1, None]], [], [[2], [3]]],
            "maybe": [None, 5, 6],
            "name": ["a", "b", "c"],
        },
        tag_columns="id",
        source_id=source_id,
        schema=RICH_SCHEMA,
    )


def all_rows(stream):
    return stream.as_table(all_info=True).to_pylist()


def sys_tag_name(kind, source, number=None):
    """A system-tag column's name: its origin ``_tag_<kind>::<source shape hash>``, plus
    ``:<n>`` when a join gathered several columns of that origin."""
    h = source.pipeline_hash().to_hex(12)
    return f"_tag_{kind}::{h}" + ("" if number is None else f":{number}")


def canonical_positions(*streams):
    ordered = sorted(streams, key=lambda s: (s.pipeline_hash().to_string(), s.content_hash().to_string()))
    return {id(s): ordered.index(s) for s in streams}


def assert_prediction_matches(op, *inputs):
    """The layout predicted without computing is exactly the schema compute() returns."""
    predicted = op.output_layout(*inputs).schema
    computed = op.compute(*inputs).schema
    assert computed.equals(predicted), f"predicted {predicted}\ncomputed {computed}"


class CountingStream(TableStream):
    computed = 0

    def _compute_table(self):
        CountingStream.computed += 1
        return super()._compute_table()


# --------------------------------------------------------------------------------------
# Operator base / OperatorStream
# --------------------------------------------------------------------------------------


def test_operator_call_returns_lazy_stream_and_records_invocation():
    class Recorder:
        def __init__(self):
            self.seen = []

        def record(self, invocation):
            self.seen.append(invocation)

    CountingStream.computed = 0
    s = CountingStream(pa.table({"id": [1, 2], "x": [3, 4]}), tag_columns=["id"])
    op = MapPackets({"x": "y"})
    with tracking(Recorder()) as rec:
        out = op(s, label="renamed")
    assert isinstance(out, OperatorStream)
    assert CountingStream.computed == 0  # validated, not computed
    assert out.keys() == (("id",), ("y",))
    assert CountingStream.computed == 0
    assert out.producer is op and out.upstreams == (s,) and out.label == "renamed"
    [inv] = rec.seen
    assert inv.pod is op and inv.inputs == (s,) and inv.output is out and inv.label == "renamed"
    assert out.as_table().to_pylist() == [{"id": 1, "y": 3}, {"id": 2, "y": 4}]
    assert CountingStream.computed == 1


def test_identity_structure_is_class_name_and_config():
    assert Batch(3).identity_structure() == {
        "operator": "Batch",
        "config": {"batch_size": 3, "drop_partial_batch": False},
    }
    assert Join.commutative and MergeJoin.commutative and not SemiJoin.commutative


@pytest.mark.parametrize(
    "op",
    [
        Join(),
        MergeJoin(),
        SemiJoin(),
        Batch(2, drop_partial_batch=True),
        SelectTagColumns(["id"], strict=False),
        DropPacketColumns("x"),
        MapTags({"id": "subject"}, drop_unmapped=True),
        MapPackets({"x": "y"}),
        PolarsFilter(pl.col("x") > 1, id=2),
    ],
    ids=lambda op: type(op).__name__,
)
def test_config_round_trips_through_from_config(op):
    rebuilt = type(op).from_config(op.config())
    assert rebuilt.identity_structure() == op.identity_structure()


def test_inputs_must_be_streams_of_the_right_arity():
    a = subjects()
    with pytest.raises(InputValidationError, match="at least 2"):
        Join()(a)
    with pytest.raises(InputValidationError, match="takes 2"):
        MergeJoin()(a, scores(), subjects("other"))
    with pytest.raises(InputValidationError, match="takes 1"):
        Batch()(a, a)
    with pytest.raises(InputValidationError, match="dict"):
        Batch()({"id": [1]})


def test_stream_sugar_methods_build_the_same_operators():
    a, b = subjects(), scores()
    assert a.join(b).content_hash() == Join()(a, b).content_hash()
    assert a.semi_join(b).content_hash() == SemiJoin()(a, b).content_hash()
    assert a.batch(2).content_hash() == Batch(2)(a).content_hash()
    assert a.map_packets({"age": "years"}).keys() == (("id",), ("years",))
    assert a.map_tags({"id": "sid"}).keys() == (("sid",), ("age",))
    assert a.polars_filter(id=2).as_table().to_pylist() == [{"id": 2, "age": 40}]
    assert a.select_packet_columns([]).keys() == (("id",), ())
    assert a.drop_tag_columns("id").keys() == ((), ("age",))
    assert a.select_tag_columns("id").keys() == (("id",), ("age",))
    assert a.drop_packet_columns("age").keys() == (("id",), ())


def test_streams_do_not_import_operators_and_sources_bring_the_sugar():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import orcapod_core.streams\n"
        "print('orcapod_core.operators' in sys.modules, hasattr(orcapod_core.streams.Stream, 'group_by'))\n"
        "from orcapod_core.sources import DictSource\n"
        "s = DictSource({'id': [1]}, tag_columns='id', source_id='s')\n"
        "print(all(hasattr(s, m) for m in ('join', 'semi_join', 'batch', 'group_by', 'polars_filter', 'map_tags')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == ["False", "False", "True"]


# --------------------------------------------------------------------------------------
# Join
# --------------------------------------------------------------------------------------


def test_join_inner_joins_on_shared_tags():
    a, b = subjects(), scores()
    out = Join()(a, b)
    assert out.keys() == (("id",), ("age", "score")) or out.keys() == (("id",), ("score", "age"))
    rows = sorted((r["id"], r["age"], r["score"]) for r in out.as_table().to_pylist())
    assert rows == [(1, 30, 0.1), (1, 30, 0.15), (3, 50, 0.3)]


def test_join_keeps_system_tag_names_of_inputs_of_distinct_origin():
    a, b = subjects(), scores()
    out = Join()(a, b)
    expected = {sys_tag_name(kind, s) for s in (a, b) for kind in ("source_id", "record_id")}
    names = out.keys(columns={"system_tags": True})[0]
    assert names[0] == "id" and set(names[1:]) == expected
    table = out.as_table(all_info=True)
    for row in table.to_pylist():
        assert row[sys_tag_name("source_id", a)] == "subjects"
        assert row[sys_tag_name("source_id", b)] == "scores"
        assert row[sys_tag_name("record_id", a)] == f"row_{row['id'] - 1}"
    # source info is carried unchanged
    assert sorted(table.column("_source_score").to_pylist()) == ["scores::row_0::score", "scores::row_1::score", "scores::row_3::score"]
    assert sorted(table.column("_source_age").to_pylist()) == ["subjects::row_0::age", "subjects::row_0::age", "subjects::row_2::age"]


def test_join_is_commutative_in_rows_order_names_and_hashes():
    a, b = subjects(), scores()
    c = DictSource({"id": [1, 3], "site": ["x", "y"]}, tag_columns="id", source_id="sites")
    outs = [Join()(*perm) for perm in itertools.permutations([a, b, c])]
    first = outs[0].as_table(all_info=True)
    assert first.num_rows == 3
    for out in outs[1:]:
        table = out.as_table(all_info=True)
        assert table.column_names == first.column_names
        assert table.equals(first)
        assert out.content_hash() == outs[0].content_hash()
        assert out.pipeline_hash() == outs[0].pipeline_hash()


def test_join_output_tags_follow_the_given_input_order():
    visits = DictSource(
        {"subject": ["s1", "s1", "s2"], "visit": [1, 2, 1], "score": [0.5, 0.7, 0.9]},
        tag_columns=["subject", "visit"],
        source_id="visits",
    )
    rooms = DictSource({"visit": [1, 2], "site": ["n", "s"], "room": ["r1", "r2"]}, tag_columns=["visit", "site"], source_id="rooms")
    ages = DictSource({"subject": ["s1", "s2"], "age": [31, 45]}, tag_columns="subject", source_id="ages")
    for inputs, expected in [
        ((visits, rooms), ("subject", "visit", "site")),
        ((rooms, visits), ("visit", "site", "subject")),
        ((ages, rooms, visits), ("subject", "visit", "site")),
        ((rooms, ages, visits), ("visit", "site", "subject")),
    ]:
        out = Join()(*inputs)
        assert out.keys()[0] == expected
        assert out.as_table().column_names[: len(expected)] == list(expected)
        assert_prediction_matches(Join(), *inputs)
    # only the tag order differs: rows, row order, hidden columns and hashes do not
    ab, ba = Join()(visits, rooms), Join()(rooms, visits)
    names = ab.as_table(all_info=True).column_names
    assert ba.as_table(all_info=True).select(names).equals(ab.as_table(all_info=True))
    assert ab.content_hash() == ba.content_hash() and ab.pipeline_hash() == ba.pipeline_hash()
    assert ab.packet_hashes() == ba.packet_hashes()


def test_system_tag_names_stay_short_after_many_joins():
    # four sources of one shape: every join gathers columns of the same origin
    parts = [DictSource({"id": [1, 2], f"x{i}": [i, i + 1]}, tag_columns="id", source_id=f"part{i}") for i in range(4)]
    same = [DictSource({"id": [1, 2]}, tag_columns="id", source_id=f"same{i}") for i in range(4)]
    origin = same[0].layout.system_tag_columns
    chained = same[0].join(same[1]).join(same[2]).join(same[3])
    names = chained.layout.system_tag_columns
    assert sorted(names) == sorted(f"{o}:{n}" for o in origin for n in range(4))
    assert max(map(len, names)) <= max(map(len, origin)) + 2
    # distinct origins keep their sources' own names, however deep the chain
    deep = parts[0].join(parts[1]).join(parts[2]).join(parts[3])
    assert sorted(deep.layout.system_tag_columns) == sorted(c for p in parts for c in p.layout.system_tag_columns)
    # the values still say which source each row came from
    row = deep.as_table(columns="system_tags").to_pylist()[0]
    assert sorted(v for k, v in row.items() if k.startswith("_tag_source_id")) == ["part0", "part1", "part2", "part3"]


def test_system_tags_of_one_origin_are_numbered_in_canonical_order():
    a = subjects()
    older = a.polars_filter(pl.col("age") > 30).map_packets({"age": "age2"})  # same origin, another pipeline hash
    out = Join()(a, older)
    pos = canonical_positions(a, older)
    row = sorted(out.as_table(all_info=True).to_pylist(), key=lambda r: r["id"])[0]
    assert row["id"] == 2
    assert row[sys_tag_name("record_id", a, pos[id(a)])] == "row_1"
    assert set(out.layout.system_tag_columns) == {sys_tag_name(k, a, n) for k in ("source_id", "record_id") for n in (0, 1)}
    assert Join()(older, a).as_table(all_info=True).equals(out.as_table(all_info=True))


def test_join_renames_system_tags_of_a_store_written_with_the_old_long_names():
    legacy = pa.table(
        {
            "id": [1],
            "_tag_source_id::abc::0123456789ab:0": ["s"],
            "_tag_source_id::abc::0123456789ab:1": ["t"],
            "y": [2],
        }
    )
    out = Join()(TableStream(legacy, tag_columns=["id"]), subjects())
    assert sorted(c for c in out.layout.system_tag_columns if "::abc" in c) == ["_tag_source_id::abc:0", "_tag_source_id::abc:1"]
    assert_prediction_matches(Join(), TableStream(legacy, tag_columns=["id"]), subjects())


def test_system_tag_names_are_the_same_in_another_process():
    import subprocess
    import sys

    code = (
        "from orcapod_core.sources import DictSource\n"
        "s = [DictSource({'id': [1, 2]}, tag_columns='id', source_id=f'same{i}') for i in range(3)]\n"
        "print(sorted(s[0].join(s[1]).join(s[2]).as_table(columns='system_tags').to_pylist()[0].items()))\n"
    )
    here = [DictSource({"id": [1, 2]}, tag_columns="id", source_id=f"same{i}") for i in range(3)]
    expected = sorted(here[0].join(here[1]).join(here[2]).as_table(columns="system_tags").to_pylist()[0].items())
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == str(expected)


def test_join_of_same_schema_sources_is_commutative_and_sorts_system_tags():
    # same schema => same pipeline hash: the tie is broken by content hash and the
    # per-row system-tag tuples are sorted
    a = DictSource({"id": [1, 2, 3]}, tag_columns="id", source_id="zeta")
    b = DictSource({"id": [3, 2, 1]}, tag_columns="id", source_id="alpha")
    assert a.pipeline_hash() == b.pipeline_hash()
    ab, ba = Join()(a, b), Join()(b, a)
    assert ab.as_table(all_info=True).equals(ba.as_table(all_info=True))
    assert ab.content_hash() == ba.content_hash() and ab.pipeline_hash() == ba.pipeline_hash()
    h = a.pipeline_hash().to_hex(12)
    rows = ab.as_table(all_info=True).to_pylist()
    assert {r["id"] for r in rows} == {1, 2, 3}
    for r in rows:
        # position 0 holds the smaller (source_id, record_id) tuple, and pairs stay together
        assert r[f"_tag_source_id::{h}:0"] == "alpha"
        assert r[f"_tag_source_id::{h}:1"] == "zeta"
        assert r[f"_tag_record_id::{h}:0"] == f"row_{3 - r['id']}"
        assert r[f"_tag_record_id::{h}:1"] == f"row_{r['id'] - 1}"


def test_join_sorts_system_tag_tuples_per_row_keeping_pairs_together():
    # Same source_id and schema: a full identity tie, so only the per-row sort can make
    # the system tags independent of the input order; the order varies row by row here.
    a = DictSource({"id": [1, 2], "rid": ["p", "z"]}, tag_columns=["id", "rid"], source_id="s", record_id_column="rid")
    b = DictSource({"id": [1, 2], "rid": ["q", "a"]}, tag_columns=["id", "rid"], source_id="s", record_id_column="rid")
    left, right = a.drop_tag_columns("rid"), b.drop_tag_columns("rid")
    h = a.pipeline_hash().to_hex(12)
    rec0, rec1 = f"_tag_record_id::{h}:0", f"_tag_record_id::{h}:1"

    def by_id(stream):
        return sorted(stream.as_table(all_info=True).to_pylist(), key=lambda r: r["id"])

    rows = by_id(Join()(left, right))
    assert [(r[rec0], r[rec1]) for r in rows] == [("rid=p", "rid=q"), ("rid=a", "rid=z")]
    assert by_id(Join()(right, left)) == rows


def test_join_without_shared_tags_is_a_cartesian_product():
    a = DictSource({"id": [1, 2], "x": [10, 20]}, tag_columns="id", source_id="a")
    b = DictSource({"k": ["p", "q", "r"], "y": [1.0, 2.0, 3.0]}, tag_columns="k", source_id="b")
    out = Join()(a, b)
    assert set(out.keys()[0]) == {"id", "k"}
    rows = {(r["id"], r["k"], r["x"], r["y"]) for r in out.as_table().to_pylist()}
    assert rows == {(i, k, i * 10, y) for i in (1, 2) for k, y in zip("pqr", (1.0, 2.0, 3.0))}
    assert len(out) == 6


def test_join_keeps_map_list_types_and_nullability():
    other = DictSource({"id": [3, 1], "w": [True, False]}, tag_columns="id", source_id="other")
    r = rich()
    out = Join()(r, other)
    _, packets = out.output_schema()
    assert dict(packets) == {
        "meta": dict[str, str] | None,
        "nested": list[list[int | None]],
        "maybe": int | None,
        "name": str,
        "w": bool,
    }
    schema = out.as_table().schema
    assert schema.field("meta").nullable and not schema.field("name").nullable
    assert not schema.field("nested").nullable and schema.field("nested").type.value_type.value_field.nullable
    rows = sorted(out.as_table().to_pylist(maps_as_pydicts="strict"), key=lambda row: row["id"])
    assert rows == [
        {"id": 1, "meta": {"k": "v"}, "nested": [[1, None]], "maybe": None, "name": "a", "w": False},
        {"id": 3, "meta": {}, "nested": [[2], [3]], "maybe": 6, "name": "c", "w": True},
    ]
    assert_prediction_matches(Join(), r, other)


def test_join_of_three_streams_uses_every_shared_tag():
    a = DictSource({"subject": [1, 1, 2], "session": ["a", "b", "a"], "x": [1, 2, 3]}, tag_columns=["subject", "session"], source_id="a")
    b = DictSource({"subject": [1, 2], "age": [30, 40]}, tag_columns="subject", source_id="b")
    c = DictSource({"session": ["a"], "room": ["r1"]}, tag_columns="session", source_id="c")
    out = Join()(a, b, c)
    rows = sorted((r["subject"], r["session"], r["x"], r["age"], r["room"]) for r in out.as_table().to_pylist())
    assert rows == [(1, "a", 1, 30, "r1"), (2, "a", 3, 40, "r1")]
    assert len(out.keys(columns={"system_tags": True})[0]) == 2 + 6
    assert_prediction_matches(Join(), a, b, c)


def test_join_nullable_tag_keys_do_not_match_nulls():
    a = DictSource({"id": [1, None], "x": [1, 2]}, tag_columns="id", source_id="a", schema={"id": int | None, "x": int})
    b = DictSource({"id": [None, 1], "y": [3, 4]}, tag_columns="id", source_id="b", schema={"id": int | None, "y": int})
    out = Join()(a, b)
    assert out.output_schema()[0] == {"id": int | None}
    assert out.as_table().to_pylist() == [{"id": 1, "x": 1, "y": 4}]


def test_join_rejects_overlapping_packet_columns_naming_them():
    with pytest.raises(InputValidationError, match="'age'"):
        Join()(subjects(), subjects("other"))


def test_join_rejects_tag_type_mismatch_naming_the_column():
    b = DictSource({"id": ["1"], "y": [1]}, tag_columns="id", source_id="b")
    with pytest.raises(SchemaMismatchError, match="'id'.*int.*str|'id'.*str.*int"):
        Join()(subjects(), b)


def test_join_rejects_a_column_that_is_a_tag_in_one_input_and_a_packet_in_another():
    b = DictSource({"k": [1], "id": [1]}, tag_columns="k", source_id="b")
    with pytest.raises(InputValidationError, match="'id'"):
        Join()(subjects(), b)


def test_join_of_empty_stream_is_empty_with_the_predicted_schema():
    empty = DictSource([], tag_columns="id", source_id="e", schema={"id": int, "z": str})
    out = Join()(subjects(), empty)
    assert len(out) == 0
    assert out.as_table(all_info=True).schema.names == [*out.keys(all_info=True)[0], *out.keys(all_info=True)[1]]


# --------------------------------------------------------------------------------------
# MergeJoin
# --------------------------------------------------------------------------------------


def test_merge_join_merges_colliding_packets_into_sorted_lists_with_source_info():
    a = DictSource({"id": [1, 2], "x": [5, 1], "only_a": ["p", "q"]}, tag_columns="id", source_id="a")
    b = DictSource({"id": [2, 1], "x": [3, 2]}, tag_columns="id", source_id="b")
    out = MergeJoin()(a, b)
    tags, packets = out.output_schema()
    assert dict(packets) == {"x": list[int], "only_a": str}
    assert out.output_schema(columns={"source": True})[1]["_source_x"] == list[str]
    rows = sorted(out.as_table(columns={"source": True}).to_pylist(), key=lambda r: r["id"])
    assert rows[0]["x"] == [2, 5] and rows[0]["_source_x"] == ["b::row_1::x", "a::row_0::x"]
    assert rows[1]["x"] == [1, 3] and rows[1]["_source_x"] == ["a::row_1::x", "b::row_0::x"]
    assert rows[0]["_source_only_a"] == "a::row_0::only_a"
    assert_prediction_matches(MergeJoin(), a, b)


def test_merge_join_is_commutative_for_same_schema_sources():
    a = DictSource({"id": [1, 2, 3], "x": [5, 1, None]}, tag_columns="id", source_id="a", schema={"id": int, "x": int | None})
    b = DictSource({"id": [3, 2, 1], "x": [3, 2, 7]}, tag_columns="id", source_id="b", schema={"id": int, "x": int | None})
    ab, ba = MergeJoin()(a, b), MergeJoin()(b, a)
    assert ab.as_table(all_info=True).equals(ba.as_table(all_info=True))
    assert ab.content_hash() == ba.content_hash() and ab.pipeline_hash() == ba.pipeline_hash()
    assert ab.output_schema()[1] == {"x": list[int | None]}
    values = {r["id"]: r["x"] for r in ab.as_table().to_pylist()}
    assert values == {1: [5, 7], 2: [1, 2], 3: [3, None]}  # nulls sort last


def test_merge_join_sorts_system_tag_pairs_per_row():
    a = DictSource({"id": [1, 2], "rid": ["p", "z"], "x": [1, 2]}, tag_columns="id", source_id="s", record_id_column="rid")
    b = DictSource({"id": [1, 2], "rid": ["q", "a"], "x": [3, 4]}, tag_columns="id", source_id="s", record_id_column="rid")
    h = a.pipeline_hash().to_hex(12)
    out = MergeJoin()(a, b)
    rows = sorted(out.as_table(all_info=True).to_pylist(), key=lambda r: r["id"])
    pairs = [(r[f"_tag_record_id::{h}:0"], r[f"_tag_record_id::{h}:1"]) for r in rows]
    assert pairs == [("rid=p", "rid=q"), ("rid=a", "rid=z")]
    assert [r["rid"] for r in rows] == [["p", "q"], ["a", "z"]]
    assert sorted(MergeJoin()(b, a).as_table(all_info=True).to_pylist(), key=lambda r: r["id"]) == rows


def test_merge_join_rejects_colliding_columns_of_different_types():
    a = DictSource({"id": [1], "x": [1]}, tag_columns="id", source_id="a")
    b = DictSource({"id": [1], "x": ["1"]}, tag_columns="id", source_id="b")
    with pytest.raises(SchemaMismatchError, match="'x'"):
        MergeJoin()(a, b)


def test_merge_join_keeps_nested_types_as_list_items():
    out = MergeJoin()(rich("r1"), rich("r2"))
    assert out.output_schema()[1]["meta"] == list[dict[str, str] | None]
    assert out.output_schema()[1]["nested"] == list[list[list[int | None]]]
    row = sorted(out.as_table().to_pylist(maps_as_pydicts="strict"), key=lambda r: r["id"])[0]
    assert row["meta"] == [{"k": "v"}, {"k": "v"}] and row["name"] == ["a", "a"]
    assert_prediction_matches(MergeJoin(), rich("r1"), rich("r2"))


# --------------------------------------------------------------------------------------
# SemiJoin
# --------------------------------------------------------------------------------------


def test_semi_join_keeps_left_rows_matching_right_in_left_order():
    left = DictSource({"id": [4, 1, 2, 1], "x": [1, 2, 3, 4]}, tag_columns="id", source_id="left")
    right = DictSource({"id": [1, 4, 1], "y": [0, 0, 0]}, tag_columns="id", source_id="right")
    out = SemiJoin()(left, right)
    assert out.layout == left.layout
    assert out.as_table(all_info=True).to_pylist() == [
        r for r in left.as_table(all_info=True).to_pylist() if r["id"] in (1, 4)
    ]
    assert_prediction_matches(SemiJoin(), left, right)


def test_semi_join_matches_on_common_packet_columns_too():
    left = DictSource({"id": [1, 2, 3], "x": [1, 2, 3]}, tag_columns="id", source_id="left")
    right = DictSource({"k": [9, 9], "x": [3, 1]}, tag_columns="k", source_id="right")
    assert [r["id"] for r in SemiJoin()(left, right).as_table().to_pylist()] == [1, 3]


def test_semi_join_is_ordered():
    a, b = subjects(), scores()
    assert SemiJoin()(a, b).content_hash() != SemiJoin()(b, a).content_hash()
    assert SemiJoin()(a, b).pipeline_hash() != SemiJoin()(b, a).pipeline_hash()


def test_semi_join_errors():
    b = DictSource({"k": [1], "y": [1]}, tag_columns="k", source_id="b")
    with pytest.raises(InputValidationError, match="share no columns"):
        SemiJoin()(subjects(), b)
    c = DictSource({"id": ["1"], "y": [1]}, tag_columns="id", source_id="c")
    with pytest.raises(SchemaMismatchError, match="'id'"):
        SemiJoin()(subjects(), c)


# --------------------------------------------------------------------------------------
# Batch
# --------------------------------------------------------------------------------------


def test_batch_groups_rows_and_every_column_becomes_a_list():
    s = subjects()
    out = Batch(2)(s)
    assert out.output_schema(all_info=True)[0] == {
        "id": list[int],
        **{name: list[str] for name in s.keys(columns={"system_tags": True})[0][1:]},
    }
    rows = out.as_table(columns={"system_tags": True, "source": True}).to_pylist()
    h = s.pipeline_hash().to_hex(12)
    assert rows == [
        {
            "id": [1, 2],
            f"_tag_source_id::{h}": ["subjects", "subjects"],
            f"_tag_record_id::{h}": ["row_0", "row_1"],
            "age": [30, 40],
            "_source_age": ["subjects::row_0::age", "subjects::row_1::age"],
        },
        {
            "id": [3],
            f"_tag_source_id::{h}": ["subjects"],
            f"_tag_record_id::{h}": ["row_2"],
            "age": [50],
            "_source_age": ["subjects::row_2::age"],
        },
    ]
    assert_prediction_matches(Batch(2), s)


@pytest.mark.parametrize(
    ("batch_size", "drop_partial", "sizes"),
    [(0, False, [5]), (0, True, [5]), (2, False, [2, 2, 1]), (2, True, [2, 2]), (5, False, [5]), (7, True, []), (1, False, [1] * 5)],
)
def test_batch_sizes(batch_size, drop_partial, sizes):
    s = DictSource({"i": list(range(5)), "v": list(range(5))}, tag_columns="i", source_id="s")
    rows = Batch(batch_size, drop_partial_batch=drop_partial)(s).as_table().to_pylist()
    assert [len(r["i"]) for r in rows] == sizes
    assert [v for r in rows for v in r["v"]] == list(range(sum(sizes)))


def test_batch_keeps_item_nullability_and_nested_types():
    out = Batch()(rich())
    assert out.output_schema()[1] == {
        "meta": list[dict[str, str] | None],
        "nested": list[list[list[int | None]]],
        "maybe": list[int | None],
        "name": list[str],
    }
    [row] = out.as_table().to_pylist(maps_as_pydicts="strict")
    assert row["meta"] == [{"k": "v"}, None, {}] and row["maybe"] == [None, 5, 6]
    assert_prediction_matches(Batch(), rich())


def test_batch_of_empty_stream_is_empty():
    empty = DictSource([], tag_columns="id", source_id="e", schema={"id": int, "z": str})
    out = Batch()(empty)
    assert len(out) == 0 and out.output_schema() == ({"id": list[int]}, {"z": list[str]})


def test_batch_rejects_bad_batch_size():
    with pytest.raises(InputValidationError, match="batch_size"):
        Batch(-1)


# --------------------------------------------------------------------------------------
# Select / drop
# --------------------------------------------------------------------------------------


def two_tag_stream():
    return DictSource(
        {"subject": [1, 2], "session": ["a", "b"], "x": [1.0, 2.0], "y": ["p", "q"], "z": [True, False]},
        tag_columns=["subject", "session"],
        source_id="s",
    )


def test_select_and_drop_tag_columns_keep_system_tags():
    s = two_tag_stream()
    sys_tags = s.keys(columns={"system_tags": True})[0][2:]
    out = SelectTagColumns(["session"])(s)
    assert out.keys(columns={"system_tags": True})[0] == ("session", *sys_tags)
    assert out.as_table().to_pylist()[0] == {"session": "a", "x": 1.0, "y": "p", "z": True}
    assert DropTagColumns("session")(s).keys() == (("subject",), ("x", "y", "z"))
    assert_prediction_matches(SelectTagColumns(["session"]), s)


def test_select_and_drop_packet_columns_carry_their_source_info():
    s = two_tag_stream()
    out = SelectPacketColumns(["z", "x"])(s)
    assert out.keys(columns={"source": True})[1] == ("z", "x", "_source_z", "_source_x")
    assert out.as_table(columns={"source": True}).column("_source_x").to_pylist() == ["s::row_0::x", "s::row_1::x"]
    dropped = DropPacketColumns(["x", "y"])(s)
    assert dropped.keys(columns={"source": True})[1] == ("z", "_source_z")
    assert_prediction_matches(DropPacketColumns(["x", "y"]), s)


@pytest.mark.parametrize("op_type", [SelectTagColumns, DropTagColumns, SelectPacketColumns, DropPacketColumns])
def test_select_drop_unknown_column_strictness(op_type):
    s = two_tag_stream()
    with pytest.raises(InputValidationError, match="'nope'"):
        op_type(["nope"])(s)
    lenient = op_type(["nope"], strict=False)(s)
    assert lenient.keys() == op_type([], strict=False)(s).keys()


def test_select_tag_columns_rejects_packet_column_names():
    with pytest.raises(InputValidationError, match="unknown tag column.*'x'"):
        SelectTagColumns("x")(two_tag_stream())


# --------------------------------------------------------------------------------------
# MapTags / MapPackets
# --------------------------------------------------------------------------------------


def test_map_packets_renames_source_info_without_rewriting_values():
    s = two_tag_stream()
    out = MapPackets({"x": "signal"})(s)
    table = out.as_table(columns={"source": True})
    assert table.column_names == ["subject", "session", "signal", "y", "z", "_source_signal", "_source_y", "_source_z"]
    assert table.column("_source_signal").to_pylist() == ["s::row_0::x", "s::row_1::x"]
    assert table.column("signal").to_pylist() == [1.0, 2.0]
    assert_prediction_matches(MapPackets({"x": "signal"}), s)


def test_map_packets_drop_unmapped_drops_columns_and_their_source_info():
    out = MapPackets({"y": "label"}, drop_unmapped=True)(two_tag_stream())
    assert out.keys(columns={"source": True}) == (("subject", "session"), ("label", "_source_label"))


def test_map_tags_renames_and_drop_unmapped():
    s = two_tag_stream()
    assert MapTags({"subject": "sid"})(s).keys() == (("sid", "session"), ("x", "y", "z"))
    out = MapTags({"session": "visit"}, drop_unmapped=True)(s)
    assert out.keys(columns={"system_tags": True})[0][0] == "visit" and len(out.keys(columns={"system_tags": True})[0]) == 3
    assert out.as_table().to_pylist()[1] == {"visit": "b", "x": 2.0, "y": "q", "z": False}


def test_map_allows_swapping_names():
    out = MapPackets({"x": "y", "y": "x"})(two_tag_stream())
    row = out.as_table(columns={"source": True}).to_pylist()[0]
    assert row["x"] == "p" and row["y"] == 1.0 and row["_source_y"] == "s::row_0::x"


@pytest.mark.parametrize(
    ("op", "pattern"),
    [
        (MapPackets({"x": "y"}), "'y'"),
        (MapPackets({"x": "subject"}), "'subject'"),
        (MapTags({"subject": "session"}), "'session'"),
        (MapTags({"subject": "x"}), "'x'"),
        (MapPackets({"x": "q", "y": "q"}), "'q'"),
        (MapPackets({"nope": "q"}), "'nope'"),
        (MapTags({"x": "q"}), "'x'"),
    ],
)
def test_map_rejects_collisions_and_unknown_columns(op, pattern):
    with pytest.raises(InputValidationError, match=pattern):
        op(two_tag_stream())


def test_map_rejects_reserved_names():
    with pytest.raises(InputValidationError, match="_source_x"):
        MapPackets({"x": "_source_x"})


# --------------------------------------------------------------------------------------
# PolarsFilter
# --------------------------------------------------------------------------------------


def test_polars_filter_with_predicates_and_equalities():
    s = two_tag_stream()
    assert [r["subject"] for r in PolarsFilter(pl.col("x") > 1.5)(s).as_table().to_pylist()] == [2]
    assert [r["subject"] for r in PolarsFilter(session="a")(s).as_table().to_pylist()] == [1]
    assert len(PolarsFilter(pl.col("x") > 0, z=False, session="a")(s)) == 0
    out = PolarsFilter(pl.col("y") == "q")(s)
    assert out.as_table(all_info=True).to_pylist() == s.as_table(all_info=True).to_pylist()[1:]
    assert_prediction_matches(PolarsFilter(pl.col("y") == "q"), s)


def test_polars_filter_nulls():
    s = DictSource({"id": [1, 2, 3], "v": [1, None, 3]}, tag_columns="id", source_id="n", schema={"id": int, "v": int | None})
    assert [r["id"] for r in PolarsFilter(pl.col("v") > 0)(s).as_table().to_pylist()] == [1, 3]  # null → dropped
    assert [r["id"] for r in PolarsFilter(v=None)(s).as_table().to_pylist()] == [2]
    assert PolarsFilter(v=None)(s).output_schema()[1] == {"v": int | None}


def test_polars_filter_rejects_unknown_columns():
    s = two_tag_stream()
    with pytest.raises(InputValidationError, match="'nope'"):
        PolarsFilter(nope=1)(s)
    with pytest.raises(InputValidationError, match="'missing'"):
        PolarsFilter(pl.col("missing") > 1)(s)
    with pytest.raises(InputValidationError, match="polars expressions"):
        PolarsFilter("x > 1")


def test_polars_filter_identity_depends_on_predicates():
    s = two_tag_stream()
    assert PolarsFilter(pl.col("x") > 1)(s).content_hash() == PolarsFilter(pl.col("x") > 1)(s).content_hash()
    assert PolarsFilter(pl.col("x") > 1)(s).content_hash() != PolarsFilter(pl.col("x") > 2)(s).content_hash()
    assert PolarsFilter(session="a")(s).pipeline_hash() != PolarsFilter(session="b")(s).pipeline_hash()


# --------------------------------------------------------------------------------------
# Hashes
# --------------------------------------------------------------------------------------


def test_content_hash_follows_source_ids_while_pipeline_hash_follows_shape():
    out1 = Join()(subjects("s1"), scores("t1"))
    out2 = Join()(subjects("s2"), scores("t1"))
    assert out1.content_hash() != out2.content_hash()
    assert out1.pipeline_hash() == out2.pipeline_hash()
    batched1, batched2 = Batch(2)(subjects("s1")), Batch(2)(subjects("s2"))
    assert batched1.content_hash() != batched2.content_hash()
    assert batched1.pipeline_hash() == batched2.pipeline_hash()


def test_operator_config_is_part_of_the_identity():
    s = subjects()
    assert Batch(2)(s).pipeline_hash() != Batch(3)(s).pipeline_hash()
    assert MapTags({"id": "a"})(s).content_hash() != MapTags({"id": "b"})(s).content_hash()
    assert Join()(s, scores()).pipeline_hash() != MergeJoin()(s, scores()).pipeline_hash()


def test_hashes_are_stable_for_equal_pipelines():
    a = MapPackets({"age": "years"})(subjects()).batch(2)
    b = MapPackets({"age": "years"})(subjects()).batch(2)
    assert a.content_hash() == b.content_hash() and a.pipeline_hash() == b.pipeline_hash()


def test_join_keeps_unambiguous_meta_columns_and_drops_shared_ones():
    a = TableStream(pa.table({"id": [1, 2], "x": [1, 2], "__run": ["r1", "r1"], "__only_a": [True, False]}), ["id"])
    b = TableStream(pa.table({"id": [2, 1], "y": [3, 4], "__run": ["r2", "r2"]}), ["id"])
    out = Join()(a, b)
    assert out.keys(columns={"meta": True})[1] in (("x", "y", "__only_a"), ("y", "x", "__only_a"))
    assert sorted(out.as_table(columns={"meta": True}).column("__only_a").to_pylist()) == [False, True]
    assert_prediction_matches(Join(), a, b)
