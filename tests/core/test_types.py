import datetime

import pyarrow as pa
import pytest

from orcapod_core.errors import UnsupportedTypeError
from orcapod_core.types import (
    Schema,
    arrow_schema,
    arrow_to_python,
    canonicalize_table,
    is_assignable,
    python_to_arrow,
    schema_from_arrow,
    type_to_string,
)

ROUND_TRIP_TYPES = [
    int,
    float,
    str,
    bool,
    bytes,
    datetime.date,
    datetime.datetime,
    datetime.time,
    list[int],
    list[int | None],
    list[list[str]],
    dict[str, str],
    dict[str, int | None],
    dict[str, list[float]],
    list[dict[str, str]],
    int | None,
    list[str] | None,
    dict[str, str] | None,
]


@pytest.mark.parametrize("tp", ROUND_TRIP_TYPES, ids=type_to_string)
def test_python_arrow_round_trip_is_exact(tp):
    field = arrow_schema({"c": tp}).field("c")
    assert arrow_to_python(field.type, field.nullable) == tp


@pytest.mark.parametrize("tp", ROUND_TRIP_TYPES, ids=type_to_string)
def test_values_round_trip_through_arrow(tp):
    samples = {
        int: 3, float: 1.5, str: "é", bool: True, bytes: b"\x00\x01",
        datetime.date: datetime.date(2024, 2, 29), datetime.datetime: datetime.datetime(2024, 1, 2, 3, 4, 5, 6),
        datetime.time: datetime.time(1, 2, 3, 4),
    }
    def sample(t):
        if t in samples:
            return samples[t]
        origin = getattr(t, "__origin__", None)
        args = getattr(t, "__args__", ())
        if origin is list:
            return [sample(args[0]), sample(args[0])]
        if origin is dict:
            return {"k": sample(args[1])}
        return sample([a for a in args if a is not type(None)][0])  # T | None
    value = sample(tp)
    table = pa.Table.from_pylist([{"c": value}], schema=arrow_schema({"c": tp}))
    out = table.to_pylist(maps_as_pydicts="strict")[0]["c"]
    assert out == value
    assert schema_from_arrow(table.schema) == {"c": tp}


def test_map_type_is_arrow_map():
    assert pa.types.is_map(python_to_arrow(dict[str, str]))
    assert python_to_arrow(str) == pa.large_string()


def test_unsupported_types_name_the_column():
    with pytest.raises(UnsupportedTypeError, match="'weird'"):
        arrow_schema({"weird": set[int]})
    with pytest.raises(UnsupportedTypeError, match="dict keys"):
        python_to_arrow(dict[int, str])
    with pytest.raises(UnsupportedTypeError, match="union"):
        python_to_arrow(int | str)


def test_schema_is_immutable_mapping_equal_to_dict():
    s = Schema({"a": int, "b": str | None}, optional_fields=["b"])
    assert s == {"a": int, "b": str | None}
    assert s != {"a": int}
    assert list(s) == ["a", "b"]
    assert s.optional_fields == {"b"}
    assert hash(s) == hash(Schema({"a": int, "b": str | None}))
    with pytest.raises(AttributeError):
        s.x = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        s["a"] = float  # type: ignore[index]
    with pytest.raises(UnsupportedTypeError):
        Schema({"a": int}, optional_fields=["zz"])


def test_schema_merge_conflict_names_column():
    with pytest.raises(UnsupportedTypeError, match="'a'"):
        Schema({"a": int}).merge({"a": str})
    assert Schema({"a": int}).merge({"b": str}) == {"a": int, "b": str}


def test_canonicalize_casts_aliases_and_infers_nullability():
    table = pa.table(
        {
            "i": pa.array([1, 2], pa.int32()),
            "s": pa.array(["a", None], pa.string()),
            "l": pa.array([[1], [2]], pa.list_(pa.int16())),
            "d": pa.array(["x", "y"]).dictionary_encode(),
        }
    )
    out = canonicalize_table(table)
    assert schema_from_arrow(out.schema) == {"i": int, "s": str | None, "l": list[int], "d": str}
    nested = canonicalize_table(pa.table({"n": [[1, None]], "m": [[["a"]]]}))
    assert schema_from_arrow(nested.schema) == {"n": list[int | None], "m": list[list[str]]}
    assert out.column("i").to_pylist() == [1, 2]


def test_canonicalize_rejects_tz_aware_timestamps_naming_column():
    table = pa.table({"ts": pa.array([0], pa.timestamp("s", tz="UTC"))})
    with pytest.raises(UnsupportedTypeError, match="'ts'"):
        canonicalize_table(table)


def test_assignability():
    assert is_assignable(int, int | None)
    assert not is_assignable(int | None, int)
    assert is_assignable(int, float)
    assert not is_assignable(int, str)
    assert is_assignable(list[int], list[int])
    assert not is_assignable(list[int], list[str])


def test_type_strings_are_canonical():
    assert type_to_string(dict[str, list[int | None]] | None) == "dict[str, list[int | None]] | None"
    assert type_to_string(datetime.datetime) == "datetime.datetime"


# -- values are stored exactly or not at all (E2) ------------------------------------------


from orcapod_core.errors import InputValidationError  # noqa: E402
from orcapod_core.types import MAX_NESTING_DEPTH, check_map_keys  # noqa: E402
from orcapod_core.values import strict_array, value_problem  # noqa: E402

_INT = pa.field("x", pa.int64(), nullable=False)


@pytest.mark.parametrize(
    ("values", "dtype", "stored"),
    [
        ([1, 2.0], pa.int64(), [1, 2]),  # an integral float is the same number
        ([1, 2], pa.float64(), [1.0, 2.0]),  # exact widening
        ([float("nan"), -0.0], pa.float64(), None),
        ([(1, 2)], pa.large_list(pa.int64()), [[1, 2]]),
        ([{"a": 1}, [("b", 2)]], pa.map_(pa.large_string(), pa.int64()), [[("a", 1)], [("b", 2)]]),
        ([bytearray(b"x")], pa.large_binary(), [b"x"]),
        ([datetime.datetime(2024, 1, 2, 3)], pa.timestamp("us"), [datetime.datetime(2024, 1, 2, 3)]),
    ],
)
def test_strict_array_keeps_values_that_arrive_unchanged(values, dtype, stored):
    arr = strict_array(values, pa.field("x", dtype))
    if stored is not None:
        assert arr.to_pylist() == stored
    else:
        assert len(arr) == len(values)


@pytest.mark.parametrize(
    ("value", "dtype", "problem"),
    [
        (2.5, pa.int64(), "float 2.5, which would be stored as 2"),  # pa.array alone stores 2
        ([1.5], pa.large_list(pa.int64()), r"list \[1.5\], which would be stored as \[1\]"),
        ({"a": 1.5}, pa.map_(pa.large_string(), pa.int64()), "would be stored as"),
        (datetime.datetime(2024, 1, 2, 12), pa.date32(), "would be stored as datetime.date"),
        (datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone.utc), pa.timestamp("us"), "would be stored as"),
        ("a", pa.large_binary(), "str 'a', which would be stored as b'a'"),
        (b"a", pa.large_string(), "would be stored as 'a'"),
        (2**53 + 1, pa.float64(), "exactly representable"),
        ([("a", 1), ("a", 2)], pa.map_(pa.large_string(), pa.int64()), "key 'a' more than once"),
        (None, pa.int64(), "declare the type as T | None"),
    ],
)
def test_strict_array_refuses_values_arrow_would_change(value, dtype, problem):
    field = pa.field("x", dtype, nullable=False)
    with pytest.raises((ValueError, TypeError, pa.ArrowInvalid)):
        strict_array([value], field)
    import re

    assert re.search(problem, value_problem(value, field))


def test_types_and_values_nested_too_deeply_are_an_orcapod_error_not_a_recursion_error():
    deep: type = int
    for _ in range(MAX_NESTING_DEPTH + 1):
        deep = list[deep]
    with pytest.raises(UnsupportedTypeError, match="nests more than 64 levels"):
        python_to_arrow(deep, "column 'x'")
    value: object = 1
    for _ in range(1000):
        value = [value]
    with pytest.raises(UnsupportedTypeError, match="column 'x'.*nests more than"):
        canonicalize_table(pa.table({"x": pa.array([value])}))


def test_map_columns_with_a_repeated_key_are_refused_naming_column_and_row():
    maps = pa.array([[("a", "1")], [("b", "2"), ("b", "3")]], pa.map_(pa.large_string(), pa.large_string()))
    with pytest.raises(InputValidationError, match=r"column 'm': row 1 holds a map with the key 'b' more than once"):
        canonicalize_table(pa.table({"m": maps}))
    nested = pa.array([[[("k", 1), ("k", 2)]]], pa.large_list(pa.map_(pa.large_string(), pa.int64())))
    with pytest.raises(InputValidationError, match="key 'k'"):
        check_map_keys(nested, where="column 'n'")
    check_map_keys(maps.slice(0, 1), where="column 'm'")  # the first row alone is fine
