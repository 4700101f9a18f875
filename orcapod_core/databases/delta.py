"""An :class:`~orcapod_core.databases.ArrowDatabase` of Delta Lake tables (local or object storage).

Layout: the table of record path ``("a", "b")`` is the Delta table at ``<base_uri>/a/b``. The same
code runs on a local directory and on ``s3://``/``gs://``/``az://`` URIs: ``storage_options`` go
straight to deltalake.

Freshness. Every read and every commit first brings the table handle up to the latest committed
version (``DeltaTable.update_incremental()``), so one handle sees what another handle or process
committed a moment ago. Small tables (at most ``SMALL_TABLE_BYTES`` of data files) are read whole
once per version and later reads of that version are answered from memory (a run of many nodes
that share one result table reads it once, not once per node); the cache is keyed by the version
just brought up to date, so it cannot go stale.

Batching. Each committed batch is ONE ``write_deltalake(mode="append")`` transaction: N records
added with ``batch_size=B`` cost ``ceil(N / B)`` Delta versions, not N.

Concurrency (no lost and no duplicated records):

1. Delta's optimistic concurrency already makes blind appends safe: two processes appending at
   once both commit (delta-rs retries an append on a version conflict), so nothing is lost; a
   commit that still fails (e.g. both processes creating the table) is retried here after
   re-checking the ids. This needs a store that refuses to overwrite a commit file: local
   disks do; on S3 delta-rs writes commits with conditional puts (``If-None-Match``), which
   the server must honour (AWS S3, MinIO, moto do) — pass ``conditional_put="etag"`` in the
   storage options (older deltalake releases commit safely on S3 only with it, or with a
   DynamoDB locking provider). Without that guarantee two writers committing the same version
   overwrite one another and a commit is silently lost.
2. Dedup is check-then-append: right before a batch is written, its ids are anti-joined against
   the ids committed by now (an incremental per-handle index of the id column: only files
   added since the last check are read, and only their id column). On a local path this check
   and the append run under an exclusive ``fcntl.flock`` on ``<table>/_orcapod_commit.lock``, so
   two processes can never both decide that the same id is new.
3. Object stores have no such lock, so two processes may race and both append the same id.
   Reads therefore drop repeated ids (the copy committed first wins; the check costs one
   ``n_unique`` over the id column read anyway), which makes such a racing duplicate invisible.

Object-store reads fetch each data file on the calling thread and scan it from memory
(:func:`~orcapod_core.sources.files.fetched`); local reads use pyarrow's native filesystem.
Either way Arrow's threads never hold a Python object, which would abort the process at exit.
A store that cannot be reached (missing bucket, wrong endpoint or storage option) raises
:class:`~orcapod_core.errors.StoreAccessError` naming the store, the table and deltalake's reason.

Digests. Columns declared ``digest_columns`` (record ids made of hashes, packet hashes) are
stored as their bytes — half the size of the hex text, and nothing for zstd to squeeze — and
marked in the table's Delta schema (field metadata ``orcapod.encoding: hex``), so every reader
turns them back into the same hex strings; lookups by them compare bytes. A table that already
holds such a column as text keeps it as text.

Errors: a path holding something that is not a readable Delta table (garbage in ``_delta_log``,
a plain directory of files) raises :class:`~orcapod_core.errors.CorruptStoreError` naming it.
Delta Lake cannot store ``time64`` columns; adding one raises
:class:`~orcapod_core.errors.UnsupportedTypeError` naming the column.

Maintenance: :meth:`DeltaTableDatabase.compact` merges the small files of many batches and
:meth:`DeltaTableDatabase.vacuum` deletes the files no current version needs (see
:mod:`orcapod_core.databases.maintenance`).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from deltalake import DeltaTable, write_deltalake
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.exceptions import SchemaMismatchError as DeltaSchemaMismatchError
from deltalake.fs import DeltaStorageHandler

from orcapod_core.databases.buffered import BufferedArrowDatabase
from orcapod_core.databases.file_store import FILE_AREA, FileStore
from orcapod_core.databases.delta_format import DIGEST_METADATA, context_columns, is_digest, StoredSchema, stored_schema, table_writer, writer_for
from orcapod_core.databases.tables import Condition, _expression, _IdIndex, filter_rows, normalize_type
from orcapod_core.databases.maintenance import DEFAULT_RETENTION_HOURS, MaintenanceReport, compact_store, vacuum_store
from orcapod_core.databases.protocol import (
    MAX_PATH_DEPTH,
    RECORD_ID_COLUMN,
    RecordPath,
    TableStats,
    _component_problem,
    validate_record_path,
)
from orcapod_core.errors import CorruptStoreError, SchemaMismatchError, StoreAccessError, UnsupportedTypeError
from orcapod_core.hashing import bytes_to_hex, hex_to_bytes
from orcapod_core.sources.files import fetched, local_table_dir, read_delta, storage_error_reason

try:  # POSIX only; elsewhere the read-time dedup (3.) still hides racing duplicates
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["DeltaTableDatabase", "LOCK_FILE"]

#: File inside a local table directory that serialises "check ids, then append" across processes.
LOCK_FILE = "_orcapod_commit.lock"
_DELTA_LOG = "_delta_log"
#: A table whose data files total at most this many bytes is read whole, once per version.
SMALL_TABLE_BYTES = 1 << 20
#: Arrow bytes of small tables kept in memory per database handle (least recently read dropped first).
READ_CACHE_BYTES = 256 << 20


#: Per-table commit locks of this process for stores without a file lock (object stores): every
#: handle's writers and maintenance of one table in one process take turns.
_PROCESS_LOCKS: dict[str, threading.RLock] = {}
_PROCESS_LOCKS_GUARD = threading.Lock()


def _process_lock(table_uri: str) -> threading.RLock:
    with _PROCESS_LOCKS_GUARD:
        return _PROCESS_LOCKS.setdefault(table_uri, threading.RLock())


def _commit_file(table_dir: str, version: int) -> str:
    """Where the commit of ``version`` lives (every Delta commit is ``_delta_log/<version>.json``,
    20 digits, whatever checkpoints the table also has)."""
    return os.path.join(table_dir, _DELTA_LOG, f"{version:020d}.json")


def _file_paths(dt: DeltaTable) -> set[str]:  # the data files of dt's version (add-action paths)
    return set(pa.table(dt.get_add_actions(flatten=False))["path"].to_pylist())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class DeltaTableDatabase(BufferedArrowDatabase):
    """Record store of Delta Lake tables under ``base_uri`` (a local path or an object-store URI).

    ``storage_options`` are passed to deltalake as they are (credentials, endpoint, ...). Writes
    are buffered per table and committed as one transaction when ``batch_size`` records are
    pending or the oldest pending record is ``max_batch_age_s`` old (checked on every add), on
    ``flush()``, and at interpreter exit. A Delta commit costs tens of milliseconds whatever
    its size, so batches are bounded mainly by *time*: a killed process loses at most the
    last 2 s of work (or 50,000 records, which for functions that fast is well under a
    second of recomputation), and commits never dominate a run of cheap functions.

    >>> db = DeltaTableDatabase("/tmp/orcapod-store")  # doctest: +SKIP
    >>> db.add_records(("pipe", "scores"), table, flush=True)  # doctest: +SKIP
    >>> db.get_records_by_ids(("pipe", "scores"), ["id1", "id2"])  # doctest: +SKIP
    """

    _retryable = (CommitFailedError,)

    def __init__(
        self,
        base_uri: str | os.PathLike[str],
        storage_options: dict[str, str] | None = None,
        batch_size: int = 50_000,
        max_batch_age_s: float | None = 2.0,
    ):
        super().__init__(batch_size, max_batch_age_s)
        self.base_uri = os.fspath(base_uri)
        self.storage_options = dict(storage_options) if storage_options else None
        # Always absolute: deltalake would parse a relative "a:b/..." as a URL scheme.
        self._root = local_table_dir(self.base_uri)
        self._tables: dict[RecordPath, DeltaTable] = {}
        self._indexes: dict[RecordPath, _IdIndex] = {}
        self._schemas: dict[RecordPath, StoredSchema] = {}
        self._storage_schemas: dict[pa.Schema, pa.Schema] = {}
        # Small tables read whole, by table: (version, rows, their bytes); insertion order is recency.
        self._read_cache: dict[RecordPath, tuple[int, pa.Table, int]] = {}
        self._flush_at_exit()

    def __repr__(self) -> str:
        return f"DeltaTableDatabase({self.base_uri!r}, pending={self.pending_count()})"

    def __reduce__(self) -> tuple[Any, ...]:
        # A copy (another process, a Dagster step) is a fresh handle on the same store.
        return (type(self), (self.base_uri, self.storage_options, self.batch_size, self.max_batch_age_s))

    def to_config(self) -> dict[str, Any]:
        """``{"type": "delta", "base_uri": ..., ...}``; storage options (secrets) are not included."""
        return {
            "type": "delta",
            "base_uri": self.base_uri,
            "batch_size": self.batch_size,
            "max_batch_age_s": self.max_batch_age_s,
        }

    @functools.cached_property
    def file_store(self) -> FileStore:
        """Where files that functions return are kept: ``<base_uri>/_orcapod_files`` (see
        :mod:`orcapod_core.databases.file_store`)."""
        if self._root is not None:
            return FileStore(os.path.join(self._root, FILE_AREA))
        return FileStore(self.base_uri.rstrip("/") + "/" + FILE_AREA, self.storage_options)

    def table_uri(self, record_path: tuple[str, ...]) -> str:
        """Where the Delta table of ``record_path`` lives (a local path or a URI)."""
        key = validate_record_path(record_path)
        if self._root is not None:
            return os.path.join(self._root, *key)
        return self.base_uri.rstrip("/") + "/" + "/".join(key)

    def table_stats(self, record_path: tuple[str, ...]) -> TableStats | None:
        """Rows, bytes, version and commit time of a committed table (``None`` when there is
        none), from the Delta log alone: the same call on a local path and on object storage.

        >>> db.table_stats(("pipe", "scores"))     # doctest: +SKIP
        TableStats(rows=72, bytes=5210, version=3, modified=datetime.datetime(...))
        """
        key = validate_record_path(record_path)
        dt = self._open(key)
        if dt is None:
            return None
        actions = pa.table(dt.get_add_actions(flatten=False))
        counts = actions["num_records"]
        # Files written without statistics have no record count: count those tables' rows.
        rows = (pc.sum(counts).as_py() or 0) if counts.null_count == 0 else dt.to_pyarrow_dataset().count_rows()
        history = dt.history(1)
        stamp = history[0].get("timestamp") if history else None
        modified = datetime.datetime.fromtimestamp(stamp / 1000, datetime.UTC) if stamp is not None else None
        return TableStats(rows=int(rows), bytes=int(pc.sum(actions["size_bytes"]).as_py() or 0), version=dt.version(), modified=modified)

    # ---- maintenance ---------------------------------------------------------------------------

    def compact(
        self, path_prefix: tuple[str, ...] = (), *, target_file_size: int | None = None, exclude: Sequence[RecordPath] = ()
    ) -> MaintenanceReport:
        """Merge the small Parquet files of every record table at or under ``path_prefix``
        (default: the whole store; not the tables in ``exclude``) with deltalake's compaction,
        then checkpoint them. Pending records there are committed first; every row stays; older
        versions stay readable until :meth:`vacuum`. Tables that are not orcapod record tables
        are left as they are. Lookups are unaffected, but a whole-table read may list a
        compacted table's batches in another order (deltalake writes them newest first): exclude
        tables whose readers need commit order (:meth:`~orcapod_core.pipeline.Pipeline.maintain_store`
        excludes its operators' logs and stored source rows).

        >>> db.compact()                         # doctest: +SKIP
        MaintenanceReport(compact '.orcapod': 12 of 40 tables compacted, files 950 -> 52 (910 removed), ...)
        """
        return compact_store(
            self, path_prefix, target_file_size=target_file_size, writer_properties=table_writer, exclude=exclude
        )

    def vacuum(
        self, path_prefix: tuple[str, ...] = (), *, retention_hours: int = DEFAULT_RETENTION_HOURS, dry_run: bool = False
    ) -> MaintenanceReport:
        """Delete the data files of record tables at or under ``path_prefix`` that no current
        version references and that were removed more than ``retention_hours`` ago (default a
        week; ``0``: all of them — the older versions of these tables can no longer be read).
        ``dry_run=True`` deletes nothing and reports what would go.

        >>> db.compact(); db.vacuum(retention_hours=0)    # doctest: +SKIP
        """
        return vacuum_store(self, path_prefix, retention_hours=retention_hours, dry_run=dry_run)

    # ---- opening tables ----------------------------------------------------------------------

    def _open(self, key: RecordPath, fresh: bool = True) -> DeltaTable | None:
        """The table at its latest version, ``None`` if there is none (never a stale snapshot;
        ``fresh=False`` returns the handle as last brought up to date, for buffering checks)."""
        dt = self._tables.get(key)
        if dt is not None and not fresh:
            return dt
        uri = self.table_uri(key)
        if dt is not None and self._root is not None and not os.path.exists(_commit_file(uri, dt.version() + 1)):
            return dt  # no newer commit (a local stat instead of re-reading the log)
        if dt is not None:
            try:
                dt.update_incremental()
                return dt
            except DeltaError:  # replaced or damaged since: open it from scratch below
                self._forget(key)
            except OSError as exc:
                raise self._access_error(f"table {'/'.join(key)!r} at {uri}", exc) from exc
        if self._root is not None and not os.path.isdir(os.path.join(uri, _DELTA_LOG)):
            # No log at all (the common case: a table not written yet): no need to ask deltalake.
            if self._has_foreign_files(key):
                raise CorruptStoreError(f"table {'/'.join(key)!r} at {uri} exists but is not a Delta table (it has no {_DELTA_LOG})")
            return None
        try:
            dt = DeltaTable(uri, storage_options=self.storage_options)
        except OSError as exc:  # the store itself: bucket, endpoint, credentials, options
            raise self._access_error(f"table {'/'.join(key)!r} at {uri}", exc) from exc
        except TableNotFoundError as exc:
            if self._has_foreign_files(key):
                raise CorruptStoreError(
                    f"table {'/'.join(key)!r} at {uri} exists but is not a Delta table ({_first_line(exc)})"
                ) from exc
            return None
        except DeltaError as exc:
            raise CorruptStoreError(
                f"table {'/'.join(key)!r} at {uri} cannot be read as a Delta table: {_first_line(exc)}"
            ) from exc
        self._tables[key] = dt
        return dt

    def _access_error(self, what: str, exc: BaseException) -> StoreAccessError:
        options = sorted(self.storage_options or {})  # names only: values may be secrets
        return StoreAccessError(
            f"cannot reach {what} in store {self.base_uri!r} (storage options given: {options or 'none'}): "
            f"{storage_error_reason(exc)}"
        )

    def _forget(self, key: RecordPath) -> None:
        self._tables.pop(key, None)
        self._indexes.pop(key, None)
        self._schemas.pop(key, None)
        self._read_cache.pop(key, None)

    def _filesystem(self) -> pafs.FileSystem | None:
        """The store as a pyarrow filesystem (``None`` while a local base does not exist yet).

        Local stores use pyarrow's native local filesystem: see :meth:`_table_filesystem`."""
        if self._root is not None:
            return pafs.SubTreeFileSystem(self._root, pafs.LocalFileSystem()) if os.path.isdir(self._root) else None
        try:
            return pafs.PyFileSystem(DeltaStorageHandler(self._root or self.base_uri, self.storage_options))
        except TableNotFoundError:
            return None

    def _has_foreign_files(self, key: RecordPath) -> bool:
        """True when the table's location holds files Delta Lake would never write there.

        Data files and a ``_delta_log`` without a commit yet are what another process creating
        the table leaves mid-way, and sub-directories are tables nested under this path: none of
        them is corruption. A file at the location itself, or e.g. a CSV inside it, is."""
        fs = self._filesystem()
        if fs is None:
            return False
        rel = "/".join(key)
        info = fs.get_file_info([rel])[0]
        if info.type == pafs.FileType.NotFound:
            return False
        if info.type != pafs.FileType.Directory:
            return True
        for child in fs.get_file_info(pafs.FileSelector(rel, allow_not_found=True)):
            name = child.base_name
            if child.type == pafs.FileType.Directory or name.startswith(("_", ".")) or ".parquet" in name:
                continue
            return True
        return False

    # ---- committed-side primitives -------------------------------------------------------------

    def _committed_schema(self, key: RecordPath, fresh: bool = True) -> pa.Schema | None:
        stored = self._stored(key, fresh)
        return None if stored is None else stored.logical

    def _stored(self, key: RecordPath, fresh: bool = True) -> StoredSchema | None:
        dt = self._open(key, fresh)
        if dt is None:
            return None
        version = dt.version()
        cached = self._schemas.get(key)
        if cached is not None and cached.version == version:
            return cached
        stored = self._schemas[key] = stored_schema(version, pa.schema(dt.schema().to_arrow(as_large_types=True)))
        return stored

    def _committed_ids(self, key: RecordPath, fresh: bool = True) -> set[str]:
        return self._id_index(key, fresh).as_set()

    def _committed_membership(self, key: RecordPath, ids: pa.Array | pa.ChunkedArray, fresh: bool = True) -> pa.Array | None:
        # Against the committed id column, sorted once per version: no Python string per stored
        # id (building a set of a large table's ids cost more than a small commit).
        return self._id_index(key, fresh).contains(ids)

    def _id_index(self, key: RecordPath, fresh: bool = True) -> _IdIndex:
        """The committed ids as of the table's current version (only files added since the
        last call are read, and only their id column)."""
        dt = self._open(key, fresh)
        index = self._indexes.get(key)
        if dt is None:
            index = self._indexes[key] = _IdIndex()
            return index
        version = dt.version()
        if index is not None and index.version == version:
            return index
        actions = pa.table(dt.get_add_actions(flatten=False))
        paths = actions["path"].to_pylist()
        if index is None or not index.files.issubset(paths):
            index = self._indexes[key] = _IdIndex()  # first use, or files were rewritten: rebuild
        new = [p for p in paths if p not in index.files]
        if new:
            sizes = dict(zip(paths, actions["size_bytes"].to_pylist()))
            index.add_read(self._read_ids(key, dt, new, sizes))
            index.files.update(new)
        index.version = version
        return index

    def _read_ids(self, key: RecordPath, dt: DeltaTable, paths: list[str], sizes: dict[str, int]) -> pa.ChunkedArray:
        """The id column of the given data files only."""
        # Add-action paths are URI-encoded (a partition value "a b" is stored as "p=a%2520b");
        # the files are at the decoded relative paths.
        files = {unquote(p): sizes[p] for p in paths}
        stored = self._stored(key, fresh=False)
        as_bytes = stored is not None and RECORD_ID_COLUMN in stored.digests
        id_schema = pa.schema([pa.field(RECORD_ID_COLUMN, pa.large_binary() if as_bytes else pa.large_string())])
        try:
            fs = self._table_filesystem(key)
            if fs is None:  # object store: fetch the files on this thread (see sources.files.fetched)
                fs = pafs.PyFileSystem(DeltaStorageHandler(dt.table_uri, self.storage_options, files))
                dataset = fetched(ds.dataset(list(files), schema=id_schema, format="parquet", filesystem=fs))
            else:
                dataset = ds.dataset(list(files), schema=id_schema, format="parquet", filesystem=fs)
            ids = dataset.to_table(columns=[RECORD_ID_COLUMN])[RECORD_ID_COLUMN]
            return bytes_to_hex(ids) if as_bytes else ids
        except (OSError, pa.ArrowInvalid) as exc:
            raise CorruptStoreError(
                f"cannot read the record ids of table {'/'.join(key)!r} at {self.table_uri(key)}: {_first_line(exc)}"
            ) from exc

    def _table_filesystem(self, key: RecordPath) -> pafs.FileSystem | None:
        """A local table's directory as pyarrow's native local filesystem; ``None`` for object
        stores (fetched through deltalake's storage handler with ``storage_options``: see
        :func:`~orcapod_core.sources.files.fetched`)."""
        if self._root is None:
            return None
        return pafs.SubTreeFileSystem(os.path.join(self._root, *key), pafs.LocalFileSystem())

    def _scan(self, key: RecordPath, columns: list[str] | None, conds: Sequence[Condition]) -> pa.Table | None:
        # The version the caller's _committed_schema(key) just brought up to date: schema and
        # rows of one version.
        dt = self._open(key, fresh=False)
        stored = self._stored(key, fresh=False)
        if dt is None or stored is None:
            return None
        whole = self._small_table(key, dt, stored)
        if whole is not None:
            rows = filter_rows(whole, conds)
            return rows if columns is None else rows.select(columns)
        return self._read(key, dt, stored, columns, conds)

    def _read(
        self, key: RecordPath, dt: DeltaTable, stored: StoredSchema, columns: list[str] | None, conds: Sequence[Condition]
    ) -> pa.Table:
        # Digest columns are compared as the bytes they are stored as.
        conds = [(c, hex_to_bytes(v) if c in stored.digests and v is not None else v) for c, v in conds]
        try:
            # The active files of the current snapshot (with their partition values and the
            # evolved schema) in commit order, so "first committed copy wins" holds.
            # One chunk per column (a read yields one per row group): the lookups and hash
            # joins that follow would otherwise each copy the columns into one chunk again.
            table = read_delta(dt, columns, _expression(conds), schema=stored.physical).combine_chunks()
        except (OSError, pa.ArrowInvalid) as exc:
            raise CorruptStoreError(
                f"cannot read table {'/'.join(key)!r} at {self.table_uri(key)}: {_first_line(exc)}"
            ) from exc
        for name in stored.digests.intersection(table.column_names):
            i = table.schema.get_field_index(name)
            table = table.set_column(i, stored.logical.field(name), bytes_to_hex(table.column(i)))
        if not conds and RECORD_ID_COLUMN in table.column_names:
            self._seed_id_index(key, dt, table.column(RECORD_ID_COLUMN))
        return table

    def _seed_id_index(self, key: RecordPath, dt: DeltaTable, ids: pa.ChunkedArray) -> None:
        # A read of every row's id (a bulk lookup, a node's records) is the version's id index.
        index = self._indexes.get(key)
        if index is None or index.version != dt.version():
            self._indexes[key] = index = _IdIndex(version=dt.version(), files=_file_paths(dt))
            index.add_read(ids)

    def _small_table(self, key: RecordPath, dt: DeltaTable, stored: StoredSchema) -> pa.Table | None:
        """Every row of the table at ``dt``'s version if its data files are small (read once per
        version, then from memory); ``None`` for a larger table (read what is asked, each time)."""
        version = dt.version()
        cached = self._read_cache.pop(key, None)
        if cached is not None and cached[0] == version:
            self._read_cache[key] = cached  # most recently read last
            return cached[1]
        size = pc.sum(pa.table(dt.get_add_actions(flatten=False))["size_bytes"]).as_py() or 0
        if size > SMALL_TABLE_BYTES:
            return None
        table = self._read(key, dt, stored, None, [])
        self._read_cache[key] = (version, table, table.nbytes)
        held = sum(entry[2] for entry in self._read_cache.values())
        while held > READ_CACHE_BYTES and len(self._read_cache) > 1:  # drop the least recently read
            held -= self._read_cache.pop(next(iter(self._read_cache)))[2]
        return table

    def _write(self, key: RecordPath, table: pa.Table, ids: pa.ChunkedArray, evolve: bool) -> None:
        dt = self._tables.get(key)  # brought up to date by _committed_ids under the commit lock
        index = self._indexes.get(key)
        before = dt.version() if dt is not None else -1
        table = self._physical(key, table.combine_chunks())  # one Arrow batch -> one data file, rows in order
        writer = writer_for(frozenset(f.name for f in table.schema if is_digest(f)), context_columns(table.column_names))
        try:
            if dt is None:
                write_deltalake(
                    self.table_uri(key), table, mode="append", storage_options=self.storage_options, writer_properties=writer
                )
            else:
                write_deltalake(dt, table, mode="append", schema_mode="merge" if evolve else None, writer_properties=writer)
        except DeltaSchemaMismatchError as exc:
            raise SchemaMismatchError(
                f"table {'/'.join(key)!r} at {self.table_uri(key)} refused the batch: {_first_line(exc)}"
            ) from exc
        except OSError as exc:  # nothing was committed: the batch stays pending
            raise self._access_error(f"table {'/'.join(key)!r} at {self.table_uri(key)} (writing)", exc) from exc
        dt = self._open(key)
        # When our commit is the only new version, its files hold exactly `ids`: record them
        # without reading them back.
        if dt is not None and index is not None and index.version == before and dt.version() == before + 1:
            index.files = _file_paths(dt)
            index.add_written(ids)
            index.version = dt.version()

    def _physical(self, key: RecordPath, table: pa.Table) -> pa.Table:
        """The batch as stored: digest columns as their bytes — those the table stores as bytes
        already, and declared ones it does not hold yet (a column it holds as text stays text)."""
        stored = self._stored(key, fresh=False)
        declared = self._digests.get(key, ())
        for i, f in enumerate(table.schema):
            held = stored is not None and f.name in stored.physical.names
            if (f.name in stored.digests) if held else (f.name in declared):
                field = pa.field(f.name, pa.large_binary(), f.nullable, metadata=DIGEST_METADATA)
                table = table.set_column(i, field, hex_to_bytes(table.column(i)))
        return table

    def _stored_digest_columns(self, key: RecordPath) -> frozenset[str]:
        stored = self._schemas.get(key)
        return frozenset() if stored is None else stored.digests

    def _committed_version(self, key: RecordPath) -> int | None:
        dt = self._open(key)
        return None if dt is None else dt.version()

    def _committed_paths(self) -> list[RecordPath]:
        fs = self._filesystem()
        if fs is None:
            return []
        found: list[RecordPath] = []
        frontier: list[tuple[str, RecordPath]] = [("", ())]
        while frontier:
            rel, key = frontier.pop()
            try:
                children = fs.get_file_info(pafs.FileSelector(rel, allow_not_found=True))
            except OSError as exc:
                if not key:  # the store itself cannot be listed (e.g. its bucket does not exist)
                    raise self._access_error("its tables", exc) from exc
                continue
            for child in children:
                if child.type != pafs.FileType.Directory:
                    continue
                name = child.base_name
                if name == _DELTA_LOG:
                    if key:
                        found.append(key)
                elif len(key) < MAX_PATH_DEPTH and _component_problem(name) is None:
                    frontier.append((f"{rel}/{name}" if rel else name, (*key, name)))
        return found

    def _storage_form(self, key: RecordPath, table: pa.Table) -> pa.Table:
        target = self._storage_schemas.get(table.schema)
        if target is None:
            target = pa.schema([self._storage_field(key, f) for f in table.schema], metadata=table.schema.metadata)
            self._storage_schemas[table.schema] = target
        if target.equals(table.schema) and all(str(a.type) == str(b.type) for a, b in zip(target, table.schema)):
            return table
        try:
            return table.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise UnsupportedTypeError(
                f"records for table {'/'.join(key)!r} cannot be converted to Delta Lake types: {_first_line(exc)}"
            ) from exc

    @staticmethod
    def _storage_field(key: RecordPath, f: pa.Field) -> pa.Field:
        """The field as Delta Lake stores it (e.g. ``uint32`` → ``int32``, ``timestamp[ms]`` → ``[us]``)."""
        if pa.types.is_null(f.type):
            return f  # typed from the stored table, or refused, by conform()
        try:
            delta = DeltaSchema.from_arrow(pa.schema([f.with_nullable(True)]))
            stored = pa.schema(delta.to_arrow(as_large_types=True)).field(0).type
        except Exception as exc:  # deltalake raises a bare Exception for unsupported types
            raise UnsupportedTypeError(
                f"column {f.name!r} of table {'/'.join(key)!r}: Arrow type {f.type} cannot be stored in Delta Lake "
                f"({_first_line(exc)})"
            ) from exc
        return f.with_type(normalize_type(stored))

    @contextlib.contextmanager
    def _commit_lock(self, key: RecordPath) -> Iterator[None]:
        if self._root is None or fcntl is None:
            with _process_lock(self.table_uri(key)):  # other processes: see the module docstring (3.)
                yield
            return
        directory = os.path.join(self._root, *key)
        os.makedirs(directory, exist_ok=True)
        fd = os.open(os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # also excludes other handles of this process
            yield
        finally:
            os.close(fd)  # releases the lock
