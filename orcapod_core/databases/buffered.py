"""What every :class:`~orcapod_core.databases.ArrowDatabase` shares: write buffering, record-id
dedup, schema evolution and reads that merge pending with committed rows.

A backend supplies a few primitives — the committed schema, ids and rows of a table (always
fresh: what any handle or process committed until now) and "write this batch as one transaction"
— and :class:`BufferedArrowDatabase` builds the whole contract on top of them, so the in-memory
and the Delta Lake database behave identically.

Rules implemented here:

- Records are buffered per table and committed as one batch when the table has ``batch_size``
  pending rows, when its oldest pending row is ``max_batch_age_s`` old (checked on every add),
  on ``flush=True``, ``flush()``/``flush_path()``, and (Delta) at interpreter exit.
- A record whose id is already committed or pending, or repeated inside one call (the first
  copy is kept), is skipped (``skip_duplicates=True``) or refused with
  :class:`~orcapod_core.errors.DuplicateTagError`. At commit time the batch is anti-joined once
  more against the committed ids, under the backend's commit lock, so records that another
  process committed in the meantime are not written twice.
- Columns are stored with large Arrow types (:mod:`~orcapod_core.databases.tables`: ``large_string``, ``large_binary``,
  ``large_list``); a later batch may add columns (nullable for older rows); a column whose type
  changes is refused with :class:`~orcapod_core.errors.SchemaMismatchError` naming the column and
  the table, before anything is buffered or written.
- Reads return committed rows in commit order, then pending rows, after dropping repeated record
  ids (first copy wins) — cheap: only done when the id column has duplicates.
- ``digest_columns`` names columns of lowercase hex digests (hashes, ids made of hashes):
  checked when added; a backend may store them as their bytes — half the size — and reads
  return the same hex strings (Delta does, see :class:`~orcapod_core.databases.DeltaTableDatabase`).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from orcapod_core.databases.protocol import RECORD_ID_COLUMN, RecordPath, validate_record_path
from orcapod_core.errors import CorruptStoreError, DuplicateTagError, InputValidationError
from orcapod_core.databases.tables import (
    _PUSHDOWN_MAX_VALUES,
    Condition,
    _IdSet,
    _align,
    _as_array,
    _union,
    conform,
    drop_repeated_ids,
    filter_rows,
    normalize_schema,
    normalize_table,
    normalize_type,
)
from orcapod_core.hashing import hex_problem
from orcapod_core.keysets import all_distinct
from orcapod_core.lazy_polars import pl

# (the storage types are defined in databases.tables; still importable from here)
__all__ = ["BufferedArrowDatabase", "normalize_type", "normalize_schema", "normalize_table"]

_log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# The buffered database
# --------------------------------------------------------------------------------------------


@dataclass
class _Pending:
    """Uncommitted records of one table (already deduplicated and conformed)."""

    schema: pa.Schema
    since: float
    chunks: list[pa.Table] = field(default_factory=list)
    ids: _IdSet = field(default_factory=_IdSet)
    rows: int = 0

    def table(self) -> pa.Table:
        if len(self.chunks) != 1 or not self.chunks[0].schema.equals(self.schema):
            self.chunks = [pa.concat_tables([_align(c, self.schema) for c in self.chunks])]
        return self.chunks[0]


def _path_name(key: RecordPath) -> str:
    return repr("/".join(key))


def _check_digests(where: str, table: pa.Table, digest_columns: Sequence[str]) -> None:
    if isinstance(digest_columns, str):
        raise InputValidationError(f"digest_columns must be a sequence of column names, got the string {digest_columns!r}")
    for name in digest_columns:
        if name not in table.column_names:
            raise InputValidationError(f"digest column {name!r} is not a column of the records for table {where}")
        problem = hex_problem(table[name])
        if problem is not None:
            raise InputValidationError(f"digest column {name!r} of the records for table {where}: {problem}")


class BufferedArrowDatabase:
    """Base of the two :class:`~orcapod_core.databases.ArrowDatabase` implementations.

    Subclasses implement the committed-side primitives (``_committed_schema``,
    ``_committed_ids``, ``_scan``, ``_write``, ``_committed_version``, ``_committed_paths``) and
    may override ``_commit_lock`` and ``_storage_form``. Every public method is thread-safe.
    """

    #: Exceptions on which a commit is retried (re-checking ids and schema first).
    _retryable: tuple[type[BaseException], ...] = ()
    _max_commit_attempts = 5

    def __init__(self, batch_size: int = 1000, max_batch_age_s: float | None = 2.0):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputValidationError(f"batch_size must be a positive integer, got {batch_size!r}")
        if max_batch_age_s is not None and max_batch_age_s < 0:
            raise InputValidationError(f"max_batch_age_s must be >= 0 or None, got {max_batch_age_s!r}")
        self.batch_size = batch_size
        self.max_batch_age_s = max_batch_age_s
        self._lock = threading.RLock()
        self._pending: dict[RecordPath, _Pending] = {}
        # Columns declared as hex digests per table (by this handle's writers; see add_records).
        self._digests: dict[RecordPath, set[str]] = {}

    # ---- primitives a backend provides ----------------------------------------------------

    def _committed_schema(self, key: RecordPath, fresh: bool = True) -> pa.Schema | None:
        """Normalized schema of the committed table, ``None`` if it does not exist (fresh)."""
        raise NotImplementedError

    def _committed_ids(self, key: RecordPath, fresh: bool = True) -> set[str] | frozenset[str]:
        """Every committed record id; read-only for the caller. ``fresh=False`` may answer from
        what this handle last saw (used when buffering: the flush re-checks under the lock)."""
        raise NotImplementedError

    def _committed_membership(self, key: RecordPath, ids: pa.Array | pa.ChunkedArray, fresh: bool = True) -> pa.Array | None:
        """Per id of ``ids``: is it committed? ``None`` when nothing is. The default asks the set
        of :meth:`_committed_ids`; a backend may answer from an Arrow column of its ids instead
        (Delta does: no Python string per stored id)."""
        committed = self._committed_ids(key, fresh)
        if not committed:
            return None
        return pa.array([rid in committed for rid in ids.to_pylist()], pa.bool_())

    def _scan(self, key: RecordPath, columns: list[str] | None, conds: Sequence[Condition]) -> pa.Table | None:
        """Committed rows satisfying every condition (as
        :func:`~orcapod_core.databases.tables.filter_rows`) in commit order, normalized; ``None``
        without a table. Called right after ``_committed_schema(key)``."""
        raise NotImplementedError

    def _write(self, key: RecordPath, table: pa.Table, ids: pa.ChunkedArray, evolve: bool) -> None:
        """Commit ``table`` (new ids only, already conformed; ``ids``: its id column) as ONE transaction."""
        raise NotImplementedError

    def _committed_version(self, key: RecordPath) -> int | None:
        raise NotImplementedError

    def _committed_paths(self) -> list[RecordPath]:
        raise NotImplementedError

    def _storage_form(self, key: RecordPath, table: pa.Table) -> pa.Table:
        """``table`` with the exact types the backend will store (default: normalized)."""
        return table

    def _stored_digest_columns(self, key: RecordPath) -> frozenset[str]:
        """Columns the committed table keeps as digest bytes (they must hold hex digests), as of
        the last ``_committed_schema(key)``."""
        return frozenset()

    @contextlib.contextmanager
    def _commit_lock(self, key: RecordPath) -> Iterator[None]:
        """Held around "check committed ids, then write" (cross-process where the backend can)."""
        yield

    # ---- writing ---------------------------------------------------------------------------

    def add_records(
        self,
        record_path: Sequence[str],
        table: pa.Table,
        record_id_column: str | None = None,
        skip_duplicates: bool = True,
        flush: bool = False,
        digest_columns: Sequence[str] = (),
    ) -> int:
        """Add many records in one call; return how many were actually added.

        ``table`` holds one record per row; its ids are the :data:`RECORD_ID_COLUMN` column, or
        the column ``record_id_column`` (copied into :data:`RECORD_ID_COLUMN`, kept as it is).
        Ids already committed or pending, and repeats within ``table`` (the first copy is
        kept), are skipped — or raise :class:`~orcapod_core.errors.DuplicateTagError` when
        ``skip_duplicates=False`` (then nothing is added). ``flush=True`` commits right away.
        ``digest_columns``: columns holding lowercase hex digests (checked), which the backend
        may store as bytes; they read back as the same strings.

        >>> from orcapod_core.databases import InMemoryArrowDatabase
        >>> db = InMemoryArrowDatabase()
        >>> db.add_records(("t",), pa.table({"k": ["a", "a", "b"], "x": [1, 2, 3]}), record_id_column="k")
        2
        """
        key = validate_record_path(record_path)
        where = _path_name(key)
        table = self._prepare(key, where, table, record_id_column)
        with self._lock:
            pending = self._pending.get(key)
            # Buffering checks against what this handle last saw; the flush re-checks fresh state
            # under the commit lock, so adds stay cheap (no round trip to the store per call).
            committed_schema = self._committed_schema(key, fresh=False)
            # Declared here, or stored as digests already (by any writer): checked before buffering.
            stored = self._stored_digest_columns(key) & set(table.column_names)
            _check_digests(where, table, [*digest_columns, *(c for c in stored if c not in digest_columns)])
            if digest_columns:
                self._digests.setdefault(key, set()).update(digest_columns)
            if committed_schema is not None and RECORD_ID_COLUMN not in committed_schema.names:
                raise CorruptStoreError(f"table {where} has no {RECORD_ID_COLUMN!r} column: it is not a record table")
            current = _union(committed_schema, pending.schema if pending else None)
            schema, table = conform(where, current, table)
            added = self._buffer(key, where, table, schema, skip_duplicates)
            if flush:
                self._flush_key(key)
            now = time.monotonic()
            for other in [k for k, p in self._pending.items() if self._due(p, now)]:
                self._flush_key(other)
        return added

    def _prepare(self, key: RecordPath, where: str, table: Any, record_id_column: str | None) -> pa.Table:
        if not isinstance(table, pa.Table):
            try:
                table = pa.table(table)
            except (TypeError, ValueError, pa.ArrowInvalid) as exc:
                raise InputValidationError(f"records for table {where} must be an Arrow table: {exc}") from exc
        if record_id_column is not None and record_id_column != RECORD_ID_COLUMN:
            if record_id_column not in table.column_names:
                raise InputValidationError(
                    f"record-id column {record_id_column!r} is not a column of the records for table {where}; "
                    f"columns: {table.column_names}"
                )
            if RECORD_ID_COLUMN in table.column_names:
                raise InputValidationError(
                    f"records for table {where} have both {RECORD_ID_COLUMN!r} and record_id_column="
                    f"{record_id_column!r}; pass one"
                )
            table = table.add_column(0, RECORD_ID_COLUMN, table[record_id_column])
        if RECORD_ID_COLUMN not in table.column_names:
            raise InputValidationError(
                f"records for table {where} lack the record-id column {RECORD_ID_COLUMN!r} "
                "(or pass record_id_column=)"
            )
        if len(set(table.column_names)) != table.num_columns:
            raise InputValidationError(f"records for table {where} have repeated column names: {table.column_names}")
        ids = table[RECORD_ID_COLUMN]
        if ids.null_count:
            raise InputValidationError(
                f"record-id column {record_id_column or RECORD_ID_COLUMN!r} of the records for table {where} "
                "contains nulls"
            )
        if not pa.types.is_large_string(ids.type):
            try:
                ids = ids.cast(pa.large_string())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise InputValidationError(
                    f"record ids for table {where} must be strings; column "
                    f"{record_id_column or RECORD_ID_COLUMN!r} has type {ids.type}"
                ) from exc
            table = table.set_column(table.schema.get_field_index(RECORD_ID_COLUMN), RECORD_ID_COLUMN, ids)
        table = normalize_table(table)
        table = self._storage_form(key, table)
        # The id column is never null: declare it so the stored schema says so too.
        idx = table.schema.get_field_index(RECORD_ID_COLUMN)
        if table.schema.field(idx).nullable:
            table = table.cast(table.schema.set(idx, table.schema.field(idx).with_nullable(False)))
        return table

    def _buffer(self, key: RecordPath, where: str, table: pa.Table, schema: pa.Schema, skip_duplicates: bool) -> int:
        if table.num_rows == 0:
            return 0
        ids = table[RECORD_ID_COLUMN]
        # Columnar: ids already committed (as this handle last saw), already pending, or repeated
        # in this call (the first copy kept). The usual batch repeats none of them.
        repeated = self._committed_membership(key, ids, fresh=False)
        pending = self._pending.get(key)
        in_pending = pending.ids.contains(ids) if pending is not None else None
        if in_pending is not None and in_pending.any():
            repeated = in_pending.to_arrow() if repeated is None else pc.or_(repeated, in_pending.to_arrow())
        if not all_distinct(ids):
            again = pc.invert(pl.from_arrow(ids).is_first_distinct().to_arrow())
            repeated = again if repeated is None else pc.or_(repeated, again)
        if repeated is not None and pc.any(repeated).as_py():
            if not skip_duplicates:
                shown_ids = pc.filter(ids, repeated).to_pylist()
                shown = ", ".join(repr(r) for r in shown_ids[:5]) + (" ..." if len(shown_ids) > 5 else "")
                raise DuplicateTagError(
                    f"{len(shown_ids)} record id(s) already in table {where} or repeated in the new records: {shown}"
                )
            table = table.filter(pc.invert(repeated))
            if table.num_rows == 0:
                return 0
        if pending is None:
            pending = self._pending[key] = _Pending(schema=schema, since=time.monotonic())
        pending.schema = schema
        pending.chunks.append(table)
        pending.ids.add(table[RECORD_ID_COLUMN])
        pending.rows += table.num_rows
        return table.num_rows

    def _due(self, pending: _Pending, now: float) -> bool:
        if pending.rows >= self.batch_size:
            return True
        return self.max_batch_age_s is not None and now - pending.since >= self.max_batch_age_s

    def flush(self) -> None:
        """Commit every table's pending batch (one transaction per table).

        A table whose commit fails keeps its pending records; the others are still committed,
        then the first error is raised."""
        errors: list[BaseException] = []
        with self._lock:
            for key in list(self._pending):
                try:
                    self._flush_key(key)
                except Exception as exc:  # commit the other tables before reporting
                    errors.append(exc)
        if errors:
            raise errors[0]

    def flush_path(self, record_path: Sequence[str]) -> None:
        """Commit the pending batch of one table."""
        key = validate_record_path(record_path)
        with self._lock:
            self._flush_key(key)

    def _flush_key(self, key: RecordPath) -> None:
        pending = self._pending.get(key)
        if pending is None:
            return
        where = _path_name(key)
        table = pending.table()
        for attempt in range(self._max_commit_attempts):
            try:
                with self._commit_lock(key):
                    # Anti-join against what is committed *now* (other handles/processes may have
                    # committed some of these ids since they were buffered) and re-check the schema.
                    committed = self._committed_membership(key, table[RECORD_ID_COLUMN])
                    batch = table
                    if committed is not None and pc.any(committed).as_py():
                        batch = table.filter(pc.invert(committed))
                    if batch.num_rows:
                        stored = self._committed_schema(key)
                        schema, batch = conform(where, stored, batch)
                        evolve = stored is not None and len(schema) != len(stored)
                        self._write(key, batch, batch[RECORD_ID_COLUMN], evolve)
                break
            except self._retryable:
                if attempt == self._max_commit_attempts - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
        del self._pending[key]

    def close(self) -> None:
        """Commit everything pending (the handle stays usable)."""
        self.flush()

    def __enter__(self) -> BufferedArrowDatabase:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.flush()

    def _flush_at_exit(self) -> None:
        """Commit pending records when the handle is garbage-collected or the interpreter exits,
        so records are never dropped silently (persistent backends call this in ``__init__``)."""
        self._flush_on_release = True
        ref = weakref.ref(self)

        def _flush() -> None:
            db = ref()
            if db is not None and db._pending:
                try:
                    db.flush()
                except Exception:  # never mask the interpreter's own exit status
                    _log.exception("orcapod: flushing %r at exit failed", db)

        atexit.register(_flush)

    def __del__(self) -> None:
        if getattr(self, "_flush_on_release", False) and getattr(self, "_pending", None):
            try:
                self.flush()
            except Exception:  # a finalizer must not raise
                _log.exception("orcapod: flushing %r on release failed", self)

    # ---- reading ---------------------------------------------------------------------------

    def _select(
        self,
        record_path: Sequence[str],
        columns: Sequence[str] | None = None,
        conditions: Sequence[tuple[str, Any]] = (),
    ) -> pa.Table | None:
        """Committed + pending rows (``columns`` only) satisfying every ``(column, values)``
        condition (``values`` None: the column is null), repeated ids dropped."""
        key = validate_record_path(record_path)
        where = _path_name(key)
        if isinstance(columns, str):
            raise InputValidationError(f"columns must be a sequence of column names, got the string {columns!r}")
        with self._lock:
            pending = self._pending.get(key)
            stored = self._committed_schema(key)
            schema = _union(stored, pending.schema if pending else None)
            if schema is None:
                return None
            for name in [*(columns or ()), *(c for c, _ in conditions)]:
                if name not in schema.names:
                    raise InputValidationError(f"table {where} has no column {name!r}; columns: {schema.names}")
            conds: list[Condition] = [
                (c, None if v is None else _as_array(where, c, v, schema.field(c).type)) for c, v in conditions
            ]
            read = None if columns is None else list(dict.fromkeys([*columns, RECORD_ID_COLUMN]))
            if read is not None:
                read = [c for c in read if c in schema.names]
            out_schema = schema if read is None else pa.schema([schema.field(c) for c in read])
            parts: list[pa.Table] = []
            if any(v is not None and len(v) == 0 for _, v in conds):
                return out_schema.empty_table()
            if stored is not None:
                committed = self._scan_committed(key, stored, read, conds)
                if committed is not None and committed.num_rows:
                    parts.append(_align(committed, out_schema))
            if pending is not None:
                rows = filter_rows(pending.table(), conds)
                if rows.num_rows:
                    parts.append(_align(rows if read is None else rows.select(read), out_schema))
        if not parts:
            return out_schema.empty_table()
        result = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
        return drop_repeated_ids(result)

    def _scan_committed(
        self, key: RecordPath, stored: pa.Schema, read: list[str] | None, conds: list[Condition]
    ) -> pa.Table | None:
        # Conditions on columns the committed table does not have yet (added by a pending batch):
        # those rows are null there, so "is null" always holds and "is one of" never does.
        kept: list[Condition] = []
        for column, values in conds:
            if column in stored.names:
                kept.append((column, values))
            elif values is not None:
                return None
        columns = None if read is None else [c for c in read if c in stored.names]
        if any(values is not None and len(values) > _PUSHDOWN_MAX_VALUES for _, values in kept):
            # Pushing a large "is one of" set into the scan makes the reader evaluate it against
            # every row group's statistics, which costs far more than reading the few needed
            # columns whole and filtering them in memory with one hash lookup per row.
            wanted = None if columns is None else list(dict.fromkeys([*columns, *(c for c, _ in kept)]))
            table = self._scan(key, wanted, [])
            if table is None:
                return None
            table = filter_rows(table, kept)
            return table if columns is None else table.select(columns)
        return self._scan(key, columns, kept)

    def get_records_by_ids(
        self, record_path: Sequence[str], ids: Sequence[str] | pa.Array, columns: Sequence[str] | None = None
    ) -> pa.Table | None:
        """The records whose id is in ``ids`` (one filtered read for any number of ids);
        ``columns``: read and return only these (and the record id).

        >>> from orcapod_core.databases import InMemoryArrowDatabase
        >>> db = InMemoryArrowDatabase()
        >>> _ = db.add_records(("t",), pa.table({"__record_id": ["a", "b"], "x": [1, 2], "y": [3, 4]}))
        >>> db.get_records_by_ids(("t",), ["b", "zzz"])["x"].to_pylist()
        [2]
        >>> db.get_records_by_ids(("t",), ["b"], columns=["y"]).column_names
        ['y', '__record_id']
        """
        return self._select(record_path, columns, [(RECORD_ID_COLUMN, ids)])

    def get_records_by_values(
        self, record_path: Sequence[str], column: str, values: Any, columns: Sequence[str] | None = None
    ) -> pa.Table | None:
        """The records whose ``column`` is one of ``values`` (a sequence or an Arrow array)."""
        return self._select(record_path, columns, [(column, values)])

    def get_records_where(
        self, record_path: Sequence[str], equals: Mapping[str, Any], columns: Sequence[str] | None = None
    ) -> pa.Table | None:
        """The records where ``column == value`` for every item of ``equals`` (``None``: is null).

        >>> from orcapod_core.databases import InMemoryArrowDatabase
        >>> db = InMemoryArrowDatabase()
        >>> _ = db.add_records(("t",), pa.table({"__record_id": ["a", "b"], "h": ["x", "x"], "v": [1, 2]}))
        >>> db.get_records_where(("t",), {"h": "x", "v": 2})["__record_id"].to_pylist()
        ['b']
        """
        conditions = [(c, None if v is None else [v]) for c, v in equals.items()]
        return self._select(record_path, columns, conditions)

    def get_all_records(self, record_path: Sequence[str], columns: Sequence[str] | None = None) -> pa.Table | None:
        """Every record of the table (committed in commit order, then pending)."""
        return self._select(record_path, columns)

    def get_column(self, record_path: Sequence[str], column: str) -> pa.Array | None:
        """One column of every record; only that column (and the id column) is read."""
        table = self._select(record_path, [column])
        if table is None:
            return None
        values = table[column]
        return values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()

    # ---- table metadata ----------------------------------------------------------------------

    def has_table(self, record_path: Sequence[str]) -> bool:
        """True when the table has committed or pending records."""
        key = validate_record_path(record_path)
        with self._lock:
            return key in self._pending or self._committed_schema(key) is not None

    def list_tables(self) -> list[RecordPath]:
        """Every table with committed or pending records, sorted."""
        with self._lock:
            return sorted(set(self._committed_paths()) | set(self._pending))

    def table_version(self, record_path: Sequence[str]) -> int | None:
        """Version of the committed table (0 after its first commit), ``None`` before that."""
        key = validate_record_path(record_path)
        with self._lock:
            return self._committed_version(key)

    def pending_count(self, record_path: Sequence[str] | None = None) -> int:
        """Number of buffered, not yet committed records (of one table, or of all)."""
        with self._lock:
            if record_path is None:
                return sum(p.rows for p in self._pending.values())
            pending = self._pending.get(validate_record_path(record_path))
            return pending.rows if pending else 0

