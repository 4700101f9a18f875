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
