"""Snapshots: one node output pinned so it can be read back exactly, later or elsewhere.

A node's own tables hold the *union* of everything it ever produced (a function node's
pipeline records cover every input it ever saw; an operator stores nothing, or a log). A
**snapshot** pins one output — e.g. the output of one Dagster materialization — so a consumer
reads exactly those rows, not the current state of the shared tables.

**Data version.** The data version of an output is a hash over its sorted row hashes, every
column included (tags, system tags, packet, source info): equal outputs have equal versions in
every process and run (row order does not matter), and any changed row — a value, or its
provenance — gives a new version.

**Storage.** In the node's database, under ``(*pipeline name, label, "_snapshots",
<pipeline hash[:16]>)`` (one set of tables per node shape, so a changed node never mixes schemas):

* ``rows`` — every distinct row ever snapshotted, keyed by its row hash: a row shared by many
  snapshots is stored once;
* ``manifest`` — one record per row of each snapshot: ``(__data_version, __position, __row_hash)``;
* ``versions`` — one record per snapshot (record id = the data version) with its row count,
  tag columns and exact Arrow schema. It is written last, so a snapshot exists exactly when
  its version record does; saving an output whose version exists writes nothing.

Reading a snapshot is two lookups (manifest by version, rows by hash) and restores the rows in
their original order with their exact schema.

>>> snap = save_snapshot(pipeline.scored)                       # doctest: +SKIP
>>> stream = load_snapshot(pipeline.pipeline_database, snap.path, snap.data_version)  # doctest: +SKIP
>>> with pinned_outputs({pipeline.scored: stream}):             # doctest: +SKIP
...     pipeline.run(nodes=["survey"], include_upstream=False)
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from orcapod_core.databases import RECORD_ID_COLUMN, ArrowDatabase, RecordPath, validate_record_path
from orcapod_core.errors import CorruptStoreError, NotMaterializedError, SchemaMismatchError
from orcapod_core.hashing import digests_to_hex, hash_rows
from orcapod_core.streams import Stream, StreamLayout, TableStream, conform

__all__ = [
    "Snapshot",
    "SNAPSHOTS_COMPONENT",
    "snapshot_path",
    "data_version",
    "save_snapshot",
    "load_snapshot",
    "has_snapshot",
    "pinned_outputs",
]

#: Path component under a node's label that holds its snapshot tables.
SNAPSHOTS_COMPONENT = "_snapshots"
_VERSION_COLUMN = "__data_version"
_POSITION_COLUMN = "__position"
_ROW_HASH_COLUMN = "__row_hash"


@dataclass(frozen=True)
class Snapshot:
    """A stored node output: where it is, its data version and size.

    ``manifest_version`` is the committed version of the manifest table once the snapshot is
    stored (the Delta version that pins it; ``None`` for an empty output or an in-memory store).
    ``stored`` says whether this call wrote it (``False``: the same output was stored before).
    """

    label: str
    path: RecordPath
    data_version: str
    row_count: int
    tag_columns: tuple[str, ...]
    manifest_version: int | None
    stored: bool


def snapshot_path(node: Stream) -> RecordPath:
    """Base record path of a node's snapshot tables: ``(*pipeline name, label, "_snapshots", <pipeline hash[:16]>)``."""
    record_path = tuple(node.record_path)  # type: ignore[attr-defined]
    # A node's record path is (*pipeline name, label, <pipeline hash[:16]>).
    return validate_record_path((*record_path[:-1], SNAPSHOTS_COMPONENT, record_path[-1]))


def _row_hashes(table: pa.Table) -> pa.Array:
    return digests_to_hex(hash_rows(table)) if table.num_rows else pa.array([], pa.large_string())


def _version_of(row_hashes: pa.Array) -> str:
    ordered = row_hashes.take(pc.sort_indices(row_hashes)) if len(row_hashes) else row_hashes
    h = hashlib.sha256(b"orcapod-data-version-v1")
    h.update("".join(ordered.to_pylist()).encode("ascii"))
    return h.hexdigest()[:32]


def data_version(table: pa.Table) -> str:
    """The data version of a table of rows: a hash over its sorted row hashes (all columns).

    >>> data_version(pa.table({"x": [1, 2]})) == data_version(pa.table({"x": [2, 1]}))
    True
    """
    return _version_of(_row_hashes(table))


def _paths(base: RecordPath) -> tuple[RecordPath, RecordPath, RecordPath]:
    return (*base, "rows"), (*base, "manifest"), (*base, "versions")


def has_snapshot(database: ArrowDatabase, path: Sequence[str], version: str) -> bool:
    """True when the snapshot ``version`` is stored under ``path``."""
    found = database.get_records_by_ids(_paths(tuple(path))[2], [version])
    return found is not None and found.num_rows > 0


def save_snapshot(node: Stream, table: pa.Table | None = None) -> Snapshot:
    """Store ``node``'s current output (or ``table``, rows in the node's layout) as a snapshot
    in the node's database and return it. An output stored before is not written again."""
    database: ArrowDatabase = node.database  # type: ignore[attr-defined]
    label = str(getattr(node, "label", None) or "node")
    layout = node.layout
    rows = node._table() if table is None else conform(table, layout)
    hashes = _row_hashes(rows)
    version = _version_of(hashes)
    base = snapshot_path(node)
    rows_path, manifest_path, versions_path = _paths(base)
    stored = not has_snapshot(database, base, version)
    if stored:
        n = rows.num_rows
        if n:
            database.add_records(rows_path, rows.append_column(pa.field(RECORD_ID_COLUMN, pa.large_string(), False), hashes), flush=True)
            positions = pa.array(range(n), pa.int64())
            ids = pc.binary_join_element_wise(
                pa.scalar(version, pa.large_string()), positions.cast(pa.large_string()), pa.scalar(":", pa.large_string())
            )
            manifest = pa.table(
                {
                    RECORD_ID_COLUMN: ids,
                    _VERSION_COLUMN: pa.repeat(pa.scalar(version, pa.large_string()), n),
                    _POSITION_COLUMN: positions,
                    _ROW_HASH_COLUMN: hashes,
                }
            )
            database.add_records(manifest_path, manifest, flush=True)
        record = pa.table(
            {
                RECORD_ID_COLUMN: pa.array([version], pa.large_string()),
                "label": pa.array([label], pa.large_string()),
                "row_count": pa.array([n], pa.int64()),
                "tag_columns": pa.array([json.dumps(list(layout.tag_columns))], pa.large_string()),
                "arrow_schema": pa.array([layout.schema.serialize().to_pybytes()], pa.large_binary()),
                "saved_at": pa.array([datetime.datetime.now(datetime.UTC).replace(tzinfo=None)], pa.timestamp("us")),
            }
        )
        database.add_records(versions_path, record, flush=True)  # last: the snapshot now exists
    return Snapshot(
        label=label,
        path=base,
        data_version=version,
        row_count=rows.num_rows,
        tag_columns=tuple(layout.tag_columns),
        manifest_version=database.table_version(manifest_path),
        stored=stored,
    )


def load_snapshot(
    database: ArrowDatabase, path: Sequence[str], version: str, *, layout: StreamLayout | None = None
) -> TableStream:
    """The rows of snapshot ``version`` under ``path``, in their original order, as a stream with
    the exact schema they were saved with (or conformed to ``layout``).

    Raises :class:`~orcapod_core.errors.NotMaterializedError` when the snapshot is not stored and
    :class:`~orcapod_core.errors.CorruptStoreError` when it is stored incompletely.
    """
    base = validate_record_path(tuple(path))
    rows_path, manifest_path, versions_path = _paths(base)
    where = "/".join(base)
    found = database.get_records_by_ids(versions_path, [version])
    if found is None or found.num_rows == 0:
        raise NotMaterializedError(f"snapshot {version!r} of {where!r} is not in the store")
    record = found.slice(0, 1).to_pylist()[0]
    tag_columns = tuple(json.loads(record["tag_columns"]))
    saved = StreamLayout(pa.ipc.read_schema(pa.py_buffer(record["arrow_schema"])), tag_columns)
    n = record["row_count"]
    if n == 0:
        table = saved.schema.empty_table()
    else:
        manifest = database.get_records_where(manifest_path, {_VERSION_COLUMN: version})
        if manifest is None or manifest.num_rows != n:
            got = 0 if manifest is None else manifest.num_rows
            raise CorruptStoreError(f"snapshot {version!r} of {where!r} lists {got} of its {n} rows")
        manifest = manifest.take(pc.sort_indices(manifest[_POSITION_COLUMN]))
        wanted = manifest[_ROW_HASH_COLUMN].combine_chunks()
        stored = database.get_records_by_ids(rows_path, pc.unique(wanted))
        if stored is None:
            raise CorruptStoreError(f"snapshot {version!r} of {where!r}: its rows table is missing")
        position = pc.index_in(wanted, value_set=stored[RECORD_ID_COLUMN].combine_chunks())
        if position.null_count:
            raise CorruptStoreError(f"snapshot {version!r} of {where!r}: {position.null_count} of its rows are missing")
        table = conform(stored.take(position), saved)
    if layout is not None:
        try:
            table = conform(table, layout)
        except SchemaMismatchError as exc:
            raise SchemaMismatchError(f"snapshot {version!r} of {where!r} does not fit the node's current schema: {exc}") from exc
        saved = layout
    return TableStream(table, tag_columns, layout=saved)


@contextlib.contextmanager
def pinned_outputs(pins: Mapping[Stream, Stream | pa.Table]) -> Iterator[None]:
    """Within the block, each node in ``pins`` serves the given rows as its output (e.g. a
    loaded snapshot), so nodes run downstream of it read those rows instead of recomputing or
    re-reading it; on exit every node serves what it served before.

    >>> with pinned_outputs({pipeline.scored: stream}):                # doctest: +SKIP
    ...     pipeline.run(nodes=["survey"], include_upstream=False)
    """
    before: list[tuple[Stream, dict[str, object]]] = []
    try:
        for node, rows in pins.items():
            table = rows._table() if isinstance(rows, Stream) else rows
            try:
                table = conform(table, node.layout)
            except SchemaMismatchError as exc:
                raise SchemaMismatchError(
                    f"rows given for node {getattr(node, 'label', node)!r} do not fit its schema: {exc}"
                ) from exc
            cached = {k: node.__dict__[k] for k in ("_cached_table", "_cached_packet_hashes", "_pinned") if k in node.__dict__}
            before.append((node, cached))
            node._set_output(table)  # type: ignore[attr-defined]
            node.__dict__["_pinned"] = True  # a run's refresh of its sources leaves it alone
        yield
    finally:
        for node, cached in reversed(before):
            for key in ("_cached_table", "_cached_packet_hashes", "_pinned"):
                node.__dict__.pop(key, None)
            node.__dict__.update(cached)
