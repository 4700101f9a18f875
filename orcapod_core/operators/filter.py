"""PolarsFilter: keep the rows for which polars predicates hold.

>>> import polars as pl
>>> from orcapod_core.sources import DictSource
>>> s = DictSource({"id": [1, 2, 3], "x": [10, 20, 30]}, tag_columns="id", source_id="demo")
>>> PolarsFilter(pl.col("x") > 10, id=3)(s).as_table().to_pylist()
[{'id': 3, 'x': 30}]
"""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa

from orcapod_core.errors import InputValidationError
from orcapod_core.hashing import canonical_json
from orcapod_core.lazy_polars import pl
from orcapod_core.operators.base import Operator
from orcapod_core.streams import Stream, StreamLayout

__all__ = ["PolarsFilter"]


class PolarsFilter(Operator):
    """Keep rows where every predicate is true and every ``column=value`` holds.

    Predicates are polars expressions over the visible tag and packet columns; a null
    result drops the row. ``column=None`` keeps rows where the column is null. The
    expressions are part of the identity through polars' JSON serialization.

    >>> PolarsFilter(pl.col("score") > 0.5, subject="s1")(stream)  # doctest: +SKIP
    """

    def __init__(self, *predicates: pl.Expr, **equals: Any):
        for p in predicates:
            if not isinstance(p, pl.Expr):
                raise InputValidationError(f"PolarsFilter: predicates must be polars expressions, got {p!r}")
        try:
            canonical_json(equals)
        except TypeError as exc:
            raise InputValidationError(f"PolarsFilter: equality values must be JSON-like scalars/lists: {exc}") from exc
        self.predicates = tuple(predicates)
        self.equals = dict(equals)
        self._serialized = [p.meta.serialize(format="json") for p in self.predicates]

    def config(self) -> dict[str, Any]:
        return {"predicates": list(self._serialized), "equals": dict(self.equals)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PolarsFilter:
        predicates = [pl.Expr.deserialize(io.StringIO(s), format="json") for s in config.get("predicates", ())]
        return cls(*predicates, **config.get("equals", {}))

    def _referenced(self, layout: StreamLayout) -> list[str]:
        """Visible columns the filter reads (all of them when a predicate uses wildcards)."""
        visible = [*layout.tag_columns, *layout.packet_columns]
        unknown = [c for c in self.equals if c not in visible]
        roots: set[str] = set(self.equals)
        for p in self.predicates:
            names = p.meta.root_names()
            if not names or p.meta.has_multiple_outputs():
                roots.update(visible)
            unknown += [c for c in names if c not in visible and c not in unknown]
            roots.update(names)
        if unknown:
            raise InputValidationError(f"PolarsFilter: unknown column(s) {unknown} (visible columns: {visible})")
        return [c for c in visible if c in roots]

    def output_layout(self, stream: Stream) -> StreamLayout:
        self._referenced(stream.layout)
        return stream.layout

    def compute(self, stream: Stream) -> pa.Table:
        table = stream._table()
        conditions = [*self.predicates, *(pl.col(c).eq_missing(v) for c, v in self.equals.items())]
        if not conditions or table.num_rows == 0:
            return table
        frame = pl.from_arrow(table.select(self._referenced(stream.layout)))
        mask = frame.select(pl.all_horizontal(conditions).fill_null(False)).to_series()
        if len(mask) != table.num_rows:  # e.g. an aggregate predicate like pl.col("x").max()
            raise InputValidationError(f"PolarsFilter: predicates must give one boolean per row, got {len(mask)} values")
        return table.filter(mask.to_arrow())
