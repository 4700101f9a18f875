"""Columns of digests and fixed-width values as bytes: zero-copy ``large_binary`` views of
fixed-width buffers, and the hex <-> bytes conversions and checks of digest columns (record ids,
packet hashes, entry ids), each one C pass over a column's buffer when its values have one
width (digests always do). :mod:`orcapod_core.hashing` re-exports the public ones.

>>> bytes_to_hex(hex_to_bytes(pa.array(["00ff", "0a0b"]))).to_pylist()
['00ff', '0a0b']
"""

from __future__ import annotations

import binascii
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["arrow_buffer", "digests_to_hex", "fixed_as_binary", "hex_problem", "hex_to_bytes", "bytes_to_hex"]

_LB = pa.large_binary()
#: Offsets buffers are made for at least this many values (a row-hashing slice).
_OFFSETS_ROWS = 65_536


def arrow_buffer(data: bytes | bytearray | memoryview) -> pa.Buffer:
    """``data`` copied into Arrow's memory pool.

    Not ``pa.py_buffer(data)``, which wraps the Python object: whichever thread releases the
    last reference must then take the GIL, and Arrow and deltalake release buffers on their
    own threads (an Acero plan may be dropped by a pool thread after the call that ran it has
    returned, apache/arrow#36389); during interpreter shutdown such a thread cannot take the
    GIL and the process aborts ("terminate called without an active exception"). Arrays
    orcapod makes hold Arrow-owned memory only.

    >>> arrow_buffer(b"abc").to_pybytes()
    b'abc'
    """
    buf = pa.allocate_buffer(len(data))
    pa.FixedSizeBufferWriter(buf).write(data)
    return buf


def _fixed_bytes(arr: pa.Array, width: int) -> pa.Array:
    """Zero-copy view of a fixed-width array's values (or of a ``fixed_size_binary`` array) as
    ``width``-byte ``large_binary`` values: the data buffer as it is, with offsets ``0, width,
    2 * width, ...`` (made once per width and length bound, see :func:`_step_offsets`)."""
    n = len(arr)
    data = arr.buffers()[1]
    if n == 0 or data is None:
        return pa.array([b""] * n, _LB)
    data = data.slice(arr.offset * width, n * width)
    return pa.LargeBinaryArray.from_buffers(_LB, n, [None, _step_offsets(width, n), data])


def fixed_as_binary(digests: pa.FixedSizeBinaryArray) -> pa.Array:
    """Fixed-width digests as ``large_binary`` values — a zero-copy view (a cast copies them).

    >>> fixed_as_binary(pa.array([b"ab", b"cd"], pa.binary(2))).to_pylist()
    [b'ab', b'cd']
    """
    return _fixed_bytes(digests, digests.type.byte_width)


_OFFSETS: dict[int, tuple[int, pa.Buffer]] = {}


def _step_offsets(width: int, n: int) -> pa.Buffer:
    """An int64 buffer of at least ``n + 1`` offsets ``0, width, 2 * width, ...`` (kept per width)."""
    known = _OFFSETS.get(width)
    if known is None or known[0] < n:
        size = max(n, _OFFSETS_ROWS)
        step = pa.scalar(width, pa.int64())
        offsets = pc.subtract(pc.cumulative_sum(pa.repeat(step, size + 1)), step)
        known = _OFFSETS[width] = (size, offsets.buffers()[1])
    return known[1]


def digests_to_hex(digests: pa.FixedSizeBinaryArray) -> pa.Array:
    """Hex strings of fixed-width digests as a large_string array, without per-row Python."""
    n, width = len(digests), digests.type.byte_width
    if n == 0:
        return pa.array([], pa.large_string())
    data = memoryview(digests.buffers()[1])[digests.offset * width : (digests.offset + n) * width]
    return pa.LargeStringArray.from_buffers(n, _step_offsets(2 * width, n), arrow_buffer(binascii.hexlify(data)))


def _chunks(values: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    return list(values.chunks) if isinstance(values, pa.ChunkedArray) else [values]


def _per_chunk(convert: Any, values: pa.Array | pa.ChunkedArray, dtype: pa.DataType) -> pa.Array:
    """``convert`` applied to each chunk of ``values`` (no copy to join the chunks first), as one array."""
    parts = [convert(c) for c in _chunks(values) if len(c)]
    if not parts:
        return pa.array([], dtype)
    return parts[0] if len(parts) == 1 else pa.concat_arrays(parts)


def _fixed_width_data(values: pa.Array) -> tuple[memoryview, int, int] | None:
    """``(the values' bytes back to back, their count, their one length)`` when ``values`` (a
    string or binary array) has no nulls and every value has the same length — digests and
    ids made of them always do — else ``None``. No copy of large or fixed-size types."""
    n = len(values)
    if values.null_count or n == 0:
        return None
    if pa.types.is_fixed_size_binary(values.type):
        width = values.type.byte_width
        return memoryview(values.buffers()[1])[values.offset * width : (values.offset + n) * width], n, width
    if pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type):
        offset_type = pa.int64()
    elif pa.types.is_string(values.type) or pa.types.is_binary(values.type):
        offset_type = pa.int32()  # (what a Parquet read gives)
    else:
        return None
    offsets = pa.Array.from_buffers(offset_type, n + 1, [None, values.buffers()[1]], offset=values.offset)
    lengths = pc.min_max(pc.subtract(offsets[1:], offsets[:-1]))
    width = lengths["min"].as_py()
    if width != lengths["max"].as_py():
        return None
    start = offsets[0].as_py()
    return memoryview(values.buffers()[2] or b"")[start : start + n * width], n, width


def _is_lower_hex(chunk: pa.Array) -> bool:
    """True when the chunk surely holds lowercase hex digests of one even width (one C pass
    over the text: unhexlify refuses any non-hex character, an even width keeps every pair
    inside one value; and no uppercase); False when it may not (the exact check decides)."""
    if len(chunk) == 0:
        return True
    fixed = _fixed_width_data(chunk)
    if fixed is None or fixed[2] % 2:
        return False
    try:
        binascii.unhexlify(fixed[0])
    except binascii.Error:
        return False
    return pc.all(pc.equal(pc.ascii_lower(chunk), chunk)).as_py()


def hex_problem(hexes: pa.Array | pa.ChunkedArray) -> str | None:
    """Why ``hexes`` is not a column of lowercase hex digests (even length, ``0-9a-f``, no
    nulls) — the first offending value — or ``None`` when it is."""
    import polars as pl

    if not (pa.types.is_string(hexes.type) or pa.types.is_large_string(hexes.type)):
        return f"it has type {hexes.type}, not string"
    if hexes.null_count:
        return "it contains nulls"
    if all(_is_lower_hex(c) for c in _chunks(hexes)):
        return None
    series = pl.from_arrow(hexes)
    bad = ~series.str.contains(r"^(?:[0-9a-f]{2})*$")
    if bad.any():
        return f"{series.filter(bad)[0]!r} is not lowercase hex of even length"
    return None


def hex_to_bytes(hexes: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Lowercase hex strings as their bytes (``large_binary``): half the size. Inverse of
    :func:`bytes_to_hex`; values must pass :func:`hex_problem`.

    >>> hex_to_bytes(pa.array(["00ff"])).to_pylist()
    [b'\\x00\\xff']
    """

    def one(chunk: pa.Array) -> pa.Array:
        fixed = _fixed_width_data(chunk)
        if fixed is None or fixed[2] % 2 or not fixed[2]:
            return _polars_hex_to_bytes(chunk)
        data, n, width = fixed  # digests: one unhexlify of the whole text
        raw = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width // 2), n, [None, arrow_buffer(binascii.unhexlify(data))])
        return _fixed_bytes(raw, width // 2)

    return _per_chunk(one, hexes, pa.large_binary())


def _polars_hex_to_bytes(hexes: pa.Array) -> pa.Array:
    import polars as pl

    out = pl.from_arrow(hexes).str.decode("hex").to_arrow()
    out = out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out
    return out.cast(pa.large_binary())


def bytes_to_hex(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Bytes as lowercase hex strings (``large_string``), nulls kept.

    >>> bytes_to_hex(pa.array([b"\\x00\\xff"])).to_pylist()
    ['00ff']
    """
    def one(chunk: pa.Array) -> pa.Array:
        fixed = _fixed_width_data(chunk)
        if fixed is None or not fixed[2]:
            return _polars_bytes_to_hex(chunk)
        data, n, width = fixed  # digests: one hexlify of the whole buffer
        return pa.LargeStringArray.from_buffers(n, _step_offsets(2 * width, n), arrow_buffer(binascii.hexlify(data)))

    return _per_chunk(one, values, pa.large_string())


def _polars_bytes_to_hex(values: pa.Array) -> pa.Array:
    import polars as pl

    out = pl.from_arrow(values).bin.encode("hex").to_arrow()
    out = out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out
    return out.cast(pa.large_string())
