"""Value types beyond the built-in type table: files, NumPy arrays and your own domain types.

A *value type* is a Python class with an Arrow **struct** as its stored form. Its struct's field
names and types identify it (the plain type table has no struct type, so a struct column is
always a value type) and its **name** is its canonical type string in schemas, hashes and saved
pipelines. Built in:

=======================  =====================================================  ===================
Python type              Arrow representation                                   content (hashed)
=======================  =====================================================  ===================
``pathlib.Path``         ``struct<path: large_string>``                         the file's bytes, or
                                                                                the directory's tree
``numpy.ndarray``        ``struct<dtype: large_string, shape: large_list<int64>,  dtype + shape + bytes
                         data: large_binary>`` (C order, little-endian)
=======================  =====================================================  ===================

NumPy is imported only when an array value is converted (an environment without NumPy works,
and ``numpy.ndarray`` annotations resolve by name).

:func:`register_type` adds one::

    >>> import dataclasses
    >>> @dataclasses.dataclass(frozen=True)
    ... class Interval:
    ...     lo: float
    ...     hi: float
    >>> vt = register_type(Interval, name="demo.Interval",
    ...     arrow_type=pa.struct([("lo", pa.float64()), ("hi", pa.float64())]),
    ...     to_arrow=lambda v: {"lo": v.lo, "hi": v.hi},
    ...     from_arrow=lambda d: Interval(d["lo"], d["hi"]))
    >>> vt.name, value_type_of(Interval) is vt
    ('demo.Interval', True)

A value's **hash** is the canonical encoding of its stored struct (see
:mod:`orcapod_core.hashing`), unless the type gives ``content=``: a function returning the bytes
that identify the value (a file's content digest, not its path).
"""

from __future__ import annotations

import functools
import os
import pathlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from orcapod_core.errors import UnsupportedTypeError

__all__ = [
    "ValueType",
    "register_type",
    "value_type_of",
    "value_type_for_arrow",
    "value_type_named",
    "has_value_types",
    "has_map",
    "pylist",
    "has_paths",
    "missing_path",
    "to_python",
    "to_storage",
    "rows_to_python",
    "table_from_rows",
    "PATH_TYPE",
    "NDARRAY_TYPE",
]


@dataclass(frozen=True, eq=False)
class ValueType:
    """One registered value type (see :func:`register_type`)."""

    name: str
    python_type: type | str  # a class, or "module:qualname" resolved when a value is converted
    arrow_type: pa.StructType
    to_arrow: Callable[[Any], Mapping[str, Any]]
    from_arrow: Callable[[Mapping[str, Any]], Any]
    content: Callable[[Any], bytes] | None = None
    #: The struct field a non-struct ``arrow_type`` was wrapped in (its values are not dicts).
    wrapped: str | None = None

    def __repr__(self) -> str:
        return f"ValueType({self.name!r}, {self.arrow_type})"

    @property
    def qualified_name(self) -> str:
        """``module.qualname`` of the Python class (what annotations are matched by)."""
        tp = self.python_type
        return tp.replace(":", ".") if isinstance(tp, str) else f"{tp.__module__}.{tp.__qualname__}"

    def python_class(self) -> type:
        tp = self.python_type
        return _resolve(tp) if isinstance(tp, str) else tp

    def storage_of(self, value: Any) -> dict[str, Any]:
        """The struct value (a dict) of one Python value; ``TypeError`` for a value of another type."""
        if not isinstance(value, self.python_class()):
            raise TypeError(f"expected {self.name}")
        stored = self.to_arrow(value)
        return {self.wrapped: stored} if self.wrapped else dict(stored)

    def value_of(self, stored: Mapping[str, Any]) -> Any:
        return self.from_arrow(stored[self.wrapped] if self.wrapped else stored)


@functools.cache
def _resolve(target: str) -> type:
    """The class named ``"module:qualname"`` (imported once: conversions ask per value)."""
    import importlib

    module, _, qualname = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


_BY_NAME: dict[str, ValueType] = {}
_BY_ARROW: dict[str, ValueType] = {}
_BY_CLASS: dict[str, ValueType] = {}


_TABLE_SCALARS = frozenset(
    [pa.int64(), pa.float64(), pa.large_string(), pa.bool_(), pa.large_binary(), pa.date32(), pa.timestamp("us"), pa.time64("us")]
)


def _plain(dtype: pa.DataType) -> pa.DataType | None:
    """``dtype`` with the representation variants a store or Polars may hand back folded away
    (``string`` → ``large_string``, ``list`` → ``large_list``, child nullability); ``None`` when
    it is not a table type (value types' fields hold table types only)."""
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype):
        return pa.large_string()
    if pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype) or pa.types.is_binary_view(dtype):
        return pa.large_binary()
    if dtype in _TABLE_SCALARS:
        return dtype
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_list_view(dtype):
        item = _plain(dtype.value_type)
        return None if item is None else pa.large_list(item)
    if pa.types.is_map(dtype):
        key, item = _plain(dtype.key_type), _plain(dtype.item_type)
        return None if key != pa.large_string() or item is None else pa.map_(key, item)
    return None


def _arrow_key(dtype: pa.DataType) -> str | None:
    """A struct's identity: its field names and plain types (``None``: not a value type's form)."""
    if not pa.types.is_struct(dtype):
        return None
    parts = []
    for f in dtype:
        plain = _plain(f.type)
        if plain is None:
            return None
        parts.append(f"{f.name}:{plain}")
    return ";".join(parts)


def register_type(
    python_type: type | str,
    *,
    name: str,
    arrow_type: pa.DataType,
    to_arrow: Callable[[Any], Any],
    from_arrow: Callable[[Any], Any],
    content: Callable[[Any], bytes] | None = None,
) -> ValueType:
    """Make ``python_type`` a column type: schemas, annotations, hashing, storage, save/load.

    ``arrow_type``: a struct of table types (``to_arrow`` returns its fields as a dict), or a
    single table type (then stored as ``struct<field: arrow_type>``, the field named after
    ``name``). ``from_arrow`` inverts ``to_arrow``. ``content``: the bytes that identify a value
    when hashing, if not its stored form. Re-registering the same name with the same Arrow type
    replaces the converters (module reloads); a name or Arrow type taken by another type raises.

    >>> register_type(complex, name="demo.complex", arrow_type=pa.struct([("re", pa.float64()), ("im", pa.float64())]),
    ...               to_arrow=lambda z: {"re": z.real, "im": z.imag}, from_arrow=lambda d: complex(d["re"], d["im"]))
    ValueType('demo.complex', struct<re: double not null, im: double not null>)
    """
    if not isinstance(name, str) or not name or name != name.strip() or any(c in name for c in "[]|, "):
        raise UnsupportedTypeError(f"register_type: name must be a non-empty type name without '[]|, ', got {name!r}")
    wrapped = None
    if not pa.types.is_struct(arrow_type):
        wrapped = name.rsplit(".", 1)[-1].lower()
        arrow_type = pa.struct([pa.field(wrapped, arrow_type, nullable=False)])
    if arrow_type.num_fields == 0:
        raise UnsupportedTypeError(f"register_type {name!r}: the struct needs at least one field")
    fields = []
    for f in arrow_type:
        plain = _plain(f.type)
        if plain is None:
            raise UnsupportedTypeError(
                f"register_type {name!r}: field {f.name!r} has Arrow type {f.type}; fields hold orcapod table types "
                f"(int64, float64, large_string, bool, large_binary, date32, timestamp[us], time64[us], large_list, map)"
            )
        fields.append(f.with_type(plain if not pa.types.is_nested(plain) else f.type))
    vt = ValueType(name, python_type, pa.struct(fields), to_arrow, from_arrow, content, wrapped)
    key = _arrow_key(vt.arrow_type)
    taken = (
        (_BY_NAME, name, "the name"),
        (_BY_ARROW, key, f"the Arrow type {vt.arrow_type}"),
        (_BY_CLASS, vt.qualified_name, f"the class {vt.qualified_name}"),
    )
    for registry, k, what in taken:
        other = registry.get(k)
        # the same name and Arrow type again (a module reloaded) replaces the converters
        if other is not None and (other.name != name or _arrow_key(other.arrow_type) != key):
            raise UnsupportedTypeError(f"register_type {name!r}: {what} is already registered as {other.name!r}")
    _BY_NAME[name] = _BY_ARROW[key] = _BY_CLASS[vt.qualified_name] = vt
    return vt


def value_type_of(tp: Any) -> ValueType | None:
    """The value type of a Python class (or of a subclass: ``PosixPath`` is a ``Path``)."""
    if not isinstance(tp, type):
        return None
    for cls in tp.__mro__:
        vt = _BY_CLASS.get(f"{cls.__module__}.{cls.__qualname__}")
        if vt is not None:
            return vt
    return None


def value_type_for_arrow(dtype: pa.DataType) -> ValueType | None:
    """The value type stored as ``dtype`` (a struct), or ``None``."""
    key = _arrow_key(dtype)
    return None if key is None else _BY_ARROW.get(key)


def value_type_named(name: str) -> ValueType | None:
    return _BY_NAME.get(name)


def has_value_types(dtype: pa.DataType) -> bool:
    """True when ``dtype`` is or contains (in lists and maps) a value type."""
    if pa.types.is_struct(dtype):
        return True
    return pa.types.is_nested(dtype) and any(has_value_types(dtype.field(i).type) for i in range(dtype.num_fields))


def has_map(dtype: pa.DataType) -> bool:
    """True when ``dtype`` is or contains a map."""
    if pa.types.is_map(dtype):
        return True
    return pa.types.is_nested(dtype) and any(has_map(dtype.field(i).type) for i in range(dtype.num_fields))


def pylist(values: pa.Array | pa.ChunkedArray | pa.Table) -> list[Any]:
    """``values.to_pylist()`` with maps as dicts (``maps_as_pydicts="strict"``: a repeated key
    raises). The option is passed only when a map is present: with it, pyarrow converts value by
    value even for flat types (10x slower on an int column)."""
    types = [f.type for f in values.schema] if isinstance(values, pa.Table) else [values.type]
    if any(has_map(t) for t in types):
        return values.to_pylist(maps_as_pydicts="strict")
    return values.to_pylist()


def has_paths(dtype: pa.DataType) -> bool:
    """True when a column of ``dtype`` holds ``Path`` values (also inside lists and maps)."""
    if pa.types.is_struct(dtype):
        return value_type_for_arrow(dtype) is PATH_TYPE
    return pa.types.is_nested(dtype) and any(has_paths(dtype.field(i).type) for i in range(dtype.num_fields))


def missing_path(value: Any) -> str | None:
    """The first path in ``value`` (a ``Path``, or lists/dicts of them) that does not exist."""
    if isinstance(value, pathlib.PurePath):
        return None if os.path.exists(value) else os.fspath(value)
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for v in value:
            found = missing_path(v)
            if found is not None:
                return found
    return None


def to_python(values: pa.Array | pa.ChunkedArray) -> list[Any]:
    """A column's values as Python objects, value types as their classes (``Path``, arrays...)."""
    out = pylist(values)
    if has_value_types(values.type):
        out = [_from_storage(v, values.type) for v in out]
    return out


def _from_storage(value: Any, dtype: pa.DataType) -> Any:
    return _convert(value, dtype, ValueType.value_of)


def to_storage(values: list[Any], dtype: pa.DataType) -> list[Any]:
    """Python values of ``dtype`` with every value-type object replaced by its stored struct
    (``TypeError`` naming the first value that is not of its declared type)."""
    if not has_value_types(dtype):
        return values
    return [_convert(v, dtype, ValueType.storage_of) for v in values]


def _convert(value: Any, dtype: pa.DataType, one: Callable[[ValueType, Any], Any]) -> Any:
    """``value`` of ``dtype`` with ``one(value type, v)`` applied to each value-type value in it."""
    if value is None:
        return None
    if pa.types.is_struct(dtype):
        vt = value_type_for_arrow(dtype)
        if vt is None:
            raise UnsupportedTypeError(f"Arrow type {dtype} is not a registered value type")
        return one(vt, value)
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
            raise TypeError(f"expected a list, got {type(value).__name__} {_short(value)}")
        return [_convert(v, dtype.value_type, one) for v in value]
    if pa.types.is_map(dtype) and isinstance(value, Mapping):
        return {k: _convert(v, dtype.item_type, one) for k, v in value.items()}
    return value


def rows_to_python(table: pa.Table) -> list[dict[str, Any]]:
    """``table.to_pylist()`` with value types as their Python classes."""
    if not any(has_value_types(f.type) for f in table.schema):
        return pylist(table)
    names = table.column_names
    columns = [to_python(table.column(n)) for n in names]
    return [dict(zip(names, row)) for row in zip(*columns)]


def table_from_rows(rows: list[Mapping[str, Any]], schema: pa.Schema | None = None) -> pa.Table:
    """``pa.Table.from_pylist`` that also takes value-type objects (``Path``, arrays...); without
    a ``schema``, a column whose first value is a value-type object gets that type's struct."""
    if schema is None:
        first = rows[0] if rows else {}
        typed = {k: value_type_of(type(v)) for k, v in first.items()}
        if not any(typed.values()):
            return pa.Table.from_pylist(list(rows))
        inferred = pa.Table.from_pylist([{k: v for k, v in r.items() if not typed.get(k)} for r in rows])
        fields = []
        for k in first:
            vt = typed[k]
            fields.append(pa.field(k, vt.arrow_type, nullable=True) if vt else inferred.schema.field(k))
        schema = pa.schema(fields)
    if not any(has_value_types(f.type) for f in schema):
        return pa.Table.from_pylist(list(rows), schema=schema)
    columns = {f.name: to_storage([r.get(f.name) for r in rows], f.type) for f in schema}
    return pa.Table.from_pydict(columns, schema=schema)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- built in: files ------------------------------------------------------------------------------


def _path_content(path: pathlib.PurePath) -> bytes:
    from orcapod_core.files import content_digest

    return content_digest(path)


PATH_TYPE = register_type(
    pathlib.Path,
    name="Path",
    arrow_type=pa.struct([pa.field("path", pa.large_string(), nullable=False)]),
    to_arrow=lambda p: {"path": os.fspath(p)},
    from_arrow=lambda d: pathlib.Path(d["path"]),
    content=_path_content,
)
_BY_CLASS["pathlib.PurePath"] = PATH_TYPE  # PurePosixPath / PureWindowsPath values too


# -- built in: NumPy arrays -----------------------------------------------------------------------


def _ndarray_to_arrow(a: Any) -> dict[str, Any]:
    if a.dtype.hasobject or a.dtype.fields is not None:
        raise TypeError(f"a NumPy array of dtype {a.dtype} cannot be stored exactly (object and structured dtypes are not supported)")
    if a.dtype.byteorder == ">":  # one byte order, so equal arrays hash equal
        a = a.astype(a.dtype.newbyteorder("<"))
    if not a.flags.c_contiguous:
        a = a.copy(order="C")  # (np.ascontiguousarray would make a 0-d array 1-d)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}


def _ndarray_from_arrow(d: Mapping[str, Any]) -> Any:
    import numpy as np

    return np.frombuffer(d["data"], dtype=np.dtype(d["dtype"])).reshape(tuple(d["shape"])).copy()


NDARRAY_TYPE = register_type(
    "numpy:ndarray",
    name="numpy.ndarray",
    arrow_type=pa.struct(
        [
            pa.field("dtype", pa.large_string(), nullable=False),
            pa.field("shape", pa.large_list(pa.field("item", pa.int64(), nullable=False)), nullable=False),
            pa.field("data", pa.large_binary(), nullable=False),
        ]
    ),
    to_arrow=_ndarray_to_arrow,
    from_arrow=_ndarray_from_arrow,
)
