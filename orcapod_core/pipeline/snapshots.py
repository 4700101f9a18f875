"""Snapshots: one node output pinned so it can be read back exactly, later or elsewhere.

A node's own tables hold the *union* of everything it ever produced (a function node's
pipeline records cover every input it ever saw; an operator stores nothing, or a log). A
**snapshot** pins one output — e.g. the output of one Dagster materialization — so a consumer
reads exactly those rows, not the current state of the shared tables.

A snapshot **references** rows the store already holds instead of copying them:

* a **function node**'s output is its input's rows with the stored results of their packets: the
  snapshot names its inputs' snapshots and where the results are (and the entry ids of the rest,
  if some packets failed), and reading looks the results up again — no row is stored;
* an **operator node**'s output is a deterministic function of its inputs: the snapshot names
  the operator (class + config) and the snapshots of its inputs, and reading recomputes it;
* a **Delta Lake source** is the table at a version: the snapshot names them;
* anything else (a CSV file, in-memory data, a pinned partition of a source) has its rows copied
  — its user columns and record ids; system tags and source info are derived again on read.

**Data version.** Computed from what the run already knows, never by rehashing output rows: a
function node's is a hash over its rows' entry ids (each one covers the tag, system tags, input
packet and node; results never change under one packet hash); an operator's, a hash of its
identity and its inputs' versions; a Delta source's, its identity, URI and table version; a
copied output's, a hash of the copied rows. Equal outputs have equal versions in every process.

**Storage.** In the node's database, under ``(*pipeline name, label, "_snapshots",
<pipeline hash[:16]>)``: ``versions`` (one record per snapshot: record id = the data version,
with the kind, row count, tag columns, exact Arrow schema and the JSON ``recipe`` of where its
rows are; written last, so a snapshot exists exactly when its version record does) and
``copies`` (copied outputs). Saving an output whose version exists writes nothing.

>>> snap = save_snapshot(pipeline.scored)                       # doctest: +SKIP
>>> stream = load_snapshot(pipeline.pipeline_database, snap.path, snap.data_version)  # doctest: +SKIP
>>> with pinned_outputs({pipeline.scored: stream}):             # doctest: +SKIP
...     pipeline.run(nodes=["survey"], include_upstream=False)
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import importlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from orcapod_core.columns import source_column
from orcapod_core.databases import RECORD_ID_COLUMN, ArrowDatabase, RecordPath, database_from_config, validate_record_path
from orcapod_core.errors import CorruptStoreError, NotMaterializedError, SchemaMismatchError
from orcapod_core.function_pods import pod_output_table
from orcapod_core.hashing import ContentHash, digests_to_hex, hash_object, hash_rows
from orcapod_core.keysets import is_in
from orcapod_core.lazy_polars import pl
from orcapod_core.operators import Join, Operator
from orcapod_core.result_cache import PACKET_HASH_COLUMN, ResultCache
from orcapod_core.sources import DeltaTableSource, LiveSource, file_source_from_config
from orcapod_core.streams import Stream, StreamLayout, TableStream, conform
from orcapod_core.tracking import untracked

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


@dataclass(frozen=True)
class Snapshot:
    """A stored node output: where it is, its data version and size.

    ``manifest_version`` is the committed version of the snapshot's ``versions`` table once it
    is stored (``None`` on an in-memory store). ``stored`` says whether this call wrote it
    (``False``: the same output was stored before).
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


def _version_of(kind: str, parts: Any) -> str:
    return hashlib.sha256(f"orcapod-data-version-v2:{kind}:".encode() + parts).hexdigest()[:32]


def _sorted_ids(ids: pa.Array | pa.ChunkedArray) -> bytes:
    """The (hex, non-null) ids sorted and concatenated, as ASCII bytes: what a data version hashes."""
    if not len(ids):
        return b""
    if ids.null_count:
        raise ValueError(f"{ids.null_count} of {len(ids)} ids are null")
    # Sorted and joined by Polars (byte order, as Arrow and Python sort ASCII): the same bytes
    # as "".join(sorted(...)) of the Python strings, a third of the time of Arrow's sort and
    # without a Python object per id.
    return pl.Series(values=ids).sort().str.join("").item().encode("ascii")


def data_version(table: pa.Table) -> str:
    """The data version of a table of rows: a hash over its sorted row hashes (all columns).

    >>> data_version(pa.table({"x": [1, 2]})) == data_version(pa.table({"x": [2, 1]}))
    True
    """
    hashes = digests_to_hex(hash_rows(table)) if table.num_rows else pa.array([], pa.large_string())
    return _version_of("rows", _sorted_ids(hashes))


def _paths(base: RecordPath) -> tuple[RecordPath, RecordPath]:
    return (*base, "copies"), (*base, "versions")


def has_snapshot(database: ArrowDatabase, path: Sequence[str], version: str) -> bool:
    """True when the snapshot ``version`` is stored under ``path``."""
    found = database.get_records_by_ids(_paths(tuple(path))[1], [version], columns=["row_count"])
    return found is not None and found.num_rows > 0


# -- saving --------------------------------------------------------------------------------


def save_snapshot(node: Stream, table: pa.Table | None = None) -> Snapshot:
    """Store ``node``'s current output (or ``table``, rows in the node's layout: copied) as a
    snapshot in the node's database and return it. An output stored before is not written again.

    The snapshot references the store where it can (see the module notes): function nodes by
    their rows' entry ids, operators by their inputs' snapshots, Delta sources by table version.
    """
    if table is not None:
        return _save(node, _copied(node, conform(table, node.layout)))
    cached = node.__dict__.get("_snapshot")
    if cached is not None:  # saved already for these very rows
        return dataclasses.replace(cached, stored=False)
    pinned = node.__dict__.get("_pinned_snapshot")
    if pinned is not None:  # pinned to a stored snapshot: that is its output
        return pinned
    kind = getattr(node, "kind", None)
    if kind == "function" and not node.__dict__.get("_pinned"):
        plan = _function_plan(node)
    elif kind == "operator" and not node.__dict__.get("_pinned"):
        plan = _operator_plan(node)
    elif kind == "source" and not node.__dict__.get("_pinned") and _delta_source(node) is not None:
        plan = _delta_plan(node)
    else:
        plan = _known_copy(node) or _copied(node, node._table())
    snapshot = _save(node, plan)
    node.__dict__["_snapshot"] = snapshot
    return snapshot


@dataclass
class _Plan:
    """What a snapshot of one output is: its version, recipe, and the rows it must store."""

    kind: str
    version: str
    row_count: int
    recipe: dict[str, Any]
    rows: pa.Table | None = None  # copied outputs
    fingerprint: str | None = None  # of the file the copied rows were read from


def _function_plan(node: Any) -> _Plan:
    ids = node.output_entry_ids()
    inputs = [save_snapshot(up) for up in node.upstream_nodes]
    results = node.result_cache
    stream = node.join_inputs(node.upstream_nodes)
    recipe: dict[str, Any] = {
        "inputs": [_input_ref(up, snap) for up, snap in zip(node.upstream_nodes, inputs)],
        "results": list(results.record_path),
        "result_database": None if results.database is node.database else _database_ref(results.database),
        "uri": node.packet_function.uri,
        "output_keys": list(node.packet_function.output_keys),
        "node_content_hash": node.content_hash().to_string(),
        # Packets without a result then (they failed): left out on read even once computed.
        "missing_packets": node.missing_packets(),
    }
    # Written only when they differ from the defaults, so a plain node's recipe is as before.
    read = list(node.pod_stream.read_columns)
    if read != list(stream.layout.packet_columns):  # the input packet hash covers these only
        recipe["input_columns"] = read
    parts = _sorted_ids(ids)
    if node.pod.passthrough:
        # The rows carry input columns their entry ids do not cover (unread ones): the
        # version covers the inputs' versions too, so a changed unread value is a new version.
        recipe["passthrough"] = True
        parts += json.dumps([s.data_version for s in inputs]).encode()
    return _Plan("function", _version_of("function", parts), len(ids), recipe)


def _operator_plan(node: Any) -> _Plan:
    inputs = [save_snapshot(up) for up in node.upstream_nodes]
    operator = node.operator
    recipe = {
        "class": f"{type(operator).__module__}:{type(operator).__qualname__}",
        "config": operator.config(),
        "inputs": [_input_ref(up, snap) for up, snap in zip(node.upstream_nodes, inputs)],
    }
    identity = hash_object(operator.identity_structure()).to_string()
    version = _version_of("operator", json.dumps([identity, [s.data_version for s in inputs]]).encode())
    return _Plan("operator", version, node._table().num_rows, recipe)


def _input_ref(up: Any, snap: Snapshot) -> dict[str, Any]:
    """How an operator's recipe names one input: its snapshot, layout and identity (the hashes
    decide how a join names system tags, so the input is rebuilt with them)."""
    return {
        "path": list(snap.path),
        "data_version": snap.data_version,
        "content_hash": up.content_hash().to_string(),
        "pipeline_hash": up.pipeline_hash().to_string(),
    }


def _delta_source(node: Any) -> DeltaTableSource | None:
    source = getattr(node, "source", None)
    return source if isinstance(source, DeltaTableSource) else None


def _delta_plan(node: Any) -> _Plan:
    source = _delta_source(node)
    table = node._table()  # read at the run's pinned version
    config = {**source.to_config(), "version": source.version}
    if "://" not in config["path"]:  # read back from any working directory
        config["path"] = os.path.abspath(config["path"])
    identity = node.content_hash().to_string()
    version = _version_of("delta", json.dumps([identity, source.path, source.version]).encode())
    return _Plan("delta", version, table.num_rows, {"source": config})


def _copied(node: Any, table: pa.Table, fingerprint: str | None = None) -> _Plan:
    layout = node.layout
    kept = [*layout.tag_columns, *layout.system_tag_columns, *layout.packet_columns, *layout.meta_columns]
    derived = _derivable_source_columns(node, table)
    rows = table.select([c for c in table.column_names if c in kept or (c in layout.source_columns and c not in derived)])
    return _Plan("rows", data_version(table), table.num_rows, {"derived_source_columns": derived}, rows=rows, fingerprint=fingerprint)


def _known_copy(node: Any) -> _Plan | None:
    """A live source's rows read from a file whose fingerprint a stored copy already has: that
    copy's version, found without hashing the rows; ``None`` (copy them) otherwise. A copy of
    rows not found here is stored with the fingerprint, so the next unchanged read finds it."""
    source = getattr(node, "source", None)
    fingerprint = source.read_fingerprint() if getattr(node, "kind", None) == "source" and isinstance(source, LiveSource) else None
    if fingerprint is None:
        return None
    table = node._table()
    found = node.database.get_records_by_ids(_fingerprints_path(snapshot_path(node)), [fingerprint])
    if found is not None and found.num_rows and found["row_count"][0].as_py() == table.num_rows:
        return _Plan("rows", found["data_version"][0].as_py(), table.num_rows, {})
    return _copied(node, table, fingerprint)


def _fingerprints_path(base: RecordPath) -> RecordPath:
    """The table of file fingerprints -> data version of the copy read from that file."""
    return (*base, "fingerprints")


def _derivable_source_columns(node: Any, table: pa.Table) -> dict[str, list[str]]:
    """Source-info columns of a root source's rows that are ``<source id>::<record id>::<col>``
    — rebuilt from the system tags on read instead of stored: ``{column: [source id column,
    record id column]}``."""
    source = getattr(node, "source", None)
    layout = node.layout
    if getattr(node, "kind", None) != "source" or getattr(source, "system_tag_hash", None) is None:
        return {}
    h = source.system_tag_hash
    sid, rid = f"_tag_source_id::{h}", f"_tag_record_id::{h}"
    if sid not in layout.system_tag_columns or rid not in layout.system_tag_columns:
        return {}
    return {source_column(c): [sid, rid] for c in layout.packet_columns if source_column(c) in table.column_names}


def _database_ref(database: ArrowDatabase) -> dict[str, Any] | None:
    config = database.to_config()
    return config if config.get("type") == "delta" else None


def _save(node: Any, plan: _Plan) -> Snapshot:
    database: ArrowDatabase = node.database
    label = str(getattr(node, "label", None) or "node")
    layout = node.layout
    base = snapshot_path(node)
    rows_path, versions_path = _paths(base)
    stored = not has_snapshot(database, base, plan.version)
    if stored:
        version_scalar = pa.scalar(plan.version, pa.large_string())
        if plan.rows is not None and plan.rows.num_rows:
            n = plan.rows.num_rows
            positions = pa.array(range(n), pa.int64())
            ids = pc.binary_join_element_wise(version_scalar, positions.cast(pa.large_string()), pa.scalar(":", pa.large_string()))
            rows = plan.rows.append_column(pa.field(_VERSION_COLUMN, pa.large_string(), False), pa.repeat(version_scalar, n))
            rows = rows.append_column(pa.field(_POSITION_COLUMN, pa.int64(), False), positions)
            database.add_records(rows_path, rows.append_column(pa.field(RECORD_ID_COLUMN, pa.large_string(), False), ids), flush=True)
        record = pa.table(
            {
                RECORD_ID_COLUMN: pa.array([plan.version], pa.large_string()),
                "label": pa.array([label], pa.large_string()),
                "kind": pa.array([plan.kind], pa.large_string()),
                "row_count": pa.array([plan.row_count], pa.int64()),
                "tag_columns": pa.array([json.dumps(list(layout.tag_columns))], pa.large_string()),
                "arrow_schema": pa.array([layout.schema.serialize().to_pybytes()], pa.large_binary()),
                "recipe": pa.array([json.dumps(plan.recipe, sort_keys=True)], pa.large_string()),
                "saved_at": pa.array([datetime.datetime.now(datetime.UTC).replace(tzinfo=None)], pa.timestamp("us")),
            }
        )
        database.add_records(versions_path, record, flush=True)  # last: the snapshot now exists
    if plan.fingerprint is not None:  # (also for a copy stored before: found by it from now on)
        known = {RECORD_ID_COLUMN: [plan.fingerprint], "data_version": [plan.version], "row_count": [plan.row_count]}
        database.add_records(_fingerprints_path(base), pa.table(known), flush=True)
    return Snapshot(
        label=label,
        path=base,
        data_version=plan.version,
        row_count=plan.row_count,
        tag_columns=tuple(layout.tag_columns),
        manifest_version=database.table_version(versions_path),
        stored=stored,
    )


# -- loading --------------------------------------------------------------------------------


def load_snapshot(
    database: ArrowDatabase, path: Sequence[str], version: str, *, layout: StreamLayout | None = None
) -> TableStream:
    """The rows of snapshot ``version`` under ``path``, in their original order, as a stream with
    the exact schema they were saved with (or conformed to ``layout``).

    Raises :class:`~orcapod_core.errors.NotMaterializedError` when the snapshot is not stored and
    :class:`~orcapod_core.errors.CorruptStoreError` when what it references is missing.
    """
    base = validate_record_path(tuple(path))
    record = _version_record(database, base, version)
    saved = StreamLayout(pa.ipc.read_schema(pa.py_buffer(record["arrow_schema"])), tuple(json.loads(record["tag_columns"])))
    table = _rows(database, base, version, record, saved)
    if layout is not None:
        try:
            table = conform(table, layout)
        except SchemaMismatchError as exc:
            raise SchemaMismatchError(f"snapshot {version!r} of {'/'.join(base)!r} does not fit the node's current schema: {exc}") from exc
        saved = layout
    stream = TableStream(table, saved.tag_columns, layout=saved)
    stream.snapshot_ref = (base, version, record)  # type: ignore[attr-defined]  (pinned_outputs keeps it)
    return stream


def _version_record(database: ArrowDatabase, base: RecordPath, version: str) -> dict[str, Any]:
    found = database.get_records_by_ids(_paths(base)[1], [version])
    if found is None or found.num_rows == 0:
        raise NotMaterializedError(f"snapshot {version!r} of {'/'.join(base)!r} is not in the store")
    record = found.slice(0, 1).to_pylist()[0]
    if not record.get("recipe"):
        raise CorruptStoreError(
            f"snapshot {version!r} of {'/'.join(base)!r} was written by an earlier orcapod (row copies); materialize the "
            f"asset again to pin it the current way"
        )
    return record


def _rows(database: ArrowDatabase, base: RecordPath, version: str, record: Mapping[str, Any], layout: StreamLayout) -> pa.Table:
    kind, n, recipe = record["kind"], record["row_count"], json.loads(record["recipe"])
    where = f"snapshot {version!r} of {'/'.join(base)!r}"
    if n == 0:
        return layout.schema.empty_table()
    if kind == "function":
        return _function_rows(database, recipe, layout, where)
    if kind == "operator":
        return _operator_rows(database, recipe, layout, where)
    if kind == "delta":
        return _delta_rows(database, recipe, layout, where)
    return _copied_rows(database, base, version, n, recipe, layout, where)


def _positioned(table: pa.Table | None, version_rows: int, where: str, what: str) -> pa.Table:
    if table is None or table.num_rows != version_rows:
        got = 0 if table is None else table.num_rows
        raise CorruptStoreError(f"{where} lists {got} of its {version_rows} {what}")
    return table.take(pc.sort_indices(table[_POSITION_COLUMN]))


def _function_rows(database: ArrowDatabase, recipe: Mapping[str, Any], layout: StreamLayout, where: str) -> pa.Table:
    stream = _pinned_inputs(database, recipe["inputs"])
    table, in_layout = stream._table(), stream.layout
    read = recipe.get("input_columns")  # (absent: the function reads every packet column)
    digests = stream.packet_hashes() if read is None else hash_rows(table, read)
    hexes = digests_to_hex(digests)
    if recipe.get("missing_packets"):
        keep = pc.invert(is_in(hexes, pa.array(recipe["missing_packets"], pa.large_string())))
        table, hexes = table.filter(keep), hexes.filter(keep)
    result_db = database if recipe.get("result_database") is None else database_from_config(recipe["result_database"])
    keys = list(recipe["output_keys"])
    found = ResultCache(result_db, tuple(recipe["results"])).lookup(pc.unique(hexes), columns=keys)
    at = pc.index_in(hexes, value_set=found[PACKET_HASH_COLUMN].combine_chunks()) if found.num_rows else pa.nulls(len(hexes), pa.int32())
    if at.null_count:
        raise CorruptStoreError(f"{where}: the results of {at.null_count} of its rows are missing from {'/'.join(recipe['results'])!r}")
    outputs = found.take(at)
    out = pod_output_table(table, in_layout, outputs, hexes, recipe["uri"], keys, bool(recipe.get("passthrough")))
    return conform(out, layout)


def _pinned_inputs(database: ArrowDatabase, refs: Sequence[Mapping[str, Any]]) -> Stream:
    """A node's inputs rebuilt from their snapshots, with their identities; several are joined
    as the node joins them."""
    inputs = []
    for ref in refs:
        stream = load_snapshot(database, ref["path"], ref["data_version"])
        inputs.append(_PinnedInput(stream._table(), stream.layout, ref["content_hash"], ref["pipeline_hash"]))
    if len(inputs) == 1:
        return inputs[0]
    with untracked():
        return Join()(*inputs)


class _PinnedInput(TableStream):
    """An operator input rebuilt from its snapshot, with the identity it had (so a join names
    its system tags as it did)."""

    def __init__(self, table: pa.Table, layout: StreamLayout, content: str, pipeline: str):
        super().__init__(table, layout.tag_columns, layout=layout)
        self._saved = (ContentHash.from_string(content), ContentHash.from_string(pipeline))

    def _identity_hashes(self) -> tuple[ContentHash, ContentHash]:
        return self._saved


def _operator_rows(database: ArrowDatabase, recipe: Mapping[str, Any], layout: StreamLayout, where: str) -> pa.Table:
    module, _, qualname = recipe["class"].partition(":")
    try:
        cls: Any = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except Exception as exc:
        raise CorruptStoreError(f"{where}: cannot import its operator {recipe['class']!r} ({type(exc).__name__}: {exc})") from exc
    if not (isinstance(cls, type) and issubclass(cls, Operator)):
        raise CorruptStoreError(f"{where}: {recipe['class']!r} is not an orcapod Operator")
    inputs = []
    for ref in recipe["inputs"]:
        stream = load_snapshot(database, ref["path"], ref["data_version"])
        inputs.append(_PinnedInput(stream._table(), stream.layout, ref["content_hash"], ref["pipeline_hash"]))
    with untracked():
        return conform(cls.from_config(recipe["config"]).compute(*inputs), layout)


def _delta_rows(database: ArrowDatabase, recipe: Mapping[str, Any], layout: StreamLayout, where: str) -> pa.Table:
    options = getattr(database, "storage_options", None)
    try:
        source = file_source_from_config(recipe["source"], options)
    except Exception as exc:
        raise CorruptStoreError(f"{where}: cannot open its source table {recipe['source'].get('path')!r} at version "
                                f"{recipe['source'].get('version')} ({type(exc).__name__}: {exc})") from exc
    return conform(source._table(), layout)


def _copied_rows(
    database: ArrowDatabase, base: RecordPath, version: str, n: int, recipe: Mapping[str, Any], layout: StreamLayout, where: str
) -> pa.Table:
    rows = _positioned(database.get_records_where(_paths(base)[0], {_VERSION_COLUMN: version}), n, where, "rows")
    sep = pa.scalar("::", pa.large_string())
    for column, (sid, rid) in (recipe.get("derived_source_columns") or {}).items():
        name = pa.scalar(column[len("_source_"):], pa.large_string())
        rows = rows.append_column(column, pc.binary_join_element_wise(rows[sid], rows[rid], name, sep))
    return conform(rows.select([c for c in layout.schema.names]), layout)


# -- pinning -------------------------------------------------------------------------------


@contextlib.contextmanager
def pinned_outputs(pins: Mapping[Stream, Stream | pa.Table]) -> Iterator[None]:
    """Within the block, each node in ``pins`` serves the given rows as its output (e.g. a
    loaded snapshot), so nodes run downstream of it read those rows instead of recomputing or
    re-reading it; on exit every node serves what it served before.

    >>> with pinned_outputs({pipeline.scored: stream}):                # doctest: +SKIP
    ...     pipeline.run(nodes=["survey"], include_upstream=False)
    """
    keys = ("_cached_table", "_cached_packet_hashes", "_output_entry_ids", "_snapshot", "_pinned", "_pinned_snapshot")
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
            before.append((node, {k: node.__dict__[k] for k in keys if k in node.__dict__}))
            node._set_output(table)  # type: ignore[attr-defined]
            node.__dict__["_pinned"] = True  # a run's refresh of its sources leaves it alone
            ref = getattr(rows, "snapshot_ref", None)
            if ref is not None:  # its snapshot is the one it was read from
                base, version, record = ref
                node.__dict__["_pinned_snapshot"] = Snapshot(
                    label=str(record.get("label")),
                    path=tuple(base),
                    data_version=version,
                    row_count=table.num_rows,
                    tag_columns=tuple(json.loads(record["tag_columns"])),
                    manifest_version=None,
                    stored=False,
                )
        yield
    finally:
        for node, cached in reversed(before):
            for key in keys:
                node.__dict__.pop(key, None)
            node.__dict__.update(cached)

