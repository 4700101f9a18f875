"""Streams: finite, ordered sequences of (Tag, Packet) rows held as one Arrow table.

Every stream, source and node shares this API. A stream knows its layout (full Arrow
schema + which columns are tags) without computing; its rows are computed once, on
first access, and cached.

>>> from orcapod_core.sources import DictSource
>>> s = DictSource({"id": [1, 2], "x": [10, 20]}, tag_columns=["id"])
>>> s.keys()
(('id',), ('x',))
>>> [p["x"] for _, p in s]
[10, 20]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from orcapod_core.columns import (
    CONTENT_HASH_COLUMN,
    ColumnConfig,
    is_meta,
    is_source_column,
    is_system_tag,
)
from orcapod_core.datagrams import Packet, Tag
from orcapod_core.errors import SchemaMismatchError
from orcapod_core.hashing import HASH_METHOD, ContentHash, hash_rows, hash_table, hash_object
from orcapod_core.types import Schema, schema_from_arrow
from orcapod_core.value_types import to_python

if TYPE_CHECKING:
    import polars

__all__ = ["StreamLayout", "Stream", "TableStream", "conform", "layout_of_table", "shape_identity"]


@dataclass(frozen=True)
class StreamLayout:
    """The shape of a stream: its full Arrow schema (hidden columns included) and its tag columns.

    Column order is canonical: tags, system tags, packet columns, source info, meta.
    """

    schema: pa.Schema
    tag_columns: tuple[str, ...]

    @classmethod
    def build(
        cls,
        tags: Sequence[pa.Field],
        system_tags: Sequence[pa.Field],
        packets: Sequence[pa.Field],
        sources: Sequence[pa.Field],
        meta: Sequence[pa.Field] = (),
    ) -> StreamLayout:
        return cls(pa.schema([*tags, *system_tags, *packets, *sources, *meta]), tuple(f.name for f in tags))

    @cached_property
    def packet_columns(self) -> tuple[str, ...]:
        tags = set(self.tag_columns)
        return tuple(
            n for n in self.schema.names if n not in tags and not (is_system_tag(n) or is_source_column(n) or is_meta(n))
        )

    @cached_property
    def system_tag_columns(self) -> tuple[str, ...]:
        return tuple(n for n in self.schema.names if is_system_tag(n))

    @cached_property
    def source_columns(self) -> tuple[str, ...]:
        return tuple(n for n in self.schema.names if is_source_column(n))

    @cached_property
    def meta_columns(self) -> tuple[str, ...]:
        return tuple(n for n in self.schema.names if is_meta(n))

    def fields(self, names: Sequence[str]) -> list[pa.Field]:
        return [self.schema.field(n) for n in names]

    def tag_side(self, cfg: ColumnConfig) -> list[str]:
        return [*self.tag_columns, *(self.system_tag_columns if cfg.system_tags else ())]

    def packet_side(self, cfg: ColumnConfig) -> list[str]:
        return [
            *self.packet_columns,
            *(self.source_columns if cfg.source else ()),
            *(self.meta_columns if cfg.meta else ()),
        ]


def conform(table: pa.Table, layout: StreamLayout) -> pa.Table:
    """Select the layout's columns in order and cast to its exact types and nullability."""
    missing = [n for n in layout.schema.names if n not in table.column_names]
    if missing:
        raise SchemaMismatchError(f"computed table is missing columns {missing}")
    table = table.select(layout.schema.names)
    if table.schema.equals(layout.schema):
        return table
    try:
        return table.cast(layout.schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise SchemaMismatchError(f"computed table does not match the predicted schema: {exc}") from exc


class Stream:
    """Base of every stream. Subclasses provide ``_predict_layout``, ``_compute_table`` and
    ``_identity_hashes``; everything a user calls is implemented here once.

    The operator methods (``join``, ``semi_join``, ``map_tags``, ``map_packets``, ``batch``,
    ``group_by``, ``polars_filter``, ``select_*_columns``, ``drop_*_columns``) are added by
    :mod:`orcapod_core.operators.sugar`: operators are built on streams, so this module cannot
    import them; importing sources, function pods or pipelines brings them.
    """

    label: str | None = None

    # -- subclass hooks ------------------------------------------------------------
    def _predict_layout(self) -> StreamLayout:
        raise NotImplementedError

    def _compute_table(self) -> pa.Table:
        raise NotImplementedError

    def _identity_hashes(self) -> tuple[ContentHash, ContentHash]:
        """(content_hash, pipeline_hash) of this stream."""
        raise NotImplementedError

    @property
    def producer(self) -> Any:
        """The pod/source that produced this stream (``None`` for a bare table)."""
        return None

    @property
    def upstreams(self) -> tuple[Stream, ...]:
        return ()

    # -- layout -------------------------------------------------------------------
    @cached_property
    def layout(self) -> StreamLayout:
        return self._predict_layout()

    @property
    def tag_columns(self) -> tuple[str, ...]:
        return self.layout.tag_columns

    @property
    def packet_columns(self) -> tuple[str, ...]:
        return self.layout.packet_columns

    def output_schema(self, columns: Any = None, all_info: bool = False) -> tuple[Schema, Schema]:
        """(tag schema, packet schema) as Python types, without computing rows."""
        cfg = ColumnConfig.resolve(columns, all_info)
        tags = schema_from_arrow(self.layout.fields(self.layout.tag_side(cfg)))
        packets = schema_from_arrow(self.layout.fields(self.layout.packet_side(cfg)))
        if cfg.content_hash:
            packets = Schema({**packets, CONTENT_HASH_COLUMN: str})
        return tags, packets

    def keys(self, columns: Any = None, all_info: bool = False) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(tag column names, packet column names)."""
        tags, packets = self.output_schema(columns, all_info)
        return tuple(tags), tuple(packets)

    # -- identity -----------------------------------------------------------------
    @cached_property
    def _hashes(self) -> tuple[ContentHash, ContentHash]:
        return self._identity_hashes()

    def content_hash(self) -> ContentHash:
        """What data went in: sources' ids + every producer's identity along the chain."""
        return self._hashes[0]

    def pipeline_hash(self) -> ContentHash:
        """Shape only: schemas + producers' identities (independent of which data)."""
        return self._hashes[1]

    # -- data ---------------------------------------------------------------------
    def _table(self) -> pa.Table:
        """The full internal table (hidden columns included), computed once."""
        cached = self.__dict__.get("_cached_table")
        if cached is None:
            cached = conform(self._compute_table(), self.layout)
            self.__dict__["_cached_table"] = cached
        return cached

    def packet_hashes(self) -> pa.FixedSizeBinaryArray:
        """Per-row content digests of the packet columns (cached)."""
        cached = self.__dict__.get("_cached_packet_hashes")
        if cached is None:
            cached = hash_rows(self._table(), self.layout.packet_columns)
            self.__dict__["_cached_packet_hashes"] = cached
        return cached

    def as_table(self, columns: Any = None, all_info: bool = False) -> pa.Table:
        """Rows as a pyarrow Table (hidden groups only when selected)."""
        cfg = ColumnConfig.resolve(columns, all_info)
        table = self._table()
        out = table.select(self.layout.tag_side(cfg) + self.layout.packet_side(cfg))
        if cfg.content_hash:
            hexes = [f"{HASH_METHOD}:{d.hex()}" for d in self.packet_hashes().to_pylist()]
            out = out.append_column(pa.field(CONTENT_HASH_COLUMN, pa.large_string(), False), pa.array(hexes, pa.large_string()))
        if cfg.sort_by_tags and self.tag_columns and out.num_rows:
            sortable = [c for c in self.tag_columns if not pa.types.is_nested(out.schema.field(c).type)]
            if sortable:
                out = out.take(pc.sort_indices(out, [(c, "ascending") for c in sortable]))
        return out

    def as_polars(self, columns: Any = None, all_info: bool = False) -> polars.DataFrame:
        """Rows as a polars DataFrame."""
        import polars as pl  # imported when used: a worker process unpickling a function needs no polars

        return pl.from_arrow(self.as_table(columns, all_info))  # type: ignore[return-value]

    def __len__(self) -> int:
        return self._table().num_rows

    def iter_packets(self) -> Iterator[tuple[Tag, Packet]]:
        """Yield (Tag, Packet) rows; hidden columns ride along on each."""
        table = self._table()
        layout = self.layout
        tag_names, sys_names = layout.tag_columns, layout.system_tag_columns
        packet_names = layout.packet_columns
        hidden_packet = layout.source_columns + layout.meta_columns
        tag_schema = pa.schema(layout.fields(tag_names + sys_names))
        packet_schema = pa.schema(layout.fields(packet_names + hidden_packet))
        cols = {n: to_python(table.column(n)) for n in table.column_names}
        for i in range(table.num_rows):
            tag = Tag(
                {n: cols[n][i] for n in tag_names},
                hidden={n: cols[n][i] for n in sys_names},
                arrow_schema=tag_schema,
            )
            packet = Packet(
                {n: cols[n][i] for n in packet_names},
                hidden={n: cols[n][i] for n in hidden_packet},
                arrow_schema=packet_schema,
            )
            yield tag, packet

    def __iter__(self) -> Iterator[tuple[Tag, Packet]]:
        return self.iter_packets()

    def __repr__(self) -> str:
        tags, packets = self.output_schema()
        name = f" {self.label!r}" if self.label else ""
        return f"<{type(self).__name__}{name} tags={dict(tags.to_strings())} packets={dict(packets.to_strings())}>"

    def _repr_html_(self) -> str:
        """A notebook's table preview (see :mod:`orcapod_core.previews`)."""
        from orcapod_core.previews import stream_html

        return stream_html(self)


class TableStream(Stream):
    """A materialized stream over an Arrow table that already has the internal layout.

    Its content hash is the hash of its rows; its pipeline hash the hash of its schema.

    >>> import pyarrow as pa
    >>> TableStream(pa.table({"id": [1], "x": [2]}), tag_columns=["id"]).keys()
    (('id',), ('x',))
    """

    def __init__(self, table: pa.Table, tag_columns: Sequence[str], *, label: str | None = None, layout: StreamLayout | None = None):
        from orcapod_core.types import canonicalize_table

        missing = [c for c in tag_columns if c not in table.column_names]
        if missing:
            raise SchemaMismatchError(f"tag columns {missing} are not in the table (columns: {table.column_names})")
        if layout is None:
            table = canonicalize_table(table)
            layout = layout_of_table(table, tuple(tag_columns))
        self._layout = layout
        self._source_table = table
        self.label = label

    def _predict_layout(self) -> StreamLayout:
        return self._layout

    def _compute_table(self) -> pa.Table:
        return self._source_table

    def _identity_hashes(self) -> tuple[ContentHash, ContentHash]:
        shape = shape_identity(self.layout)
        content = hash_object({"kind": "table", "shape": shape, "data": hash_table(self._table())})
        return content, hash_object({"kind": "table", "shape": shape})


def layout_of_table(table: pa.Table, tag_columns: tuple[str, ...]) -> StreamLayout:
    """Canonical layout of a table whose hidden columns are recognised by name."""
    tags = set(tag_columns)
    names = table.column_names
    pick = lambda pred: [table.schema.field(n) for n in names if pred(n)]  # noqa: E731
    return StreamLayout.build(
        [table.schema.field(n) for n in tag_columns],
        pick(is_system_tag),
        pick(lambda n: n not in tags and not (is_system_tag(n) or is_source_column(n) or is_meta(n))),
        pick(is_source_column),
        pick(is_meta),
    )


def shape_identity(layout: StreamLayout) -> dict[str, Any]:
    """The shape part of an identity: visible tag and packet schemas as type strings."""
    return {
        "tag_schema": schema_from_arrow(layout.fields(layout.tag_columns)).to_strings(),
        "packet_schema": schema_from_arrow(layout.fields(layout.packet_columns)).to_strings(),
    }
