"""Batch: group consecutive rows; every column (hidden ones too) becomes a list.

>>> from orcapod_core.sources import DictSource
>>> s = DictSource({"id": [1, 2, 3], "x": [10, 20, 30]}, tag_columns="id", source_id="demo")
>>> Batch(batch_size=2)(s).as_table().to_pylist()
[{'id': [1, 2], 'x': [10, 20]}, {'id': [3], 'x': [30]}]
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from orcapod_core.errors import InputValidationError
from orcapod_core.lazy_polars import pl
from orcapod_core.operators.base import Operator
from orcapod_core.streams import Stream, StreamLayout

__all__ = ["Batch", "list_field"]


def list_field(field: pa.Field) -> pa.Field:
    """``field`` as a list of its values (what Batch and GroupBy make of every column they gather)."""
    # the item keeps the column's nullability; the list itself is never null
    return pa.field(field.name, pa.large_list(pa.field("item", field.type, field.nullable)), nullable=False)


class Batch(Operator):
    """Group rows into batches of ``batch_size`` (0 = one batch of all rows).

    The last, smaller batch is kept unless ``drop_partial_batch``. An empty stream
    gives an empty stream.

    >>> Batch(batch_size=100, drop_partial_batch=True)(stream)  # doctest: +SKIP
    """

    def __init__(self, batch_size: int = 0, drop_partial_batch: bool = False):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
            raise InputValidationError(f"Batch: batch_size must be an int >= 0, got {batch_size!r}")
        self.batch_size = batch_size
        self.drop_partial_batch = bool(drop_partial_batch)

    def config(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "drop_partial_batch": self.drop_partial_batch}

    def output_layout(self, stream: Stream) -> StreamLayout:
        layout = stream.layout
        return StreamLayout(pa.schema([list_field(f) for f in layout.schema]), layout.tag_columns)

    def _offsets(self, n: int) -> pa.Array:
        """List offsets of the batches: 0, size, 2·size, ..., then n for a kept partial batch."""
        size = self.batch_size or max(n, 1)
        full, rest = divmod(n, size)
        offsets = pl.int_range(0, full + 1, dtype=pl.Int64, eager=True) * size
        if rest and not self.drop_partial_batch:
            offsets = offsets.append(pl.Series([n], dtype=pl.Int64))
        return offsets.to_arrow()

    def compute(self, stream: Stream) -> pa.Table:
        table = stream._table()
        schema = self.output_layout(stream).schema
        offsets = self._offsets(table.num_rows)
        used = offsets[-1].as_py()
        columns = [
            pa.LargeListArray.from_arrays(offsets, table.column(i).slice(0, used).combine_chunks(), type=field.type)
            for i, field in enumerate(schema)
        ]
        return pa.Table.from_arrays(columns, schema=schema)
