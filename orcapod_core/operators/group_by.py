"""GroupBy: one row per distinct value of some tag columns; every other column becomes a list.

How it is computed: each key column is dictionary-encoded (one hash pass, in Arrow) and its
few distinct values are sorted, which numbers every row by its group in key order (several
keys: the numbers combine lexicographically). A stable counting sort of those numbers
(Arrow's ``sort_indices``) gives the input rows group by group, each group's rows in input
order; the group boundaries are where the number changes. Every other column is then gathered
once by those row indices (Arrow ``take``, on threads) and cut into lists at the boundaries, so
every Arrow type and nullability survives exactly and no Python code runs per row. A column
whose values are all the same bytes (a source's ``_tag_source_id``, say) is the same in any
order, so it is not gathered at all. Past 4,096 groups — where Arrow's sort stops counting and
compares — polars groups the keys with a row index instead (hash group-by, sort of the groups).

Keys follow the rules of the canonical encoding (:mod:`orcapod_core.hashing`): every NaN is one
group, ``-0.0`` and ``0.0`` are two groups (``-0.0`` first). Null keys form one group, sorted
after every value (as polars' ``nulls_last``).

>>> from orcapod_core.sources import DictSource
>>> s = DictSource({"penguin": [1, 2, 3], "species": ["gentoo", "adelie", "gentoo"], "mass": [5.0, 3.7, 5.4]},
...                tag_columns=["penguin", "species"], source_id="demo")
>>> GroupBy("species")(s).as_table().to_pylist()
[{'species': 'adelie', 'penguin': [2], 'mass': [3.7]}, {'species': 'gentoo', 'penguin': [1, 3], 'mass': [5.0, 5.4]}]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from orcapod_core.errors import InputValidationError, SchemaMismatchError
from orcapod_core.lazy_polars import pl
from orcapod_core.operators.base import Operator
from orcapod_core.operators.batch import list_field
from orcapod_core.operators.join import is_identity
from orcapod_core.streams import Stream, StreamLayout
from orcapod_core.types import arrow_to_python, type_to_string

__all__ = ["GroupBy"]

_ROW = "__orcapod_row"
_BITS = "__orcapod_bits_{}"
#: Integer type of the same width as each float type, to group floats by their bits.
_BITS_TYPE = {16: pa.int16(), 32: pa.int32(), 64: pa.int64()}
#: Most groups sorted by counting: Arrow's ``sort_indices`` counts integers spanning <= 4096.
_COUNTING_GROUPS = 4096
#: How many rows of a long key column are looked at first, to see whether it has too many values.
_SAMPLE_ROWS = 16_384
#: Columns at least this long are hashed on several threads (shorter ones: not worth a pool).
_PARALLEL_ROWS = 100_000


def _one_array(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """``values`` as one array — without the copy ``combine_chunks`` makes even of a single chunk."""
    if isinstance(values, pa.ChunkedArray):
        return values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()
    return values


def _canonical_bits(values: pa.ChunkedArray) -> pa.Array:
    """A float column's values as integers whose equality is the canonical encoding's: the
    IEEE bits (so ``-0.0`` differs from ``0.0``), every NaN one value, nulls kept."""
    width = values.type.bit_width
    floats = _one_array(values)
    bits = floats.view(_BITS_TYPE[width])
    quiet_nan = pa.array([float("nan")], values.type).view(_BITS_TYPE[width])[0]
    return pc.if_else(pc.is_nan(floats), quiet_nan, bits)


def _surely_many(values: pa.Array) -> bool:
    """Whether evenly spaced rows of a long column already hold more than
    :data:`_COUNTING_GROUPS` values — then hashing the whole column for counting would be wasted."""
    n = len(values)
    if n <= 4 * _SAMPLE_ROWS:
        return False
    sample = values.take(pl.int_range(0, n, n // _SAMPLE_ROWS, dtype=pl.Int64, eager=True).to_arrow())
    try:
        return pc.count_distinct(sample, mode="all").as_py() > _COUNTING_GROUPS
    except pa.ArrowNotImplementedError:  # a key type Arrow cannot hash: found out by the caller
        return False


def _dictionary_encode(values: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(the distinct values, each row's index into them; nulls stay null): one hash pass, cut
    into one piece per core for a long column (Arrow releases the GIL), dictionaries unified."""
    pieces = os.cpu_count() or 1
    if pieces == 1 or len(values) < _PARALLEL_ROWS:
        encoded = pc.dictionary_encode(values)
        return encoded.dictionary, encoded.indices
    step = -(-len(values) // pieces)
    with ThreadPoolExecutor(max_workers=pieces) as pool:
        parts = list(pool.map(pc.dictionary_encode, [values.slice(i, step) for i in range(0, len(values), step)]))
    unified = pa.chunked_array(parts).unify_dictionaries()
    return unified.chunk(0).dictionary, pa.concat_arrays([c.indices for c in unified.chunks])


def _ranks(dictionary: pa.Array, float_type: pa.DataType | None = None) -> pa.Array:
    """Each dictionary entry's position in key order (floats: by value, then by bits, so
    ``-0.0`` comes before ``0.0``; the one NaN after every number — as polars sorts)."""
    if float_type is not None:  # the dictionary holds the floats' canonical bits
        keys = pa.table({"value": dictionary.view(float_type), "bits": dictionary})
        order = pc.sort_indices(keys, sort_keys=[("value", "ascending"), ("bits", "ascending")])
    else:
        order = pc.sort_indices(dictionary)
    return pc.inverse_permutation(order.cast(pa.int64()))


def _group_numbers(table: pa.Table, by: Sequence[str]) -> pa.Array | None:
    """Per row, its group's number in key order (null keys after every value), numbers
    spanning at most :data:`_COUNTING_GROUPS`; ``None`` when the keys have more groups."""
    numbers, span = None, 1
    for name in by:
        column = _one_array(table.column(name))
        floating = pa.types.is_floating(column.type)
        values = _canonical_bits(column) if floating else column
        if _surely_many(values):
            return None
        try:
            dictionary, indices = _dictionary_encode(values)
        except pa.ArrowNotImplementedError:  # a key type Arrow cannot hash: polars can
            return None
        width = len(dictionary)
        if width > _COUNTING_GROUPS:  # no fewer groups than this column's values
            return None
        # uint32 ranks: at most _COUNTING_GROUPS of them, and half the bytes to gather
        ranks = _ranks(dictionary, column.type if floating else None).cast(pa.uint32()).take(indices)
        if ranks.null_count:  # the null key: one group, after every value
            ranks, width = ranks.fill_null(width), width + 1
        combined = numbers is not None
        numbers = pc.add(pc.multiply(numbers, width), ranks) if combined else ranks
        span *= width
        if span > _COUNTING_GROUPS and combined:
            # renumber the key combinations present densely, in the same order
            dictionary, indices = _dictionary_encode(numbers)
            if len(dictionary) > _COUNTING_GROUPS:
                return None
            numbers, span = _ranks(dictionary).cast(pa.uint32()).take(indices), len(dictionary)
    return numbers.cast(pa.uint32())


def _is_constant(values: pa.ChunkedArray) -> bool:
    """Whether gathering ``values`` in any order gives ``values`` again: every value null, or
    (strings and bytes, whose equality is their bytes') every value the same."""
    n = len(values)
    if values.null_count:
        return values.null_count == n
    if n < 2 or not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
                     or pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type)):
        return False
    first = values[0]
    probe = values.take(pa.array(range(0, n, max(1, n // 64)), pa.int64()))  # most columns differ early
    if not pc.all(pc.equal(probe, first)).as_py():
        return False
    return pc.all(pc.equal(values, first)).as_py()


class GroupBy(Operator):
    """One row per distinct value of the ``by`` tag columns.

    Groups come in sorted key order (by the first ``by`` column, then the next...; strings by
    code point, null keys last); inside a group, rows keep their input order. The ``by``
    columns stay as they are and come first; every other tag column, every packet column and
    the hidden columns (system tags, source info, meta) become ``list[T]``, one item per input
    row, as :class:`~orcapod_core.operators.Batch` does. An empty stream gives an empty stream.

    >>> GroupBy("species")(penguins)                       # doctest: +SKIP
    >>> penguins.group_by(["island", "species"])           # doctest: +SKIP
    """

    def __init__(self, by: str | Sequence[str]):
        if isinstance(by, str):
            names = [by]
        elif isinstance(by, Sequence) and not isinstance(by, (bytes, bytearray)):
            names = list(by)
        else:
            raise InputValidationError(f"GroupBy: by must be a tag column name or a list of them, got {by!r}")
        if not names:
            raise InputValidationError("GroupBy: by needs at least one tag column")
        bad = [n for n in names if not isinstance(n, str) or not n]
        if bad:
            raise InputValidationError(f"GroupBy: by must name tag columns (non-empty strings), got {bad!r}")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise InputValidationError(f"GroupBy: by names column(s) {repeated} more than once")
        self.by: tuple[str, ...] = tuple(names)

    def config(self) -> dict[str, Any]:
        # always a list: GroupBy("k") and GroupBy(["k"]) are the same operator
        return {"by": list(self.by)}

    def _check(self, stream: Stream) -> None:
        layout = stream.layout
        for name in self.by:
            if name in layout.tag_columns:
                field = layout.schema.field(name)
                if pa.types.is_nested(field.type):
                    shown = type_to_string(arrow_to_python(field.type, field.nullable, f"column {name!r}"))
                    raise SchemaMismatchError(
                        f"GroupBy: tag column {name!r} has type {shown}; group keys must be single values, not lists, maps or structs"
                    )
                continue
            what = "a packet column" if name in layout.packet_columns else "not a column of the stream"
            raise InputValidationError(
                f"GroupBy: {name!r} is {what}, not a tag column (tag columns: {list(layout.tag_columns)})"
            )

    def output_layout(self, stream: Stream) -> StreamLayout:
        self._check(stream)
        layout = stream.layout
        keys = [layout.schema.field(c) for c in self.by]
        tags = [list_field(layout.schema.field(c)) for c in layout.tag_columns if c not in self.by]
        lists = lambda names: [list_field(layout.schema.field(c)) for c in names]  # noqa: E731
        return StreamLayout.build(
            [*keys, *tags],
            lists(layout.system_tag_columns),
            lists(layout.packet_columns),
            lists(layout.source_columns),
            lists(layout.meta_columns),
        )

    def _groups_by_polars(self, table: pa.Table) -> tuple[pa.Array, pa.Array]:
        """(row order, list offsets) for many groups: the input rows group by group in key order,
        each group's rows in input order, and where each group starts (then the total) — from a
        polars hash group-by of the keys and a row index, then a sort of the groups."""
        n = table.num_rows
        frame = pl.from_arrow(table.select(list(self.by)))
        group_on, sort_on, firsts = [], [], []
        for i, name in enumerate(self.by):
            column = table.column(name)
            if pa.types.is_floating(column.type):
                # polars groups -0.0 with 0.0; orcapod's values keep them apart (hashing.py)
                frame = frame.with_columns(pl.from_arrow(_canonical_bits(column)).alias(_BITS.format(i)))
                group_on.append(_BITS.format(i))
                sort_on += [name, _BITS.format(i)]
                firsts.append(pl.col(name).first())
            else:
                group_on.append(name)
                sort_on.append(name)
        frame = frame.with_columns(pl.int_range(0, n, dtype=pl.UInt32 if n < 2**32 else pl.UInt64).alias(_ROW))
        groups = frame.group_by(group_on).agg(pl.col(_ROW), *firsts).sort(sort_on, nulls_last=True)
        rows = groups.get_column(_ROW)
        offsets = pl.concat([pl.Series([0], dtype=pl.Int64), rows.list.len().cast(pl.Int64).cum_sum()])
        return rows.explode().to_arrow(), offsets.to_arrow()

    def compute(self, stream: Stream) -> pa.Table:
        table = stream._table()
        schema = self.output_layout(stream).schema
        if table.num_rows == 0:
            return schema.empty_table()
        keys = set(self.by)
        listed = [f.name for f in schema if f.name not in keys]
        workers = (os.cpu_count() or 1) if table.num_rows >= _PARALLEL_ROWS else 1
        with ThreadPoolExecutor(max_workers=workers) as pool:
            constant = pool.submit(lambda: {c for c in listed if _is_constant(table.column(c))})
            numbers = _group_numbers(table, self.by)
            if numbers is None:
                order, offsets = self._groups_by_polars(table)
            else:
                order, offsets = pc.sort_indices(numbers), None  # stable; a counting sort this few groups
            moved = [c for c in listed if c not in constant.result()]
            if is_identity(order, table.num_rows):  # keys already in order: nothing moves
                moved = []
            # largest first, so the threads finish together; the group boundaries are found meanwhile
            # order is a permutation of this table's rows (built just above): no bounds to check
            taken = {
                c: pool.submit(pc.take, table.column(c), order, boundscheck=False)
                for c in sorted(moved, key=lambda c: -table.column(c).nbytes)
            }
            if offsets is None:
                ends = pc.run_end_encode(numbers.take(order), run_end_type=pa.int64()).run_ends
                offsets = pa.concat_arrays([pa.array([0], pa.int64()), ends])
            gathered = {c: future.result() for c, future in taken.items()}
        first_rows = order.take(offsets.slice(0, len(offsets) - 1))  # each group's first row
        columns = {k: table.column(k).take(first_rows) for k in self.by}
        for field in schema:
            if field.name not in keys:
                values = gathered.get(field.name, table.column(field.name))
                columns[field.name] = pa.LargeListArray.from_arrays(offsets, _one_array(values), type=field.type)
        return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)
