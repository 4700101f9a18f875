"""How orcapod's Delta tables hold their columns on disk (what :class:`~orcapod_core.databases.DeltaTableDatabase`
writes and reads): digest columns as their bytes, marked in the table's schema, and the
Parquet writer settings of every commit and compaction."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
from deltalake import ColumnProperties, DeltaTable, WriterProperties

from orcapod_core.databases.protocol import CONTEXT_PREFIXES, RECORD_ID_COLUMN
from orcapod_core.databases.tables import normalize_schema

__all__ = ["CONTEXT_COLUMN", "DIGEST_METADATA", "KEY_COLUMN", "context_columns", "StoredSchema", "stored_schema", "is_digest", "table_writer", "writer_for"]

#: Field metadata of a digest column stored as bytes (read back as lowercase hex).
DIGEST_METADATA = {b"orcapod.encoding": b"hex"}

#: How key columns are written. Data files are zstd-compressed, not deltalake's default snappy
#: (text ids and repeated provenance strings shrink several times more; reads cost the same).
#: Record ids and digests are distinct (or random) values: no dictionary (it never pays off and
#: costs a pass), and DELTA_LENGTH_BYTE_ARRAY, which stores the values' one length once per page
#: instead of 4 bytes per value.
KEY_COLUMN = ColumnProperties(dictionary_enabled=False, encoding="DELTA_LENGTH_BYTE_ARRAY")


#: How execution-context columns (:data:`~orcapod_core.databases.protocol.CONTEXT_PREFIXES`) are
#: written: without statistics (see there).
CONTEXT_COLUMN = ColumnProperties(statistics_enabled="NONE")


def table_writer(dt: DeltaTable) -> WriterProperties:
    """How the files of an existing table are (re)written: with its columns' properties."""
    schema = pa.schema(dt.schema().to_arrow())
    return writer_for(frozenset(f.name for f in schema if is_digest(f)), context_columns(schema.names))


def context_columns(names: Iterable[str]) -> frozenset[str]:
    """The execution-context columns among ``names``."""
    return frozenset(n for n in names if n.startswith(CONTEXT_PREFIXES))


@functools.lru_cache(maxsize=64)
def writer_for(key_columns: frozenset[str], context: frozenset[str] = frozenset()) -> WriterProperties:
    """How a batch is written: zstd, the key-column properties on the record id and on
    ``key_columns`` (the table's digest columns), no statistics for the ``context`` columns."""
    columns = {**{c: CONTEXT_COLUMN for c in context}, RECORD_ID_COLUMN: KEY_COLUMN, **{c: KEY_COLUMN for c in key_columns}}
    return WriterProperties(compression="ZSTD", compression_level=3, column_properties=columns)


@dataclass(frozen=True)
class StoredSchema:
    """A committed table's schema at ``version``: as stored (``physical``: digest columns as
    bytes) and as read (``logical``: every digest column as hex text)."""

    version: int
    physical: pa.Schema
    logical: pa.Schema
    digests: frozenset[str]


def stored_schema(version: int, raw: pa.Schema) -> StoredSchema:
    digests = frozenset(f.name for f in raw if is_digest(f))
    physical = normalize_schema(raw)
    logical = pa.schema([f.with_type(pa.large_string()) if f.name in digests else f for f in physical])
    return StoredSchema(version, physical, logical, digests)


def is_digest(f: pa.Field) -> bool:
    binary = pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)
    return binary and bool(f.metadata) and f.metadata.get(b"orcapod.encoding") == DIGEST_METADATA[b"orcapod.encoding"]
