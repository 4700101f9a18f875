"""Column naming conventions and :class:`ColumnConfig` (which hidden column groups to show).

A stream's Arrow table holds, besides the user's tag and packet columns, hidden groups
recognised by name:

* **system tags** ``_tag_<kind>::<hash>[:<n>]`` — provenance of the tag (``<n>`` tells apart
  the columns a join gathers from several inputs of one origin; see :func:`system_tag_origin`);
* **source info** ``_source_<packet column>`` — where each packet value came from;
* **meta** ``__<name>`` — bookkeeping attached by nodes;
* **content hash** ``_content_hash`` — computed on demand, never stored.

>>> ColumnConfig.resolve(None, all_info=True).system_tags
True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from orcapod_core.errors import InputValidationError

__all__ = [
    "ColumnConfig",
    "SYSTEM_TAG_PREFIX",
    "SOURCE_PREFIX",
    "META_PREFIX",
    "CONTENT_HASH_COLUMN",
    "SOURCE_ID_TAG",
    "RECORD_ID_TAG",
    "is_system_tag",
    "is_source_column",
    "is_meta",
    "is_hidden",
    "source_column",
    "system_tag_origin",
    "check_user_column",
]

SYSTEM_TAG_PREFIX = "_tag_"
SOURCE_PREFIX = "_source_"
META_PREFIX = "__"
CONTENT_HASH_COLUMN = "_content_hash"
SOURCE_ID_TAG = "_tag_source_id"
RECORD_ID_TAG = "_tag_record_id"


def is_system_tag(name: str) -> bool:
    return name.startswith(SYSTEM_TAG_PREFIX)


def is_source_column(name: str) -> bool:
    return name.startswith(SOURCE_PREFIX)


def is_meta(name: str) -> bool:
    return name.startswith(META_PREFIX)


def is_hidden(name: str) -> bool:
    return is_system_tag(name) or is_source_column(name) or is_meta(name) or name == CONTENT_HASH_COLUMN


def source_column(packet_column: str) -> str:
    """Name of the source-info column of a packet column."""
    return SOURCE_PREFIX + packet_column


def system_tag_origin(name: str) -> str:
    """The origin of a system-tag column: ``_tag_<kind>::<hash>`` (the name a root source gave
    it), without the ``:<n>`` a join may have added — or, for a store written before that rule,
    without the ``::<input hash>:<pos>`` suffixes each join appended.

    >>> system_tag_origin("_tag_source_id::3f2a9c1b7d4e:1")
    '_tag_source_id::3f2a9c1b7d4e'
    >>> system_tag_origin("_tag_record_id::3f2a9c1b7d4e::9a8b7c6d5e4f:0::0badc0ffee00:1")
    '_tag_record_id::3f2a9c1b7d4e'
    """
    kind, sep, rest = name.partition("::")
    if not sep:
        return name
    origin = rest.split("::", 1)[0]
    head, colon, tail = origin.rpartition(":")
    if colon and tail.isdigit():
        origin = head
    return f"{kind}::{origin}"


def check_user_column(name: str, where: str = "column") -> str:
    """Reject user column names that collide with a hidden-column prefix."""
    if not isinstance(name, str) or not name:
        raise InputValidationError(f"{where} name must be a non-empty string, got {name!r}")
    if is_hidden(name):
        raise InputValidationError(
            f"{where} {name!r} uses a reserved prefix ({SYSTEM_TAG_PREFIX!r}, {SOURCE_PREFIX!r}, "
            f"{META_PREFIX!r} or {CONTENT_HASH_COLUMN!r}); rename it"
        )
    return name


@dataclass(frozen=True)
class ColumnConfig:
    """Which hidden column groups appear in ``output_schema``, ``keys`` and ``as_table``.

    >>> stream.as_table(columns={"source": True})            # doctest: +SKIP
    >>> stream.as_table(columns=ColumnConfig(system_tags=True))  # doctest: +SKIP
    >>> stream.as_table(all_info=True)                         # doctest: +SKIP
    """

    system_tags: bool = False
    source: bool = False
    meta: bool = False
    content_hash: bool = False
    sort_by_tags: bool = False

    @classmethod
    def resolve(cls, columns: ColumnConfig | Mapping[str, bool] | Iterable[str] | None = None, all_info: bool = False) -> ColumnConfig:
        """Normalise the ``columns=`` argument accepted by every stream method."""
        if columns is None:
            cfg = cls()
        elif isinstance(columns, ColumnConfig):
            cfg = columns
        elif isinstance(columns, Mapping):
            cfg = cls(**cls._check(dict(columns)))
        elif isinstance(columns, str):
            cfg = cls(**cls._check({columns: True}))
        else:
            cfg = cls(**cls._check({name: True for name in columns}))
        if all_info:
            cfg = cls(True, True, True, True, cfg.sort_by_tags)
        return cfg

    @classmethod
    def _check(cls, options: dict[str, Any]) -> dict[str, Any]:
        if options.pop("all_info", False):
            options.update(system_tags=True, source=True, meta=True, content_hash=True)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InputValidationError(f"unknown column option(s) {unknown}; known: {sorted(known)} and 'all_info'")
        return options

    def shows(self, name: str) -> bool:
        """Whether a hidden column ``name`` is selected by this config."""
        if is_system_tag(name):
            return self.system_tags
        if is_source_column(name):
            return self.source
        if is_meta(name):
            return self.meta
        return True
