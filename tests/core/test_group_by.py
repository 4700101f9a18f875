"""GroupBy: rows and their order, predicted schemas, hidden columns as lists, identity, errors,
and GroupBy nodes in pipelines (cached reruns, save/load)."""

from __future__ import annotations

import datetime
import importlib
import itertools
import math
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from orcapod_core import GroupBy, Pipeline
from orcapod_core.databases import DeltaTableDatabase
from orcapod_core.errors import InputValidationError, SchemaMismatchError
from orcapod_core.operators import Batch, Join
from orcapod_core.pipeline import LoadStatus
from orcapod_core.sources import ArrowTableSource, CSVSource, DictSource
from orcapod_core.streams import TableStream

_counter = itertools.count()


def penguins(source_id="penguins"):
    return DictSource(
        {
            "penguin": [1, 2, 3, 4, 5, 6],
            "species": ["gentoo", "adelie", "gentoo", "chinstrap", "adelie", "gentoo"],
            "island": ["biscoe", "dream", "biscoe", "dream", "torgersen", "biscoe"],
            "mass": [5.0, 3.7, 5.4, 3.8, 3.5, None],
        },
        tag_columns=["penguin", "species", "island"],
        source_id=source_id,
        schema={"penguin": int, "species": str, "island": str, "mass": float | None},
    )


def assert_prediction_matches(op, *inputs):
    predicted = op.output_layout(*inputs).schema
    computed = op.compute(*inputs).schema
    assert computed.equals(predicted), f"predicted {predicted}\ncomputed {computed}"
    assert op(*inputs)._table().schema.equals(predicted)


# --------------------------------------------------------------------------------------
# Rows and order
# --------------------------------------------------------------------------------------


def test_one_row_per_key_in_sorted_order_with_rows_in_input_order():
    out = penguins().group_by("species")
    assert out.keys() == (("species", "penguin", "island"), ("mass",))
    assert out.as_table().to_pylist() == [
        {"species": "adelie", "penguin": [2, 5], "island": ["dream", "torgersen"], "mass": [3.7, 3.5]},
        {"species": "chinstrap", "penguin": [4], "island": ["dream"], "mass": [3.8]},
        {"species": "gentoo", "penguin": [1, 3, 6], "island": ["biscoe", "biscoe", "biscoe"], "mass": [5.0, 5.4, None]},
    ]


def test_several_keys_sort_lexicographically_in_the_order_given():
    s = penguins()
    by_island = s.group_by(["island", "species"]).as_table().to_pylist()
    assert [(r["island"], r["species"], r["penguin"]) for r in by_island] == [
        ("biscoe", "gentoo", [1, 3, 6]),
        ("dream", "adelie", [2]),
        ("dream", "chinstrap", [4]),
        ("torgersen", "adelie", [5]),
    ]
    by_species = s.group_by(["species", "island"]).as_table().to_pylist()
    assert [(r["species"], r["island"]) for r in by_species] == [
        ("adelie", "dream"),
        ("adelie", "torgersen"),
        ("chinstrap", "dream"),
        ("gentoo", "biscoe"),
    ]
    assert s.group_by(["species", "island"]).keys()[0] == ("species", "island", "penguin")


def test_null_keys_form_one_group_sorted_last():
    s = DictSource(
        {"id": [1, 2, 3, 4, 5], "k": [2, None, 1, None, 2], "x": ["a", "b", "c", "d", "e"]},
        tag_columns=["id", "k"],
        source_id="nulls",
        schema={"id": int, "k": int | None, "x": str},
    )
    rows = s.group_by("k").as_table().to_pylist()
    assert rows == [
        {"k": 1, "id": [3], "x": ["c"]},
        {"k": 2, "id": [1, 5], "x": ["a", "e"]},
        {"k": None, "id": [2, 4], "x": ["b", "d"]},
    ]
    assert s.group_by("k").output_schema()[0] == {"k": int | None, "id": list[int]}


def test_float_keys_follow_the_canonical_encoding():
    # every NaN is one value; -0.0 and 0.0 are different values (docs/concepts.md)
    nan = float("nan")
    s = DictSource({"id": [1, 2, 3, 4, 5], "f": [0.0, -0.0, nan, 1.5, -nan]}, tag_columns=["id", "f"], source_id="floats")
    rows = s.group_by("f").as_table().to_pylist()
    assert [r["id"] for r in rows] == [[2], [1], [4], [3, 5]]
    assert str(rows[0]["f"]) == "-0.0" and str(rows[1]["f"]) == "0.0"


def test_matches_a_plain_python_grouping_on_random_data():
    rng = random.Random(7)
    n = 2000
    data = {
        "id": list(range(n)),
        "a": [rng.choice(["x", "y", "z", None]) for _ in range(n)],
        "b": [rng.randrange(5) for _ in range(n)],
        "v": [rng.random() for _ in range(n)],
    }
    s = DictSource(data, tag_columns=["id", "a", "b"], source_id="random", schema={"id": int, "a": str | None, "b": int, "v": float})
    expected: dict[tuple, list[int]] = {}
    for i in range(n):
        expected.setdefault((data["a"][i], data["b"][i]), []).append(i)
    order = sorted(expected, key=lambda k: (k[0] is None, k[0] or "", k[1]))
    rows = s.group_by(["a", "b"]).as_table().to_pylist()
    assert [(r["a"], r["b"]) for r in rows] == order
    assert [r["id"] for r in rows] == [expected[k] for k in order]
    assert [r["v"] for r in rows] == [[data["v"][i] for i in expected[k]] for k in order]


def _plain(value):
    """A value comparable with ==: floats by repr (NaN equals NaN, -0.0 differs from 0.0)."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _same_key(value):
    # the canonical encoding's equality: every NaN one value, -0.0 not 0.0
    if isinstance(value, float):
        return "nan" if math.isnan(value) else (value, math.copysign(1.0, value))
    return value


def _sort_key(value):
    # polars' order: nulls last; floats by value, -0.0 first, NaN after every number
    if value is None:
        return (1,)
    if isinstance(value, float):
        return (0, math.isnan(value), 0.0 if math.isnan(value) else value, math.copysign(1.0, value) > 0)
    return (0, value)


def python_group_by(rows: list[dict], by: list[str]) -> list[dict]:
    """GroupBy written the obvious way, row by row, to check the columnar one against."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(_same_key(row[b]) for b in by), []).append(row)
    ordered = sorted(groups.values(), key=lambda members: tuple(_sort_key(members[0][b]) for b in by))
    return [
        {c: (members[0][c] if c in by else [m[c] for m in members]) for c in members[0]}
        for members in ordered
    ]


def check_against_python(stream, by: list[str]) -> None:
    hidden = {"system_tags": True, "source": True}
    got = GroupBy(by)(stream).as_table(columns=hidden)
    expected = python_group_by(stream.as_table(columns=hidden).to_pylist(), by)
    assert [_plain(r) for r in got.to_pylist()] == [_plain({c: r[c] for c in got.column_names}) for r in expected]
    assert_prediction_matches(GroupBy(by), stream)


@pytest.mark.parametrize("groups", [3, 4096, 4097, 6000])
def test_few_and_many_groups_give_the_same_rows_as_plain_python(groups):
    # up to 4,096 groups are counted (Arrow's counting sort), more are hash-grouped by polars
    rng = random.Random(groups)
    n = 3 * groups
    keys = [rng.randrange(groups) for _ in range(n)]
    data = {"id": list(range(n)), "k": [f"k{v}" if v else None for v in keys], "x": [rng.random() for _ in range(n)]}
    s = DictSource(data, tag_columns=["id", "k"], source_id="many", schema={"id": int, "k": str | None, "x": float})
    check_against_python(s, ["k"])


@pytest.mark.parametrize("widths, n", [((3, 5), 3000), ((100, 100), 3000), ((3000, 3), 9000)])
def test_several_keys_with_many_combinations_give_the_same_rows_as_plain_python(widths, n):
    # (100, 100): 10,000 combinations possible, fewer present -> renumbered densely and counted;
    # (3000, 3): more than 4,096 combinations present -> polars
    rng = random.Random(sum(widths))
    data = {
        "id": list(range(n)),
        "a": [rng.randrange(widths[0]) for _ in range(n)],
        "b": [rng.choice([None, *map(str, range(widths[1]))]) for _ in range(n)],
        "x": [rng.randrange(9) for _ in range(n)],
    }
    s = DictSource(data, tag_columns=["id", "a", "b"], source_id="combos", schema={"id": int, "a": int, "b": str | None, "x": int})
    check_against_python(s, ["a", "b"])
    check_against_python(s, ["b", "a"])


def test_a_long_stream_hashed_on_several_threads_gives_the_same_rows_as_plain_python():
    # >= 100,000 rows: the key is dictionary-encoded in one piece per core, then unified
    rng = random.Random(11)
    n = 150_000
    data = {"id": list(range(n)), "k": [rng.choice(["b", "a", None, "c", "d"]) for _ in range(n)], "x": list(range(n))}
    s = DictSource(data, tag_columns=["id", "k"], source_id="long", schema={"id": int, "k": str | None, "x": int})
    check_against_python(s, ["k"])


@pytest.mark.parametrize(
    "values, arrow_type",
    [
        ([True, None, False, True, False], pa.bool_()),
        ([b"b", b"a", None, b"b", b""], pa.large_binary()),
        ([datetime.date(2024, 1, 2), datetime.date(2023, 5, 1), None, datetime.date(2024, 1, 2), datetime.date(1999, 1, 1)], pa.date32()),
        ([datetime.datetime(2024, 1, 2, 3), None, datetime.datetime(2024, 1, 2, 3), datetime.datetime(2020, 1, 1), datetime.datetime(2030, 1, 1)], pa.timestamp("us")),
        ([0.0, -0.0, float("nan"), None, -float("nan"), 1.5, -2.0, float("inf")], pa.float64()),
        ([1.5, None, -0.0, 0.0, float("nan")], pa.float32()),
        ([3, -1, None, 3, 2**40], pa.int64()),
    ],
)
def test_every_key_type_groups_like_plain_python(values, arrow_type):
    n = len(values)
    table = pa.table({"id": pa.array(range(n), pa.int64()), "k": pa.array(values, arrow_type), "x": pa.array(range(n), pa.int64())})
    check_against_python(ArrowTableSource(table, tag_columns=["id", "k"], source_id="types"), ["k"])


@pytest.mark.parametrize("n", [50, 120_000])
def test_keys_already_in_order_give_the_same_rows_as_plain_python(n):
    # the rows need no moving (the gather is skipped); 120,000 rows: the threaded path
    data = {"id": list(range(n)), "k": [i * 7 // n for i in range(n)], "x": [f"v{i}" for i in range(n)]}
    s = DictSource(data, tag_columns=["id", "k"], source_id="sorted", schema={"id": int, "k": int, "x": str})
    check_against_python(s, ["k"])


def test_constant_and_all_null_columns_are_lists_like_any_other():
    # a column of one value (or only nulls) is the same in any order, so GroupBy does not gather
    # it; one that differs in a single row is not constant
    n = 1000
    almost = ["same"] * n
    almost[517] = "other"  # not one of the rows checked first
    table = pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "k": pa.array([i % 7 for i in reversed(range(n))], pa.int64()),
            "same": pa.array(["same"] * n, pa.large_string()),
            "almost": pa.array(almost, pa.large_string()),
            "blob": pa.array([b"\x00"] * n, pa.large_binary()),
            "nothing": pa.array([None] * n, pa.large_string()),
        }
    )
    s = ArrowTableSource(table, tag_columns=["id", "k"], source_id="constant")
    check_against_python(s, ["k"])
    rows = GroupBy("k")(s).as_table().to_pylist()
    assert [r["almost"].count("other") for r in rows] == [1 if k == (n - 1 - 517) % 7 else 0 for k in range(7)]


def test_empty_stream_gives_an_empty_stream_with_the_predicted_schema():
    s = penguins().polars_filter(species="emperor")
    out = GroupBy("species")(s)
    assert len(out) == 0
    assert_prediction_matches(GroupBy("species"), s)


# --------------------------------------------------------------------------------------
# Schemas and hidden columns
# --------------------------------------------------------------------------------------


def test_predicted_schema_equals_the_computed_one_for_rich_types():
    s = DictSource(
        {
            "id": [1, 2, 3],
            "g": ["a", "b", "a"],
            "when": [None, 5, 6],
            "meta": [{"k": "v"}, None, {}],
            "nested": [[[1, None]], [], [[2], [3]]],
        },
        tag_columns=["id", "g", "when"],
        source_id="rich",
        schema={"id": int, "g": str, "when": int | None, "meta": dict[str, str] | None, "nested": list[list[int | None]]},
    )
    out = s.group_by("g")
    assert out.output_schema() == (
        {"g": str, "id": list[int], "when": list[int | None]},
        {"meta": list[dict[str, str] | None], "nested": list[list[list[int | None]]]},
    )
    assert_prediction_matches(GroupBy("g"), s)
    assert out.as_table().to_pylist()[0]["meta"] == [[("k", "v")], []]


def test_system_tags_and_source_info_become_lists_in_group_order():
    s = penguins()
    out = s.group_by("species")
    sid, rid = s.layout.system_tag_columns
    tags, packets = out.output_schema(all_info=True)
    assert tags[sid] == list[str] and tags[rid] == list[str] and packets["_source_mass"] == list[str]
    adelie = out.as_table(all_info=True).to_pylist()[0]
    assert adelie[sid] == ["penguins", "penguins"]
    assert adelie[rid] == ["row_1", "row_4"]
    assert adelie["_source_mass"] == ["penguins::row_1::mass", "penguins::row_4::mass"]


def test_group_by_after_a_join_keeps_every_input_s_system_tags_as_lists():
    s = penguins()
    sizes = DictSource({"species": ["adelie", "gentoo"], "size": ["s", "l"]}, tag_columns="species", source_id="sizes")
    joined = Join()(s, sizes)
    out = joined.group_by("species")
    assert out.layout.system_tag_columns == joined.layout.system_tag_columns
    rows = out.as_table(columns="system_tags").to_pylist()
    assert [r["species"] for r in rows] == ["adelie", "gentoo"]
    size_ids = [c for c in out.layout.system_tag_columns if c.startswith("_tag_source_id") and rows[0][c][0] == "sizes"]
    assert len(size_ids) == 1 and rows[1][size_ids[0]] == ["sizes", "sizes", "sizes"]
    assert_prediction_matches(GroupBy("species"), joined)


# --------------------------------------------------------------------------------------
# Identity
# --------------------------------------------------------------------------------------


def test_identity_is_class_and_by_and_a_str_equals_a_one_item_list():
    s = penguins()
    assert GroupBy("species").config() == {"by": ["species"]}
    assert GroupBy("species")(s).content_hash() == GroupBy(["species"])(s).content_hash() == s.group_by("species").content_hash()
    assert GroupBy(["species", "island"])(s).content_hash() != GroupBy(["island", "species"])(s).content_hash()
    assert GroupBy("species")(s).content_hash() != Batch()(s).content_hash()
    assert GroupBy("species")(s).pipeline_hash() == GroupBy("species")(penguins("other")).pipeline_hash()
    assert GroupBy("species")(s).content_hash() != GroupBy("species")(penguins("other")).content_hash()
    op = GroupBy(["island", "species"])
    again = GroupBy.from_config(op.config())
    assert again.config() == op.config() and again(s).content_hash() == op(s).content_hash()


def test_hashes_and_rows_are_the_same_in_another_process():
    code = (
        "from orcapod_core.sources import DictSource\n"
        "s = DictSource({'id': [1, 2, 3], 'g': ['b', 'a', 'b'], 'x': [1.0, 2.0, 3.0]}, tag_columns=['id', 'g'], source_id='p')\n"
        "out = s.group_by('g')\n"
        "print(out.content_hash().to_string(), out.pipeline_hash().to_string(), out.packet_hashes().to_pylist())\n"
    )
    s = DictSource({"id": [1, 2, 3], "g": ["b", "a", "b"], "x": [1.0, 2.0, 3.0]}, tag_columns=["id", "g"], source_id="p")
    out = s.group_by("g")
    expected = f"{out.content_hash().to_string()} {out.pipeline_hash().to_string()} {out.packet_hashes().to_pylist()}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == expected


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


def test_a_packet_column_is_refused_naming_it_and_the_tag_columns():
    with pytest.raises(InputValidationError, match=r"GroupBy: 'mass' is a packet column, not a tag column \(tag columns: \['penguin', 'species', 'island'\]\)"):
        penguins().group_by("mass")


def test_an_unknown_column_is_refused_naming_it():
    with pytest.raises(InputValidationError, match=r"'specie' is not a column of the stream, not a tag column \(tag columns: \["):
        penguins().group_by(["island", "specie"])


def test_list_tag_columns_cannot_be_keys():
    batched = penguins().batch(2)
    with pytest.raises(SchemaMismatchError, match=r"tag column 'species' has type list\[str\]"):
        batched.group_by("species")


@pytest.mark.parametrize(
    "by, pattern",
    [([], "at least one"), (["species", "species"], r"\['species'\] more than once"), (3, "got 3"), ([""], "non-empty"), (b"x", "got b'x'")],
)
def test_bad_by_values_are_refused(by, pattern):
    with pytest.raises(InputValidationError, match=pattern):
        GroupBy(by)


# --------------------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------------------

FUNCS = '''
from orcapod_core import function_pod

CALLS = []

@function_pod(output_keys=["n", "mean_mass"])
def summarize(mass: list[float]) -> tuple[int, float]:
    CALLS.append(len(mass))
    return len(mass), sum(mass) / len(mass)
'''


@pytest.fixture
def funcs(tmp_path, monkeypatch):
    name = f"group_by_funcs_{next(_counter)}"
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / f"{name}.py").write_text(FUNCS)
    monkeypatch.syspath_prepend(str(folder))
    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)


def write_penguins(path: Path, rows: list[tuple[int, str, float]]) -> Path:
    path.write_text("penguin,species,mass\n" + "".join(f"{p},{s},{m}\n" for p, s, m in rows))
    return path


ROWS = [(1, "gentoo", 5.0), (2, "adelie", 3.7), (3, "gentoo", 5.4), (4, "chinstrap", 3.8), (5, "adelie", 3.5)]


def build(tmp_path, funcs):
    csv = tmp_path / "penguins.csv"
    if not csv.exists():
        write_penguins(csv, ROWS)
    with Pipeline("lab", pipeline_database=DeltaTableDatabase(tmp_path / "store")) as p:
        birds = CSVSource(csv, tag_columns=["penguin", "species"], source_id="penguins", label="birds")
        per_species = birds.group_by("species", label="per_species")
        funcs.summarize.pod(per_species, label="summary")
    return p


def summary_rows(p):
    return [(r["species"], r["n"], round(r["mean_mass"], 3)) for r in p.summary.as_table().to_pylist()]


def test_pipeline_with_a_group_by_node_runs_and_a_second_run_is_cached(tmp_path, funcs):
    p = build(tmp_path, funcs)
    assert p.per_species.kind == "operator" and isinstance(p.per_species.operator, GroupBy)
    first = p.run()
    assert (first.computed, first.failed) == (3, 0)
    assert summary_rows(p) == [("adelie", 2, 3.6), ("chinstrap", 1, 3.8), ("gentoo", 2, 5.2)]
    assert p.per_species.as_table().column("penguin").to_pylist() == [[2, 5], [4], [1, 3]]

    again = build(tmp_path, funcs)
    second = again.run()
    assert (second.computed, second.cached) == (0, 3) and len(funcs.CALLS) == 3
    assert summary_rows(again) == summary_rows(p)

    # a new penguin changes one group: only that group's packet is computed
    write_penguins(tmp_path / "penguins.csv", [*ROWS, (6, "chinstrap", 4.0)])
    third = build(tmp_path, funcs).run()
    assert (third.computed, third.cached) == (1, 2)


def test_group_by_node_round_trips_through_save_and_load(tmp_path, funcs):
    p = build(tmp_path, funcs)
    p.run()
    saved = p.save(tmp_path / "lab.json")
    assert "orcapod_core.operators.group_by:GroupBy" in saved.read_text()
    q = Pipeline.load(saved)
    node = q.nodes["per_species"]
    assert isinstance(node.operator, GroupBy) and node.operator.by == ("species",)
    assert node.load_status is LoadStatus.FULL
    for label in p.nodes:
        old, new = p.nodes[label], q.nodes[label]
        assert (new.content_hash(), new.pipeline_hash(), new.record_path) == (old.content_hash(), old.pipeline_hash(), old.record_path)
        assert new.layout == old.layout, label
    result = q.run()
    assert (result.computed, result.cached) == (0, 3)
    assert q.per_species.as_table(all_info=True).equals(p.per_species.as_table(all_info=True))
    assert summary_rows(q) == summary_rows(p)


def test_group_by_of_a_table_stream_predicts_its_schema():
    table = pa.table({"k": pa.array([3, 1, 3], pa.int32()), "v": pa.array(["a", "b", "c"], pa.large_string())})
    s = TableStream(table, tag_columns=["k"])
    out = GroupBy("k")(s)
    assert out.as_table().to_pylist() == [{"k": 1, "v": ["b"]}, {"k": 3, "v": ["a", "c"]}]
    assert_prediction_matches(GroupBy("k"), s)
