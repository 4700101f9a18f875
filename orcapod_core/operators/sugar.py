"""Operator sugar on every stream: ``stream.join(other)``, ``stream.batch(2)``, ``stream.group_by("k")``...

Streams sit below operators in the import order (an operator takes streams and returns one), so
``orcapod_core.streams`` cannot name an operator. Instead this module, which sees both, adds one
method per operator to :class:`~orcapod_core.streams.Stream` when the operators package is
imported — which ``orcapod_core.sources`` and ``orcapod_core.pipeline`` do, so every source and
node has them (a bare ``TableStream`` built from ``orcapod_core.streams`` alone gets them once
the operators are imported). Each method only builds the operator and applies it, so
``s.join(t)`` and ``Join()(s, t)`` are the same stream (same identity, same tracking inside a
pipeline).

>>> from orcapod_core.sources import DictSource
>>> s = DictSource({"id": [1, 2, 3], "g": ["a", "b", "a"]}, tag_columns=["id", "g"], source_id="demo")
>>> s.group_by("g").as_table().to_pylist()
[{'g': 'a', 'id': [1, 3]}, {'g': 'b', 'id': [2]}]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from orcapod_core.operators.batch import Batch
from orcapod_core.operators.filter import PolarsFilter
from orcapod_core.operators.group_by import GroupBy
from orcapod_core.operators.join import Join, SemiJoin
from orcapod_core.operators.selection import (
    DropPacketColumns,
    DropTagColumns,
    MapPackets,
    MapTags,
    SelectPacketColumns,
    SelectTagColumns,
)
from orcapod_core.streams import Stream

__all__ = ["STREAM_METHODS"]


def join(self: Stream, *others: Stream, label: str | None = None) -> Stream:
    """Inner join on shared tag columns (see :class:`~orcapod_core.operators.Join`)."""
    return Join()(self, *others, label=label)


def semi_join(self: Stream, other: Stream, label: str | None = None) -> Stream:
    """Rows of this stream that match ``other`` on common columns (:class:`~orcapod_core.operators.SemiJoin`)."""
    return SemiJoin()(self, other, label=label)


def map_tags(self: Stream, name_map: Mapping[str, str], drop_unmapped: bool = False, label: str | None = None) -> Stream:
    """Rename tag columns (:class:`~orcapod_core.operators.MapTags`)."""
    return MapTags(name_map, drop_unmapped=drop_unmapped)(self, label=label)


def map_packets(self: Stream, name_map: Mapping[str, str], drop_unmapped: bool = False, label: str | None = None) -> Stream:
    """Rename packet columns; their source info follows (:class:`~orcapod_core.operators.MapPackets`)."""
    return MapPackets(name_map, drop_unmapped=drop_unmapped)(self, label=label)


def batch(self: Stream, batch_size: int = 0, drop_partial_batch: bool = False, label: str | None = None) -> Stream:
    """Group rows into batches; every column becomes ``list[T]`` (:class:`~orcapod_core.operators.Batch`)."""
    return Batch(batch_size=batch_size, drop_partial_batch=drop_partial_batch)(self, label=label)


def group_by(self: Stream, by: str | Sequence[str], label: str | None = None) -> Stream:
    """One row per distinct value of the ``by`` tag columns; the other columns become lists
    (:class:`~orcapod_core.operators.GroupBy`)."""
    return GroupBy(by)(self, label=label)


def polars_filter(self: Stream, *predicates: Any, label: str | None = None, **equals: Any) -> Stream:
    """Keep rows matching polars predicates and ``column=value`` equalities (:class:`~orcapod_core.operators.PolarsFilter`)."""
    return PolarsFilter(*predicates, **equals)(self, label=label)


def select_tag_columns(self: Stream, columns: str | Sequence[str], strict: bool = True, label: str | None = None) -> Stream:
    """Keep only these tag columns (:class:`~orcapod_core.operators.SelectTagColumns`)."""
    return SelectTagColumns(columns, strict=strict)(self, label=label)


def select_packet_columns(self: Stream, columns: str | Sequence[str], strict: bool = True, label: str | None = None) -> Stream:
    """Keep only these packet columns (:class:`~orcapod_core.operators.SelectPacketColumns`)."""
    return SelectPacketColumns(columns, strict=strict)(self, label=label)


def drop_tag_columns(self: Stream, columns: str | Sequence[str], strict: bool = True, label: str | None = None) -> Stream:
    """Drop these tag columns (:class:`~orcapod_core.operators.DropTagColumns`)."""
    return DropTagColumns(columns, strict=strict)(self, label=label)


def drop_packet_columns(self: Stream, columns: str | Sequence[str], strict: bool = True, label: str | None = None) -> Stream:
    """Drop these packet columns and their source info (:class:`~orcapod_core.operators.DropPacketColumns`)."""
    return DropPacketColumns(columns, strict=strict)(self, label=label)


#: The methods every stream gets, by name.
STREAM_METHODS = {
    f.__name__: f
    for f in (
        join,
        semi_join,
        map_tags,
        map_packets,
        batch,
        group_by,
        polars_filter,
        select_tag_columns,
        select_packet_columns,
        drop_tag_columns,
        drop_packet_columns,
    )
}

for _name, _method in STREAM_METHODS.items():
    _method.__qualname__ = f"Stream.{_name}"  # help(Stream.join) reads like a method of Stream
    setattr(Stream, _name, _method)
