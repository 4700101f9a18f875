"""Distinct values, membership and position lookups of key columns (record ids, entry ids,
packet hashes).

Same results as Arrow's ``pc.unique`` (without its order) / ``pc.is_in`` / ``pc.index_in``,
computed with polars for string, binary and integer keys (the kinds keys are; other types go
to Arrow): Arrow builds its hash tables on one thread, which on large inputs costs several
times more (1,000,000 hex keys against 1,000,000 values: ~0.3 s against ~0.07 s on two cores)
and is most of what a warm pipeline run spends besides hashing. Small inputs (at most
``SMALL`` keys and values together) go to Arrow: there a polars call's fixed cost (~0.1 ms)
is what dominates, and a run of many 10-row nodes makes thousands of them.

>>> is_in(pa.array(["a", "b", None]), pa.array(["b", "c"])).to_pylist()
[False, True, False]
>>> index_in(pa.array(["b", "x", "a"]), pa.array(["a", "b", "a"])).to_pylist()
[1, None, 0]
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from orcapod_core.lazy_polars import pl

__all__ = ["all_distinct", "distinct", "is_in", "index_in", "one_array", "same_values"]

Keys = pa.Array | pa.ChunkedArray

#: At most this many keys and values together: Arrow's own kernels (no polars round trip).
SMALL = 4096


def one_array(values: Keys) -> pa.Array:
    """``values`` as one array: a chunked array's single chunk as it is (``combine_chunks``
    copies even one chunk), several joined.

    >>> one_array(pa.chunked_array([[1], [2]])).to_pylist()
    [1, 2]
    """
    if isinstance(values, pa.ChunkedArray):
        return values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()
    return values



def _small(keys: Keys, value_set: Keys | None = None) -> bool:
    return len(keys) + (0 if value_set is None else len(value_set)) <= SMALL


def _frame(values: Keys) -> pl.DataFrame:
    # One chunk: hashing a column of many chunks (as a Delta read returns) costs several times more.
    return pl.DataFrame({"k": pl.from_arrow(values).rechunk()})


def _join_kind(dtype: pa.DataType) -> str | None:
    """What polars joins keys of ``dtype`` as, if its equality is exactly Arrow's (not floats:
    they differ on NaN and -0.0)."""
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "string"
    if pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype):
        return "binary"
    return str(dtype) if pa.types.is_integer(dtype) else None


def _polars_joins(keys: Keys, value_set: Keys) -> bool:
    kind = _join_kind(keys.type)
    return kind is not None and kind == _join_kind(value_set.type)


def same_values(a: Keys, b: Keys) -> bool:
    """True when ``a`` and ``b`` hold the same values in the same order (no nulls): the common
    case of a rerun, where a node's stored ids and results are in the order of its unchanged
    input. One element-wise comparison (its ends first), far cheaper than a hash join.

    >>> same_values(pa.array(["a", "b"]), pa.array(["a", "b"])), same_values(pa.array(["a", "b"]), pa.array(["b", "a"]))
    (True, False)
    """
    n = len(a)
    if n != len(b) or n == 0 or a.null_count or b.null_count or _join_kind(a.type) is None or _join_kind(a.type) != _join_kind(b.type):
        return False
    a, b = one_array(a), one_array(b)
    if b.type != a.type:
        b = b.cast(a.type)
    if a[0] != b[0] or a[n - 1] != b[n - 1]:
        return False
    return pc.all(pc.equal(a, b)).as_py()


def all_distinct(keys: Keys) -> bool:
    """True when no value of ``keys`` repeats (a null counts as a value)."""
    n = len(keys)
    if _join_kind(keys.type) is None or _small(keys):
        return n < 2 or len(pc.unique(one_array(keys))) == n
    series = pl.from_arrow(keys).rechunk()
    # Distinct 64-bit hashes prove distinct values, and are counted several times faster;
    # only when two hashes agree (a repeat, or rarely a collision) are the values compared.
    return n < 2 or series.hash(seed=0).n_unique() == n or series.n_unique() == n


def distinct(keys: Keys) -> pa.Array:
    """The distinct values of ``keys`` in no particular order (``keys`` themselves when none
    repeats, which is checked first: no copy in the usual case of distinct keys)."""
    array = one_array(keys)
    if _join_kind(keys.type) is None or _small(array):
        return array if all_distinct(array) else pc.unique(array)
    if all_distinct(array):
        return array
    return _frame(array)["k"].unique().to_arrow().cast(array.type)


def is_in(keys: Keys, value_set: Keys) -> pa.BooleanArray:
    """Per key: is it one of ``value_set``? (As ``pc.is_in``: a null key is in a set holding a null.)"""
    if not _polars_joins(keys, value_set) or _small(keys, value_set):
        values = one_array(value_set)
        if values.type != keys.type and _polars_joins(keys, value_set):  # string vs large_string
            values = values.cast(keys.type)
        return one_array(pc.is_in(keys, value_set=values))
    n = len(keys)
    if same_values(keys, value_set):
        return pa.repeat(pa.scalar(True, pa.bool_()), n)
    m = len(value_set)
    if 0 < m < n and same_values(one_array(keys).slice(0, m), value_set):  # rows appended since: only they are looked up
        return pa.concat_arrays([pa.repeat(pa.scalar(True, pa.bool_()), m), is_in(one_array(keys).slice(m), value_set)])
    mask = pl.repeat(False, n, dtype=pl.Boolean, eager=True)
    if n and len(value_set):
        found = _frame(keys).with_row_index("i").join(_frame(value_set), on="k", how="semi")["i"]
        mask.scatter(found, True)
    if keys.null_count and value_set.null_count:  # a join never matches nulls
        mask = mask | pl.from_arrow(keys).is_null()
    return mask.to_arrow()


def index_in(keys: Keys, value_set: Keys, *, distinct_values: bool = False) -> pa.Int64Array:
    """Per key: the position of its first occurrence in ``value_set``, or null if absent
    (as ``pc.index_in``, for string, binary or integer keys without nulls; both sides strings,
    both binary, or both the same integer type). ``distinct_values``: the caller knows that
    no value repeats, so a value set equal to the keys element by element (see
    :func:`same_values`) is answered without a join.

    >>> index_in(pa.array(["a", "b"]), pa.array(["a", "b"]), distinct_values=True).to_pylist()
    [0, 1]
    """
    n = len(keys)
    if not _polars_joins(keys, value_set):
        raise TypeError(f"index_in: keys of type {keys.type} cannot be looked up in values of type {value_set.type}")
    if not n or not len(value_set):
        return pa.nulls(n, pa.int64())
    if distinct_values and not _small(keys, value_set):
        m = len(value_set)
        if same_values(keys, value_set):
            return pl.int_range(0, n, dtype=pl.Int64, eager=True).to_arrow()
        if m < n and same_values(one_array(keys).slice(0, m), value_set):  # rows appended since: only they are looked up
            head = pl.int_range(0, m, dtype=pl.Int64, eager=True).to_arrow()
            return pa.concat_arrays([head, index_in(one_array(keys).slice(m), value_set)])
    if _small(keys, value_set):
        values = one_array(value_set)
        return one_array(pc.index_in(keys, value_set=values if values.type == keys.type else values.cast(keys.type))).cast(pa.int64())
    left, right = _frame(keys), _frame(value_set).with_row_index("j")
    joined = left.join(right, on="k", how="left", maintain_order="left")
    if joined.height != n:  # keys repeated in ``value_set`` matched: keep their first occurrence
        joined = left.join(right.unique("k", keep="first"), on="k", how="left", maintain_order="left")
    return joined["j"].to_arrow().cast(pa.int64())
