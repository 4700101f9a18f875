"""FunctionNode: a function pod applied to upstream nodes, memoized per row and per packet
(orcapod PR #84). One packet's path through a run:

1. **entry ids** — for the current input, in one columnar pass, each row's input packet hash
   (of the columns the function reads: its parameters') and its entry id = hash(tag + system
   tags + input packet hash + node content hash);
2. **lookup** — one anti-join of the entry ids against the stored entry-id column splits the
   input into "recorded" and "new"; one result-cache lookup over the distinct packet hashes
   splits what is left into "result exists" and "compute" (:mod:`.node_run` reads the store
   once per run);
3. **compute** — only the "compute" packets become Python calls, each distinct packet once,
   in chunks that grow while they finish fast;
4. **record** — results and pipeline records are written in batches during the run, in step:
   a pipeline record is committed right after the result batch it links to (never before),
   so a killed process loses at most the current batch of both, and no stored pipeline record
   points to a missing result. Pipeline records hold the tag, system tags, the entry id, the
   input packet hash (the link to the result record), the input packets' source info and
   whether the packet was computed in that run. A passthrough node's input packet columns are
   not stored: its output takes them from its input at read time.
"""

from __future__ import annotations

import binascii
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from orcapod_core.columns import SOURCE_PREFIX, source_column
from orcapod_core.databases import ArrowDatabase
from orcapod_core.databases.file_store import attach_digest_store
from orcapod_core.datagrams import Packet, Tag
from orcapod_core.errors import OrcapodError, SchemaMismatchError
from orcapod_core.executors import plan_chunks
from orcapod_core.files import save_digests
from orcapod_core.interrupts import check_stop, stop_requested
from orcapod_core.function_pods import FunctionPod, FunctionPodStream, input_packet_hashes, pod_output_table
from orcapod_core.hashing import ContentHash, digests_array, digests_to_hex
from orcapod_core.keysets import index_in, is_in
from orcapod_core.lazy_polars import pl
from orcapod_core.operators import Join
from orcapod_core.pipeline.node_run import INPUT_SOURCE_TYPE, NodeRun, entry_ids_of, entry_records, input_source_info
from orcapod_core.pipeline.nodes import ENTRY_ID_COLUMN, INPUT_SOURCE_COLUMN, LoadStatus, Node
from orcapod_core.pipeline.observers import ExecutionObserver, NodeStats, NoOpObserver, wants_failures
from orcapod_core.result_cache import PACKET_HASH_COLUMN, CachedPacketFunction, ResultCache
from orcapod_core.streams import Stream, StreamLayout, TableStream, conform
from orcapod_core.tracking import untracked
from orcapod_core.value_types import has_paths, rows_to_python

if TYPE_CHECKING:
    from orcapod_core.executors import PythonFunctionExecutor

__all__ = ["FunctionNode"]


# --------------------------------------------------------------------------------------
# Function nodes
# --------------------------------------------------------------------------------------


class FunctionNode(Node):
    """A function pod applied to upstream nodes (joined first when there are several),
    memoized twice: per row by entry id (pipeline records) and per packet by input packet
    hash (the shared result cache)."""

    kind = "function"
    # Packets go to the executor in chunks — the unit of progress reports, observer events and
    # result writes. Chunks start small and grow (up to 16x) while they finish fast (cheap
    # functions pay little per-chunk overhead: 100,000 cheap packets take 6 chunks), and shrink
    # when slow (expensive functions still report often).
    min_chunk, max_chunk, target_chunk_s = 1, 65_536, 0.5
    max_growth = 16

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
    def pod_stream(self) -> FunctionPodStream:
        """The pod applied to this node's compiled input: its layout, identity and
        ``read_columns`` (the columns the function reads) are the node's."""
        return self._stream

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
        self._set_output(table, self.__dict__.pop("_assembled_entry_ids", None), self.__dict__.pop("_assembled_missing_packets", None))
        return self

    def _set_output(self, table: pa.Table, entry_ids: pa.Array | None = None, missing_packets: list[str] | None = None) -> None:
        """Make ``table`` the node's current rows; ``entry_ids``: theirs, and ``missing_packets``:
        the input packets (hex) without an output row, when the run computed them."""
        super()._set_output(table)
        if entry_ids is not None and len(entry_ids) == table.num_rows:
            self.__dict__["_output_entry_ids"] = entry_ids
            if missing_packets is not None:
                self.__dict__["_missing_packets"] = sorted(set(missing_packets))

    def missing_packets(self) -> list[str]:
        """The input packets (hex hashes, sorted) that have no row in the current output — no
        result stored for them (they failed, or the run stopped first): kept from the run, else
        derived from the input and output rows."""
        cached = self.__dict__.get("_missing_packets")
        if cached is not None:
            return cached
        stream = self.join_inputs(self.upstream_nodes)
        table = self._table()
        if table.num_rows == stream._table().num_rows:
            missing: list[str] = []
        else:
            present = self._output_packet_hexes(table)
            missing = sorted(set(digests_to_hex(self._packet_hashes(stream)).to_pylist()) - set(present.to_pylist()))
        self.__dict__["_missing_packets"] = missing
        return missing

    def output_entry_ids(self) -> pa.Array:
        """The entry id of every current output row (hex), in row order: kept from the run that
        produced them, else derived from the rows (their source info holds the packet hash)."""
        table = self._table()
        cached = self.__dict__.get("_output_entry_ids")
        if cached is not None and len(cached) == table.num_rows:
            return cached
        if table.num_rows == 0:
            return pa.array([], pa.large_string())
        hexes = self._output_packet_hexes(table)
        digests = digests_array(binascii.unhexlify("".join(hexes.to_pylist())))
        ids = self._entry_ids(table, self._stream.input_stream.layout, digests)
        self.__dict__["_output_entry_ids"] = ids
        return ids

    def _output_packet_hexes(self, table: pa.Table) -> pa.Array:
        """The input packet hash (hex) of every output row, read from its source info
        (``<function uri>::<packet hash>::<key>``)."""
        key = self.packet_function.output_keys[0]
        return pc.list_element(pc.split_pattern(table.column(source_column(key)), "::"), 1)

    def execute_packet(self, tag: Tag, packet: Packet, observer: ExecutionObserver | None = None) -> Packet | None:
        """Compute (or fetch) one packet through the cache and record it; ``None`` if it failed."""
        tag_table = tag.as_table(columns={"system_tags": True})
        packet_table = packet.as_table(columns={"source": True})
        row = pa.Table.from_arrays(
            [*tag_table.columns, *packet_table.columns], names=[*tag_table.column_names, *packet_table.column_names]
        )
        layout = self._stream.input_stream.layout
        stream = TableStream(row, layout.tag_columns, layout=layout)
        self._assemble(stream, compute=True, observer=observer or NoOpObserver(), error_policy="continue", report=False)
        out, _ = self._assemble(stream, compute=False)
        if out.num_rows == 0:
            return None
        layout = self.layout  # the outputs (with passthrough, the input's packet columns too)
        values = rows_to_python(out.select(list(layout.packet_columns)))[0]
        return Packet(values, hidden={c: out.column(c)[0].as_py() for c in layout.source_columns})

    def process_packet(self, tag: Tag, packet: Packet) -> dict[str, Any]:
        """Pure computation of one packet (no cache, no records)."""
        return self.packet_function.call(dict(packet))

    # -- the engine -------------------------------------------------------------------
    def _packet_hashes(self, stream: Stream) -> pa.Array:
        """Input packet hash per row of ``stream``: the row hash of the columns the function reads."""
        return input_packet_hashes(stream, self._stream.read_columns)

    def _entries(self, table: pa.Table, layout: StreamLayout, digests: pa.Array, hexes: pa.Array, state: NodeRun) -> tuple[pa.Array, pa.Array]:
        """(entry id, is it recorded) per row. Rows the node's records already hold take their
        stored entry ids (:meth:`NodeRun.stored_entries`): a warm run hashes no row a second
        time, an incremental one only its new rows."""
        content = self.content_hash()
        known = None if state.spans_calls else state.stored_entries(table, layout, hexes, content.to_string())
        if known is None:
            entry_ids = self._entry_ids(table, layout, digests)
            return entry_ids, state.recorded(entry_ids)
        ids, stored = known
        absent = pc.is_null(ids)
        rows = pc.indices_nonzero(absent)
        n = table.num_rows
        everything = pa.repeat(pa.scalar(True, pa.bool_()), n)
        if not len(rows):
            return ids, everything
        if len(rows) == n:  # nothing recorded for these rows yet (a cold run): no copy of them
            hashed = entry_ids_of(table, layout, digests, content.digest)
            return hashed, is_in(hashed, stored)
        hashed = entry_ids_of(table.take(rows), layout, digests.take(rows), content.digest)
        return pc.replace_with_mask(ids, absent, hashed), pc.replace_with_mask(everything, absent, is_in(hashed, stored))

    def _entry_ids(self, table: pa.Table, layout: StreamLayout, packet_hashes: pa.Array) -> pa.Array:
        """Entry id per row = hash(tag + system tags + input packet hash + node content hash)."""
        return entry_ids_of(table, layout, packet_hashes, self.content_hash().digest)

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
        run_state: NodeRun | None = None,
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
            raise SchemaMismatchError(
                f"node {self.label!r}: input schema {layout.schema} differs from the compiled input schema "
                f"{self._stream.input_stream.layout.schema}"
            )
        table = stream._table()
        n = table.num_rows
        if compute and report:
            observer.on_node_start(self, n)
        state = run_state if run_state is not None else NodeRun(self, run_id)
        files = any(has_paths(f.type) for f in table.schema)
        if files:  # input files' digests: known ones from the store, new ones saved to it
            digest_store = attach_digest_store(self.database)
        try:
            return self._assemble_rows(
                stream, table, state, compute=compute, observer=observer, error_policy=error_policy, executor=executor,
                report=report, start=start,
            )
        except BaseException:
            if compute and run_state is None:  # commit what was computed before the error
                state.finish()
            raise
        finally:
            if files:
                save_digests(digest_store)

    def _assemble_rows(
        self,
        stream: Stream,
        table: pa.Table,
        state: NodeRun,
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
        content = self.content_hash().to_string()  # what records made now are for

        digests = self._packet_hashes(stream)
        hexes = digests_to_hex(digests)
        # Phase 1: which rows are already recorded (the entry-id column, read once per run;
        # only needed to compute and record, not to serve stored rows).
        if n and compute:
            entry_ids, recorded = self._entries(table, layout, digests, hexes, state)
        else:
            entry_ids, recorded = pa.array([], pa.large_string()), pa.array([], pa.bool_())

        # Phase 2: one result lookup for the packet hashes of all rows; per row, the
        # position of its stored result (null: to compute).
        found = state.lookup(hexes)
        # (stored results: one per packet hash, usually in the order of an unchanged input)
        position = index_in(hexes, found.column(PACKET_HASH_COLUMN), distinct_values=True)
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
            state.stage(entry_records(table, layout, entry_ids, hexes, served, state.computed_mask(hexes.take(served)), state.run_id, content))
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
            # (distinct: stored ones + packets computed now, which were not stored)
            position = index_in(hexes, results.column(PACKET_HASH_COLUMN), distinct_values=True)
        available = pc.is_valid(position)
        rows = pc.indices_nonzero(available)
        everything = len(rows) == n  # the usual case: every row has its output (no copy of the rows)
        out_layout = self.layout
        outputs = results.select(keys).take(position if everything else position.filter(available))
        # Tags, system tags (and passthrough columns) come from the input rows, now: nothing
        # of them is stored, so a warm run serves exactly the current input's values.
        out = pod_output_table(
            table, layout, outputs, hexes if everything else hexes.take(rows), pf.uri, keys, self.pod.passthrough,
            None if everything else rows,
        )

        if compute:
            # The entry ids of the output rows: a snapshot pins the output by them (see
            # pipeline.snapshots), so they are kept for it rather than hashed again.
            self.__dict__["_assembled_entry_ids"] = entry_ids if everything else entry_ids.take(rows)
            # ... and the packets whose rows are left out (no result: they failed, or were not reached).
            absent = [] if everything else pc.unique(hexes.filter(pc.invert(available))).to_pylist()
            self.__dict__["_assembled_missing_packets"] = absent
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
                # the node's rows (with their entry ids and missing packets) are set before its end event
                self._set_output(conform(out, out_layout), self.__dict__.get("_assembled_entry_ids"), self.__dict__.get("_assembled_missing_packets"))
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
        state: NodeRun,
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
        content = self.content_hash().to_string()
        cached_fn = CachedPacketFunction(pf, self.result_cache)
        packets = table.select(list(self._stream.read_columns))
        if len(missing) == table.num_rows:  # every row a new, distinct packet: missing is hexes
            first_rows = position = pl.int_range(0, len(missing), dtype=pl.Int64, eager=True).to_arrow()
        else:
            # Each row's packet position in ``missing`` (distinct), and each packet's first row
            # from it (every missing packet has a row): no lookup against all of the input's keys.
            position = index_in(hexes, missing, distinct_values=True)
            firsts = (
                pl.DataFrame({"pos": pl.from_arrow(position)}).with_row_index("row").drop_nulls("pos")
                .unique("pos", keep="first", maintain_order=True).sort("pos")
            )
            first_rows = firsts["row"].cast(pl.Int64).to_arrow()
            packets = packets.take(first_rows)
        # Rows to record as their packets get computed (not recorded yet), ordered by their
        # packet's position in ``missing`` (the compute order): a chunk's rows are one slice.
        needs_record = pc.and_(pc.is_valid(position), pc.invert(recorded))
        to_record = pl.DataFrame(
            {"row": pc.indices_nonzero(needs_record).cast(pa.int64()), "pos": position.filter(needs_record).cast(pa.int64())}
        ).sort("pos")
        wants_events = getattr(observer, "wants_packet_events", True)
        # Failures only (a display counting them): objects are built for the failed packets alone.
        crash_events = wants_failures(observer)
        capture = getattr(observer, "wants_captured_output", False)
        fail_fast = error_policy == "fail_fast"
        total = len(missing)
        state.progress_total += total
        objects: dict[int, tuple[list[Tag], list[Packet]]] = {}  # per chunk start, for observer events

        def started(start: int, size: int) -> None:
            if wants_events:
                objects[start] = self._objects(table, layout, first_rows.slice(start, size))
                for t, p in zip(*objects[start]):
                    observer.on_packet_start(self, t, p)

        running = executor if executor is not None else pf.executor
        if running.concurrency() > 1:  # a process pool, a cluster: every packet at once, streamed back
            plan = plan_chunks(total, running.concurrency(), getattr(running, "chunk_size", None))
            for start, size in plan:
                started(start, size)
            sizes = dict(plan)
            streamed = pf.call_chunks(packets, plan, fail_fast=fail_fast, executor=executor, capture=capture)
            chunks = ((start, sizes[start], result, info) for start, result, info in streamed)
        else:
            streamed = None
            chunks = self._adaptive_chunks(pf, packets, started, fail_fast, executor, capture)
        try:
            for start, size, result, info in chunks:
                # Store what this chunk computed; its rows' records wait for those results' commit.
                if result.table.num_rows:
                    ok = pa.array([start + i for i in result.rows], pa.int64())
                    ok_hashes = missing.take(ok)
                    kept = cached_fn._store(ok_hashes, result.table, executor, info)  # returned files: their stored copies
                    computed_tables.append(kept)
                    computed_hashes.append(ok_hashes)
                    state.note_computed(ok_hashes, kept)
                    lo = to_record["pos"].search_sorted(start, side="left")
                    hi = to_record["pos"].search_sorted(start + size, side="left")
                    chunk_records = to_record.slice(lo, hi - lo)
                    if len(result.rows) < size:  # failed packets get no record
                        chunk_records = chunk_records.filter(pl.col("pos").is_in(ok.to_pylist()))
                    state.stage(entry_records(table, layout, entry_ids, hexes, chunk_records["row"].to_arrow(), True, state.run_id, content))
                state.release()  # commits the staged records if the results they link to are committed
                tags, packets_objs = objects.pop(start, (None, None))
                if wants_events:
                    outputs = rows_to_python(result.table)
                    for j, i in enumerate(result.rows):
                        observer.on_packet_end(self, tags[i], packets_objs[i], outputs[j], False, result.captured.get(i))
                for i, exc in result.errors.items():
                    failed_hashes.add(missing[start + i].as_py())
                    stats.errors.append(f"{type(exc).__name__}: {exc}")
                    if crash_events:
                        if wants_events:
                            tag, packet = tags[i], packets_objs[i]
                        else:
                            (tag,), (packet,) = self._objects(table, layout, first_rows.slice(start + i, 1))
                        observer.on_packet_crash(self, tag, packet, exc, result.captured.get(i))
                    if fail_fast:
                        tag = table.slice(first_rows[start + i].as_py(), 1).select(list(layout.tag_columns)).to_pylist()[0]
                        exc.add_note(f"orcapod: node {self.label!r} ({pf.uri}) failed on the packet with tag {tag}")
                        return exc
                state.progress_done += size
                progress = getattr(observer, "on_node_progress", None)
                if progress is not None:  # cumulative over the run's batches
                    progress(self, state.progress_done, state.progress_total)
            # A stop signal ends the chunks early (executors start nothing new and hand back what
            # was running); what is stored so far gets committed on the way out.
            check_stop()
        finally:  # a failure or an interrupt: what has not started is cancelled
            chunks.close()
            if streamed is not None:
                streamed.close()
        return None

    def _adaptive_chunks(
        self,
        pf: Any,
        packets: pa.Table,
        started: Any,
        fail_fast: bool,
        executor: PythonFunctionExecutor | None,
        capture: bool,
    ) -> Iterator[tuple[int, int, Any, None]]:
        """Chunks computed here, one after the other: they start small and grow while they
        finish fast (cheap functions pay little per-chunk overhead), and shrink when slow (slow
        functions still report often)."""
        done, size, total = 0, self.min_chunk, packets.num_rows
        while done < total and not stop_requested():
            size = min(size, total - done)
            started(done, size)
            begun = time.perf_counter()
            result = pf.call_batch(packets.slice(done, size), fail_fast=fail_fast, executor=executor, capture=capture)
            elapsed = time.perf_counter() - begun
            yield done, size, result, None
            done += size
            if elapsed < self.target_chunk_s / 2:
                # as many as should take the target time at this chunk's pace, at most 16x more
                fits = int(self.target_chunk_s * size / elapsed) if elapsed > 0 else self.max_chunk
                size = min(max(size * 2, min(size * self.max_growth, fits)), self.max_chunk)
            elif elapsed > self.target_chunk_s * 2:
                size = max(size // 2, self.min_chunk)

    def _objects(self, table: pa.Table, layout: StreamLayout, rows: pa.Array) -> tuple[list[Tag], list[Packet]]:
        sub = table.take(rows)
        tag_schema = pa.schema(layout.fields([*layout.tag_columns, *layout.system_tag_columns]))
        read = self._stream.read_columns  # the packet the function gets, with its source info
        sources = [c for c in layout.source_columns if c[len(SOURCE_PREFIX):] in read]
        packet_schema = pa.schema(layout.fields([*read, *sources]))
        tags = [
            Tag({k: v for k, v in r.items() if k in layout.tag_columns}, hidden={k: r[k] for k in layout.system_tag_columns}, arrow_schema=tag_schema)
            for r in rows_to_python(sub.select(tag_schema.names))
        ]
        packets = [
            Packet({k: r[k] for k in read}, hidden={k: r[k] for k in sources}, arrow_schema=packet_schema)
            for r in rows_to_python(sub.select(packet_schema.names))
        ]
        return tags, packets

    def _begin_run(self, run_id: str | None = None) -> NodeRun:
        """State for a run assembled over several ``_assemble(..., run_state=)`` calls; end it
        with ``finish()`` (also when the run fails: it commits what was computed)."""
        return NodeRun(self, run_id, spans_calls=True)

    def get_pipeline_records(self) -> pa.Table | None:
        """Every pipeline record of this node's table, with ``__input_source_info`` — the source
        info of each record's input packet, ``{column: source info}`` — derived for the records of
        the node's current input (null for records of other inputs; the system tags still say
        which source rows each one came from)."""
        records = self.database.get_all_records(self.record_path)
        if records is None or INPUT_SOURCE_COLUMN in records.column_names:  # (stores written before it was derived)
            return records
        stream = self._joined(self.upstream_nodes)
        try:
            table, layout = stream._table(), stream.layout
        except OrcapodError:  # the current input cannot be read (e.g. a source file broke): no derivation
            return records.append_column(pa.field(INPUT_SOURCE_COLUMN, INPUT_SOURCE_TYPE), pa.nulls(records.num_rows, INPUT_SOURCE_TYPE))
        entry_ids = self._entry_ids(table, layout, self._packet_hashes(stream)) if table.num_rows else pa.array([], pa.large_string())
        position = index_in(records.column(ENTRY_ID_COLUMN), entry_ids)
        info = input_source_info(table, layout, self._stream.read_columns).take(position)
        return records.append_column(pa.field(INPUT_SOURCE_COLUMN, INPUT_SOURCE_TYPE), info)

    def as_source(self) -> Stream:
        from orcapod_core.pipeline.derived import DerivedSource

        return DerivedSource(self)


