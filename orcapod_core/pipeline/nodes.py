"""Compiled pipeline nodes: SourceNode, FunctionNode, OperatorNode.

A node is a stream (same API as any stream) bound to the pipeline's databases. The
orchestrator drives it through ``execute``; reading a node that was not executed in this
process serves what is stored and never computes new function results.

**FunctionNode** (orcapod PR #84). For the current input it computes, in one columnar pass,
each row's input packet hash and its **entry id** = hash(tag + system tags + input packet
hash + node content hash). One anti-join of the entry ids against the stored entry-id
column splits the input into "recorded" and "new"; one result-cache lookup over the distinct
packet hashes splits what is left into "result exists" and "compute". Only the "compute"
packets become Python calls (each distinct packet once); results and pipeline records are
written in batches during the run, in step: a pipeline record is committed right after the
result batch it links to (never before), so a killed process loses at most the current
batch of both, and no stored pipeline record points to a missing result. Pipeline records
hold the tag, system tags, the entry id, the input packet hash (the link to the result
record), the input packets' source info and whether the packet was computed in that run.

A run may span several ``_assemble`` calls (the async orchestrator assembles a node batch by
batch as its input arrives); its :class:`_NodeRun` reads the stored entry ids and results
once and answers later batches in memory, so a batch never costs time proportional to the
stored tables.

**OperatorNode** cache modes: ``CacheMode.OFF`` (compute, store nothing), ``LOG`` (compute
and append output rows deduplicated by row hash), ``REPLAY`` (serve stored rows).
"""

from __future__ import annotations

import enum
import json
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard, runtime_checkable

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from orcapod_core.columns import source_column
from orcapod_core.databases import RECORD_ID_COLUMN, ArrowDatabase
from orcapod_core.datagrams import Packet, Tag
from orcapod_core.function_pods import FunctionPod, FunctionPodStream
from orcapod_core.hashing import ContentHash, digests_to_hex, hash_rows
from orcapod_core.keysets import distinct, index_in, is_in
from orcapod_core.operators import Join, Operator
from orcapod_core.operators.base import OperatorStream
from orcapod_core.pipeline.key_index import KeyIndex
from orcapod_core.pipeline.observers import ExecutionObserver, NodeStats, NoOpObserver
from orcapod_core.result_cache import PACKET_HASH_COLUMN, CachedPacketFunction, ResultCache
from orcapod_core.sources import Source
from orcapod_core.streams import Stream, StreamLayout, TableStream, conform
from orcapod_core.tracking import untracked

if TYPE_CHECKING:
    from orcapod_core.executors import PythonFunctionExecutor

__all__ = [
    "CacheMode",
    "LoadStatus",
    "Node",
    "SourceNode",
    "FunctionNode",
    "OperatorNode",
    "SourceNodeProtocol",
    "FunctionNodeProtocol",
    "OperatorNodeProtocol",
    "is_source_node",
    "is_function_node",
    "is_operator_node",
    "ENTRY_ID_COLUMN",
    "COMPUTED_COLUMN",
    "INPUT_SOURCE_COLUMN",
    "RUN_ID_COLUMN",
]

ENTRY_ID_COLUMN = RECORD_ID_COLUMN
COMPUTED_COLUMN = "__computed"
INPUT_SOURCE_COLUMN = "__input_source_info"
RUN_ID_COLUMN = "__run_id"
NODE_CONTENT_COLUMN = "__node_content_hash"  # operator logs: which input a row was logged for
_INPUT_SOURCE_TYPE = pa.map_(pa.field("key", pa.large_string(), False), pa.field("value", pa.large_string(), True))


class CacheMode(enum.Enum):
    """What an OperatorNode stores: nothing, its output rows, or replays stored rows."""

    OFF = "off"
    LOG = "log"
    REPLAY = "replay"


class LoadStatus(enum.Enum):
    """How much of a node is usable (relevant for pipelines loaded from their saved form).

    * ``FULL`` — everything works: reads serve stored rows, runs compute what is missing.
    * ``READ_ONLY`` — a function node whose code could not be loaded (a
      :class:`~orcapod_core.packet_function_proxy.PacketFunctionProxy`): it serves stored
      results; computing a new packet fails with ``PacketFunctionUnavailableError``.
    * ``CACHE_ONLY`` — a node below an unavailable source: its input is the stored snapshot of
      that source, so it serves the results stored for it and can never see new data.
    * ``UNAVAILABLE`` — a source that cannot be rebuilt from config (in-memory data); it serves
      the rows stored when the pipeline was saved.
    """

    FULL = "full"
    READ_ONLY = "read_only"
    CACHE_ONLY = "cache_only"
    UNAVAILABLE = "unavailable"


class Node(Stream):
    """Base of compiled nodes: a labelled stream with upstream nodes and a storage location."""

    kind: str = "node"
    #: Name of the pipeline that compiled this node (set by ``Pipeline.compile``).
    pipeline_name: tuple[str, ...] = ()
    #: The pipeline that compiled this node (set by ``Pipeline.compile``).
    pipeline: Any = None

    def __init__(self, label: str, upstream_nodes: Sequence[Node], database: ArrowDatabase, record_path: tuple[str, ...]):
        self.label = label
        self.upstream_nodes = tuple(upstream_nodes)
        self.database = database
        self.record_path = record_path
        self.last_stats: NodeStats | None = None

    @property
    def upstreams(self) -> tuple[Stream, ...]:
        return self.upstream_nodes

    @property
    def load_status(self) -> LoadStatus:
        """How usable this node is (see :class:`LoadStatus`); ``FULL`` unless loaded from a
        saved pipeline with missing code or data."""
        if any(u.load_status in (LoadStatus.UNAVAILABLE, LoadStatus.CACHE_ONLY) for u in self.upstream_nodes):
            return LoadStatus.CACHE_ONLY
        return self._own_load_status()

    def _own_load_status(self) -> LoadStatus:
        return LoadStatus.FULL

    def _set_output(self, table: pa.Table) -> None:
        """Make ``table`` (already in this node's layout) the node's current rows."""
        self.__dict__["_cached_table"] = table
        self.__dict__.pop("_cached_packet_hashes", None)

    @property
    def pinned(self) -> bool:
        """True inside :func:`~orcapod_core.pipeline.snapshots.pinned_outputs` for this node:
        it serves the pinned rows, and :meth:`refresh` leaves them alone."""
        return bool(self.__dict__.get("_pinned"))

    def refresh(self) -> None:
        """Forget the rows read or computed so far: the next read takes them from the current
        data and store (a pinned node keeps its pinned rows)."""
        if self.pinned:
            return
        self.__dict__.pop("_cached_table", None)
        self.__dict__.pop("_cached_packet_hashes", None)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label!r}>"


# --------------------------------------------------------------------------------------
# Source nodes
# --------------------------------------------------------------------------------------


class SourceNode(Node):
    """A source (or any stream entering the pipeline from outside) as a node."""

    kind = "source"

    def __init__(self, stream: Stream, label: str, database: ArrowDatabase, record_path: tuple[str, ...]):
        super().__init__(label, (), database, record_path)
        self.stream = stream

    @property
    def source(self) -> Stream:
        return self.stream

    def _own_load_status(self) -> LoadStatus:
        # A loaded source that could not be rebuilt serves its stored snapshot.
        return LoadStatus.UNAVAILABLE if getattr(self.stream, "rebuilt", True) is False else LoadStatus.FULL

    @property
    def producer(self) -> Any:
        return self.stream

    def _predict_layout(self) -> StreamLayout:
        return self.stream.layout

    def _identity_hashes(self) -> tuple[ContentHash, ContentHash]:
        return self.stream.content_hash(), self.stream.pipeline_hash()

    def _compute_table(self) -> pa.Table:
        return self.stream._table()

    def refresh(self) -> None:
        """Forget the rows read so far; a source over files or tables (``CSVSource``,
        ``DeltaTableSource``, a derived source) reads its current content next time."""
        if self.pinned:
            return
        refresh = getattr(self.stream, "refresh", None)
        if refresh is not None:
            refresh()
        super().refresh()

    def execute(self, observer: ExecutionObserver | None = None) -> Stream:
        """Read the source; returns this node with its rows loaded."""
        observer = observer or NoOpObserver()
        start = time.perf_counter()
        table = self._table()
        observer.on_node_start(self, table.num_rows)
        stats = NodeStats(self.label, self.kind, total=table.num_rows, duration_s=time.perf_counter() - start)
        self.last_stats = stats
        observer.on_node_end(self, stats)
        return self

    def as_source(self) -> Stream:
        return self.stream


# --------------------------------------------------------------------------------------
# Operator nodes
# --------------------------------------------------------------------------------------


class OperatorNode(Node):
    """An operator applied to upstream nodes."""

    kind = "operator"

    def __init__(
        self,
        operator: Operator,
        upstream_nodes: Sequence[Node],
        label: str,
        database: ArrowDatabase,
        record_path: tuple[str, ...],
        cache_mode: CacheMode = CacheMode.OFF,
    ):
        super().__init__(label, upstream_nodes, database, record_path)
        self.operator = operator
        self.cache_mode = CacheMode(cache_mode)
        self._stream = OperatorStream(operator, tuple(upstream_nodes), label=label)

    @property
    def producer(self) -> Operator:
        return self.operator

    def _predict_layout(self) -> StreamLayout:
        return self._stream.layout

    def _identity_hashes(self) -> tuple[ContentHash, ContentHash]:
        return self._stream.content_hash(), self._stream.pipeline_hash()

    def identity_hash(self) -> ContentHash:
        """The operator's identity (class + config): the node's code version."""
        from orcapod_core.hashing import hash_object

        return hash_object(self.operator.identity_structure())

    def _compute_table(self) -> pa.Table:
        if self.cache_mode is CacheMode.REPLAY:
            return self._stored_rows()
        return self.operator.compute(*self.upstream_nodes)

    def _stored_rows(self) -> pa.Table:
        # The log table is shared by every input of this shape (its path is keyed by the
        # pipeline hash): replay only the rows logged for this node's current input.
        if not self.database.has_table(self.record_path):
            return self.layout.schema.empty_table()
        stored = self.database.get_records_where(self.record_path, {NODE_CONTENT_COLUMN: self.content_hash().to_string()})
        if stored is None:
            return self.layout.schema.empty_table()
        return conform(stored.select(self.layout.schema.names), self.layout)

    def execute(self, *inputs: Stream, observer: ExecutionObserver | None = None) -> Stream:
        """Compute the operator on ``inputs`` (or replay stored rows); LOG stores new rows."""
        observer = observer or NoOpObserver()
        start = time.perf_counter()
        observer.on_node_start(self, sum(len(s) for s in inputs))
        if self.cache_mode is CacheMode.REPLAY:
            table = self._stored_rows()
        else:
            table = conform(self.operator.compute(*(inputs or self.upstream_nodes)), self.layout)
            if self.cache_mode is CacheMode.LOG and table.num_rows:
                content = pa.repeat(pa.scalar(self.content_hash().to_string(), pa.large_string()), table.num_rows)
                logged = table.append_column(pa.field(NODE_CONTENT_COLUMN, pa.large_string(), False), content)
                ids = digests_to_hex(hash_rows(logged))  # row + input identity: dedup per input
                self.database.add_records(
                    self.record_path, logged.append_column(pa.field(RECORD_ID_COLUMN, pa.large_string(), False), ids)
                )
                self.database.flush_path(self.record_path)
        self._set_output(table)
        stats = NodeStats(self.label, self.kind, total=table.num_rows, duration_s=time.perf_counter() - start)
        self.last_stats = stats
        observer.on_node_end(self, stats)
        return self

    def as_source(self) -> Stream:
        from orcapod_core.pipeline.derived import DerivedSource

        return DerivedSource(self)


# --------------------------------------------------------------------------------------
# Function nodes
# --------------------------------------------------------------------------------------


class FunctionNode(Node):
    """A function pod applied to upstream nodes (joined first when there are several),
    memoized twice: per row by entry id (pipeline records) and per packet by input packet
    hash (the shared result cache)."""

    kind = "function"
    # Packets go to the executor in chunks — the unit of progress reports, observer events and
    # result writes. Chunks start small and grow while they finish fast (cheap functions pay
    # little per-chunk overhead), and shrink when slow (expensive functions still report often).
    min_chunk, max_chunk, target_chunk_s = 16, 16_384, 0.5

    def __init__(
        self,
        pod: FunctionPod,
        upstream_nodes: Sequence[Node],
        label: str,
        database: ArrowDatabase,
        record_path: tuple[str, ...],
        result_cache: ResultCache,
    ):
        super().__init__(label, upstream_nodes, database, record_path)
        self.pod = pod
        self.result_cache = result_cache
        self._stream = FunctionPodStream(pod, self._joined(self.upstream_nodes), inputs=self.upstream_nodes, label=label)

    # -- structure --------------------------------------------------------------------
    @staticmethod
    def _joined(inputs: Sequence[Stream]) -> Stream:
        if len(inputs) == 1:
            return inputs[0]
        with untracked():
            return Join()(*inputs)

    @property
    def packet_function(self) -> Any:
        return self.pod.packet_function

    @property
    def producer(self) -> FunctionPod:
        return self.pod

    def _own_load_status(self) -> LoadStatus:
        return LoadStatus.READ_ONLY if getattr(self.packet_function, "is_bound", True) is False else LoadStatus.FULL

    def identity_hash(self) -> ContentHash:
        """The function's identity: the node's code version."""
        return self.pod.identity_hash()

    def _predict_layout(self) -> StreamLayout:
        return self._stream.layout

    def _identity_hashes(self) -> tuple[ContentHash, ContentHash]:
        return self._stream.content_hash(), self._stream.pipeline_hash()

    # -- reading without computing ------------------------------------------------------
    def _compute_table(self) -> pa.Table:
        """The stored outputs for the current input: never computes new results."""
        table, _ = self._assemble(self._joined(self.upstream_nodes), compute=False)
        return table

    def join_inputs(self, inputs: Sequence[Stream]) -> Stream:
        """The stream this node reads from its upstream outputs (joined when several)."""
        return self._joined(inputs)

    # -- orchestrator-facing ------------------------------------------------------------
    def execute(
        self,
        input_stream: Stream | None = None,
        observer: ExecutionObserver | None = None,
        *,
        error_policy: str = "continue",
        executor: PythonFunctionExecutor | None = None,
        run_id: str | None = None,
    ) -> Stream:
        """Bring the node up to date for ``input_stream`` (default: the join of its upstream
        nodes' current outputs): compute what is missing, store it, and return this node with
        its current rows."""
        if error_policy not in ("continue", "fail_fast"):
            raise ValueError(f"error_policy must be 'continue' or 'fail_fast', got {error_policy!r}")
        stream = self._joined(self.upstream_nodes) if input_stream is None else input_stream
        table, stats = self._assemble(
            stream, compute=True, observer=observer or NoOpObserver(), error_policy=error_policy, executor=executor, run_id=run_id
        )
        self._set_output(table)
        return self

    def execute_packet(self, tag: Tag, packet: Packet, observer: ExecutionObserver | None = None) -> Packet | None:
        """Compute (or fetch) one packet through the cache and record it; ``None`` if it failed."""
        tag_table = tag.as_table(columns={"system_tags": True})
        packet_table = packet.as_table(columns={"source": True})
        row = pa.Table.from_arrays(
            [*tag_table.columns, *packet_table.columns], names=[*tag_table.column_names, *packet_table.column_names]
        )
        layout = self._stream.input_stream.layout
        stream = TableStream(row, layout.tag_columns, layout=layout)
        self._assemble(stream, compute=True, observer=observer or NoOpObserver(), error_policy="continue")
        out, _ = self._assemble(stream, compute=False)
        if out.num_rows == 0:
            return None
        keys = list(self.packet_function.output_keys)
        values = out.select(keys).to_pylist(maps_as_pydicts="strict")[0]
        return Packet(values, hidden={source_column(k): out.column(source_column(k))[0].as_py() for k in keys})

    def process_packet(self, tag: Tag, packet: Packet) -> dict[str, Any]:
        """Pure computation of one packet (no cache, no records)."""
        return self.packet_function.call(dict(packet))

    # -- the engine -------------------------------------------------------------------
    def _entry_ids(self, table: pa.Table, layout: StreamLayout, packet_hashes: pa.Array) -> pa.Array:
        """Entry id per row = hash(tag + system tags + input packet hash + node content hash)."""
        parts = table.select([*layout.tag_columns, *layout.system_tag_columns])
        n = table.num_rows
        parts = parts.append_column("__packet_hash", packet_hashes.cast(pa.large_binary()))
        node_hash = pa.scalar(self.content_hash().digest, pa.large_binary())
        parts = parts.append_column("__node_hash", pa.repeat(node_hash, n))
        return digests_to_hex(hash_rows(parts))

    def _assemble(
        self,
        stream: Stream,
        *,
        compute: bool,
        observer: ExecutionObserver | None = None,
        error_policy: str = "continue",
        executor: PythonFunctionExecutor | None = None,
        run_id: str | None = None,
        report: bool = True,
        run_state: _NodeRun | None = None,
    ) -> tuple[pa.Table, NodeStats]:
        # ``run_state``: a run spread over several calls (the async orchestrator assembles a
        # node batch by batch; see ``_begin_run``). Rows whose packets earlier batches computed
        # count as computed, as when the whole input is assembled at once; the caller commits
        # with ``run_state.finish()``. Without it this call is the whole run: it reads the
        # store once and commits what it wrote before returning (or raising).
        start = time.perf_counter()
        observer = observer or NoOpObserver()
        layout = stream.layout
        if layout.schema != self._stream.input_stream.layout.schema:
            from orcapod_core.errors import SchemaMismatchError

            raise SchemaMismatchError(
                f"node {self.label!r}: input schema {layout.schema} differs from the compiled input schema "
                f"{self._stream.input_stream.layout.schema}"
            )
        table = stream._table()
        n = table.num_rows
        if compute and report:
            observer.on_node_start(self, n)
        state = run_state if run_state is not None else _NodeRun(self, run_id)
        try:
            return self._assemble_rows(
                stream, table, state, compute=compute, observer=observer, error_policy=error_policy, executor=executor,
                report=report, start=start,
            )
        except BaseException:
            if compute and run_state is None:  # commit what was computed before the error
                state.finish()
            raise

    def _assemble_rows(
        self,
        stream: Stream,
        table: pa.Table,
        state: _NodeRun,
        *,
        compute: bool,
        observer: ExecutionObserver,
        error_policy: str,
        executor: PythonFunctionExecutor | None,
        report: bool,
        start: float,
    ) -> tuple[pa.Table, NodeStats]:
        layout = stream.layout
        n = table.num_rows
        state.batches += 1
        stats = NodeStats(self.label, self.kind, total=n)
        pf = self.packet_function
        keys = list(pf.output_keys)

        digests = stream.packet_hashes()
        hexes = digests_to_hex(digests)
        # Phase 1: which rows are already recorded (the entry-id column, read once per run;
        # only needed to compute and record, not to serve stored rows).
        entry_ids = self._entry_ids(table, layout, digests) if n and compute else pa.array([], pa.large_string())
        recorded = state.recorded(entry_ids)

        # Phase 2: one result lookup for the distinct packet hashes of all rows; per row, the
        # position of its stored result (null: to compute).
        found = state.lookup(distinct(hexes))
        position = index_in(hexes, found.column(PACKET_HASH_COLUMN))
        stored = pc.is_valid(position)
        missing = pc.unique(hexes.filter(pc.invert(stored)))  # in order of first appearance
        if state.failed_hashes and len(missing):  # failed earlier in this run: not called again
            missing = missing.filter(pc.invert(is_in(missing, pa.array(sorted(state.failed_hashes), pa.large_string()))))

        computed_tables: list[pa.Table] = []
        computed_hashes: list[pa.Array] = []
        failed_hashes: set[str] = set()
        first_error: BaseException | None = None
        if compute and n:
            # Rows served from stored results: recorded with the next result commit.
            served = pc.indices_nonzero(pc.and_(pc.invert(recorded), stored))
            state.stage(self._entry_records(table, layout, entry_ids, hexes, served, state.computed_mask(hexes.take(served)), state.run_id))
        if compute and len(missing):
            first_error = self._compute_missing(
                stream, table, hexes, missing, recorded, entry_ids, state, observer, error_policy, executor,
                computed_tables, computed_hashes, failed_hashes, stats,
            )

        # Outputs per row: stored results + what was computed now.
        results = found
        if computed_tables:
            result_tables = [found] if found.num_rows else []
            for h, t in zip(computed_hashes, computed_tables):
                result_tables.append(t.select(keys).add_column(0, pa.field(PACKET_HASH_COLUMN, pa.large_string(), False), h).cast(self._result_schema()))
            results = pa.concat_tables(result_tables)
            position = index_in(hexes, results.column(PACKET_HASH_COLUMN))
        available = pc.is_valid(position)
        rows = pc.indices_nonzero(available)
        everything = len(rows) == n  # the usual case: every row has its output (no copy of the rows)
        out_layout = self.layout
        out = table.select([*layout.tag_columns, *layout.system_tag_columns])
        outputs = results.select(keys).take(position if everything else position.filter(available))
        uri = pa.scalar(pf.uri, pa.large_string())
        sep = pa.scalar("::", pa.large_string())
        row_hashes = hexes
        if not everything:
            out, row_hashes = out.take(rows), hexes.take(rows)
        for f in out_layout.fields(out_layout.packet_columns):
            out = out.append_column(f, outputs.column(f.name))
        for k in keys:
            out = out.append_column(
                pa.field(source_column(k), pa.large_string(), False),
                pc.binary_join_element_wise(uri, row_hashes, pa.scalar(k, pa.large_string()), sep),
            )

        if compute:
            # Rows whose packet was computed in this run (by this batch or an earlier one).
            # Counts are calls, not rows: a packet computed now counts once (its other rows, and
            # rows of packets an earlier batch of the run computed, are cached); a packet that
            # raised counts once as failed.
            stats.computed = sum(len(h) for h in computed_hashes)
            stats.failed = len(failed_hashes)
            stats.cached = len(rows) - stats.computed
            state.failed_hashes |= failed_hashes
            if not state.spans_calls:  # this call is the whole run: commit results, then records
                state.finish()
            stats.duration_s = time.perf_counter() - start
            if report:
                self.last_stats = stats
                observer.on_node_end(self, stats)
            if first_error is not None and error_policy == "fail_fast":
                raise first_error
        return conform(out, out_layout), stats

    def _result_schema(self) -> pa.Schema:
        pf = self.packet_function
        return pa.schema([pa.field(PACKET_HASH_COLUMN, pa.large_string(), False), *pf.output_arrow_schema])

    def _compute_missing(
        self,
        stream: Stream,
        table: pa.Table,
        hexes: pa.Array,
        missing: pa.Array,
        recorded: pa.Array,
        entry_ids: pa.Array,
        state: _NodeRun,
        observer: ExecutionObserver,
        error_policy: str,
        executor: PythonFunctionExecutor | None,
        computed_tables: list[pa.Table],
        computed_hashes: list[pa.Array],
        failed_hashes: set[str],
        stats: NodeStats,
    ) -> BaseException | None:
        """Compute each missing distinct packet once, chunk by chunk, storing as we go: each
        chunk's results go to the result cache and its rows' pipeline records to ``state``,
        which commits them once those results are committed."""
        layout = stream.layout
        pf = self.packet_function
        cached_fn = CachedPacketFunction(pf, self.result_cache)
        first_rows = index_in(missing, hexes)
        packets = table.select(list(layout.packet_columns)).take(first_rows)
        # Rows to record as their packets get computed (not recorded yet), ordered by their
        # packet's position in ``missing`` (the compute order): a chunk's rows are one slice.
        position = index_in(hexes, missing)
        needs_record = pc.and_(pc.is_valid(position), pc.invert(recorded))
        to_record = pl.DataFrame(
            {"row": pc.indices_nonzero(needs_record).cast(pa.int64()), "pos": position.filter(needs_record).cast(pa.int64())}
        ).sort("pos")
        wants_events = getattr(observer, "wants_packet_events", True)
        capture = getattr(observer, "wants_captured_output", False)
        done = 0
        total = len(missing)
        state.progress_total += total
        size = self.min_chunk
        while done < total:
            started = time.perf_counter()
            chunk = packets.slice(done, size)
            chunk_hashes = missing.slice(done, size)
            chunk_rows = first_rows.slice(done, size)
            tags = packets_objs = None
            if wants_events:
                tags, packets_objs = self._objects(table, layout, chunk_rows)
                for t, p in zip(tags, packets_objs):
                    observer.on_packet_start(self, t, p)
            result = cached_fn._pf.call_batch(
                chunk, fail_fast=error_policy == "fail_fast", executor=executor, capture=capture
            )
            if result.table.num_rows:
                ok = pa.array(list(result.rows), pa.int64())
                ok_hashes = chunk_hashes.take(ok)
                cached_fn._store(ok_hashes, result.table, executor)
                computed_tables.append(result.table)
                computed_hashes.append(ok_hashes)
                state.note_computed(ok_hashes, result.table)
                lo = to_record["pos"].search_sorted(done, side="left")
                hi = to_record["pos"].search_sorted(done + len(chunk), side="left")
                chunk_records = to_record.slice(lo, hi - lo)
                if len(result.rows) < len(chunk):  # failed packets get no record
                    chunk_records = chunk_records.filter(pl.col("pos").is_in([done + i for i in result.rows]))
                rows = chunk_records["row"].to_arrow()
                state.stage(self._entry_records(table, layout, entry_ids, hexes, rows, True, state.run_id))
            state.release()  # commits the staged records if the results they link to are committed
            if wants_events:
                outputs = result.table.to_pylist(maps_as_pydicts="strict")
                for j, i in enumerate(result.rows):
                    observer.on_packet_end(self, tags[i], packets_objs[i], outputs[j], False, result.captured.get(i))
            for i, exc in result.errors.items():
                failed_hashes.add(chunk_hashes[i].as_py())
                message = f"{type(exc).__name__}: {exc}"
                stats.errors.append(message)
                if wants_events:
                    observer.on_packet_crash(self, tags[i], packets_objs[i], exc, result.captured.get(i))
                if error_policy == "fail_fast":
                    tag = table.slice(chunk_rows[i].as_py(), 1).select(list(layout.tag_columns)).to_pylist()[0]
                    exc.add_note(f"orcapod: node {self.label!r} ({pf.uri}) failed on the packet with tag {tag}")
                    return exc
            done += len(chunk)
            state.progress_done += len(chunk)
            progress = getattr(observer, "on_node_progress", None)
            if progress is not None:  # cumulative over the run's batches
                progress(self, state.progress_done, state.progress_total)
            elapsed = time.perf_counter() - started
            if elapsed < self.target_chunk_s / 2:
                size = min(size * 2, self.max_chunk)
            elif elapsed > self.target_chunk_s * 2:
                size = max(size // 2, self.min_chunk)
        return None

    def _objects(self, table: pa.Table, layout: StreamLayout, rows: pa.Array) -> tuple[list[Tag], list[Packet]]:
        sub = table.take(rows)
        tag_schema = pa.schema(layout.fields([*layout.tag_columns, *layout.system_tag_columns]))
        packet_schema = pa.schema(layout.fields([*layout.packet_columns, *layout.source_columns]))
        tags = [
            Tag({k: v for k, v in r.items() if k in layout.tag_columns}, hidden={k: r[k] for k in layout.system_tag_columns}, arrow_schema=tag_schema)
            for r in sub.select(tag_schema.names).to_pylist(maps_as_pydicts="strict")
        ]
        packets = [
            Packet({k: r[k] for k in layout.packet_columns}, hidden={k: r[k] for k in layout.source_columns}, arrow_schema=packet_schema)
            for r in sub.select(packet_schema.names).to_pylist(maps_as_pydicts="strict")
        ]
        return tags, packets

    def _entry_records(
        self,
        table: pa.Table,
        layout: StreamLayout,
        entry_ids: pa.Array,
        hexes: pa.Array,
        rows: pa.Array,
        computed: bool | pa.Array,
        run_id: str,
    ) -> pa.Table:
        """Pipeline records for ``rows`` of ``table`` (tags, system tags, entry id, packet hash
        link, input source info, computed flag: one for all, or one per row of ``rows``)."""
        records = table.select([*layout.tag_columns, *layout.system_tag_columns]).take(rows)
        records = records.append_column(pa.field(ENTRY_ID_COLUMN, pa.large_string(), False), entry_ids.take(rows))
        records = records.append_column(pa.field(PACKET_HASH_COLUMN, pa.large_string(), False), hexes.take(rows))
        records = records.append_column(pa.field(INPUT_SOURCE_COLUMN, _INPUT_SOURCE_TYPE), _source_map(table.take(rows), layout))
        if isinstance(computed, bool):
            computed = pa.repeat(pa.scalar(computed, pa.bool_()), len(rows))
        records = records.append_column(pa.field(COMPUTED_COLUMN, pa.bool_(), False), computed)
        run = pa.scalar(run_id, pa.large_string())
        return records.append_column(pa.field(RUN_ID_COLUMN, pa.large_string(), False), pa.repeat(run, len(rows)))

    def _begin_run(self, run_id: str | None = None) -> _NodeRun:
        """State for a run assembled over several ``_assemble(..., run_state=)`` calls; end it
        with ``finish()`` (also when the run fails: it commits what was computed)."""
        return _NodeRun(self, run_id, spans_calls=True)

    def get_pipeline_records(self) -> pa.Table | None:
        """Every pipeline record of this node's table."""
        return self.database.get_all_records(self.record_path)

    def as_source(self) -> Stream:
        from orcapod_core.pipeline.derived import DerivedSource

        return DerivedSource(self)


class _NodeRun:
    """One run of a :class:`FunctionNode`: a single ``_assemble`` call (sync orchestrator,
    ``execute``) or many (``spans_calls``: the async orchestrator assembles a node batch by
    batch as its input arrives).

    * The store is read once per run: the stored entry-id column, and the result table. The
      first batch looks its packets up directly (a run whose input arrives in one piece does
      exactly one lookup); later batches are answered in memory from the result table read
      once (:class:`~orcapod_core.pipeline.key_index.KeyIndex`), so no batch costs time
      proportional to the stored tables, and packets computed by earlier batches are found
      (computed once per run).
    * Pipeline records wait here until every result they may link to is committed (the
      result database holds no pending rows of the function's table), then are committed as
      one transaction: records reach the store in step with the result batches (the result
      database's size/time-bounded batching), so a killed process loses at most the current
      batch of both and never leaves a pipeline record whose result is missing.
    """

    def __init__(self, node: FunctionNode, run_id: str | None, spans_calls: bool = False):
        self.node = node
        self.run_id = run_id or uuid.uuid4().hex
        self.spans_calls = spans_calls
        self.batches = 0  # _assemble calls so far
        # Progress events: distinct packets computed so far / found missing so far in the run.
        self.progress_done = 0
        self.progress_total = 0
        self._stored_ids: pa.Array | None = None
        self._stored_index: KeyIndex | None = None
        self._results: KeyIndex | None = None
        self._computed: list[pa.Array] = []
        self._computed_index: KeyIndex | None = None
        self._waiting: list[pa.Table] = []
        #: Packets (hex hashes) whose function raised in this run: later batches do not call them again.
        self.failed_hashes: set[str] = set()

    # -- lookups --------------------------------------------------------------------------
    def recorded(self, entry_ids: pa.Array) -> pa.Array:
        """Per row: is its entry id stored (as of the run's first batch)?"""
        n = len(entry_ids)
        if n == 0:
            return pa.array([], pa.bool_())
        node = self.node
        stored = self._stored_ids
        if stored is None:
            stored = node.database.get_column(node.record_path, ENTRY_ID_COLUMN)
            if stored is None:
                stored = pa.array([], pa.large_string())
            if self.spans_calls:  # later batches look up against it (a one-call run keeps nothing)
                self._stored_ids = stored
        if not len(stored):
            return _falses(n)
        if self.batches <= 1:
            return is_in(entry_ids, stored)
        if self._stored_index is None:
            self._stored_index = KeyIndex(ENTRY_ID_COLUMN, pa.table({ENTRY_ID_COLUMN: stored}))
        return self._stored_index.contains(entry_ids)

    def lookup(self, unique: pa.Array) -> pa.Table:
        """Stored results of the distinct packet hashes ``unique`` (packet hash + outputs, in
        the node's result schema)."""
        node = self.node
        schema = node._result_schema()
        if not len(unique):
            return schema.empty_table()
        outputs = schema.names[1:]  # only what the node's rows need is read
        if self.batches <= 1:
            return _project(node.result_cache.lookup(unique, columns=outputs), schema)
        if self._results is None:
            self._results = KeyIndex(PACKET_HASH_COLUMN, _project(node.result_cache.get_all_records(columns=outputs), schema))
        found = self._results.take(unique)
        return schema.empty_table() if found is None else found

    def note_computed(self, hashes: pa.Array, outputs: pa.Table) -> None:
        """Packets this run computed (and stored), with their outputs."""
        self._computed.append(hashes)
        if self._computed_index is not None:
            self._computed_index.add(pa.table({PACKET_HASH_COLUMN: hashes}))
        if self._results is not None:
            schema = self.node._result_schema()
            self._results.add(outputs.select(schema.names[1:]).add_column(0, schema.field(0), hashes).cast(schema))

    def computed_mask(self, hexes: pa.Array) -> pa.Array:
        """Per row: was its packet computed by this run (this batch or an earlier one)?"""
        n = len(hexes)
        if not self._computed or n == 0:
            return _falses(n)
        if self.batches <= 1:
            return is_in(hexes, pa.concat_arrays(self._computed))
        if self._computed_index is None:
            self._computed_index = KeyIndex(PACKET_HASH_COLUMN, pa.table({PACKET_HASH_COLUMN: pa.concat_arrays(self._computed)}))
        return self._computed_index.contains(hexes)

    # -- writing --------------------------------------------------------------------------
    def stage(self, records: pa.Table) -> None:
        """Pipeline records to commit once the results they link to are committed."""
        if records.num_rows:
            self._waiting.append(records)

    def release(self) -> None:
        """Commit the waiting pipeline records if no result of the function's table is pending
        (they were committed, by this handle or another); else they wait for the next commit."""
        if not self._waiting:
            return
        cache = self.node.result_cache
        pending = getattr(cache.database, "pending_count", None)
        if pending is None or pending(cache.record_path):
            return
        self._commit_records()

    def finish(self) -> None:
        """End of the run (also a failed one): commit the results, then the pipeline records."""
        self.node.result_cache.flush()
        self._commit_records()

    def _commit_records(self) -> None:
        node = self.node
        waiting, self._waiting = self._waiting, []
        for records in waiting:
            node.database.add_records(node.record_path, records)
        node.database.flush_path(node.record_path)


def _falses(n: int) -> pa.Array:
    return pa.repeat(pa.scalar(False, pa.bool_()), n)


def _project(found: pa.Table | None, schema: pa.Schema) -> pa.Table:
    """Result records reduced to packet hash + outputs, in ``schema``."""
    if found is None or found.num_rows == 0:
        return schema.empty_table()
    return found.select(schema.names).cast(schema)


def _source_map(table: pa.Table, layout: StreamLayout) -> pa.Array:
    """Input source info per row as a map ``{packet column: source info}`` (list-valued source
    info, e.g. after a Batch, is stored as its JSON text)."""
    n = table.num_rows
    cols = [c for c in layout.packet_columns if source_column(c) in table.column_names]
    if not cols or n == 0:
        return pa.array([[] for _ in range(n)], _INPUT_SOURCE_TYPE)
    k = len(cols)
    texts = []
    for c in cols:
        col = table.column(source_column(c)).combine_chunks()
        if not pa.types.is_large_string(col.type):
            col = pa.array([None if v is None else json.dumps(v) for v in col.to_pylist()], pa.large_string())
        texts.append(col)
    keys = pa.concat_arrays([pa.repeat(pa.scalar(c, pa.large_string()), n) for c in cols])
    values = pa.concat_arrays(texts)
    if k > 1:  # interleave row-major: row 0 col 0, row 0 col 1, ..., row 1 col 0, ...
        i = pa.array(range(n * k), pa.int64())
        col_of = pc.subtract(i, pc.multiply(pc.divide(i, pa.scalar(k, pa.int64())), pa.scalar(k, pa.int64())))
        row_of = pc.divide(i, pa.scalar(k, pa.int64()))
        order = pc.add(pc.multiply(col_of, pa.scalar(n, pa.int64())), row_of)
        keys, values = keys.take(order), values.take(order)
    offsets = pa.array(range(0, n * k + 1, k), pa.int32())
    return pa.MapArray.from_arrays(offsets, keys, values, type=_INPUT_SOURCE_TYPE)


# --------------------------------------------------------------------------------------
# Node protocols (what orchestrators rely on) and TypeGuard dispatch
# --------------------------------------------------------------------------------------


@runtime_checkable
class SourceNodeProtocol(Protocol):
    kind: str
    label: str

    def execute(self, observer: ExecutionObserver | None = None) -> Stream: ...


@runtime_checkable
class OperatorNodeProtocol(Protocol):
    kind: str
    label: str

    def execute(self, *inputs: Stream, observer: ExecutionObserver | None = None) -> Stream: ...


@runtime_checkable
class FunctionNodeProtocol(Protocol):
    kind: str
    label: str

    def execute(
        self,
        input_stream: Stream | None = None,
        observer: ExecutionObserver | None = None,
        *,
        error_policy: str = "continue",
        executor: Any = None,
        run_id: str | None = None,
    ) -> Stream: ...

    def execute_packet(self, tag: Tag, packet: Packet, observer: ExecutionObserver | None = None) -> Packet | None: ...


def is_source_node(node: Any) -> TypeGuard[SourceNodeProtocol]:
    return getattr(node, "kind", None) == "source" and isinstance(node, SourceNodeProtocol)


def is_operator_node(node: Any) -> TypeGuard[OperatorNodeProtocol]:
    return getattr(node, "kind", None) == "operator" and isinstance(node, OperatorNodeProtocol)


def is_function_node(node: Any) -> TypeGuard[FunctionNodeProtocol]:
    return getattr(node, "kind", None) == "function" and isinstance(node, FunctionNodeProtocol)
