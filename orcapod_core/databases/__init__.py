"""Record storage: the :class:`ArrowDatabase` protocol and its two implementations.

>>> import pyarrow as pa
>>> from orcapod_core.databases import InMemoryArrowDatabase, database_from_config
>>> db = InMemoryArrowDatabase()
>>> db.add_records(("demo", "t"), pa.table({"__record_id": ["a"], "x": [1]}))
1
>>> database_from_config(db.to_config())
InMemoryArrowDatabase(tables=0, pending=0)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orcapod_core.databases.buffered import BufferedArrowDatabase
from orcapod_core.databases.delta import DeltaTableDatabase
from orcapod_core.databases.maintenance import DEFAULT_RETENTION_HOURS, MaintenanceReport
from orcapod_core.databases.memory import InMemoryArrowDatabase
from orcapod_core.databases.protocol import (
    MAX_PATH_DEPTH,
    RECORD_ID_COLUMN,
    ArrowDatabase,
    RecordPath,
    TableStats,
    validate_record_path,
)
from orcapod_core.errors import InputValidationError

__all__ = [
    "ArrowDatabase",
    "BufferedArrowDatabase",
    "InMemoryArrowDatabase",
    "DeltaTableDatabase",
    "MaintenanceReport",
    "DEFAULT_RETENTION_HOURS",
    "RECORD_ID_COLUMN",
    "MAX_PATH_DEPTH",
    "RecordPath",
    "TableStats",
    "validate_record_path",
    "database_from_config",
]


def database_from_config(
    config: Mapping[str, Any], storage_options: dict[str, str] | None = None
) -> ArrowDatabase:
    """Rebuild a database from its ``to_config()`` (storage options, e.g. secrets, are passed apart).

    An in-memory config gives a new, empty database with the same settings.
    """
    kind = config.get("type")
    settings = {k: config[k] for k in ("batch_size", "max_batch_age_s") if k in config}
    if kind == "delta":
        if "base_uri" not in config:
            raise InputValidationError(f"delta database config lacks 'base_uri': {dict(config)!r}")
        return DeltaTableDatabase(config["base_uri"], storage_options=storage_options, **settings)
    if kind == "memory":
        return InMemoryArrowDatabase(**settings)
    raise InputValidationError(f"unknown database type {kind!r} in config {dict(config)!r} (expected 'delta' or 'memory')")
