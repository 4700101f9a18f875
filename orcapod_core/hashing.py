"""Content hashing from a canonical, documented byte encoding (see docs/concepts.md).

Two encodings, both versioned by :data:`HASH_METHOD`:

* **Objects** (identities, configs, schemas): canonical JSON — keys sorted, no
  whitespace, UTF-8, ``bytes`` as ``{"$bytes": hex}``, types as their canonical
  type string, :class:`ContentHash` as its ``to_string()`` — hashed with SHA-256.
* **Rows** (packet and tag content): a row message is the 32-byte digest of the
  row's column names and types, then each column's value in sorted-name order:
  ``0x00`` for null, else ``0x01`` + payload. Payloads: int64/timestamp[us]/time64[us]
  as 8-byte little-endian, float64 as 8-byte IEEE-754 LE (every NaN — any sign or payload — as
  the one quiet NaN ``0x7FF8000000000000``; ``-0.0`` keeps its sign: it is a different value
  from ``0.0``, e.g. for ``1 / x``), date32 as 4-byte LE
  days, bool as one byte, strings/binary as 8-byte LE length + bytes, lists as
  8-byte LE count + encoded items, maps as count + (key, value) pairs sorted by
  key. Value types (files, NumPy arrays, registered types: see :mod:`orcapod_core.value_types`)
  as their stored struct's fields in order, each encoded as above — or, for a type that
  defines its *content* (``pathlib.Path``: the file's or tree's digest), as that content's
  bytes like a binary value. The row digest is SHA-256 of that message. Fixed-width, string and list
  columns (lists of those, nested lists, lists of maps) are encoded with Arrow
  kernels over whole columns (in bounded slices of rows); only the final digest is
  one C call per row.

Nothing here uses ``pickle``, Python's ``hash()`` or a library's internal hash,
so digests are identical across processes, runs and machines.

>>> hash_object({"b": 1, "a": [1, 2]}) == hash_object({"a": [1, 2], "b": 1})
True
"""

from __future__ import annotations

import binascii
import datetime
import hashlib
import json
import struct
import sys
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from orcapod_core.digest_columns import _fixed_bytes, arrow_buffer, bytes_to_hex, digests_to_hex, fixed_as_binary, hex_problem, hex_to_bytes
from orcapod_core.errors import MissingFileError, UnsupportedTypeError
from orcapod_core.keysets import one_array
from orcapod_core.types import Schema, arrow_to_python, type_to_string
from orcapod_core.files import content_digest
from orcapod_core.value_types import PATH_TYPE, ValueType, missing_path, to_python, value_type_for_arrow

__all__ = [
    "HASH_METHOD",
    "ContentHash",
    "canonical_json",
    "hash_object",
    "combine_hashes",
    "hash_rows",
    "hash_table",
    "encode_value",
    "digests_to_hex",
    "digests_array",
    "fixed_as_binary",
    "arrow_buffer",
    "sha256_each",
    "hex_problem",
    "hex_to_bytes",
    "bytes_to_hex",
]

HASH_METHOD = "orcapod_v1"
_EPOCH = datetime.datetime(1970, 1, 1)
_LITTLE = sys.byteorder == "little"
_NULL = b"\x00"
_VALID = b"\x01"
_LB = pa.large_binary()
_S_VALID = pa.scalar(_VALID, _LB)
_S_EMPTY = pa.scalar(b"", _LB)
_LEN32 = struct.pack("<Q", 32)
#: The one NaN every NaN is encoded as (the quiet NaN with no sign and no payload).
CANONICAL_NAN: float = struct.unpack("<d", bytes.fromhex("000000000000f87f"))[0]
_S_NAN = pa.scalar(CANONICAL_NAN, pa.float64())


@dataclass(frozen=True, slots=True)
class ContentHash:
    """A digest with the method that produced it.

    >>> h = hash_object("x"); h.to_string() == f"{h.method}:{h.to_hex()}"
    True
    """

    method: str
    digest: bytes

    def to_hex(self, n: int | None = None) -> str:
        """Hex digest, optionally truncated to ``n`` characters."""
        h = self.digest.hex()
        return h if n is None else h[:n]

    def to_string(self) -> str:
        """``"<method>:<hex>"``."""
        return f"{self.method}:{self.digest.hex()}"

    @classmethod
    def from_string(cls, text: str) -> ContentHash:
        method, _, hexdigest = text.rpartition(":")
        return cls(method, bytes.fromhex(hexdigest))

    def __str__(self) -> str:
        return self.to_string()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, ContentHash):
        return obj.to_string()
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {"$bytes": bytes(obj).hex()}
    if isinstance(obj, Schema):
        return {"$schema": obj.to_strings()}
    if isinstance(obj, (set, frozenset)):
        return sorted(canonical_json(x).decode() for x in obj)
    if isinstance(obj, (datetime.date, datetime.time)):
        return {"$time": obj.isoformat()}
    if isinstance(obj, type) or typing.get_origin(obj) is not None or obj is None:
        return {"$type": type_to_string(obj)}
    if hasattr(obj, "identity_structure"):
        return obj.identity_structure()
    raise TypeError(f"cannot hash object of type {type(obj).__name__}: {obj!r}")


def _normalize(obj: Any) -> Any:
    # json sorts dict keys but rejects non-str keys and silently turns tuples into
    # lists (fine) — map keys are stringified explicitly so the encoding is defined.
    if isinstance(obj, Mapping) and not isinstance(obj, Schema):
        return {str(k): _normalize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_normalize(v) for v in obj]
    if isinstance(obj, float) and obj != obj:
        return {"$float": "nan"}
    if isinstance(obj, type) or typing.get_origin(obj) is not None:
        return {"$type": type_to_string(obj)}
    return obj


def canonical_json(obj: Any) -> bytes:
    """The canonical byte encoding of a JSON-like object."""
    return json.dumps(
        _normalize(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default
    ).encode("utf-8")


def hash_object(obj: Any) -> ContentHash:
    """Content hash of a JSON-like object (dicts, lists, scalars, schemas, hashes, types)."""
    return ContentHash(HASH_METHOD, hashlib.sha256(canonical_json(obj)).digest())


def combine_hashes(hashes: Iterable[ContentHash], *, ordered: bool = True, kind: str = "combine") -> ContentHash:
    """One hash of several; ``ordered=False`` makes the result order-independent."""
    items = [h.to_string() for h in hashes]
    if not ordered:
        items.sort()
    return hash_object({"kind": kind, "items": items})


# --------------------------------------------------------------------------------------
# Row hashing
# --------------------------------------------------------------------------------------

_FIXED_WIDTH = {
    pa.int64(): 8,
    pa.float64(): 8,
    pa.timestamp("us"): 8,
    pa.time64("us"): 8,
    pa.date32(): 4,
}
_STRUCT_FMT = {pa.int64(): "<q", pa.float64(): "<d", pa.date32(): "<i", pa.timestamp("us"): "<q", pa.time64("us"): "<q"}


def encode_value(value: Any, dtype: pa.DataType) -> bytes:
    """Canonical bytes of one Python value of Arrow type ``dtype`` (the per-row reference encoding)."""
    if value is None:
        return _NULL
    if dtype == pa.bool_():
        return _VALID + (b"\x01" if value else b"\x00")
    if dtype in _STRUCT_FMT:
        if dtype == pa.date32():
            value = (value - _EPOCH.date()).days
        elif dtype == pa.timestamp("us"):
            value = (value - _EPOCH) // datetime.timedelta(microseconds=1)
        elif dtype == pa.time64("us"):
            value = ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond
        elif dtype == pa.float64() and value != value:
            value = CANONICAL_NAN
        return _VALID + struct.pack(_STRUCT_FMT[dtype], value)
    if pa.types.is_large_string(dtype) or pa.types.is_string(dtype):
        data = value.encode("utf-8")
        return _VALID + struct.pack("<Q", len(data)) + data
    if pa.types.is_large_binary(dtype) or pa.types.is_binary(dtype):
        return _VALID + struct.pack("<Q", len(value)) + bytes(value)
    if pa.types.is_large_list(dtype) or pa.types.is_list(dtype):
        item = dtype.value_type
        return _VALID + struct.pack("<Q", len(value)) + b"".join(encode_value(v, item) for v in value)
    if pa.types.is_map(dtype):
        pairs = sorted(value.items() if isinstance(value, Mapping) else value, key=lambda kv: kv[0])
        body = b"".join(encode_value(k, dtype.key_type) + encode_value(v, dtype.item_type) for k, v in pairs)
        return _VALID + struct.pack("<Q", len(pairs)) + body
    if pa.types.is_struct(dtype):  # a value type's stored struct (a dict)
        vt = _value_type(dtype)
        if vt.content is not None:
            data = vt.content(vt.value_of(value))
            return _VALID + struct.pack("<Q", len(data)) + data
        return _VALID + b"".join(encode_value(value[f.name], f.type) for f in dtype)
    raise TypeError(f"no canonical encoding for Arrow type {dtype}")


def _value_type(dtype: pa.DataType) -> ValueType:
    vt = value_type_for_arrow(dtype)
    if vt is None:
        raise UnsupportedTypeError(f"Arrow type {dtype} is not a registered value type (see orcapod_core.value_types)")
    return vt


def _is_bytes_like(dtype: pa.DataType) -> bool:
    return (
        pa.types.is_large_string(dtype)
        or pa.types.is_string(dtype)
        or pa.types.is_large_binary(dtype)
        or pa.types.is_binary(dtype)
    )


def _encodable(dtype: pa.DataType) -> bool:
    """True when :func:`encode_value` has an encoding for every value of ``dtype``."""
    if dtype == pa.bool_() or dtype in _STRUCT_FMT or _is_bytes_like(dtype):
        return True
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        return _encodable(dtype.value_type)
    if pa.types.is_map(dtype):
        return _encodable(dtype.key_type) and _encodable(dtype.item_type)
    return value_type_for_arrow(dtype) is not None


def _encode_list_column(arr: pa.ListArray | pa.LargeListArray) -> pa.Array:
    """List values without per-row Python: ``0x01`` + 8-byte LE count + the items' encodings.

    The items (the child values of the rows, sliced arrays included) are encoded by
    :func:`_encode_column` in one go, then regrouped per row by the list offsets and joined;
    null lists are replaced by ``0x00`` by the caller. Same bytes as :func:`encode_value`."""
    offsets = arr.offsets  # len(arr) + 1 offsets of this (possibly sliced) array into arr.values
    start, end = offsets[0].as_py(), offsets[-1].as_py()
    items = _encode_column(arr.values.slice(start, end - start))
    offsets = offsets.cast(pa.int64())
    if start:
        offsets = pc.subtract(offsets, pa.scalar(start, pa.int64()))
    joined = pc.binary_join(pa.LargeListArray.from_arrays(offsets, items), _S_EMPTY)
    counts = pc.subtract(offsets[1:], offsets[:-1])  # also defined (and unused) for null lists
    return pc.binary_join_element_wise(_S_VALID, _fixed_bytes(counts, 8), joined, _S_EMPTY)


def _encode_column(arr: pa.Array) -> pa.Array:
    """Canonical encodings of every value of one column, as a large_binary array."""
    dtype = arr.type
    if len(arr) == 0:
        return pa.array([], _LB)
    if dtype in _FIXED_WIDTH and _LITTLE:
        if dtype == pa.float64():
            nan = pc.is_nan(arr)
            if pc.any(nan).as_py():  # one encoding for every NaN bit pattern
                arr = pc.if_else(nan, _S_NAN, arr)
        body = pc.binary_join_element_wise(_S_VALID, _fixed_bytes(arr, _FIXED_WIDTH[dtype]), _S_EMPTY)
    elif dtype == pa.bool_():
        body = pc.if_else(arr, _VALID + b"\x01", _VALID + b"\x00").cast(pa.large_binary())
    elif _is_bytes_like(dtype) and _LITTLE:
        lengths = pc.binary_length(arr).fill_null(0)
        body = pc.binary_join_element_wise(_S_VALID, _fixed_bytes(lengths.cast(pa.int64()), 8), arr.cast(_LB), _S_EMPTY)
    elif (pa.types.is_list(dtype) or pa.types.is_large_list(dtype)) and _LITTLE and _encodable(dtype):
        body = _encode_list_column(arr)
    elif pa.types.is_struct(dtype):
        body = _encode_struct_column(arr)
    else:
        return pa.array([encode_value(v, dtype) for v in arr.to_pylist()], pa.large_binary())
    if arr.null_count:
        body = pc.if_else(pc.is_valid(arr), body, pa.scalar(_NULL, pa.large_binary()))
    return body


def _encode_struct_column(arr: pa.StructArray) -> pa.Array:
    """A value type's column: its fields' encodings joined (columnar), or — for a type with a
    *content* function (files) — that content per value, like a binary value."""
    vt = _value_type(arr.type)
    if vt.content is None:
        children = [_encode_column(child) for child in arr.flatten()]
        return pc.binary_join_element_wise(_S_VALID, *children, _S_EMPTY)
    if vt is PATH_TYPE:  # the hot case: straight from the path strings, each distinct path once
        seen: dict[str, bytes] = {}
        out = []
        for path in pc.struct_field(arr, "path").to_pylist():  # null where the Path is null
            if path is None:
                out.append(_NULL)
                continue
            encoded = seen.get(path)
            if encoded is None:
                encoded = seen[path] = _VALID + _LEN32 + content_digest(path)
            out.append(encoded)
        return pa.array(out, _LB)
    out = []
    for stored in arr.to_pylist():
        if stored is None:
            out.append(_NULL)
            continue
        data = vt.content(vt.value_of(stored))
        out.append(_VALID + struct.pack("<Q", len(data)) + data)
    return pa.array(out, _LB)


def _schema_digest(fields: Sequence[pa.Field]) -> bytes:
    # Nullability is deliberately not part of a row's identity: nulls are encoded per value,
    # and the same packet must hash the same whether its stream declares ``int`` or ``int | None``.
    names = {f.name: type_to_string(arrow_to_python(f.type, False, f"column {f.name!r}")).replace(" | None", "") for f in fields}
    return hashlib.sha256(canonical_json(names)).digest()


#: Rows hashed per slice: bounds the row messages (Arrow) and the Python ``bytes`` objects the
#: per-row digest needs that are alive at once, whatever the table's size.
_HASH_SLICE_ROWS = 65_536


def hash_rows(
    table: pa.Table, columns: Sequence[str] | None = None, *, constants: Mapping[str, tuple[Any, pa.DataType]] | None = None
) -> pa.FixedSizeBinaryArray:
    """Per-row SHA-256 digests (32 bytes each) of ``columns`` (default: all), columnar.

    ``constants``: further columns with one value on every row, as ``{name: (value, Arrow
    type)}`` — the same digests as a column repeating that value, without building one (a
    node's content hash in every entry id). Rows are encoded and digested in slices of
    :data:`_HASH_SLICE_ROWS`, so memory stays bounded on large tables (the digests do not
    depend on the slicing).

    >>> t = pa.table({"x": [1, 2]})
    >>> len(hash_rows(t)), hash_rows(t)[0] == hash_rows(t.slice(0, 1))[0]
    (2, True)
    >>> hash_rows(t, constants={"k": (b"n", pa.large_binary())}) == hash_rows(t.append_column("k", pa.array([b"n"] * 2)))
    True
    """
    constants = dict(constants or {})
    names = sorted([*(columns if columns is not None else table.column_names), *constants])
    n = table.num_rows
    fields = [pa.field(c, constants[c][1]) if c in constants else table.schema.field(c) for c in names]
    prefix = _schema_digest(fields)
    if n == 0:
        return pa.array([], pa.binary(32))
    fixed = {c: pa.scalar(encode_value(v, t), _LB) for c, (v, t) in constants.items()}
    chosen = {c: table.column(c) for c in names if c not in constants}
    digests: list[bytes] = []
    for start in range(0, n, _HASH_SLICE_ROWS):
        size = min(_HASH_SLICE_ROWS, n - start)
        # Every column's pieces (its encoding, unjoined) go into one join: one copy per message.
        parts: list[pa.Array | pa.Scalar] = [pa.scalar(prefix, _LB)]
        for name in names:
            if name in fixed:
                parts.append(fixed[name])
            else:
                parts.extend(_encode_named(name, one_array(chosen[name].slice(start, size)), start))
        if any(isinstance(p, pa.Array) for p in parts):
            messages = pc.binary_join_element_wise(*_merge_scalars(parts), _S_EMPTY)
        else:  # no column varies (e.g. a stream without packet columns): every message is the same
            messages = pa.repeat(pa.scalar(b"".join(p.as_py() for p in parts), _LB), size)
        digests.append(sha256_each(messages))
    return digests_array(b"".join(digests))


def digests_array(data: bytes) -> pa.FixedSizeBinaryArray:
    """Concatenated 32-byte digests as a ``fixed_size_binary(32)`` array (in Arrow's memory,
    see :func:`arrow_buffer`).

    >>> digests_array(bytes(64)).type, len(digests_array(bytes(64)))
    (FixedSizeBinaryType(fixed_size_binary[32]), 2)
    """
    if len(data) % 32:
        raise ValueError(f"digests_array: {len(data)} bytes is not a whole number of 32-byte digests")
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(32), len(data) // 32, [None, arrow_buffer(data)])


def _merge_scalars(parts: list[pa.Array | pa.Scalar]) -> list[pa.Array | pa.Scalar]:
    """Neighbouring scalar pieces joined into one (fewer inputs to the element-wise join)."""
    out: list[pa.Array | pa.Scalar] = []
    for p in parts:
        if isinstance(p, pa.Scalar) and out and isinstance(out[-1], pa.Scalar):
            out[-1] = pa.scalar(out[-1].as_py() + p.as_py(), _LB)
        else:
            out.append(p)
    return out


def _encode_pieces(arr: pa.Array) -> list[pa.Array | pa.Scalar]:
    """The pieces whose element-wise join is :func:`_encode_column` of ``arr``: for columns
    without nulls of fixed-width or string/binary type, the marker, the length and the value
    bytes unjoined (the row message joins them once); otherwise the whole encoding."""
    dtype = arr.type
    if arr.null_count or not _LITTLE or len(arr) == 0:
        return [_encode_column(arr)]
    if dtype in _FIXED_WIDTH:
        if dtype == pa.float64():
            nan = pc.is_nan(arr)
            if pc.any(nan).as_py():  # one encoding for every NaN bit pattern
                arr = pc.if_else(nan, _S_NAN, arr)
        return [_S_VALID, _fixed_bytes(arr, _FIXED_WIDTH[dtype])]
    if _is_bytes_like(dtype):
        return [_S_VALID, _fixed_bytes(pc.binary_length(arr).cast(pa.int64()), 8), arr.cast(_LB)]
    return [_encode_column(arr)]


def _encode_named(name: str, arr: pa.Array, first_row: int) -> list[pa.Array | pa.Scalar]:
    try:
        return _encode_pieces(arr)
    except MissingFileError as exc:  # say where: the column, and the row holding that path
        row = _row_naming(arr, exc.path)
        at = f", row {first_row + row}" if row is not None else ""
        raise MissingFileError(f"column {name!r}{at}: {exc}", path=exc.path, column=name, row=None if row is None else first_row + row) from None


def _row_naming(arr: pa.Array, path: str) -> int | None:
    """The first row with a file that does not exist (rows are digested in order, so the one
    that raised); ``None`` when every path exists (a file inside a directory went missing)."""
    return next((i for i, value in enumerate(to_python(arr)) if missing_path(value) is not None), None)


#: Fewest messages per thread worth hashing on a thread of their own.
_PARALLEL_MIN_ROWS = 8192


def sha256_each(messages: pa.Array) -> bytes:
    """The SHA-256 digest of every value of a binary array, concatenated (32 bytes each).

    Native and columnar: polars-hash's Rust SHA-256 over the whole column (the same digests as
    ``hashlib``; a maintained polars plugin by a delta-rs maintainer), so no Python object is
    made per row, and large columns are hashed on all of polars' threads. Its hex output is
    turned back into bytes with one ``unhexlify`` call.

    >>> sha256_each(pa.array([b"abc"], pa.large_binary())) == hashlib.sha256(b"abc").digest()
    True
    """
    import polars as pl
    import polars_hash as plh

    n = len(messages)
    if n == 0:
        return b""
    # polars runs a plugin over a column's chunks in parallel: one chunk per thread.
    parts = min(pl.thread_pool_size(), n // _PARALLEL_MIN_ROWS)
    if parts > 1:
        bounds = [n * i // parts for i in range(parts + 1)]
        messages = pa.chunked_array([messages.slice(a, b - a) for a, b in zip(bounds, bounds[1:])])
    frame = pl.DataFrame({"m": pl.from_arrow(messages, rechunk=False)})
    hexes = frame.select(plh.col("m").chash.sha2_256()).to_series().to_arrow(compat_level=pl.CompatLevel.oldest())
    if isinstance(hexes, pa.ChunkedArray):
        hexes = hexes.combine_chunks()
    hexes = hexes.cast(pa.large_string())
    _, offsets_buffer, data = hexes.buffers()
    offsets = pa.Array.from_buffers(pa.int64(), len(hexes) + 1, [None, offsets_buffer], offset=hexes.offset)
    return binascii.unhexlify(memoryview(data)[offsets[0].as_py() : offsets[-1].as_py()])


def hash_table(table: pa.Table, columns: Sequence[str] | None = None) -> ContentHash:
    """Order-sensitive hash of a whole table: schema digest + every row digest."""
    names = sorted(columns if columns is not None else table.column_names)
    h = hashlib.sha256(_schema_digest([table.schema.field(c) for c in names]))
    rows = hash_rows(table, names)
    if len(rows):
        h.update(rows.buffers()[1].to_pybytes()[rows.offset * 32 : (rows.offset + len(rows)) * 32])
    return ContentHash(HASH_METHOD, h.digest())
