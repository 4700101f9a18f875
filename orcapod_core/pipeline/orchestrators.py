"""Orchestrators: walk a compiled pipeline and drive its nodes.

Both talk to nodes only through the node protocols (``is_source_node`` /
``is_operator_node`` / ``is_function_node`` TypeGuards) and give the same results, errors
included:

* :class:`SyncPipelineOrchestrator` — nodes one after the other in topological order, each
  node's whole output buffered for its consumers.
* :class:`AsyncPipelineOrchestrator` — every node is a task; rows flow as Arrow chunks over
  bounded channels (backpressure), fanned out to every consumer (broadcast). Function nodes
  with one input process chunks as they arrive, so downstream work starts before upstream
  work ends; operators (which need whole inputs) gather first.

>>> pipeline.run(orchestrator=AsyncPipelineOrchestrator(buffer_size=64))   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from orcapod_core.errors import InvalidLabelError
from orcapod_core.executors import check_executor, run_coroutine_sync
from orcapod_core.interrupts import check_stop
from orcapod_core.pipeline.function_node import FunctionNode
from orcapod_core.pipeline.nodes import Node, is_function_node, is_operator_node, is_source_node
from orcapod_core.pipeline.observers import ExecutionObserver, NodeStats, NoOpObserver, RunResult
from orcapod_core.streams import Stream, TableStream

__all__ = ["SyncPipelineOrchestrator", "AsyncPipelineOrchestrator"]


def _executor_overrides(pipeline: Any, nodes: Sequence[Any], executor: Any) -> dict[str, Any]:
    """``{function node label: executor}`` from ``run(executor=...)``: one executor for every
    function node, or a mapping of labels to executors — each checked now, before anything runs,
    against the function it will run."""
    functions = {n.label: n for n in nodes if getattr(n, "kind", None) == "function"}
    if executor is None:
        return {}
    if isinstance(executor, Mapping):
        unknown = [label for label in executor if label not in pipeline.nodes or pipeline.nodes[label].kind != "function"]
        if unknown:
            raise InvalidLabelError(
                f"run(executor={{...}}): {unknown} are not function nodes of pipeline {'/'.join(pipeline.name)!r} "
                f"(its function nodes: {[n.label for n in pipeline.nodes.values() if n.kind == 'function']})"
            )
        chosen = {label: ex for label, ex in executor.items() if label in functions and ex is not None}
    else:
        chosen = dict.fromkeys(functions, executor)
    for label, ex in chosen.items():
        pf = functions[label].packet_function
        check_executor(type(pf), pf.function_type, ex, getattr(pf, "function", None))
    return chosen


class _Run:
    """Bookkeeping shared by both orchestrators: run id, stats, start/end events, flushing, and
    the executors of the run's function nodes (overrides checked up front; one session each)."""

    def __init__(
        self,
        pipeline: Any,
        observer: ExecutionObserver | None,
        nodes: Sequence[str] | None,
        include_upstream: bool = True,
        executor: Any = None,
    ):
        self.pipeline = pipeline
        self.observer = observer or NoOpObserver()
        self.run_id = pipeline.new_run_id()
        labels = pipeline.run_selection(nodes, include_upstream)
        self.nodes: list[Node] = [pipeline.nodes[label] for label in labels]
        self.stats: dict[str, NodeStats] = {}
        # Output rows per node, set before the node sends its first row (async orchestrator):
        # what a streaming consumer reports as its input total at ``on_node_start``.
        self.row_counts: dict[str, int] = {}
        self.start = time.perf_counter()
        self._overrides = _executor_overrides(pipeline, self.nodes, executor)
        self._sessions = contextlib.ExitStack()
        self._in_session: list[Any] = []

    def executor_for(self, node: Any) -> Any:
        """The run's executor override for a function node (``None``: the function's own), with
        the executor that will run it kept alive (its session) until the run ends."""
        override = self._overrides.get(node.label)
        running = override if override is not None else getattr(node.packet_function, "executor", None)
        if running is not None and not any(running is e or running == e for e in self._in_session):
            self._sessions.enter_context(running.session())
            self._in_session.append(running)
        return override

    def finish(self, error: BaseException | None) -> Any:
        try:
            self.pipeline.flush()
            self._sessions.close()  # process pools shut down
        finally:
            ordered = {n.label: self.stats[n.label] for n in self.nodes if n.label in self.stats}
            self.observer.on_run_end(self.pipeline, self.run_id, ordered, error)
        return RunResult(self.run_id, ordered, time.perf_counter() - self.start, error)


class _EndAfterExecute:
    """The observer one function node's ``execute`` reports to: every event goes straight
    through to the run's observer, but the node's own end waits until ``execute`` has returned.
    By then the node keeps its rows' entry ids and missing packets too (as the async
    orchestrator's nodes do at their end), so an observer reading them at ``on_node_end`` — a
    snapshot's data version, e.g. a Dagster step's, on its own thread — finds them rather than
    hashing every output row again."""

    def __init__(self, observer: ExecutionObserver, node: Any):
        self._observer = observer
        self._node = node
        self._held: NodeStats | None = None

    def __getattr__(self, name: str) -> Any:  # every other hook and flag: the run's observer's
        return getattr(self._observer, name)

    def on_node_end(self, node: Any, stats: NodeStats) -> None:
        if node is self._node and self._held is None:
            self._held = stats
        else:
            self._observer.on_node_end(node, stats)

    def release(self) -> None:
        """Report the held end (also when ``execute`` raised after it: e.g. ``fail_fast``)."""
        if self._held is not None:
            stats, self._held = self._held, None
            self._observer.on_node_end(self._node, stats)


class SyncPipelineOrchestrator:
    """Runs nodes one at a time in topological order."""

    def run(
        self,
        pipeline: Any,
        *,
        observer: ExecutionObserver | None = None,
        executor: Any = None,
        error_policy: str = "continue",
        nodes: Sequence[str] | None = None,
        include_upstream: bool = True,
    ) -> Any:
        run = _Run(pipeline, observer, nodes, include_upstream, executor)
        obs = run.observer
        obs.on_run_start(pipeline, run.run_id)
        error: BaseException | None = None
        try:
            outputs: dict[str, Stream] = {}
            for node in run.nodes:
                check_stop()  # a stop signal: no new node starts
                inputs = [outputs.get(u.label, u) for u in node.upstream_nodes]
                if is_source_node(node):
                    outputs[node.label] = node.execute(obs)
                elif is_operator_node(node):
                    outputs[node.label] = node.execute(*inputs, observer=obs)
                elif is_function_node(node):
                    stream = node.join_inputs(inputs)  # type: ignore[attr-defined]
                    ending = _EndAfterExecute(obs, node)
                    try:
                        outputs[node.label] = node.execute(
                            stream, ending, error_policy=error_policy, executor=run.executor_for(node), run_id=run.run_id
                        )
                    finally:
                        if node.last_stats is not None:  # type: ignore[attr-defined]
                            run.stats[node.label] = node.last_stats  # type: ignore[attr-defined]
                        ending.release()
                    continue
                else:
                    raise TypeError(f"node {getattr(node, 'label', node)!r} implements no known node protocol")
                run.stats[node.label] = node.last_stats
        except BaseException as exc:
            error = exc
            raise
        finally:
            result = run.finish(error)
        return result


_DONE = object()


class AsyncPipelineOrchestrator:
    """Runs all nodes concurrently on bounded channels of Arrow chunks.

    ``buffer_size`` bounds each channel (in chunks of up to ``chunk_rows`` rows); a full
    channel suspends its producer (backpressure). A node's output is broadcast to every
    consumer's channel.
    """

    def __init__(self, buffer_size: int = 64, chunk_rows: int = 1024):
        if buffer_size < 1 or chunk_rows < 1:
            raise ValueError("buffer_size and chunk_rows must be >= 1")
        self.buffer_size = buffer_size
        self.chunk_rows = chunk_rows

    def run(
        self,
        pipeline: Any,
        *,
        observer: ExecutionObserver | None = None,
        executor: Any = None,
        error_policy: str = "continue",
        nodes: Sequence[str] | None = None,
        include_upstream: bool = True,
    ) -> Any:
        run = _Run(pipeline, observer, nodes, include_upstream, executor)
        run.observer.on_run_start(pipeline, run.run_id)
        error: BaseException | None = None
        try:
            run_coroutine_sync(self._run_all(run, error_policy))
        except BaseException as exc:
            error = exc
            raise
        finally:
            result = run.finish(error)
        return result

    async def _run_all(self, run: _Run, error_policy: str) -> None:
        included = {n.label for n in run.nodes}
        consumers: dict[str, list[asyncio.Queue]] = {n.label: [] for n in run.nodes}
        inboxes: dict[str, list[asyncio.Queue]] = {}
        for node in run.nodes:
            inboxes[node.label] = []
            for up in node.upstream_nodes:
                if up.label in included:
                    q: asyncio.Queue = asyncio.Queue(maxsize=self.buffer_size)
                    consumers[up.label].append(q)
                    inboxes[node.label].append(q)
        tasks = [
            asyncio.create_task(self._run_node(node, run, inboxes[node.label], consumers[node.label], error_policy), name=node.label)
            for node in run.nodes
        ]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _emit(self, table: pa.Table, outboxes: list[asyncio.Queue], run: _Run, label: str) -> None:
        run.row_counts[label] = table.num_rows
        for start in range(0, max(table.num_rows, 1), self.chunk_rows):
            chunk = table.slice(start, self.chunk_rows)
            for q in outboxes:
                await q.put(chunk)
        for q in outboxes:
            await q.put(_DONE)

    @staticmethod
    async def _gather_input(up: Node, inbox: asyncio.Queue | None) -> Stream:
        """Wait until ``up`` has sent its whole output. The node itself then holds that output
        (it is set before the end-of-stream marker is sent) with its identity intact, which a
        consumer needs: multi-input joins name system tags by their inputs' pipeline hashes."""
        if inbox is not None:
            while await inbox.get() is not _DONE:
                pass
        return up

    async def _run_node(
        self,
        node: Node,
        run: _Run,
        inbox_list: list[asyncio.Queue],
        outboxes: list[asyncio.Queue],
        error_policy: str,
    ) -> None:
        obs = run.observer
        check_stop()
        inboxes = iter(inbox_list)
        ups = [(up, next(inboxes) if any(up is n for n in run.nodes) else None) for up in node.upstream_nodes]
        if is_source_node(node):
            out = await asyncio.to_thread(node.execute, obs)
            run.stats[node.label] = node.last_stats
            await self._emit(out._table(), outboxes, run, node.label)
            return
        executor = run.executor_for(node) if is_function_node(node) else None
        if is_function_node(node) and len(ups) == 1 and ups[0][1] is not None:
            await self._stream_function(node, run, ups[0][0], ups[0][1], outboxes, executor, error_policy)
            return
        # Drain every inbox at once: reading them one after the other deadlocks a diamond
        # (A feeds B and C, C = f(B, A)) once A's channel to C is full while C waits on B.
        inputs = list(await asyncio.gather(*(self._gather_input(up, inbox) for up, inbox in ups)))
        if is_operator_node(node):
            out = await asyncio.to_thread(lambda: node.execute(*inputs, observer=obs))
            run.stats[node.label] = node.last_stats
        elif is_function_node(node):
            stream = node.join_inputs(inputs)  # type: ignore[attr-defined]
            try:
                out = await asyncio.to_thread(
                    lambda: node.execute(stream, obs, error_policy=error_policy, executor=executor, run_id=run.run_id)
                )
            finally:
                if node.last_stats is not None:
                    run.stats[node.label] = node.last_stats
        else:
            raise TypeError(f"node {getattr(node, 'label', node)!r} implements no known node protocol")
        await self._emit(out._table(), outboxes, run, node.label)

    async def _stream_function(
        self,
        node: FunctionNode,
        run: _Run,
        up: Node,
        inbox: asyncio.Queue,
        outboxes: list[asyncio.Queue],
        executor: Any,
        error_policy: str,
    ) -> None:
        """Process a single-input function node batch by batch as its input arrives.

        A batch is every chunk already waiting in the inbox, so a fast upstream gives few
        large batches and a slow one small early ones. All batches form one node run
        (``FunctionNode._begin_run``): the store is read once per run, not per batch, and
        results and pipeline records are committed in the result database's batches.

        ``on_node_start`` fires when the first chunk arrives, with the input's row count when
        it is known by then (the upstream node produced its whole output before sending it:
        a source or an operator node), else ``None`` (the upstream streams too: a function
        node). ``on_node_end`` always has the exact counts."""
        obs = run.observer
        chunk = await inbox.get()
        started = time.perf_counter()
        obs.on_node_start(node, run.row_counts.get(up.label))
        total = NodeStats(node.label, node.kind)
        outputs: list[pa.Table] = []
        entry_ids: list[pa.Array | None] = []
        missing_packets: list[str] = []
        state = node._begin_run(run.run_id)
        finished = False
        try:
            while chunk is not _DONE:
                parts = [chunk]
                chunk = None
                while True:  # every chunk already waiting joins this batch
                    try:
                        more = inbox.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                    if more is _DONE:
                        chunk = _DONE
                        break
                    parts.append(more)
                batch = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
                stream = TableStream(batch, up.layout.tag_columns, layout=up.layout)
                table, stats = await asyncio.to_thread(
                    lambda: node._assemble(
                        stream,
                        compute=True,
                        observer=obs,
                        error_policy=error_policy,
                        executor=executor,
                        run_id=run.run_id,
                        report=False,
                        run_state=state,
                    )
                )
                for name in ("total", "computed", "cached", "failed"):
                    setattr(total, name, getattr(total, name) + getattr(stats, name))
                total.errors.extend(stats.errors)
                outputs.append(table)
                entry_ids.append(node.__dict__.pop("_assembled_entry_ids", None))
                missing_packets.extend(node.__dict__.pop("_assembled_missing_packets", None) or ())
                for start in range(0, table.num_rows, self.chunk_rows):
                    piece = table.slice(start, self.chunk_rows)
                    for q in outboxes:
                        await q.put(piece)
                if chunk is None:
                    chunk = await inbox.get()
            await asyncio.to_thread(state.finish)
            finished = True
        finally:
            if not finished:  # failed or cancelled: still commit what was computed
                state.finish()
            total.duration_s = time.perf_counter() - started
            node.last_stats = total
            run.stats[node.label] = total
            out = pa.concat_tables(outputs) if outputs else node.layout.schema.empty_table()
            ids = pa.concat_arrays(entry_ids) if entry_ids and all(e is not None for e in entry_ids) else None
            node._set_output(out, ids, missing_packets)
            obs.on_node_end(node, total)
        for q in outboxes:
            await q.put(_DONE)
