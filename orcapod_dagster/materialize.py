"""What an orcapod asset step does: run the selected nodes, snapshot them, report to Dagster.

1. The upstream nodes the selected nodes read but do not run are **pinned** to the rows of
   their latest materialization (a missing one raises
   :class:`~orcapod_core.errors.NotMaterializedError` naming the asset).
2. The selected nodes run together with the orchestrator — nothing upstream of them is
   recomputed — with ``error_policy="continue"``: a failing packet never loses the others. The
   run goes on a worker thread; its node ends and log lines come back to the step's thread, which
   alone talks to Dagster.
3. **As soon as a node finishes**, the step saves its output as a snapshot (its data version = a
   hash over its rows) and yields its ``MaterializeResult`` — counts, hashes, the pinning snapshot,
   a preview — with the node's check results, so assets turn green one by one during a long step
   (in the order nodes finish: upstream before downstream).
4. ``on_packet_error="raise"`` withholds nodes with failed packets (and what is downstream of
   them) and fails the step once the run is over; ``"warn"`` materializes them. Either way the
   ``no_failed_packets`` check is reported — with the first failed packets and where every
   traceback is stored (the pipeline database's log table, see
   :class:`~orcapod_core.pipeline.LoggingObserver`) — and a rerun computes only the missing
   packets.

In a partitioned run (``OrcapodTranslatorSettings.partition_by``) the selected source nodes
carrying the partition column are pinned to the rows of the run's partition keys, and the
upstream pins are each partition's latest materialization (see
:mod:`orcapod_dagster.partitions`). A run over several partitions records each partition's own
row count, counts and preview (``context.add_asset_metadata(..., partition_key=...)``).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pyarrow as pa

from orcapod_core.databases import DeltaTableDatabase
from orcapod_core.errors import InvalidLabelError
from orcapod_core.pipeline import (
    CompositeObserver,
    ExecutionObserver,
    LoggingObserver,
    Node,
    NodeStats,
    NoOpObserver,
    Pipeline,
    RunResult,
    pinned_outputs,
    save_snapshot,
)
from orcapod_core.streams import Stream
from orcapod_dagster.checks import evaluate_checks
from orcapod_dagster.metadata import materialization_metadata, partition_metadata
from orcapod_dagster.observer import DagsterLogObserver, FailedPackets, PacketFailure
from orcapod_dagster.partitions import HIDDEN_COLUMNS, key_strings, partitioned_sources, restrict
from orcapod_dagster.store import PARTITION_BY_KEY, latest_output, latest_partition_outputs, read_partitions
from orcapod_dagster.translator import OrcapodTranslator

__all__ = ["PipelineAssets", "ON_PACKET_ERROR"]

ON_PACKET_ERROR = ("raise", "warn")
#: How many failed packets a ``no_failed_packets`` result lists (the rest are counted).
MAX_LISTED_FAILURES = 20


@dataclass
class PipelineAssets:
    """A pipeline as seen by its Dagster assets: node keys and how their steps run."""

    pipeline: Pipeline
    translator: OrcapodTranslator
    on_packet_error: str = "raise"
    orchestrator: Any = None
    function_executor: Any = None

    def __post_init__(self) -> None:
        if self.on_packet_error not in ON_PACKET_ERROR:
            raise ValueError(f"on_packet_error must be one of {ON_PACKET_ERROR}, got {self.on_packet_error!r}")
        self.keys: dict[str, dg.AssetKey] = {}
        owner: dict[dg.AssetKey, str] = {}
        for label, node in self.pipeline.nodes.items():
            key = self.translator.get_asset_key(node)
            if key in owner:
                raise InvalidLabelError(
                    f"nodes {owner[key]!r} and {label!r} of pipeline {'/'.join(self.pipeline.name)!r} both map to "
                    f"asset key {key.to_user_string()!r}; give one of them another label"
                )
            owner[key] = label
            self.keys[label] = key
        self.labels: dict[dg.AssetKey, str] = owner
        if self.partition_by is not None:
            partitioned_sources(self.pipeline, self.partition_by)  # fails early, naming the column

    @property
    def partition_by(self) -> str | None:
        """The source tag column whose values are the partition keys (``None``: unpartitioned)."""
        return self.translator.settings.partition_by

    # -- selection ---------------------------------------------------------------------
    def selected_labels(self, context: dg.AssetExecutionContext) -> list[str]:
        """The selected nodes, in topological order."""
        selected = {self.labels[k] for k in context.selected_asset_keys if k in self.labels}
        return [label for label in self.pipeline.nodes if label in selected]

    def frontier(self, labels: Sequence[str]) -> list[Node]:
        """Upstream nodes read by ``labels`` but not among them."""
        chosen = set(labels)
        seen: dict[str, Node] = {}
        for label in labels:
            for up in self.pipeline.nodes[label].upstream_nodes:
                if up.label not in chosen:
                    seen.setdefault(up.label, up)
        return [self.pipeline.nodes[label] for label in self.pipeline.nodes if label in seen]

    def partition_keys(self, context: dg.AssetExecutionContext) -> list[str] | None:
        """The partition keys of the run (``None`` when the run is not partitioned)."""
        if self.partition_by is None or not (context.has_partition_key or context.has_partition_key_range):
            return None
        return list(context.partition_keys)

    def pins_from_store(self, context: dg.AssetExecutionContext, labels: Sequence[str]) -> dict[Node, Stream]:
        """The frontier of ``labels`` read as of each node's latest materialization (in a
        partitioned run: of each of the run's partitions)."""
        consumer = ", ".join(self.keys[label].to_user_string() for label in labels)
        partitions = self.partition_keys(context)
        pins: dict[Node, Stream] = {}
        for node in self.frontier(labels):
            key = self.keys[node.label]
            if partitions is None:
                output = latest_output(context.instance, key, consumer=consumer)
                pins[node] = output.read_snapshot(node.database, layout=node.layout)
            else:
                outputs = latest_partition_outputs(context.instance, key, partitions, consumer=consumer)
                pins[node] = read_partitions(outputs, node.database, layout=node.layout)
        return pins

    def partition_pins(self, context: dg.AssetExecutionContext, labels: Sequence[str]) -> dict[Node, pa.Table]:
        """In a partitioned run, the selected source nodes carrying the partition column pinned
        to the rows of the run's partition keys."""
        partitions, column = self.partition_keys(context), self.partition_by
        if partitions is None or column is None:
            return {}
        nodes = self.pipeline.nodes
        pins = {}
        for label in labels:
            node = nodes[label]
            if node.kind == "source" and column in node.tag_columns:
                node.refresh()  # as a run would: the source's current content
                pins[node] = restrict(node.as_table(columns=HIDDEN_COLUMNS), column, partitions)
        if pins:
            shown = partitions if len(partitions) <= 10 else [*partitions[:10], "..."]
            context.log.info(f"orcapod: partition(s) {shown}: reading the rows whose {column!r} is one of them")
        return pins

    # -- the step ----------------------------------------------------------------------
    def materialize(
        self, context: dg.AssetExecutionContext, labels: Sequence[str], pins: Mapping[Node, Stream]
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        """Run ``labels`` on the pinned upstream rows and yield each node's result as it finishes."""
        # Checks selected without their asset are evaluated against what is stored.
        yield from self.stored_checks(context, skip=labels)
        if not labels:
            return
        report = _Report(self, context, labels)
        executors = self.executors(labels)
        # Snapshots are taken inside the block: partition-pinned source nodes serve the rows the run used.
        with pinned_outputs({**pins, **self.partition_pins(context, labels)}):
            run = _StepRun(
                lambda observer: self.pipeline.run(
                    orchestrator=self.orchestrator,
                    executor=executors,
                    observer=observer,
                    error_policy="continue",
                    nodes=list(labels),
                    include_upstream=False,
                    # The step log has its own lines (DagsterLogObserver); a step's stderr may
                    # still be a terminal (`dagster asset materialize` run in one).
                    progress=False,
                ),
                context.log,
                report.observers(),
            )
            # Closed on the way out too (an interrupted step, an error reporting a node): the run
            # stops at its next node or chunk and commits what it computed before the step ends.
            with contextlib.closing(run.finished_nodes()) as finished:
                for node, stats in finished:
                    yield from report.node_done(node, stats, run.run_id)
        result = run.result
        if report.failed and self.on_packet_error == "raise" and result is not None:
            lines = []
            for label in report.failed:
                stats = result.stats[label]
                example = f", e.g. {stats.errors[0]}" if stats.errors else ""
                lines.append(f"{self.keys[label].to_user_string()}: {stats.failed} failed packet(s){example}")
            raise dg.Failure(
                description="orcapod: packets failed (results of the other packets are stored; a rerun computes only the "
                "missing ones; see each asset's no_failed_packets check):\n" + "\n".join(lines),
                metadata={"orcapod/failed_assets": [self.keys[label].to_user_string() for label in report.failed]},
            )

    def executors(self, labels: Sequence[str]) -> dict[str, Any]:
        """Per selected function node, the executor its packets run on: the translator's choice
        (:meth:`~orcapod_dagster.OrcapodTranslator.get_executor`), else ``function_executor``;
        nodes without either keep their function's own executor."""
        chosen = {}
        for label in labels:
            node = self.pipeline.nodes[label]
            if node.kind == "function":
                executor = self.translator.get_executor(node) or self.function_executor
                if executor is not None:
                    chosen[label] = executor
        return chosen

    def stored_checks(self, context: dg.AssetExecutionContext, skip: Sequence[str] = ()) -> Iterator[dg.AssetCheckResult]:
        """The selected checks of assets not in ``skip``, evaluated on each asset's latest materialization."""
        blocking = self.translator.settings.blocking_failed_packets
        for check_key in context.selected_asset_check_keys:
            label = self.labels.get(check_key.asset_key)
            if label is None or label in skip or self.pipeline.nodes[label].kind != "function":
                continue
            event = context.instance.get_latest_materialization_event(check_key.asset_key)
            if event is None or event.asset_materialization is None:
                continue  # nothing materialized yet: nothing to check
            metadata = event.asset_materialization.metadata
            failed = metadata.get("orcapod/failed")
            stats = NodeStats(label, "function", failed=int(failed.value) if failed is not None else 0)
            run_id = metadata.get("orcapod/run_id")
            failures: list[PacketFailure] = []
            if stats.failed and run_id is not None:
                failures = self.logged_failures(label, str(run_id.value))
            node = self.pipeline.nodes[label]
            logs = self.logs_pointer(label, str(run_id.value)) if run_id is not None else None
            yield from evaluate_checks(
                node,  # type: ignore[arg-type]
                check_key.asset_key,
                stats,
                {check_key},
                blocking,
                failures=failures,
                logs=logs,
                run_id=str(run_id.value) if run_id is not None else None,
            )

    def logged_failures(self, label: str, run_id: str, keep: int = MAX_LISTED_FAILURES) -> list[PacketFailure]:
        """The first failed packets of node ``label`` in orcapod run ``run_id``, from the log table."""
        records = LoggingObserver.read(self.pipeline, node=label, run_id=run_id, status="failed")
        if records is None:
            return []
        rows = records.select(["tag", "traceback"]).slice(0, keep).to_pylist()
        return [PacketFailure.from_log(r["tag"], r["traceback"]) for r in rows]

    def logs_pointer(self, label: str, run_id: str) -> str:
        """Markdown: where every traceback of node ``label``'s failed packets in run ``run_id`` is."""
        path = LoggingObserver.default_record_path(self.pipeline)
        database = self.pipeline.pipeline_database
        where = database.table_uri(path) if isinstance(database, DeltaTableDatabase) else "/".join(path)
        return (
            f"Every failed packet's traceback is in the pipeline database, table `{where}` "
            f"(orcapod run `{run_id}`):\n\n```python\nfrom orcapod_core.pipeline import LoggingObserver\n"
            f"LoggingObserver.read(pipeline, node={label!r}, run_id={run_id!r}, status=\"failed\")\n```"
        )


class _QueuedLog:
    """A logger for the worker thread: lines go to the step's thread, which logs them."""

    def __init__(self, events: queue.Queue):
        self._events = events

    def __getattr__(self, level: str) -> Any:
        if level not in ("debug", "info", "warning", "error", "critical"):
            raise AttributeError(level)
        return lambda text: self._events.put(("log", level, text))


class _Stopped(Exception):
    """The step was interrupted: the run stops at its next node or chunk."""


class _NodeEnds(NoOpObserver):
    """Hands every node end to the step's thread; stops the run once the step is interrupted."""

    def __init__(self, events: queue.Queue, stop: threading.Event):
        self._events = events
        self._stop = stop
        self.run_id: str | None = None

    def _check(self) -> None:
        if self._stop.is_set():
            raise _Stopped("the Dagster step was interrupted")

    def on_run_start(self, pipeline: Any, run_id: str) -> None:
        self.run_id = run_id

    def on_node_start(self, node: Any, total: int | None) -> None:
        self._check()

    def on_node_progress(self, node: Any, done: int, total: int) -> None:
        self._check()  # after each computed chunk; what is computed is committed on the way out

    def on_node_end(self, node: Any, stats: NodeStats) -> None:
        self._events.put(("node", node, stats))


class _StepRun:
    """One pipeline run on a worker thread, followed in the step's thread as ``(node, stats)``
    per finished node (:meth:`finished_nodes`); the run's log lines are logged (to ``log``) in
    the step's thread too, so Dagster's context and the step's own writes (snapshots) stay on
    that thread. If the step is interrupted (Dagster's run termination) or closed, the run stops
    at its next node or chunk and commits what it computed before the step goes on failing."""

    def __init__(self, run: Callable[[ExecutionObserver], RunResult], log: Any, observers: Sequence[ExecutionObserver]):
        self._run = run
        self._log = log
        self._events: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._ends = _NodeEnds(self._events, self._stop)
        # The node end goes last: the other observers (failures, log records) are done with the node by then.
        self._observer = CompositeObserver(DagsterLogObserver(_QueuedLog(self._events)), *observers, self._ends)
        self.result: RunResult | None = None
        self._error: BaseException | None = None

    @property
    def run_id(self) -> str | None:
        return self._ends.run_id

    def _work(self) -> None:
        try:
            self.result = self._run(self._observer)
        except BaseException as exc:  # handed to the step's thread
            self._error = exc
        finally:
            self._events.put(("done", None, None))

    def finished_nodes(self) -> Iterator[tuple[Node, NodeStats]]:
        """Start the run; ``(node, stats)`` per node as it finishes. Closing the iterator early
        stops the run (at its next node or computed chunk) and waits for it."""
        thread = threading.Thread(target=self._work, name="orcapod-step-run", daemon=True)
        thread.start()
        try:
            while True:
                try:
                    kind, first, second = self._events.get(timeout=0.25)  # a timeout: interrupts reach this thread
                except queue.Empty:
                    continue
                if kind == "log":
                    getattr(self._log, first)(second)
                elif kind == "node":
                    yield first, second
                else:
                    break
        finally:
            self._stop.set()
            thread.join()
        if self._error is not None:
            raise self._error


class _PartitionCalls(NoOpObserver):
    """Per node, the partition key (column value) of every computed and every failed packet."""

    def __init__(self, column: str):
        self.column = column
        self._lock = threading.Lock()
        self.computed: dict[str, list[Any]] = {}
        self.failed: dict[str, list[Any]] = {}

    def _note(self, into: dict[str, list[Any]], node: Any, tag: Any) -> None:
        value = dict(tag).get(self.column)
        with self._lock:
            into.setdefault(node.label, []).append(value)

    def on_packet_end(self, node: Any, tag: Any, packet: Any, output: Any, cached: bool, captured: dict[str, str] | None = None) -> None:
        if not cached:
            self._note(self.computed, node, tag)

    def on_packet_crash(self, node: Any, tag: Any, packet: Any, error: BaseException, captured: dict[str, str] | None = None) -> None:
        self._note(self.failed, node, tag)

    def counts(self, label: str) -> tuple[dict[str, int], dict[str, int]]:
        """``({partition: computed}, {partition: failed})`` of node ``label``."""

        def by_key(values: list[Any]) -> dict[str, int]:
            values = [v for v in values if v is not None]
            if not values:
                return {}
            keys = key_strings(pa.table({self.column: pa.array(values)}), self.column).to_pylist()
            return dict(Counter(keys))

        with self._lock:
            return by_key(self.computed.get(label, [])), by_key(self.failed.get(label, []))


class _Report:
    """What one step reports about the nodes it runs, node by node as they finish."""

    def __init__(self, assets: PipelineAssets, context: dg.AssetExecutionContext, labels: Sequence[str]):
        self.assets = assets
        self.context = context
        self.selected = set(labels)
        self.checks = set(context.selected_asset_check_keys)
        self.blocking = assets.translator.settings.blocking_failed_packets
        self.partitions = assets.partition_keys(context)
        self.failures = FailedPackets(keep=MAX_LISTED_FAILURES)
        self.tracebacks = LoggingObserver(capture_output=False, failures_only=True)
        column = assets.partition_by
        self.partition_calls = _PartitionCalls(column) if column is not None and self.partitions and len(self.partitions) > 1 else None
        self.failed: list[str] = []  # in the order they finished
        self._tainted: set[str] = set()  # failed, or downstream of a failed node

    def observers(self) -> list[ExecutionObserver]:
        chosen: list[ExecutionObserver] = [self.failures, self.tracebacks]
        if self.partition_calls is not None:
            chosen.append(self.partition_calls)
        return chosen

    def _withheld(self, label: str, failed: bool, upstream: list[str]) -> str | None:
        """Why node ``label`` is not materialized (``None``: it is). With ``"raise"``, failed
        nodes and what is downstream of them are withheld; with a blocking check, what is
        downstream of failed nodes."""
        assets = self.assets
        if assets.on_packet_error == "raise" and (failed or upstream):
            return "it has failed packets" if failed else f"upstream {', '.join(upstream)} has failed packets"
        if assets.on_packet_error == "warn" and self.blocking and upstream:
            return f"upstream {', '.join(upstream)} failed its blocking no_failed_packets check"
        return None

    def node_done(self, node: Node, stats: NodeStats, run_id: str | None) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        label = node.label
        if label not in self.selected:
            return
        assets, key = self.assets, self.assets.keys[node.label]
        failed = node.kind == "function" and stats.failed > 0
        upstream = [assets.keys[up.label].to_user_string() for up in node.upstream_nodes if up.label in self._tainted]
        if failed:
            self.failed.append(label)
        if failed or upstream:
            self._tainted.add(label)
        checks: list[dg.AssetCheckResult] = []
        withheld = self._withheld(label, failed, upstream)
        if node.kind == "function":
            logs = assets.logs_pointer(label, run_id) if failed and run_id is not None else None
            checks = evaluate_checks(
                node,  # type: ignore[arg-type]
                key,
                stats,
                self.checks,
                self.blocking,
                failures=self.failures.of(label),
                logs=logs,
                run_id=run_id,
                withheld=withheld,
            )
        if withheld is not None:
            yield from checks  # evaluated, never "execution failed" — the step fails afterwards
            return
        snapshot = save_snapshot(node)
        metadata = materialization_metadata(node, stats, snapshot, run_id=run_id)
        if self.partitions:
            metadata[PARTITION_BY_KEY] = dg.MetadataValue.text(assets.partition_by)
        self._partition_metadata(node, key)
        yield dg.MaterializeResult(
            asset_key=key,
            metadata=metadata,
            data_version=dg.DataVersion(snapshot.data_version),
            check_results=checks,
        )

    def _partition_metadata(self, node: Node, key: dg.AssetKey) -> None:
        """In a run over several partitions, each partition's own row count, counts and preview
        (the run's snapshot and data version are shared by its partitions)."""
        column, partitions = self.assets.partition_by, self.partitions
        if self.partition_calls is None or column is None or not partitions or column not in node.tag_columns:
            return
        if pa.types.is_list(node.layout.schema.field(column).type) or pa.types.is_large_list(node.layout.schema.field(column).type):
            return  # batched: a row belongs to several partitions
        computed, failed = self.partition_calls.counts(node.label)
        per_partition = partition_metadata(node, node.as_table(), column, partitions, computed, failed)
        for partition, metadata in per_partition.items():
            self.context.add_asset_metadata(metadata, asset_key=key, partition_key=partition)
