"""Operators: structural transformations of streams (joins, column selection and
renaming, filtering, batching, grouping). They never invent values, predict their output
layout without computing, and run on Arrow/Polars over whole columns.

>>> from orcapod_core.sources import DictSource
>>> from orcapod_core.operators import Join
>>> a = DictSource({"id": [1, 2], "x": [10, 20]}, tag_columns="id", source_id="a")
>>> b = DictSource({"id": [2], "y": ["p"]}, tag_columns="id", source_id="b")
>>> Join()(a, b).as_table().to_pylist()
[{'id': 2, 'x': 20, 'y': 'p'}]
"""

from orcapod_core.operators.base import Operator, OperatorStream
from orcapod_core.operators.batch import Batch
from orcapod_core.operators.filter import PolarsFilter
from orcapod_core.operators.group_by import GroupBy
from orcapod_core.operators.join import Join, MergeJoin, SemiJoin
from orcapod_core.operators.selection import (
    DropPacketColumns,
    DropTagColumns,
    MapPackets,
    MapTags,
    SelectPacketColumns,
    SelectTagColumns,
)

# last: adds .join(), .batch(), .group_by()... to every Stream (see sugar.py for why there)
from orcapod_core.operators import sugar  # noqa: E402, F401

__all__ = [
    "Operator",
    "OperatorStream",
    "Join",
    "MergeJoin",
    "SemiJoin",
    "Batch",
    "GroupBy",
    "SelectTagColumns",
    "SelectPacketColumns",
    "DropTagColumns",
    "DropPacketColumns",
    "MapTags",
    "MapPackets",
    "PolarsFilter",
]
