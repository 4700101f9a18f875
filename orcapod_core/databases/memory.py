"""An :class:`~orcapod_core.databases.ArrowDatabase` that lives in the process's memory.

Same semantics as :class:`~orcapod_core.databases.DeltaTableDatabase` (batching, dedup, schema
evolution, versions bumped once per committed batch), without persistence: what tests and
throw-away pipelines use.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from orcapod_core.databases.buffered import BufferedArrowDatabase
from orcapod_core.databases.file_store import FileStore
from orcapod_core.databases.tables import Condition, _align, filter_rows
from orcapod_core.databases.maintenance import DEFAULT_RETENTION_HOURS, MaintenanceReport, _prefix, no_maintenance
from orcapod_core.databases.protocol import RecordPath, TableStats, validate_record_path

__all__ = ["InMemoryArrowDatabase"]

_NO_IDS: frozenset[str] = frozenset()


@dataclass
class _Table:
    """Committed batches of one table, oldest first."""

    schema: pa.Schema
    version: int = 0
    chunks: list[pa.Table] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)

    def rows(self) -> pa.Table:
        if len(self.chunks) != 1 or not self.chunks[0].schema.equals(self.schema):
            self.chunks = [pa.concat_tables([_align(c, self.schema) for c in self.chunks])]
        return self.chunks[0]


class InMemoryArrowDatabase(BufferedArrowDatabase):
    """In-memory record store with the :class:`~orcapod_core.databases.ArrowDatabase` contract.

    >>> db = InMemoryArrowDatabase()
    >>> db.add_records(("p", "t"), pa.table({"__record_id": ["a"], "x": [1]}), flush=True)
    1
    >>> db.table_version(("p", "t")), db.list_tables()
    (0, [('p', 't')])
    """

    def __init__(self, batch_size: int = 1000, max_batch_age_s: float | None = 2.0):
        super().__init__(batch_size, max_batch_age_s)
        self._tables: dict[RecordPath, _Table] = {}

    def __repr__(self) -> str:
        return f"InMemoryArrowDatabase(tables={len(self._tables)}, pending={self.pending_count()})"

    @functools.cached_property
    def file_store(self) -> FileStore:
        """Files that functions return, for this process's lifetime (a temporary directory)."""
        area = tempfile.mkdtemp(prefix="orcapod-files-")
        atexit.register(shutil.rmtree, area, True)
        return FileStore(area)

    def to_config(self) -> dict[str, Any]:
        """Config of an *empty* in-memory database of the same settings (data is not saved)."""
        return {"type": "memory", "batch_size": self.batch_size, "max_batch_age_s": self.max_batch_age_s}

    def table_stats(self, record_path: tuple[str, ...]) -> TableStats | None:
        """Rows, in-memory bytes and version of a committed table (``None`` when there is none);
        commit times are not kept (``modified`` is ``None``)."""
        stored = self._tables.get(validate_record_path(record_path))
        if stored is None:
            return None
        rows = stored.rows()
        return TableStats(rows=rows.num_rows, bytes=rows.nbytes, version=stored.version)

    # ---- maintenance (nothing to do: no files, no old versions) --------------------------------

    def compact(
        self, path_prefix: tuple[str, ...] = (), *, target_file_size: int | None = None, exclude: Sequence[RecordPath] = ()
    ) -> MaintenanceReport:
        """Commit what is pending under ``path_prefix``; there are no files to merge."""
        return no_maintenance("compact", repr(self), self._maintained(path_prefix))

    def vacuum(
        self, path_prefix: tuple[str, ...] = (), *, retention_hours: int = DEFAULT_RETENTION_HOURS, dry_run: bool = False
    ) -> MaintenanceReport:
        """Nothing to delete: an in-memory table keeps no old versions."""
        return no_maintenance("vacuum", repr(self), self._maintained(path_prefix), dry_run=dry_run, retention_hours=retention_hours)

    def _maintained(self, path_prefix: tuple[str, ...]) -> list[RecordPath]:
        prefix = _prefix(path_prefix)
        with self._lock:
            for key in [k for k in self._pending if k[: len(prefix)] == prefix]:
                self._flush_key(key)
            return [k for k in self._tables if k[: len(prefix)] == prefix]

    # ---- committed-side primitives -------------------------------------------------------------

    def _committed_schema(self, key: RecordPath, fresh: bool = True) -> pa.Schema | None:
        table = self._tables.get(key)
        return None if table is None else table.schema

    def _committed_ids(self, key: RecordPath, fresh: bool = True) -> set[str] | frozenset[str]:
        table = self._tables.get(key)
        return _NO_IDS if table is None else table.ids

    def _scan(self, key: RecordPath, columns: list[str] | None, conds: Sequence[Condition]) -> pa.Table | None:
        table = self._tables.get(key)
        if table is None:
            return None
        rows = filter_rows(table.rows(), conds)
        return rows if columns is None else rows.select(columns)

    def _write(self, key: RecordPath, table: pa.Table, ids: pa.ChunkedArray, evolve: bool) -> None:
        stored = self._tables.get(key)
        if stored is None:
            self._tables[key] = _Table(schema=table.schema, chunks=[table], ids=set(ids.to_pylist()))
            return
        stored.schema = table.schema
        stored.chunks.append(table)
        stored.ids.update(ids.to_pylist())
        stored.version += 1

    def _committed_version(self, key: RecordPath) -> int | None:
        table = self._tables.get(key)
        return None if table is None else table.version

    def _committed_paths(self) -> list[RecordPath]:
        return list(self._tables)
