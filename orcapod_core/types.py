"""Schemas and the one Python ⇄ Arrow type table.

=====================  ====================================================
Python type            Arrow type (field nullability from ``| None``)
=====================  ====================================================
``int``                ``int64``
``float``              ``float64``
``str``                ``large_string``
``bool``               ``bool``
``bytes``              ``large_binary``
``datetime.date``      ``date32``
``datetime.datetime``  ``timestamp[us]`` (naive)
``datetime.time``      ``time64[us]``
``list[T]``            ``large_list<item: T>`` (item nullable iff ``T`` is ``X | None``)
``dict[str, T]``       ``map<large_string, T>`` (value nullable iff ``T`` is ``X | None``)
``T | None``           ``T``'s Arrow type in a *nullable* field
=====================  ====================================================

``python_to_arrow`` and ``arrow_to_python`` are exact inverses on this table. Types nest at
most :data:`MAX_NESTING_DEPTH` levels (``list[list[int]]`` is 2).
Arrow types outside it that have an obvious lossless canonical form (``int32``,
``string``, ``list``, dictionary-encoded strings, ...) are accepted on input and
cast by :func:`canonical_arrow_type`; anything else raises
:class:`~orcapod_core.errors.UnsupportedTypeError` naming the column.

Values are stored exactly or not at all: see :mod:`orcapod_core.values`. Arrow input is cast
with Arrow's safe casts (which refuse truncation) and map columns are checked for repeated keys.
Value types beyond the table (files, NumPy arrays, registered types) are Arrow structs: see
:mod:`orcapod_core.value_types`.

>>> Schema({"x": int, "tags": list[str]}) == {"x": int, "tags": list[str]}
True
>>> python_to_arrow(dict[str, str])
MapType(map<large_string, large_string>)
"""

from __future__ import annotations

import datetime
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pyarrow as pa

from orcapod_core.errors import InputValidationError, UnsupportedTypeError
from orcapod_core.value_types import has_map, value_type_for_arrow, value_type_named, value_type_of

__all__ = [
    "Schema",
    "python_to_arrow",
    "arrow_to_python",
    "arrow_field",
    "arrow_schema",
    "schema_from_arrow",
    "canonical_arrow_type",
    "canonicalize_table",
    "type_to_string",
    "type_from_string",
    "arrow_schema_to_json",
    "arrow_schema_from_json",
    "is_optional",
    "is_assignable",
    "check_map_keys",
    "MAX_NESTING_DEPTH",
]

#: How deep types may nest (``list[list[int]]`` is 2): far beyond real data, and well inside
#: Python's recursion limit for every recursive walk of a type or value.
MAX_NESTING_DEPTH = 64

_SCALARS: dict[Any, pa.DataType] = {
    int: pa.int64(),
    float: pa.float64(),
    str: pa.large_string(),
    bool: pa.bool_(),
    bytes: pa.large_binary(),
    datetime.date: pa.date32(),
    datetime.datetime: pa.timestamp("us"),
    datetime.time: pa.time64("us"),
}
_SCALARS_BACK: dict[pa.DataType, Any] = {v: k for k, v in _SCALARS.items()}


def is_optional(tp: Any) -> bool:
    """True for ``T | None`` / ``Optional[T]``."""
    return _union_args(tp) is not None and type(None) in _union_args(tp)


def _union_args(tp: Any) -> tuple | None:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return typing.get_args(tp)
    return None


def _strip_optional(tp: Any, where: str) -> tuple[Any, bool]:
    args = _union_args(tp)
    if args is None:
        return tp, False
    rest = [a for a in args if a is not type(None)]
    if len(rest) != 1:
        raise UnsupportedTypeError(f"{where}: union type {type_to_string(tp)} is not supported (only T | None)")
    return rest[0], True


def python_to_arrow(tp: Any, where: str = "type", _depth: int = 0) -> pa.DataType:
    """Arrow type of a Python type (nullability is a field property: see :func:`arrow_field`)."""
    if _depth > MAX_NESTING_DEPTH:
        raise UnsupportedTypeError(f"{where}: type nests more than {MAX_NESTING_DEPTH} levels deep")
    inner, _ = _strip_optional(tp, where)
    if inner in _SCALARS:
        return _SCALARS[inner]
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    vt = value_type_of(inner) or value_type_of(origin)  # Path, numpy.ndarray (also NDArray[...]), registered types
    if vt is not None:
        return vt.arrow_type
    if origin is list and len(args) == 1:
        return pa.large_list(pa.field("item", python_to_arrow(args[0], where, _depth + 1), nullable=is_optional(args[0])))
    if origin is dict and len(args) == 2:
        if args[0] is not str:
            raise UnsupportedTypeError(f"{where}: dict keys must be str, got {type_to_string(tp)}")
        value = pa.field("value", python_to_arrow(args[1], where, _depth + 1), nullable=is_optional(args[1]))
        return pa.map_(pa.field("key", pa.large_string(), nullable=False), value)
    raise UnsupportedTypeError(f"{where}: Python type {type_to_string(tp)} is not in the orcapod type table")


def arrow_field(name: str, tp: Any, where: str | None = None) -> pa.Field:
    """Arrow field for column ``name`` of Python type ``tp`` (nullable iff ``tp`` is optional)."""
    return pa.field(name, python_to_arrow(tp, where or f"column {name!r}"), nullable=is_optional(tp))


def arrow_to_python(dtype: pa.DataType, nullable: bool = False, where: str = "type") -> Any:
    """Python type of an Arrow type in the table (``nullable`` adds ``| None``)."""
    if dtype in _SCALARS_BACK:
        tp = _SCALARS_BACK[dtype]
    elif pa.types.is_large_list(dtype):
        item = dtype.value_field
        tp = list[arrow_to_python(item.type, item.nullable, where)]
    elif pa.types.is_map(dtype):
        if dtype.key_type != pa.large_string():
            raise UnsupportedTypeError(f"{where}: map keys must be large_string, got {dtype}")
        item = dtype.item_field
        tp = dict[str, arrow_to_python(item.type, item.nullable, where)]
    elif value_type_for_arrow(dtype) is not None:
        tp = value_type_for_arrow(dtype).python_class()
    else:
        raise UnsupportedTypeError(
            f"{where}: Arrow type {dtype} is not in the orcapod type table (cast it with canonicalize_table)"
        )
    return tp | None if nullable else tp


def type_to_string(tp: Any) -> str:
    """Canonical string of a Python type: ``int``, ``list[str | None]``, ``dict[str, int]``."""
    args = _union_args(tp)
    if args is not None:
        rest = [a for a in args if a is not type(None)]
        parts = [type_to_string(a) for a in rest]
        if len(rest) != len(args):
            parts.append("None")
        return " | ".join(parts)
    if tp is type(None) or tp is None:
        return "None"
    origin = typing.get_origin(tp)
    if origin is not None:
        inner = ", ".join(type_to_string(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if tp in (datetime.date, datetime.datetime, datetime.time):
        return f"datetime.{tp.__name__}"
    vt = value_type_of(tp)
    if vt is not None:
        return vt.name
    return getattr(tp, "__name__", str(tp))


_NAMED_TYPES: dict[str, Any] = {
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "bytes": bytes,
    "None": type(None),
    "datetime.date": datetime.date,
    "datetime.datetime": datetime.datetime,
    "datetime.time": datetime.time,
    "Any": typing.Any,
}


def type_from_string(text: str) -> Any:
    """Inverse of :func:`type_to_string` (``"list[int | None]"`` → ``list[int | None]``).

    Names outside the type table (e.g. a saved user class) become ``object``, so a schema
    saved by another version or program can still be described.

    >>> type_from_string("dict[str, list[float] | None]")
    dict[str, list[float] | None]
    """
    import ast

    def build(node: ast.expr) -> Any:
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            left, right = build(node.left), build(node.right)
            return left | right if left is not object and right is not object else object
        if isinstance(node, ast.Constant) and node.value is None:
            return type(None)
        if isinstance(node, (ast.Name, ast.Attribute)):
            name = ast.unparse(node)
            return _NAMED_TYPES[name] if name in _NAMED_TYPES else _value_class(name)
        if isinstance(node, ast.Subscript):
            origin = ast.unparse(node.value)
            args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            inner = [build(a) for a in args]
            if object in inner:
                return object
            if origin == "list" and len(inner) == 1:
                return list[inner[0]]
            if origin == "dict" and len(inner) == 2:
                return dict[inner[0], inner[1]]
        return object

    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return object
    return build(tree.body)


def _value_class(name: str) -> Any:
    vt = value_type_named(name)
    if vt is None:
        return object
    try:
        return vt.python_class()
    except ImportError:  # e.g. numpy.ndarray without NumPy installed
        return object


def is_assignable(source: Any, target: Any) -> bool:
    """True when a column of type ``source`` may feed a parameter of type ``target``."""
    if source == target:
        return True
    s_inner, s_opt = _strip_optional(source, "type")
    t_inner, t_opt = _strip_optional(target, "type")
    if s_opt and not t_opt:
        return False
    if s_inner == t_inner:
        return True
    if target is typing.Any or t_inner is typing.Any:
        return True
    so, to = typing.get_origin(s_inner), typing.get_origin(t_inner)
    if so is not None and so is to:
        return all(is_assignable(a, b) for a, b in zip(typing.get_args(s_inner), typing.get_args(t_inner)))
    return s_inner is int and t_inner is float  # ints widen to floats, nothing else does


class Schema(Mapping[str, Any]):
    """Immutable, ordered mapping column → Python type, with optional fields.

    Optional fields are function parameters with defaults: a stream may omit them.

    >>> s = Schema({"x": int, "y": float | None}, optional_fields={"y"})
    >>> s == {"x": int, "y": float | None}, s.optional_fields
    (True, frozenset({'y'}))
    """

    __slots__ = ("_items", "_optional")

    def __init__(self, fields: Mapping[str, Any] | Iterable[tuple[str, Any]] = (), optional_fields: Iterable[str] = ()):
        items = dict(fields)
        optional = frozenset(optional_fields)
        unknown = optional - items.keys()
        if unknown:
            raise UnsupportedTypeError(f"optional fields {sorted(unknown)} are not in the schema")
        object.__setattr__(self, "_items", items)
        object.__setattr__(self, "_optional", optional)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Schema is immutable")

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self._items) == dict(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple((k, type_to_string(v)) for k, v in self._items.items()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: {type_to_string(v)}" for k, v in self._items.items())
        return f"Schema({{{inner}}})"

    @property
    def optional_fields(self) -> frozenset[str]:
        return self._optional

    def to_arrow(self) -> pa.Schema:
        """Arrow schema by the type table."""
        return pa.schema([arrow_field(k, v) for k, v in self._items.items()])

    def to_strings(self) -> dict[str, str]:
        """``{column: canonical type string}`` — the form hashed and saved."""
        return {k: type_to_string(v) for k, v in self._items.items()}

    def merge(self, other: Mapping[str, Any]) -> Schema:
        """Union of two schemas; a column present in both must have the same type."""
        out = dict(self._items)
        for k, v in other.items():
            if k in out and out[k] != v:
                raise UnsupportedTypeError(
                    f"column {k!r} has conflicting types {type_to_string(out[k])} and {type_to_string(v)}"
                )
            out[k] = v
        return Schema(out, self._optional | getattr(other, "optional_fields", frozenset()))


def arrow_schema(schema: Mapping[str, Any]) -> pa.Schema:
    """Arrow schema for a Python schema mapping."""
    return pa.schema([arrow_field(k, v) for k, v in schema.items()])


def schema_from_arrow(schema: pa.Schema | Iterable[pa.Field]) -> Schema:
    """Python :class:`Schema` of Arrow fields (field nullability → ``| None``)."""
    return Schema({f.name: arrow_to_python(f.type, f.nullable, f"column {f.name!r}") for f in schema})


def _nesting_depth(dtype: pa.DataType) -> int:
    depth, level = 0, [dtype]
    while level:
        nested = [t for t in level if pa.types.is_nested(t)]
        if not nested:
            return depth
        depth += 1
        if depth > MAX_NESTING_DEPTH:
            return depth
        level = [t.field(i).type for t in nested for i in range(t.num_fields)]
    return depth


def canonical_arrow_type(dtype: pa.DataType, where: str = "type") -> pa.DataType:
    """The table's Arrow type for an accepted Arrow input type (``int32`` → ``int64``, ...)."""
    if pa.types.is_nested(dtype) and _nesting_depth(dtype) > MAX_NESTING_DEPTH:
        raise UnsupportedTypeError(f"{where}: Arrow type nests more than {MAX_NESTING_DEPTH} levels deep")
    if dtype in _SCALARS_BACK:
        return dtype
    if pa.types.is_integer(dtype):
        return pa.int64()
    if pa.types.is_floating(dtype):
        return pa.float64()
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype):
        return pa.large_string()
    if pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype) or pa.types.is_binary_view(dtype):
        return pa.large_binary()
    if pa.types.is_fixed_size_binary(dtype):
        return pa.large_binary()
    if pa.types.is_dictionary(dtype):
        return canonical_arrow_type(dtype.value_type, where)
    if pa.types.is_date(dtype):
        return pa.date32()
    if pa.types.is_timestamp(dtype):
        if dtype.tz is not None:
            raise UnsupportedTypeError(
                f"{where}: timezone-aware timestamp {dtype} is not supported; convert to naive UTC first"
            )
        return pa.timestamp("us")
    if pa.types.is_time(dtype):
        return pa.time64("us")
    if pa.types.is_null(dtype):
        raise UnsupportedTypeError(f"{where}: column has only nulls, so its type is unknown; pass a schema")
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_list_view(dtype) or pa.types.is_fixed_size_list(dtype):
        item = dtype.value_field
        return pa.large_list(item.with_type(canonical_arrow_type(item.type, where)).with_name("item"))
    if pa.types.is_map(dtype):
        if canonical_arrow_type(dtype.key_type, where) != pa.large_string():
            raise UnsupportedTypeError(f"{where}: map keys must be strings, got {dtype}")
        item = dtype.item_field
        return pa.map_(
            pa.field("key", pa.large_string(), nullable=False),
            item.with_type(canonical_arrow_type(item.type, where)).with_name("value"),
        )
    if pa.types.is_struct(dtype):
        vt = value_type_for_arrow(dtype)
        if vt is not None:
            return vt.arrow_type
        raise UnsupportedTypeError(
            f"{where}: Arrow type {dtype} (a struct, e.g. inferred from Python dicts) is not in the orcapod "
            f"type table; declare the column as a map, e.g. schema={{...: dict[str, str]}}"
        )
    raise UnsupportedTypeError(f"{where}: Arrow type {dtype} is not in the orcapod type table")


def canonicalize_table(table: pa.Table, infer_nullability: bool = True) -> pa.Table:
    """Cast every column to its table type; with ``infer_nullability`` a nullable
    field without nulls becomes non-nullable (so ``pa.table({"x": [1]})`` is ``x: int``)."""
    fields = []
    for f, col in zip(table.schema, table.columns):
        dtype = canonical_arrow_type(f.type, f"column {f.name!r}")
        nullable = f.nullable and (col.null_count > 0 or not infer_nullability)
        if infer_nullability:
            dtype = _tighten_items(dtype, col)
        fields.append(pa.field(f.name, dtype, nullable=nullable))
    target = pa.schema(fields)
    for f, col in zip(target, table.columns):
        check_map_keys(col, f.type, f"column {f.name!r}")
    if target == table.schema:
        return table
    try:
        return table.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise UnsupportedTypeError(f"cannot convert columns {table.schema.names} to orcapod types: {exc}") from exc


def check_map_keys(values: pa.ChunkedArray | pa.Array, dtype: pa.DataType | None = None, where: str = "column") -> None:
    """Raise :class:`~orcapod_core.errors.InputValidationError` naming ``where`` when a map value
    (at any depth) repeats a key — Arrow stores such maps, but they are no ``dict[str, T]``."""
    dtype = values.type if dtype is None else dtype
    if not has_map(dtype):
        return
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    _check_keys(values, where)


def _check_keys(arr: pa.Array, where: str) -> None:
    import polars as pl
    import pyarrow.compute as pc

    if pa.types.is_map(arr.type):
        if len(arr.keys):
            as_list = pa.ListArray.from_arrays(arr.offsets, arr.keys)  # (list_parent_indices rejects maps)
            frame = pl.DataFrame({"row": pc.list_parent_indices(as_list), "key": pl.from_arrow(pc.list_flatten(as_list))})
            repeated = frame.filter(frame.is_duplicated())
            if repeated.height:
                row, key = repeated.row(0)
                raise InputValidationError(f"{where}: row {row} holds a map with the key {key!r} more than once")
        _check_keys(arr.items, where)
    elif pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        if has_map(arr.type.value_type):
            _check_keys(arr.flatten(), where)


def _tighten_items(dtype: pa.DataType, values: pa.ChunkedArray | pa.Array) -> pa.DataType:
    """Make list items / map values non-nullable where the data holds no nulls (recursively),
    so ``[["a", "b"]]`` is ``list[str]``, not ``list[str | None]``."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if pa.types.is_large_list(dtype) or pa.types.is_list(dtype):
        items = values.cast(dtype).flatten() if len(values) else pa.array([], dtype.value_type)
        inner = _tighten_items(dtype.value_type, items)
        return pa.large_list(pa.field("item", inner, nullable=dtype.value_field.nullable and items.null_count > 0))
    if pa.types.is_map(dtype):
        cast = values.cast(dtype)
        items = cast.items if len(values) else pa.array([], dtype.item_type)
        inner = _tighten_items(dtype.item_type, items)
        return pa.map_(dtype.key_field, pa.field("value", inner, nullable=dtype.item_field.nullable and items.null_count > 0))
    return dtype


def arrow_schema_to_json(schema: pa.Schema) -> dict[str, Any]:
    """A JSON description of an Arrow schema: readable ``columns`` (name → Arrow type string,
    ``nullable`` names) and ``arrow_ipc``, the exact schema in Arrow's IPC format (base64), from
    which :func:`arrow_schema_from_json` rebuilds it.

    >>> arrow_schema_to_json(pa.schema([pa.field("x", pa.int64(), False)]))["columns"]
    {'x': 'int64'}
    """
    import base64

    return {
        "columns": {f.name: str(f.type) for f in schema},
        "nullable": [f.name for f in schema if f.nullable],
        "arrow_ipc": base64.b64encode(schema.serialize().to_pybytes()).decode("ascii"),
    }


def arrow_schema_from_json(config: Mapping[str, Any]) -> pa.Schema:
    """Inverse of :func:`arrow_schema_to_json`; raises ``ValueError`` when it is not one."""
    import base64
    import binascii

    try:
        return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(config["arrow_ipc"], validate=True)))
    except (KeyError, TypeError, binascii.Error, pa.ArrowInvalid) as exc:
        raise ValueError(f"not a saved Arrow schema ({type(exc).__name__}: {exc})") from exc
