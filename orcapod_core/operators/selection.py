"""Column operators: select, drop and rename tag or packet columns.

System tags and meta columns always pass through; a packet column's source info
(``_source_<col>``) follows it through selects, drops and renames, values untouched.

>>> from orcapod_core.sources import DictSource
>>> s = DictSource({"id": [1], "x": [2], "y": [3]}, tag_columns="id", source_id="demo")
>>> DropPacketColumns("y")(s).keys()
(('id',), ('x',))
>>> MapPackets({"x": "z"})(s).as_table(columns={"source": True}).column_names
['id', 'z', 'y', '_source_z', '_source_y']
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import pyarrow as pa

from orcapod_core.columns import check_user_column, source_column
from orcapod_core.errors import InputValidationError
from orcapod_core.operators.base import Operator
from orcapod_core.streams import Stream, StreamLayout

__all__ = [
    "SelectTagColumns",
    "SelectPacketColumns",
    "DropTagColumns",
    "DropPacketColumns",
    "MapTags",
    "MapPackets",
]

Renames = list[tuple[str, str]]  # (input column, output column), in output order


class _Reshape(Operator):
    """A unary operator that picks and renames visible columns; hidden ones follow."""

    side: ClassVar[str]  # "tag" or "packet": which visible columns the operator acts on

    def _plan(self, layout: StreamLayout) -> tuple[Renames, Renames]:
        """(tag renames, packet renames) for this input layout; raise on bad columns."""
        raise NotImplementedError

    def _side_columns(self, layout: StreamLayout) -> tuple[str, ...]:
        return layout.tag_columns if self.side == "tag" else layout.packet_columns

    def _split(self, layout: StreamLayout, picked: Renames) -> tuple[Renames, Renames]:
        untouched = [(c, c) for c in (layout.packet_columns if self.side == "tag" else layout.tag_columns)]
        return (picked, untouched) if self.side == "tag" else (untouched, picked)

    def _full_plan(self, layout: StreamLayout) -> tuple[StreamLayout, Renames]:
        tags, packets = self._plan(layout)
        names = set(layout.schema.names)
        keep = lambda cols: [(c, c) for c in cols]  # noqa: E731
        groups = [
            tags,
            keep(layout.system_tag_columns),
            packets,
            [(source_column(o), source_column(n)) for o, n in packets if source_column(o) in names],
            keep(layout.meta_columns),
        ]
        fields = [[layout.schema.field(o).with_name(n) for o, n in g] for g in groups]
        return StreamLayout.build(*fields), [pair for g in groups for pair in g]

    def output_layout(self, stream: Stream) -> StreamLayout:
        return self._full_plan(stream.layout)[0]

    def compute(self, stream: Stream) -> pa.Table:
        _, plan = self._full_plan(stream.layout)
        return stream._table().select([o for o, _ in plan]).rename_columns([n for _, n in plan])


def _column_list(columns: str | Sequence[str], where: str) -> tuple[str, ...]:
    if isinstance(columns, str):
        columns = [columns]
    if not isinstance(columns, Sequence) or not all(isinstance(c, str) for c in columns):
        raise InputValidationError(f"{where}: columns must be a column name or a sequence of names, got {columns!r}")
    return tuple(dict.fromkeys(columns))


class _ColumnChoice(_Reshape):
    keep: ClassVar[bool]  # select (True) or drop (False)

    def __init__(self, columns: str | Sequence[str], strict: bool = True):
        self.columns = _column_list(columns, type(self).__name__)
        self.strict = bool(strict)

    def config(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "strict": self.strict}

    def _plan(self, layout: StreamLayout) -> tuple[Renames, Renames]:
        available = self._side_columns(layout)
        unknown = [c for c in self.columns if c not in available]
        if unknown and self.strict:
            raise InputValidationError(
                f"{type(self).__name__}: unknown {self.side} column(s) {unknown} "
                f"({self.side} columns: {list(available)}); pass strict=False to ignore them"
            )
        if self.keep:
            picked = [c for c in self.columns if c in available]
        else:
            picked = [c for c in available if c not in self.columns]
        return self._split(layout, [(c, c) for c in picked])


class SelectTagColumns(_ColumnChoice):
    """Keep only the named tag columns (in the given order); packets are untouched.

    >>> SelectTagColumns(["subject"])(stream)  # doctest: +SKIP
    """

    side, keep = "tag", True


class SelectPacketColumns(_ColumnChoice):
    """Keep only the named packet columns (and their source info).

    >>> SelectPacketColumns("x")(stream)  # doctest: +SKIP
    """

    side, keep = "packet", True


class DropTagColumns(_ColumnChoice):
    """Drop the named tag columns (system tags are kept).

    >>> DropTagColumns("session")(stream)  # doctest: +SKIP
    """

    side, keep = "tag", False


class DropPacketColumns(_ColumnChoice):
    """Drop the named packet columns and their source info.

    >>> DropPacketColumns(["debug"])(stream)  # doctest: +SKIP
    """

    side, keep = "packet", False


class _Rename(_Reshape):
    def __init__(self, name_map: Mapping[str, str], drop_unmapped: bool = False):
        where = type(self).__name__
        if not isinstance(name_map, Mapping):
            raise InputValidationError(f"{where}: name_map must be a mapping old name → new name, got {name_map!r}")
        for old, new in name_map.items():
            if not isinstance(old, str):
                raise InputValidationError(f"{where}: name_map key {old!r} is not a column name")
            check_user_column(new, f"{where}: new name for {old!r}")
        self.name_map = dict(name_map)
        self.drop_unmapped = bool(drop_unmapped)

    def config(self) -> dict[str, Any]:
        return {"name_map": dict(self.name_map), "drop_unmapped": self.drop_unmapped}

    def _plan(self, layout: StreamLayout) -> tuple[Renames, Renames]:
        where = type(self).__name__
        available = self._side_columns(layout)
        unknown = [c for c in self.name_map if c not in available]
        if unknown:
            raise InputValidationError(f"{where}: unknown {self.side} column(s) {unknown} ({self.side} columns: {list(available)})")
        picked = [(c, self.name_map.get(c, c)) for c in available if c in self.name_map or not self.drop_unmapped]
        tags, packets = self._split(layout, picked)
        counts = Counter(n for _, n in tags + packets)
        clashes = sorted(n for n, k in counts.items() if k > 1)
        if clashes:
            raise InputValidationError(f"{where}: renaming onto existing column(s) {clashes}; each output name must be unique")
        return tags, packets


class MapTags(_Rename):
    """Rename tag columns; ``drop_unmapped=True`` drops tag columns not in the map.

    >>> MapTags({"id": "subject"})(stream)  # doctest: +SKIP
    """

    side = "tag"


class MapPackets(_Rename):
    """Rename packet columns; their source info is renamed along, values untouched.

    >>> MapPackets({"x": "signal"}, drop_unmapped=True)(stream)  # doctest: +SKIP
    """

    side = "packet"
