"""Joins: Join (N-ary inner join), MergeJoin (binary, merges colliding packets), SemiJoin.

How a join is computed: polars joins *only the key columns plus a row-index column*
of each input (``maintain_order`` keeps the order deterministic), then each input's
full Arrow table is ``take``-n by its row indices. Every Arrow type (maps, nested
lists) and every declared nullability survives exactly, and no Python code runs per row.

System tags of multi-input operators: inputs are put in a canonical order (by
pipeline hash, ties by content hash). A system-tag column keeps its origin name
``_tag_<kind>::<h>`` (``<h>``: the root source's shape hash) when no other input brings
a column of the same origin; columns of one origin from several inputs are numbered
``_tag_<kind>::<h>:0``, ``:1``, ... in canonical order. Names stay this short after any
number of joins. For inputs whose pipeline hashes tie, the per-input tuples of
system-tag values are sorted per row. So ``Join()(a, b)`` and ``Join()(b, a)`` agree in
rows, row order, hidden columns and hashes; the output's tag columns come in the order
the inputs were given (the first input's tags, then each next input's new ones).

>>> from orcapod_core.sources import DictSource
>>> a = DictSource({"id": [1, 2], "x": [10, 20]}, tag_columns="id", source_id="a")
>>> b = DictSource({"id": [2, 1], "y": ["p", "q"]}, tag_columns="id", source_id="b")
>>> sorted(Join()(a, b).as_table().to_pylist(), key=lambda r: r["id"])
[{'id': 1, 'x': 10, 'y': 'q'}, {'id': 2, 'x': 20, 'y': 'p'}]
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from orcapod_core.columns import SOURCE_PREFIX, source_column, system_tag_origin
from orcapod_core.errors import InputValidationError, SchemaMismatchError
from orcapod_core.hashing import hash_rows
from orcapod_core.lazy_polars import pl
from orcapod_core.operators.base import Operator
from orcapod_core.streams import Stream, StreamLayout
from orcapod_core.types import arrow_to_python, type_to_string

__all__ = ["Join", "MergeJoin", "SemiJoin", "canonical_order", "system_tag_names", "sort_tied_system_tags", "join_indices", "take_columns", "is_identity"]

_ROW = "__orcapod_row_{}"


# --------------------------------------------------------------------------------------
# System tags of multi-input operators
# --------------------------------------------------------------------------------------


def canonical_order(streams: Sequence[Stream]) -> list[Stream]:
    """Streams sorted by pipeline hash; inputs with equal pipeline hashes by content hash."""
    pipes = [s.pipeline_hash().to_string() for s in streams]
    tied = {p for p in pipes if pipes.count(p) > 1}
    keys = [(p, s.content_hash().to_string() if p in tied else "") for p, s in zip(pipes, streams)]
    return [streams[i] for i in sorted(range(len(streams)), key=keys.__getitem__)]


def system_tag_names(ordered: Sequence[Stream]) -> list[dict[str, str]]:
    """Per input (already in canonical order): ``{system-tag column: its name in the output}``.

    A column's output name is its origin (:func:`~orcapod_core.columns.system_tag_origin`)
    when it is the only one of that origin among all inputs, else the origin plus ``:<n>``,
    ``n`` counting that origin's columns in canonical order — unique, deterministic, and no
    longer than the input's own names.
    """
    origins = [[(c, system_tag_origin(c)) for c in s.layout.system_tag_columns] for s in ordered]
    total = Counter(o for columns in origins for _, o in columns)
    seen: Counter[str] = Counter()
    names: list[dict[str, str]] = []
    for columns in origins:
        mine = {}
        for c, o in columns:
            mine[c] = o if total[o] == 1 else f"{o}:{seen[o]}"
            seen[o] += 1
        names.append(mine)
    return names


def _tied_groups(ordered: Sequence[Stream], renames: Sequence[dict[str, str]]) -> list[list[list[str]]]:
    """For each run of inputs sharing a pipeline hash (and system-tag columns): the
    output system-tag column names of each member, member by member."""
    groups: list[list[list[str]]] = []
    start = 0
    for end in range(1, len(ordered) + 1):
        if end < len(ordered) and ordered[end].pipeline_hash() == ordered[start].pipeline_hash():
            continue
        members = range(start, end)
        bases = {tuple((c, ordered[i].layout.schema.field(c).type) for c in renames[i]) for i in members}
        if len(members) > 1 and len(bases) == 1 and renames[start]:
            groups.append([list(renames[i].values()) for i in members])
        start = end
    return groups


def _sort_key(arr: pa.Array) -> pa.Array:
    """An array whose ``>`` order is a deterministic total order of ``arr``'s values."""
    t = arr.type
    if pa.types.is_nested(t):
        # nested values have no natural order: order them by their canonical row digest
        keys = hash_rows(pa.table({"v": arr}))
        return pc.if_else(pc.is_valid(arr), keys, pa.scalar(None, keys.type)) if arr.null_count else keys
    return arr


def _greater(left: Sequence[pa.Array], right: Sequence[pa.Array]) -> pa.Array:
    """Per row: is tuple ``left`` > tuple ``right`` lexicographically (nulls sort last)?"""
    result = None
    for a, b in reversed(list(zip(left, right))):
        a, b = _sort_key(a), _sort_key(b)
        a_null, b_null = pc.is_null(a), pc.is_null(b)
        gt = pc.or_(pc.fill_null(pc.greater(a, b), False), pc.and_(a_null, pc.invert(b_null)))
        if result is None:
            result = gt
        else:
            eq = pc.or_(pc.fill_null(pc.equal(a, b), False), pc.and_(a_null, b_null))
            result = pc.or_(gt, pc.and_(eq, result))
    return result


def _sort_tuples(members: list[list[pa.Array]]) -> list[list[pa.Array]]:
    """Sort, per row, the members' value tuples (a vectorized compare-swap network)."""
    members = [list(m) for m in members]
    k = len(members)
    for i in range(k - 1):
        for j in range(k - 1 - i):
            swap = _greater(members[j], members[j + 1])
            if not pc.any(swap).as_py():
                continue
            lo = [pc.if_else(swap, b, a) for a, b in zip(members[j], members[j + 1])]
            hi = [pc.if_else(swap, a, b) for a, b in zip(members[j], members[j + 1])]
            members[j], members[j + 1] = lo, hi
    return members


def sort_tied_system_tags(table: pa.Table, ordered: Sequence[Stream], renames: Sequence[dict[str, str]]) -> pa.Table:
    """Sort, per row, the system-tag values of inputs whose pipeline hashes tie.

    Each member's values stay together as a tuple (a row's source id stays with its
    record id), so the output does not depend on the order the inputs were given in.
    """
    if table.num_rows == 0:
        return table
    for group in _tied_groups(ordered, renames):
        values = [[table.column(c).combine_chunks() for c in cols] for cols in group]
        for cols, sorted_values in zip(group, _sort_tuples(values)):
            for c, v in zip(cols, sorted_values):
                table = table.set_column(table.schema.get_field_index(c), table.schema.field(c), v)
    return table


# --------------------------------------------------------------------------------------
# Row matching
# --------------------------------------------------------------------------------------


def _index_frame(keys: pa.Table, j: int) -> pl.DataFrame:
    n = keys.num_rows
    index = pl.int_range(0, n, dtype=pl.UInt32 if n < 2**32 else pl.UInt64, eager=True).alias(_ROW.format(j))
    frame = pl.DataFrame([index])
    return frame.hstack(pl.from_arrow(keys).get_columns()) if keys.num_columns else frame


def join_indices(keys: Sequence[pa.Table]) -> list[pa.Array]:
    """Row indices into each key table of their inner join on shared column names
    (a cartesian product where none are shared), in a deterministic order."""
    acc = _index_frame(keys[0], 0)
    for j, table in enumerate(keys[1:], start=1):
        right = _index_frame(table, j)
        on = [c for c in table.column_names if c in acc.columns]
        if on:
            acc = acc.join(right, on=on, how="inner", maintain_order="left_right")
        else:
            acc = acc.join(right, how="cross", maintain_order="left_right")
        later = {c for t in keys[j + 1 :] for c in t.column_names}
        acc = acc.drop([c for c in acc.columns if not c.startswith("__orcapod_row_") and c not in later])
    return [acc.get_column(_ROW.format(j)).to_arrow() for j in range(len(keys))]


def is_identity(indices: pa.Array, n: int) -> bool:
    """Whether ``indices`` are 0..n-1, so gathering by them changes nothing."""
    if len(indices) != n:
        return False
    if n == 0:
        return True
    if indices[0].as_py() != 0 or indices[n - 1].as_py() != n - 1:  # most gathers: no pass over them
        return False
    steps = pc.pairwise_diff(indices.cast(pa.int64())).slice(1)
    return pc.all(pc.equal(steps, 1)).as_py() in (True, None)


def take_columns(columns: Sequence[pa.ChunkedArray], indices: pa.Array) -> list[pa.ChunkedArray]:
    """Each column gathered at ``indices``: zero-copy when they are 0..n-1 (typical for
    the first input of a one-to-one join); otherwise one Arrow ``take`` per column, on
    a thread pool (Arrow releases the GIL; string gathers dominate large joins)."""
    if not columns or is_identity(indices, len(columns[0])):
        return list(columns)
    if len(columns) == 1 or len(indices) < 100_000:
        return [c.take(indices) for c in columns]
    with ThreadPoolExecutor(max_workers=min(len(columns), os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda c: c.take(indices), columns))


# --------------------------------------------------------------------------------------
# Join planning (shared by Join and MergeJoin)
# --------------------------------------------------------------------------------------


def _py_type(f: pa.Field) -> str:
    return type_to_string(arrow_to_python(f.type, f.nullable, f"column {f.name!r}"))


@dataclass(frozen=True)
class _JoinPlan:
    ordered: list[Stream]  # the inputs in canonical order
    renames: list[dict[str, str]]  # per input: system-tag column → its output name
    layout: StreamLayout
    copied: list[list[str]]  # per input: columns gathered into the output as they are
    merged: list[str]  # MergeJoin: packet columns present in both inputs


def _plan_join(name: str, inputs: Sequence[Stream], merge: bool) -> _JoinPlan:
    ordered = canonical_order(inputs)
    renames = system_tag_names(ordered)

    tags: dict[str, pa.Field] = {}
    tag_owner: dict[str, int] = {}
    for i, s in enumerate(ordered):
        for c in s.tag_columns:
            f = s.layout.schema.field(c)
            if c not in tags:
                tags[c], tag_owner[c] = f, i
            elif tags[c].type != f.type:
                raise SchemaMismatchError(
                    f"{name}: tag column {c!r} has type {_py_type(tags[c])} in one input and {_py_type(f)} in another"
                )
            elif tags[c].nullable and not f.nullable:
                # inner-join keys never match on null: take values from a non-nullable side
                tags[c], tag_owner[c] = f, i

    packet_owners: dict[str, list[int]] = {}
    for i, s in enumerate(ordered):
        for c in s.packet_columns:
            packet_owners.setdefault(c, []).append(i)
    crossed = [c for c in packet_owners if c in tags]
    if crossed:
        raise InputValidationError(f"{name}: column(s) {crossed} are tag columns in one input and packet columns in another")
    shared = [c for c, owners in packet_owners.items() if len(owners) > 1]
    if shared and not merge:
        raise InputValidationError(
            f"{name}: packet column(s) {shared} appear in more than one input; "
            "rename or drop them first (MapPackets / DropPacketColumns) or use MergeJoin"
        )

    merged_fields: dict[str, pa.Field] = {}
    merged_sources: dict[str, pa.Field] = {}
    for c in shared:
        a, b = (ordered[i].layout.schema.field(c) for i in packet_owners[c])
        if a.type != b.type:
            raise SchemaMismatchError(f"{name}: packet column {c!r} has type {_py_type(a)} in one input and {_py_type(b)} in another")
        merged_fields[c] = pa.field(c, pa.large_list(pa.field("item", a.type, a.nullable or b.nullable)), nullable=False)
        src = source_column(c)
        if all(src in s.layout.schema.names for s in ordered):
            fa, fb = (s.layout.schema.field(src) for s in ordered)
            merged_sources[src] = pa.field(src, pa.large_list(pa.field("item", fa.type, fa.nullable or fb.nullable)), nullable=False)

    meta_count: dict[str, int] = {}
    for s in ordered:
        for c in s.layout.meta_columns:
            meta_count[c] = meta_count.get(c, 0) + 1

    sys_fields, packet_fields, source_fields, meta_fields = [], [], [], []
    copied: list[list[str]] = []
    for i, s in enumerate(ordered):
        schema = s.layout.schema
        mine = [c for c in s.tag_columns if tag_owner[c] == i]
        sys_fields += [schema.field(c).with_name(renames[i][c]) for c in s.layout.system_tag_columns]
        mine += s.layout.system_tag_columns
        for c in s.packet_columns:
            if c in merged_fields:
                if i == packet_owners[c][0]:
                    packet_fields.append(merged_fields[c])
            else:
                packet_fields.append(schema.field(c))
                mine.append(c)
        for c in s.layout.source_columns:
            if c in merged_sources:
                if i == 0:
                    source_fields.append(merged_sources[c])
            elif c[len(SOURCE_PREFIX) :] not in merged_fields:
                source_fields.append(schema.field(c))
                mine.append(c)
        # a meta column present in several inputs describes none of the joined rows: dropped
        unique_meta = [c for c in s.layout.meta_columns if meta_count[c] == 1]
        meta_fields += [schema.field(c) for c in unique_meta]
        mine += unique_meta
        copied.append(mine)

    # tags in the order the inputs were given (rows and hidden columns follow the canonical order)
    given = list(dict.fromkeys(c for s in inputs for c in s.tag_columns))
    layout = StreamLayout.build([tags[c] for c in given], sys_fields, packet_fields, source_fields, meta_fields)
    return _JoinPlan(ordered, renames, layout, copied, list(merged_fields))


def _interleave(first: pa.Array, second: pa.Array, item: pa.Field) -> pa.Array:
    """Two arrays → one ``large_list`` array of 2-item lists ``[first[i], second[i]]``."""
    n = len(first)
    i = pl.int_range(0, 2 * n, dtype=pl.Int64, eager=True)
    order = ((i // 2) + (i % 2) * n).to_arrow()
    values = pa.concat_arrays([first, second]).take(order)
    offsets = (pl.int_range(0, n + 1, dtype=pl.Int64, eager=True) * 2).to_arrow()
    return pa.LargeListArray.from_arrays(offsets, values, type=pa.large_list(item))


def _execute_join(plan: _JoinPlan) -> pa.Table:
    tables = [s._table() for s in plan.ordered]
    indices = join_indices([t.select(list(s.tag_columns)) for t, s in zip(tables, plan.ordered)])
    columns: dict[str, pa.ChunkedArray | pa.Array] = {}
    for t, ix, cols, renames in zip(tables, indices, plan.copied, plan.renames):
        for c, values in zip(cols, take_columns([t.column(c) for c in cols], ix)):
            columns[renames.get(c, c)] = values
    schema = plan.layout.schema
    for c in plan.merged:
        a, b = (take_columns([t.column(c)], ix)[0].combine_chunks() for t, ix in zip(tables, indices))
        swap = _greater([a], [b])  # sort each row's pair; source info is permuted the same way
        columns[c] = _interleave(pc.if_else(swap, b, a), pc.if_else(swap, a, b), schema.field(c).type.value_field)
        src = source_column(c)
        if src in schema.names:
            sa, sb = (take_columns([t.column(src)], ix)[0].combine_chunks() for t, ix in zip(tables, indices))
            columns[src] = _interleave(pc.if_else(swap, sb, sa), pc.if_else(swap, sa, sb), schema.field(src).type.value_field)
    table = pa.Table.from_arrays([columns[n] for n in schema.names], schema=schema)
    return sort_tied_system_tags(table, plan.ordered, plan.renames)


# --------------------------------------------------------------------------------------
# Operators
# --------------------------------------------------------------------------------------


class _SystemTagNaming:
    """Part of a join's identity: how it names its inputs' system tags. Joins named them by
    appending ``::<input pipeline hash[:12]>:<position>`` once (stores written then hold those
    names in non-nullable columns); since names are origin-based (:func:`system_tag_names`)
    the join is a different producer, so everything below it is stored at fresh paths instead
    of being appended, with other columns, to the old tables. Results are still reused: the
    result cache is keyed by the function and the input packet only."""

    def identity_structure(self) -> dict[str, Any]:
        return {**super().identity_structure(), "system_tag_names": "origin:n"}  # type: ignore[misc]


class Join(_SystemTagNaming, Operator):
    """Inner join of two or more streams on their shared tag columns.

    No shared tag columns gives the cartesian product. Output tags are the union of
    the inputs' tags, packets the union of their packets (a packet column in more than
    one input is an error); source info is carried unchanged. Commutative.

    >>> Join()(subjects, sessions, scores)  # doctest: +SKIP
    """

    arity = None
    commutative = True

    def output_layout(self, *inputs: Stream) -> StreamLayout:
        return _plan_join(type(self).__name__, inputs, merge=False).layout

    def compute(self, *inputs: Stream) -> pa.Table:
        return _execute_join(_plan_join(type(self).__name__, inputs, merge=False))


class MergeJoin(_SystemTagNaming, Operator):
    """Join two streams; a packet column present in both becomes a sorted ``list[T]``.

    Colliding columns must have the same type (else ``SchemaMismatchError``); their
    source info becomes a ``list[str]`` in the same per-row order. Commutative.

    >>> MergeJoin()(left, right).output_schema()[1]  # doctest: +SKIP
    Schema({'score': list[float]})
    """

    arity = 2
    commutative = True

    def output_layout(self, left: Stream, right: Stream) -> StreamLayout:
        return _plan_join(type(self).__name__, (left, right), merge=True).layout

    def compute(self, left: Stream, right: Stream) -> pa.Table:
        return _execute_join(_plan_join(type(self).__name__, (left, right), merge=True))


class SemiJoin(Operator):
    """Rows of the left stream whose values on the columns common to both streams
    (visible tags and packets) occur in the right stream. Keeps the left's layout and
    row order. Ordered: ``SemiJoin()(a, b)`` differs from ``SemiJoin()(b, a)``.

    >>> SemiJoin()(measurements, selected_subjects)  # doctest: +SKIP
    """

    arity = 2

    def _common(self, left: Stream, right: Stream) -> list[str]:
        right_visible = {c: right.layout.schema.field(c) for c in (*right.tag_columns, *right.packet_columns)}
        common = [c for c in (*left.tag_columns, *left.packet_columns) if c in right_visible]
        if not common:
            raise InputValidationError(
                f"SemiJoin: the streams share no columns (left: {[*left.tag_columns, *left.packet_columns]}, "
                f"right: {list(right_visible)})"
            )
        for c in common:
            lf, rf = left.layout.schema.field(c), right_visible[c]
            if lf.type != rf.type:
                raise SchemaMismatchError(f"SemiJoin: column {c!r} has type {_py_type(lf)} on the left and {_py_type(rf)} on the right")
        return common

    def output_layout(self, left: Stream, right: Stream) -> StreamLayout:
        self._common(left, right)
        return left.layout

    def compute(self, left: Stream, right: Stream) -> pa.Table:
        common = self._common(left, right)
        table = left._table()
        keys = _index_frame(table.select(common), 0)
        others = pl.from_arrow(right._table().select(common))
        matched = keys.join(others, on=common, how="semi", maintain_order="left")
        rows = matched.get_column(_ROW.format(0)).to_arrow()
        return pa.Table.from_arrays(take_columns(table.columns, rows), schema=table.schema)
