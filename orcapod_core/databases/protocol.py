"""The :class:`ArrowDatabase` protocol: where pipelines keep records, and how tables are addressed.

A database holds *tables* of Arrow rows. A table is addressed by a ``record_path``: a tuple of
validated components such as ``("my_pipeline", "score", "sha256:0a1b2c")`` (callers split URIs
into components; separators are never part of a component). Every row is a *record* with a
string *record id* kept in the column :data:`RECORD_ID_COLUMN`; a table never holds two records
with the same id, and adding an id that is already there is skipped (or refused).

The whole API is bulk and columnar: one call adds many records or looks up many ids/values.
Writes are buffered per table and committed atomically per batch (see
:class:`~orcapod_core.databases.DeltaTableDatabase`); reads always see both the pending rows of
this handle and everything committed by any handle or process.

>>> from orcapod_core.databases import InMemoryArrowDatabase
>>> db = InMemoryArrowDatabase()
>>> db.add_records(("demo", "t"), pa.table({"__record_id": ["a", "b"], "x": [1, 2]}))
2
>>> db.get_records_by_ids(("demo", "t"), ["b"]).to_pylist()
[{'__record_id': 'b', 'x': 2}]
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa

from orcapod_core.errors import InvalidPathError

__all__ = [
    "ArrowDatabase",
    "RECORD_ID_COLUMN",
    "MAX_PATH_DEPTH",
    "RecordPath",
    "TableStats",
    "validate_record_path",
]

#: Name of the column holding each record's string id.
RECORD_ID_COLUMN = "__record_id"

#: Name prefixes of the execution context a result cache stores with every result (the same
#: values on every row of a run: function variation, executor, host). A Delta table writes no
#: Parquet statistics for them: nothing is looked up by them, and statistics of these repeated
#: columns were a fifth to a third of a results file's write time.
CONTEXT_PREFIXES = ("__variation_", "__execution_")

#: Maximum number of components in a record path.
MAX_PATH_DEPTH = 10
#: Maximum length of one path component (a directory name on every filesystem we target).
MAX_COMPONENT_LENGTH = 255

RecordPath = tuple[str, ...]


@dataclass(frozen=True)
class TableStats:
    """What one stored table holds, read from the store's metadata (no rows are read):
    committed ``rows``, the ``bytes`` of the data its current version consists of (older
    versions' files, until vacuumed, are not counted), its ``version`` and when that version
    was committed (``modified``, UTC; ``None`` when the store does not record it). Pending,
    uncommitted records are not counted.

    >>> TableStats(rows=3, bytes=1024, version=0).rows
    3
    """

    rows: int
    bytes: int
    version: int
    modified: datetime.datetime | None = None

_COMPONENT_RE = re.compile(r"[A-Za-z0-9_.:=-]+")
# Names a storage backend uses inside a table's directory; a component equal to one of them
# would put a table where the backend keeps its own files.
_RESERVED_COMPONENTS = frozenset({"_delta_log", "_change_data", "_orcapod_commit.lock", "_orcapod_files"})


def validate_record_path(record_path: Sequence[str]) -> RecordPath:
    """Return ``record_path`` as a tuple after checking every component.

    A component is a non-empty string of ``[A-Za-z0-9_.:=-]`` (at most 255 characters), not
    ``.``/``..`` and not a name reserved by storage backends; a path has 1 to
    :data:`MAX_PATH_DEPTH` components. Anything else raises
    :class:`~orcapod_core.errors.InvalidPathError` naming the offending component.

    >>> validate_record_path(["pipeline", "node", "sha256:ab12"])
    ('pipeline', 'node', 'sha256:ab12')
    """
    if isinstance(record_path, (str, bytes)):
        raise InvalidPathError(
            f"record path must be a tuple of components, got the string {record_path!r} "
            "(split it into components, e.g. ('a', 'b') rather than 'a/b')"
        )
    try:
        path = tuple(record_path)
    except TypeError:
        raise InvalidPathError(f"record path must be a tuple of strings, got {record_path!r}") from None
    if not path:
        raise InvalidPathError("record path must have at least one component, got ()")
    if len(path) > MAX_PATH_DEPTH:
        raise InvalidPathError(
            f"record path {path!r} has {len(path)} components; at most {MAX_PATH_DEPTH} are allowed"
        )
    for component in path:
        reason = _component_problem(component)
        if reason is not None:
            raise InvalidPathError(f"invalid record path component {component!r} in {path!r}: {reason}")
    return path


def _component_problem(component: object) -> str | None:
    if not isinstance(component, str):
        return f"components must be strings, not {type(component).__name__}"
    if not component:
        return "empty component"
    if component in (".", ".."):
        return "relative path components are not allowed"
    if "/" in component or "\\" in component:
        return "path separators are not allowed inside a component (pass components separately)"
    if "\x00" in component:
        return "NUL characters are not allowed"
    if len(component) > MAX_COMPONENT_LENGTH:
        return f"longer than {MAX_COMPONENT_LENGTH} characters"
    if component in _RESERVED_COMPONENTS:
        return "the name is reserved by the storage backend"
    if not _COMPONENT_RE.fullmatch(component):
        bad = sorted({ch for ch in component if not _COMPONENT_RE.fullmatch(ch)})
        return f"characters {bad} are not allowed (only letters, digits and _ . : = -)"
    return None


@runtime_checkable
class ArrowDatabase(Protocol):
    """Record store: Arrow tables addressed by record paths, records keyed by a string id.

    Lookups return ``None`` when the table does not exist (neither committed nor pending);
    otherwise a table (possibly with zero rows) including the :data:`RECORD_ID_COLUMN` column.
    Rows come back in commit order, pending rows last (a compaction keeps each batch's rows in
    order but may list the batches it merged in another order; lookups are unaffected).

    ``columns`` (``get_records_*`` and ``get_all_records``) limits what is read and returned
    to those columns plus :data:`RECORD_ID_COLUMN` (a column the table lacks is an
    :class:`~orcapod_core.errors.InputValidationError`); ``None`` returns every column. Reading
    only what a caller needs keeps bulk lookups of wide tables cheap (e.g. result records,
    mostly execution context). Implementations:
    :class:`~orcapod_core.databases.InMemoryArrowDatabase` and
    :class:`~orcapod_core.databases.DeltaTableDatabase`.
    """

    def add_records(
        self,
        record_path: Sequence[str],
        table: pa.Table,
        record_id_column: str | None = None,
        skip_duplicates: bool = True,
        flush: bool = False,
        digest_columns: Sequence[str] = (),
    ) -> int:
        """Add many records; return how many were actually added (new ids only).
        ``digest_columns``: columns of lowercase hex digests the backend may store as bytes."""
        ...

    def get_records_by_ids(
        self, record_path: Sequence[str], ids: Sequence[str] | pa.Array, columns: Sequence[str] | None = None
    ) -> pa.Table | None:
        """The records whose id is in ``ids`` (missing ids are simply absent)."""
        ...

    def get_records_by_values(
        self, record_path: Sequence[str], column: str, values: Any, columns: Sequence[str] | None = None
    ) -> pa.Table | None:
        """The records whose ``column`` value is one of ``values``."""
        ...

    def get_records_where(
        self, record_path: Sequence[str], equals: Mapping[str, Any], columns: Sequence[str] | None = None
    ) -> pa.Table | None:
        """The records where every ``column == value`` of ``equals`` holds (``None`` matches nulls)."""
        ...

    def get_all_records(self, record_path: Sequence[str], columns: Sequence[str] | None = None) -> pa.Table | None:
        """Every record of the table."""
        ...

    def get_column(self, record_path: Sequence[str], column: str) -> pa.Array | None:
        """One column of every record (only that column is read)."""
        ...

    def flush(self) -> None:
        """Commit the pending batches of every table."""
        ...

    def flush_path(self, record_path: Sequence[str]) -> None:
        """Commit the pending batch of one table."""
        ...

    def has_table(self, record_path: Sequence[str]) -> bool:
        """True when the table has committed or pending records."""
        ...

    def list_tables(self) -> list[RecordPath]:
        """Record paths of every table with committed or pending records, sorted."""
        ...

    def table_version(self, record_path: Sequence[str]) -> int | None:
        """Version of the committed table (0 after the first commit), ``None`` if never committed."""
        ...

    def to_config(self) -> dict[str, Any]:
        """JSON-serialisable description rebuilt by :func:`~orcapod_core.databases.database_from_config`."""
        ...
