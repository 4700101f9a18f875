"""Tag and Packet: the two halves of one stream row.

Both are immutable mappings of their visible columns, carry their hidden columns
(system tags on tags; source info on packets; meta on either), and render as a
1-row Arrow table. Their ``content_hash()`` is the row hash of the visible columns
(the same digest the columnar path computes for a whole stream).

>>> p = Packet({"x": 1})
>>> p["x"], p.as_dict(), p.as_table().num_rows
(1, {'x': 1}, 1)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa

from orcapod_core.columns import CONTENT_HASH_COLUMN, ColumnConfig, is_hidden
from orcapod_core.hashing import HASH_METHOD, ContentHash, hash_rows
from orcapod_core.types import Schema, canonicalize_table, schema_from_arrow
from orcapod_core.value_types import table_from_rows

__all__ = ["Datagram", "Tag", "Packet"]


class Datagram(Mapping[str, Any]):
    """A row fragment: visible values + hidden values + their Arrow fields."""

    __slots__ = ("_values", "_hidden", "_fields", "_digest")

    def __init__(
        self,
        values: Mapping[str, Any],
        *,
        hidden: Mapping[str, Any] | None = None,
        arrow_schema: pa.Schema | None = None,
        digest: bytes | None = None,
    ):
        self._values = dict(values)
        self._hidden = dict(hidden or {})
        if arrow_schema is None:
            table = canonicalize_table(table_from_rows([{**self._values, **self._hidden}]))
            arrow_schema = table.schema
        self._fields = arrow_schema
        self._digest = digest

    # Mapping over visible columns ---------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._values!r})"

    def __hash__(self) -> int:
        return hash(self.content_hash().digest)

    # Selection -------------------------------------------------------------------
    def _selected(self, columns: Any, all_info: bool) -> list[str]:
        cfg = ColumnConfig.resolve(columns, all_info)
        return list(self._values) + [k for k in self._hidden if cfg.shows(k)]

    def keys(self, columns: Any = None, all_info: bool = False) -> tuple[str, ...]:  # type: ignore[override]
        """Column names; hidden groups only when selected by ``columns``."""
        names = self._selected(columns, all_info)
        if ColumnConfig.resolve(columns, all_info).content_hash:
            names.append(CONTENT_HASH_COLUMN)
        return tuple(names)

    def as_dict(self, columns: Any = None, all_info: bool = False) -> dict[str, Any]:
        """Values as a plain dict; hidden groups only when selected."""
        out = {k: self._values[k] if k in self._values else self._hidden[k] for k in self._selected(columns, all_info)}
        if ColumnConfig.resolve(columns, all_info).content_hash:
            out[CONTENT_HASH_COLUMN] = self.content_hash().to_string()
        return out

    def schema(self, columns: Any = None, all_info: bool = False) -> Schema:
        """Python schema of the selected columns."""
        names = self._selected(columns, all_info)
        schema = schema_from_arrow([self._fields.field(n) for n in names])
        if ColumnConfig.resolve(columns, all_info).content_hash:
            schema = Schema({**schema, CONTENT_HASH_COLUMN: str})
        return schema

    def arrow_schema(self, columns: Any = None, all_info: bool = False) -> pa.Schema:
        names = self._selected(columns, all_info)
        return pa.schema([self._fields.field(n) for n in names])

    def as_table(self, columns: Any = None, all_info: bool = False) -> pa.Table:
        """One-row Arrow table of the selected columns."""
        data = self.as_dict(columns, all_info)
        fields = [self._fields.field(n) if n != CONTENT_HASH_COLUMN else pa.field(n, pa.large_string(), False) for n in data]
        return table_from_rows([data], pa.schema(fields))

    def content_hash(self) -> ContentHash:
        """Row hash of the visible columns (hidden provenance does not change content)."""
        if self._digest is None:
            visible = [n for n in self._values if not is_hidden(n)]
            table = table_from_rows([{n: self._values[n] for n in visible}], pa.schema([self._fields.field(n) for n in visible]))
            self._digest = hash_rows(table)[0].as_py()
        return ContentHash(HASH_METHOD, self._digest)

    @property
    def hidden(self) -> dict[str, Any]:
        """Hidden values (system tags / source info / meta) as a dict."""
        return dict(self._hidden)


class Tag(Datagram):
    """The key part of a row; hidden columns are its system tags.

    >>> Tag({"subject": "s1"}).as_dict()
    {'subject': 's1'}
    """

    __slots__ = ()

    @property
    def system_tags(self) -> dict[str, Any]:
        return {k: v for k, v in self._hidden.items() if k.startswith("_tag_")}


class Packet(Datagram):
    """The payload part of a row; hidden columns are its source info.

    >>> Packet({"x": 1.5}).content_hash().method
    'orcapod_v1'
    """

    __slots__ = ()

    @property
    def source_info(self) -> dict[str, Any]:
        """``{packet column: source info string}``."""
        return {k[len("_source_"):]: v for k, v in self._hidden.items() if k.startswith("_source_")}
