"""Store maintenance: compact and vacuum the Delta tables of a
:class:`~orcapod_core.databases.DeltaTableDatabase` (what its ``compact()`` and ``vacuum()`` do).

Every committed batch is one Parquet file, so a store that runs often holds many small files.
**Compaction** merges them (deltalake's ``DeltaTable.optimize.compact()``; then a checkpoint, so
opening the table no longer replays every commit). The merged-away files stay on storage —
older table versions still read them — until **vacuum** (deltalake's ``DeltaTable.vacuum()``)
deletes the files no current version references that are older than ``retention_hours``, and
deltalake's ``cleanup_metadata()`` drops expired log entries.

What is touched: orcapod's own record tables (those with a ``__record_id`` column) under the
given prefix. Any other Delta table in the store — a table a plain Dagster asset published
through the IO manager, a user's table — is left exactly as it is (reported as skipped): it may
be read at an old version (a ``DeltaTableSource`` pinned at a version, an IO-manager input).

Why this never breaks a pinned output: snapshots reference rows of our tables by key (result
packet hashes, entry ids, snapshot ids) and read those tables at their *latest* version, which
compaction and vacuum keep whole; only Delta *sources* are pinned at a version, and they are
not our tables. What vacuum does lose is time travel: an older version of one of our tables can
no longer be read once its files are deleted.

Safety of one call:

* pending records of this handle under the prefix are committed first;
* each table is compacted or vacuumed holding this handle's lock and the table's commit lock
  (a file lock on local disks, which other processes' writers also take; a lock of this
  process on object stores), so no writer of this process — and on a local disk no writer at
  all — is in the middle of a commit meanwhile;
* compaction keeps every row and the rows of each committed batch together and in order, but
  deltalake writes the merged batches newest first, so whole-table reads may list a compacted
  table's batches in another order (lookups by id or value, what results, pipeline records and
  snapshots use, are unaffected). A table holding repeated record ids (two object-store
  writers racing) is therefore not compacted: reads serve the first committed copy, and
  compaction could change which one that is;
* vacuum lists the table's directory (``full`` mode: it also removes files a killed writer left
  behind, and files whose removal an old checkpoint no longer records) unless the directory
  holds anything but data files and the log — e.g. a table nested under it — then it removes
  only the files the log says were removed. On an object store, ``retention_hours=0`` is safe
  only while no other process writes to the table (nothing there can lock a commit).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
from deltalake.exceptions import DeltaError

from orcapod_core.databases.protocol import (
    MAX_PATH_DEPTH,
    RECORD_ID_COLUMN,
    RecordPath,
    _component_problem,
    validate_record_path,
)
from orcapod_core.errors import InputValidationError, StoreMaintenanceError

__all__ = ["MaintenanceReport", "DEFAULT_RETENTION_HOURS", "compact_store", "vacuum_store", "no_maintenance"]

#: Vacuum keeps files removed less than a week ago (deltalake's own default), so readers that
#: opened an older version a moment ago, and writers mid-commit, never lose a file.
DEFAULT_RETENTION_HOURS = 168

_DELTA_LOG = "_delta_log"
_NOT_OURS = "not an orcapod record table (no __record_id column): left as it is, old versions stay readable"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} TB"  # pragma: no cover


@dataclass(frozen=True)
class MaintenanceReport:
    """What one ``compact()`` or ``vacuum()`` did to a store.

    ``compact``: files and bytes are the data files the tables' current versions read;
    ``files_removed`` are the files merged away (still on storage, for older versions, until
    a vacuum). ``vacuum``: files and bytes are the data files on storage; ``files_removed`` are
    the files deleted (with ``dry_run``: that would be). ``tables`` are the tables changed
    (would be), ``scanned`` the record tables looked at, ``skipped`` ``(table, reason)`` pairs.

    >>> db.compact()                                                     # doctest: +SKIP
    MaintenanceReport(compact 'store': 3 of 5 tables compacted, files 41 -> 3 (41 removed), 1.2 MB -> 0.9 MB)
    """

    operation: str
    store: str
    tables: tuple[RecordPath, ...] = ()
    scanned: int = 0
    files_before: int = 0
    files_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    files_removed: int = 0
    skipped: tuple[tuple[RecordPath, str], ...] = ()
    dry_run: bool = False
    retention_hours: int | None = None

    def __repr__(self) -> str:
        done = {"compact": "compacted", "vacuum": "would be vacuumed" if self.dry_run else "vacuumed"}.get(self.operation, "changed")
        retention = f", retention {self.retention_hours} h" if self.retention_hours is not None else ""
        skipped = f", {len(self.skipped)} skipped" if self.skipped else ""
        return (
            f"MaintenanceReport({self.operation} {self.store!r}: {len(self.tables)} of {self.scanned} tables {done}, "
            f"files {self.files_before} -> {self.files_after} ({self.files_removed} removed), "
            f"{_size(self.bytes_before)} -> {_size(self.bytes_after)}{retention}{skipped})"
        )

    @classmethod
    def merge(cls, reports: Iterable[MaintenanceReport]) -> MaintenanceReport:
        """One report for several calls of the same operation (e.g. over several prefixes or
        databases): counts add up, tables are listed once."""
        reports = list(reports)
        if not reports:
            raise InputValidationError("MaintenanceReport.merge needs at least one report")
        first = reports[0]
        if any(r.operation != first.operation for r in reports):
            raise InputValidationError(f"cannot merge reports of different operations: {[r.operation for r in reports]}")
        stores = list(dict.fromkeys(r.store for r in reports))
        return cls(
            operation=first.operation,
            store=" + ".join(stores),
            tables=tuple(dict.fromkeys(t for r in reports for t in r.tables)),
            scanned=sum(r.scanned for r in reports),
            files_before=sum(r.files_before for r in reports),
            files_after=sum(r.files_after for r in reports),
            bytes_before=sum(r.bytes_before for r in reports),
            bytes_after=sum(r.bytes_after for r in reports),
            files_removed=sum(r.files_removed for r in reports),
            skipped=tuple(dict.fromkeys(s for r in reports for s in r.skipped)),
            dry_run=first.dry_run,
            retention_hours=first.retention_hours,
        )


def no_maintenance(operation: str, store: str, tables: Sequence[RecordPath], *, dry_run: bool = False,
                   retention_hours: int | None = None) -> MaintenanceReport:
    """The report of a store with nothing to compact or vacuum (e.g. an in-memory database)."""
    return MaintenanceReport(operation, store, scanned=len(tables), dry_run=dry_run, retention_hours=retention_hours)


# -- finding the tables ------------------------------------------------------------------------


def _prefix(path_prefix: Sequence[str]) -> RecordPath:
    if isinstance(path_prefix, str):
        validate_record_path(path_prefix)  # raises, naming the string
    return () if len(path_prefix) == 0 else validate_record_path(path_prefix)


def _tables_under(db: Any, prefix: RecordPath) -> list[RecordPath]:
    """Committed tables at or under ``prefix``: the walk of ``list_tables()``, from ``prefix``."""
    fs = db._filesystem()
    if fs is None:
        return []
    found: list[RecordPath] = []
    frontier = [prefix]
    while frontier:
        key = frontier.pop()
        try:
            children = fs.get_file_info(pafs.FileSelector("/".join(key), allow_not_found=True))
        except OSError as exc:
            if key == prefix:
                raise db._access_error("its tables", exc) from exc
            continue
        for child in children:
            if child.type != pafs.FileType.Directory:
                continue
            if child.base_name == _DELTA_LOG:
                if key:
                    found.append(key)
            elif len(key) < MAX_PATH_DEPTH and _component_problem(child.base_name) is None:
                frontier.append((*key, child.base_name))
    return sorted(found)


def _flush_under(db: Any, prefix: RecordPath) -> None:
    with db._lock:
        for key in [k for k in db._pending if k[: len(prefix)] == prefix]:
            db._flush_key(key)


def _name(key: RecordPath) -> str:
    return "/".join(key)


@contextlib.contextmanager
def _table_locked(db: Any, key: RecordPath):
    with db._lock, db._commit_lock(key):  # the order flush takes them in
        yield


def _is_record_table(dt: Any) -> bool:
    return any(f.name == RECORD_ID_COLUMN for f in dt.schema().fields)


def _raise_first(errors: list[BaseException], operation: str) -> None:
    if errors:
        if len(errors) > 1:
            errors[0].add_note(f"orcapod: {operation} failed on {len(errors)} tables; the others were done")
        raise errors[0]


def _failure(db: Any, key: RecordPath, operation: str, exc: BaseException) -> BaseException:
    where = f"table {_name(key)!r} at {db.table_uri(key)}"
    if isinstance(exc, OSError):
        return db._access_error(f"{where} ({operation})", exc)
    text = str(exc).strip().splitlines()
    return StoreMaintenanceError(f"{operation} of {where} failed: {text[0] if text else type(exc).__name__} (its rows are unchanged)")


# -- compaction --------------------------------------------------------------------------------


def _active_files(dt: Any) -> pa.Table:
    return pa.table(dt.get_add_actions(flatten=False)).select(["path", "size_bytes", "num_records"])


def _repeated_ids(db: Any, key: RecordPath, dt: Any, files: pa.Table) -> int:
    """How many committed rows repeat an id of an earlier row (0 in a table one writer wrote)."""
    counts = files["num_records"]
    if counts.null_count:  # no statistics: count the id column itself
        sizes = dict(zip(files["path"].to_pylist(), files["size_bytes"].to_pylist()))
        rows = len(db._read_ids(key, dt, list(sizes), sizes))
    else:
        rows = sum(counts.to_pylist())
    return rows - len(db._committed_ids(key))


def compact_store(db: Any, path_prefix: Sequence[str] = (), *, target_file_size: int | None = None,
                  writer_properties: Callable[[Any], Any] | None = None,
                  exclude: Collection[RecordPath] = ()) -> MaintenanceReport:
    """Compact every record table of the Delta database ``db`` at or under ``path_prefix``
    (see the module notes) but those in ``exclude``; ``target_file_size`` in bytes (deltalake's
    default: 100 MB); ``writer_properties(table)``: how to write a table's merged files."""
    if target_file_size is not None and (
        isinstance(target_file_size, bool) or not isinstance(target_file_size, int) or target_file_size < 1
    ):
        raise InputValidationError(f"target_file_size must be a positive number of bytes, got {target_file_size!r}")
    prefix = _prefix(path_prefix)
    _flush_under(db, prefix)
    tables, skipped, errors = [], [], []
    scanned = files_before = files_after = bytes_before = bytes_after = removed = 0
    excluded = {validate_record_path(k) for k in exclude}
    for key in _tables_under(db, prefix):
        if key in excluded:
            skipped.append((key, "read in commit order (excluded)"))
            continue
        try:
            with _table_locked(db, key):
                dt = db._open(key)
                if dt is None:
                    continue
                if not _is_record_table(dt):
                    skipped.append((key, _NOT_OURS))
                    continue
                scanned += 1
                before = _active_files(dt)
                files_before += before.num_rows
                bytes_before += sum(before["size_bytes"].to_pylist())
                after = before
                repeated = _repeated_ids(db, key, dt, before) if before.num_rows > 1 else 0
                if repeated:
                    skipped.append((key, f"holds {repeated} repeated record id(s) (racing writers): reads serve the first "
                                         f"committed copy, which compaction could change"))
                elif before.num_rows > 1:
                    version = dt.version()
                    writer = None if writer_properties is None else writer_properties(dt)
                    metrics = dt.optimize.compact(target_size=target_file_size, writer_properties=writer)
                    if metrics.get("numFilesRemoved", 0):
                        dt.create_checkpoint()
                        after = _active_files(dt)
                        tables.append(key)
                        removed += int(metrics["numFilesRemoved"])
                        _keep_id_index(db, key, version, dt, after)
                files_after += after.num_rows
                bytes_after += sum(after["size_bytes"].to_pylist())
        except (DeltaError, OSError) as exc:
            errors.append(_failure(db, key, "compaction", exc))
        except Exception as exc:  # e.g. CorruptStoreError from opening it: named already
            errors.append(exc)
    _raise_first(errors, "compaction")
    return MaintenanceReport(
        "compact", db.base_uri, tuple(tables), scanned, files_before, files_after, bytes_before, bytes_after, removed,
        tuple(skipped),
    )


def _keep_id_index(db: Any, key: RecordPath, version: int, dt: Any, after: pa.Table) -> None:
    """Compaction rewrites files, never ids: when it made the only new commit, the handle's id
    index stays valid with the new file list (instead of re-reading every id)."""
    index = db._indexes.get(key)
    if index is not None and index.version == version and dt.version() == version + 1:
        index.files = set(after["path"].to_pylist())
        index.version = dt.version()


# -- vacuum ------------------------------------------------------------------------------------


def _stored_files(db: Any, key: RecordPath) -> tuple[dict[str, int], bool]:
    """The Parquet files in the table's directory (``{name: size}``) and whether the directory
    holds anything else besides its log (a nested table, partition directories)."""
    fs = db._filesystem()
    files: dict[str, int] = {}
    other = False
    for child in fs.get_file_info(pafs.FileSelector(_name(key), allow_not_found=True)):
        name = child.base_name
        if child.type == pafs.FileType.Directory:
            other = other or name != _DELTA_LOG
        elif name.endswith(".parquet"):
            files[name] = child.size or 0
    return files, other


def vacuum_store(db: Any, path_prefix: Sequence[str] = (), *, retention_hours: int = DEFAULT_RETENTION_HOURS,
                 dry_run: bool = False) -> MaintenanceReport:
    """Vacuum every record table of the Delta database ``db`` at or under ``path_prefix``:
    delete the data files no current version references, removed more than
    ``retention_hours`` ago (0 allowed: everything unreferenced). ``dry_run``: delete nothing,
    report what would be deleted."""
    if isinstance(retention_hours, bool) or not isinstance(retention_hours, int) or retention_hours < 0:
        raise InputValidationError(f"retention_hours must be a whole number of hours >= 0, got {retention_hours!r}")
    prefix = _prefix(path_prefix)
    _flush_under(db, prefix)
    tables, skipped, errors = [], [], []
    scanned = files_before = files_after = bytes_before = bytes_after = removed = 0
    for key in _tables_under(db, prefix):
        try:
            with _table_locked(db, key):
                dt = db._open(key)
                if dt is None:
                    continue
                if not _is_record_table(dt):
                    skipped.append((key, _NOT_OURS))
                    continue
                scanned += 1
                stored, nested = _stored_files(db, key)
                options = {"retention_hours": retention_hours, "enforce_retention_duration": False, "full": not nested}
                # deltalake lists a removed file until its removal leaves the log, deleted or not:
                # count what is still there.
                gone = [path for path in dt.vacuum(dry_run=True, **options) if path in stored]
                if gone and not dry_run:
                    gone = [path for path in dt.vacuum(dry_run=False, **options) if path in stored]
                if not dry_run:
                    dt.cleanup_metadata()  # log entries older than the table's log retention (30 days)
                files_before += len(stored)
                bytes_before += sum(stored.values())
                files_after += len(stored) - len(gone)
                bytes_after += sum(stored.values()) - sum(stored[path] for path in gone)
                removed += len(gone)
                if gone:
                    tables.append(key)
        except (DeltaError, OSError) as exc:
            errors.append(_failure(db, key, "vacuum", exc))
        except Exception as exc:
            errors.append(exc)
    _raise_first(errors, "vacuum")
    return MaintenanceReport(
        "vacuum", db.base_uri, tuple(tables), scanned, files_before, files_after, bytes_before, bytes_after, removed,
        tuple(skipped), dry_run=dry_run, retention_hours=retention_hours,
    )
