"""Arrow rules every :class:`~orcapod_core.databases.ArrowDatabase` shares: the types records are
stored with, how new records conform to a table's schema, how lookups are expressed, and
dropping repeated record ids (the first committed copy wins)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from orcapod_core.databases.protocol import RECORD_ID_COLUMN
from orcapod_core.errors import InputValidationError, SchemaMismatchError, UnsupportedTypeError
from orcapod_core.keysets import all_distinct, is_in
from orcapod_core.lazy_polars import pl

__all__ = ["normalize_type", "normalize_schema", "normalize_table", "conform", "drop_repeated_ids", "filter_rows", "Condition"]

# A lookup condition on one column: values it must be one of, or ``None`` for "is null".
Condition = tuple[str, pa.Array | None]


# --------------------------------------------------------------------------------------------
# Canonical (large) Arrow types
# --------------------------------------------------------------------------------------------


def normalize_type(dtype: pa.DataType) -> pa.DataType:
    """The storage form of an Arrow type: large string/binary/list variants, dictionaries
    decoded, list items named ``item`` and map entries ``key``/``value`` (as in
    :mod:`orcapod_core.types`), recursively. Other types are returned unchanged."""
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype):
        return pa.large_string()
    if pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype) or pa.types.is_binary_view(dtype):
        return pa.large_binary()
    if pa.types.is_dictionary(dtype):
        return normalize_type(dtype.value_type)
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_list_view(dtype) or pa.types.is_large_list_view(dtype):
        item = dtype.value_field
        return pa.large_list(pa.field("item", normalize_type(item.type), nullable=item.nullable))
    if pa.types.is_map(dtype):
        item = dtype.item_field
        return pa.map_(
            pa.field("key", normalize_type(dtype.key_type), nullable=False),
            pa.field("value", normalize_type(item.type), nullable=item.nullable),
            keys_sorted=dtype.keys_sorted,
        )
    if pa.types.is_struct(dtype):
        return pa.struct([f.with_type(normalize_type(f.type)) for f in dtype])
    return dtype


def normalize_schema(schema: pa.Schema) -> pa.Schema:
    """:func:`normalize_type` applied to every field; names and nullability kept, Arrow metadata
    dropped (Delta Lake does not keep it, so no backend does)."""
    return pa.schema([pa.field(f.name, normalize_type(f.type), nullable=f.nullable) for f in schema])


def normalize_table(table: pa.Table) -> pa.Table:
    """``table`` cast to :func:`normalize_schema` (a no-op when it already is)."""
    target = normalize_schema(table.schema)
    if target.equals(table.schema, check_metadata=True) and _same_nested_names(target, table.schema):
        return table
    return table.cast(target).replace_schema_metadata(None)


def _same_nested_names(a: pa.Schema, b: pa.Schema) -> bool:
    # Arrow type equality ignores list item names ("item" vs Delta's "element"); we want one
    # spelling everywhere so concatenation and Schema round trips never disagree.
    return all(str(x.type) == str(y.type) for x, y in zip(a, b))


def _align(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns: missing ones as nulls (types already agree)."""
    if table.schema.equals(schema, check_metadata=False) and _same_nested_names(table.schema, schema):
        return table
    names = set(table.column_names)
    arrays = [table[f.name] if f.name in names else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def conform(where: str, existing: pa.Schema | None, table: pa.Table) -> tuple[pa.Schema, pa.Table]:
    """Check new records against a table's schema; return the evolved schema and the records cast to it.

    Shared columns must keep their type (an all-null column adopts it) and may not bring nulls into
    a non-nullable column; columns the records lack are filled with nulls (if nullable); new
    columns are appended as nullable. Raises before anything is stored.
    """
    if existing is None:
        for f in table.schema:
            if pa.types.is_null(f.type):
                raise UnsupportedTypeError(
                    f"column {f.name!r} of table {where} holds only nulls, so its type is unknown; "
                    "give it a typed Arrow column"
                )
        return table.schema, table
    n = table.num_rows
    incoming = table.schema
    fields: list[pa.Field] = []
    arrays: list[pa.ChunkedArray | pa.Array] = []
    for stored in existing:
        idx = incoming.get_field_index(stored.name)
        if idx < 0:
            if not stored.nullable:
                error = SchemaMismatchError(f"table {where} requires non-nullable column {stored.name!r}; the new records lack it")
                error.missing_column = stored.name  # a writer that can derive it may retry with it
                raise error
            arrays.append(pa.nulls(n, stored.type))
        else:
            new = incoming.field(idx)
            column = table.column(idx)
            if pa.types.is_null(new.type):
                column = pa.nulls(n, stored.type)
            elif not (new.type.equals(stored.type) and str(new.type) == str(stored.type)):
                raise SchemaMismatchError(
                    f"column {stored.name!r} of table {where} is stored as {stored.type}; "
                    f"the new records have type {new.type} (nothing was stored)"
                )
            if not stored.nullable and column.null_count:
                raise SchemaMismatchError(
                    f"column {stored.name!r} of table {where} is non-nullable; the new records contain nulls"
                )
            arrays.append(column)
        fields.append(stored)
    for new in incoming:
        if existing.get_field_index(new.name) >= 0:
            continue
        if pa.types.is_null(new.type):
            raise UnsupportedTypeError(
                f"new column {new.name!r} of table {where} holds only nulls, so its type is unknown"
            )
        fields.append(new.with_nullable(True))  # older records have no value for it
        arrays.append(table[new.name])
    schema = pa.schema(fields, metadata=existing.metadata)
    return schema, pa.Table.from_arrays(arrays, schema=schema)


def _union(a: pa.Schema | None, b: pa.Schema | None) -> pa.Schema | None:
    """Schema of committed + pending rows (they agree on shared columns by construction)."""
    if a is None or b is None:
        return a if b is None else b
    names = set(a.names)
    return pa.schema(list(a) + [f for f in b if f.name not in names])


def _as_array(where: str, column: str, values: Any, dtype: pa.DataType) -> pa.Array:
    """Lookup values as one Arrow array of the column's type."""
    try:
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        elif isinstance(values, pl.Series):
            values = values.to_arrow()
        if isinstance(values, pa.Array):
            return values if values.type.equals(dtype) else values.cast(dtype)
        if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, set, frozenset)):
            raise InputValidationError(
                f"lookup values for column {column!r} of table {where} must be a sequence or an Arrow array, "
                f"got {type(values).__name__}"
            )
        return pa.array(list(values), type=dtype)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, OverflowError) as exc:
        raise InputValidationError(
            f"cannot look up column {column!r} of table {where} (type {dtype}) by these values: {exc}"
        ) from exc


#: Above this many values, an "is one of" condition is applied after reading (see _scan_committed).
_PUSHDOWN_MAX_VALUES = 1000


def _expression(conditions: Sequence[Condition]) -> pc.Expression | None:
    """The conditions as one filter expression, for a scan of stored files (a Delta read),
    where it prunes files and row groups; in-memory rows are filtered by :func:`filter_rows`.

    The values are copied into Arrow's own memory first: the scan runs as an Acero plan whose
    last reference (with this expression) may be dropped on an Arrow thread after the read has
    returned (apache/arrow#36389). Values in Python-owned memory (``pa.py_buffer``, NumPy) would
    then need the GIL on that thread, and during interpreter shutdown that aborts the process
    ("terminate called without an active exception")."""
    expr = None
    for column, values in conditions:
        if values is None:
            term = pc.field(column).is_null()
        else:
            values = values.copy_to(pa.default_cpu_memory_manager())
            if len(values) == 1 and values.null_count == 0:
                term = pc.field(column) == values[0]  # equality prunes row groups/files by statistics
            else:
                term = pc.field(column).isin(values)
        expr = term if expr is None else expr & term
    return expr


def filter_rows(table: pa.Table, conditions: Sequence[Condition]) -> pa.Table:
    """The rows of the in-memory ``table`` meeting every condition (``(column, None)``: the
    column is null; ``(column, values)``: it is one of ``values``, a null matching a null), in
    their order — ``table`` itself when every row does.

    One boolean mask over whole columns, computed on the calling thread. Not
    ``table.filter(expression)``: pyarrow runs that as an Acero plan on its thread pool, and a
    pool thread may release the plan — and the values it holds — after the call returned; at
    interpreter exit that thread cannot take the GIL a Python-owned buffer needs, and the
    process aborts (see :func:`_expression`).

    >>> t = pa.table({"k": ["a", "b", None]})
    >>> filter_rows(t, [("k", pa.array(["b", "c"]))])["k"].to_pylist()
    ['b']
    >>> filter_rows(t, [("k", None)]).num_rows
    1
    """
    mask = None
    for column, values in conditions:
        if values is None:
            cond = pc.is_null(table[column])
        elif len(values) == 1 and values.null_count == 0:  # one value: a comparison, no hash table
            cond = pc.fill_null(pc.equal(table[column], values[0]), False)
        else:
            cond = is_in(table[column], values)
        mask = cond if mask is None else pc.and_(mask, cond)
    if mask is None or pc.all(mask).as_py():  # (a bulk lookup often wants every row: no copy then)
        return table
    return table.filter(mask)


def drop_repeated_ids(table: pa.Table) -> pa.Table:
    """``table`` without repeated record ids, the first copy kept (a no-op without repeats)."""
    if RECORD_ID_COLUMN not in table.column_names or table.num_rows < 2:
        return table
    if all_distinct(table[RECORD_ID_COLUMN]):
        return table
    return table.filter(pl.from_arrow(table[RECORD_ID_COLUMN]).is_first_distinct().to_arrow())


def _id_hashes(ids: pl.Series) -> pl.Series:
    """The 64-bit hashes an :class:`_IdIndex` sorts its ids by (stable within a process)."""
    return ids.hash(seed=0)


@dataclass
class _IdSet:
    """Ids as Arrow data with their 64-bit hashes, unsorted: adding costs one hash pass, and a
    membership test is one polars ``is_in`` over the hashes, confirmed by comparing the ids
    only where a hash matches — no Python string per id (what a set of them cost: a third of a
    cheap cold run's bookkeeping). For the ids of one run's batches (pending, just written);
    many lookups against a large table's ids use the sorted runs of :class:`_IdIndex`."""

    hashes: list[pl.Series] = field(default_factory=list)
    ids: list[pa.Array | pa.ChunkedArray] = field(default_factory=list)

    def add(self, ids: pa.Array | pa.ChunkedArray) -> None:
        if len(ids):  # (hashed when first asked about)
            self.ids.append(ids)

    def contains(self, ids: pa.Array | pa.ChunkedArray) -> pl.Series | None:
        """Per id: is it one of them (a polars boolean series)? ``None`` when there are none."""
        if not self.ids:
            return None
        for added in self.ids[len(self.hashes):]:
            self.hashes.append(_id_hashes(pl.from_arrow(added).cast(pl.String)))
        keys = pl.from_arrow(ids).cast(pl.String)
        hit = _id_hashes(keys).is_in(pl.concat(self.hashes).implode())
        if not hit.any():
            return hit
        rows = hit.arg_true()
        known = pl.concat([pl.from_arrow(a).cast(pl.String) for a in self.ids])
        return hit.scatter(rows, keys.gather(rows).is_in(known.implode()))

    def to_list(self) -> list[str]:
        return [rid for a in self.ids for rid in a.to_pylist()]


@dataclass
class _IdIndex:
    """Committed ids of one table as of ``version`` (-1: the table did not exist), as Arrow data.

    Ids this handle wrote are an :class:`_IdSet`. Ids read from the table's files — a table
    another handle or process wrote, e.g. the store of an earlier run — are runs sorted by
    their polars 64-bit hash, merged LSM-style (each run at least twice as long as the next, so
    a lookup visits O(log N) runs), a lookup being an integer binary search per run confirmed
    by comparing the ids. Hashing and sorting them costs a fraction of a Python set of a large
    table's ids."""

    version: int = -1
    files: set[str] = field(default_factory=set)
    runs: list[pl.DataFrame] = field(default_factory=list)  # columns h (hash, sorted), k (id)
    written: _IdSet = field(default_factory=_IdSet)

    # Ids read but not sorted into runs yet: asked about through their hashes (one is_in each,
    # O(n)), and sorted once they have been asked about SORT_AFTER times — a run's few commit
    # checks never pay for sorting a large table's ids, a long async run's many checks do once.
    # (A warm run that only reads a table, which seeds its index, pays nothing.)
    waiting: _IdSet = field(default_factory=_IdSet)
    asked: int = 0
    SORT_AFTER = 16

    def add_read(self, ids: pa.Array | pa.ChunkedArray) -> None:
        """Ids read from the table's files."""
        self.waiting.add(ids)

    def _index_waiting(self) -> None:
        waiting, self.waiting = self.waiting, _IdSet()
        for ids in waiting.ids:
            self._add_run(ids)

    def _add_run(self, ids: pa.Array | pa.ChunkedArray) -> None:
        keys = pl.from_arrow(ids).cast(pl.String).rechunk()
        run = pl.DataFrame({"h": _id_hashes(keys), "k": keys})
        while self.runs and self.runs[-1].height <= 2 * run.height:
            run = pl.concat([self.runs.pop(), run])
        self.runs.append(run.sort("h"))

    def add_written(self, ids: pa.Array | pa.ChunkedArray) -> None:
        """Ids this handle committed."""
        self.written.add(ids)

    def contains(self, ids: pa.Array | pa.ChunkedArray) -> pa.Array | None:
        """Per id: is it committed? ``None`` when nothing is."""
        self.asked += 1
        if self.asked > self.SORT_AFTER:
            self._index_waiting()
        hit = self.written.contains(ids)
        waiting = self.waiting.contains(ids)
        if waiting is not None:
            hit = waiting if hit is None else hit | waiting
        if not self.runs:
            return None if hit is None else hit.to_arrow()
        if hit is None:
            hit = pl.repeat(False, len(ids), dtype=pl.Boolean, eager=True)
        keys = pl.from_arrow(ids).cast(pl.String).rechunk()
        hashes = _id_hashes(keys)
        for run in self.runs:
            h, k, n = run["h"], run["k"], run.height
            at = h.search_sorted(hashes, side="left").clip(0, n - 1)
            rows = (h.gather(at) == hashes).arg_true()  # candidates: only their ids are compared
            if rows.len() == 0:
                continue
            asked = keys.gather(rows)
            same = k.gather(at.gather(rows)) == asked
            if not same.all():  # another id with the same 64-bit hash sorted first (all but never)
                same = same | asked.is_in(k.implode())
            hit = hit.scatter(rows.filter(same), True)
        return hit.to_arrow()

    def as_set(self) -> set[str]:
        """Every committed id as a Python set (built from the read runs when asked)."""
        self._index_waiting()
        return {rid for run in self.runs for rid in run["k"].to_list()} | set(self.written.to_list())
