"""Execution observers: how a pipeline run reports what it does.

Orchestrators and nodes call these hooks; ``on_run_end`` always fires (try/finally).
Per-packet hooks (start/end/crash, with Tag and Packet objects) fire for packets that are
computed, and only for observers that want them (``wants_packet_events``: true when a
subclass overrides a packet hook). Packets served from the store are reported in bulk
through ``on_node_end``'s stats — a warm run over a million rows builds no per-row
objects. An observer that needs failures only (a live display counting them) sets
``wants_packet_events = False`` and keeps ``wants_failure_events``: ``on_packet_crash`` then
fires for failed packets alone, and no object is built for the packets that succeed.

Counts:

* ``on_node_start(node, total)``: ``total`` is the node's number of input rows, or ``None``
  when it is not known yet — only under the async orchestrator, for a function node whose
  input streams from another function node (still computing). With the sync orchestrator,
  and for inputs from source and operator nodes, it is always the exact count.
* ``on_node_progress(node, done, total)``: after each computed chunk, ``done`` new packets
  (distinct input packets) computed so far in this node run, of ``total`` found missing so
  far. Under the sync orchestrator ``total`` is known from the first event; under the async
  one a streaming node finds missing packets batch by batch, so ``total`` may grow between
  events (it is exact once the input is complete). Both are cumulative over the whole run.
* ``on_node_end(node, stats)``: the exact rows / computed / cached / failed counts. Under
  either orchestrator the node is done by then: its rows (and, for a function node, their
  entry ids and missing packets) are the run's, so an observer may snapshot it right away.

>>> pipeline.run(observer=CompositeObserver(ProgressObserver(), my_observer))  # doctest: +SKIP
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO, runtime_checkable

__all__ = [
    "NodeStats",
    "RunResult",
    "ExecutionObserver",
    "NoOpObserver",
    "CompositeObserver",
    "StatusObserver",
    "ProgressObserver",
    "LoggingObserver",
    "format_summary",
    "text_table",
    "count_text",
    "wants_failures",
]


@dataclass
class NodeStats:
    """What one node did in one run."""

    label: str
    kind: str
    total: int = 0
    computed: int = 0
    cached: int = 0
    failed: int = 0
    duration_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "kind": self.kind,
            "total": self.total,
            "computed": self.computed,
            "cached": self.cached,
            "failed": self.failed,
            "duration_s": round(self.duration_s, 6),
        }


@dataclass
class RunResult:
    """What ``pipeline.run()`` did: per-node stats and totals."""

    run_id: str
    stats: dict[str, NodeStats]
    duration_s: float = 0.0
    error: BaseException | None = field(default=None, repr=False)

    @property
    def failed(self) -> int:
        return sum(s.failed for s in self.stats.values())

    @property
    def computed(self) -> int:
        return sum(s.computed for s in self.stats.values())

    @property
    def cached(self) -> int:
        return sum(s.cached for s in self.stats.values())

    def summary(self) -> str:
        """The per-node summary table as text."""
        return format_summary(self.stats.values())


@runtime_checkable
class ExecutionObserver(Protocol):
    """Receives run, node and packet events. Implement only what you need by subclassing
    :class:`NoOpObserver`."""

    wants_packet_events: bool
    wants_captured_output: bool

    def on_run_start(self, pipeline: Any, run_id: str) -> None: ...

    def on_run_end(self, pipeline: Any, run_id: str, stats: dict[str, NodeStats], error: BaseException | None) -> None: ...

    def on_node_start(self, node: Any, total: int | None) -> None: ...

    def on_node_end(self, node: Any, stats: NodeStats) -> None: ...

    def on_node_progress(self, node: Any, done: int, total: int) -> None: ...

    def on_packet_start(self, node: Any, tag: Any, packet: Any) -> None: ...

    def on_packet_end(self, node: Any, tag: Any, packet: Any, output: Any, cached: bool, captured: dict[str, str] | None = None) -> None: ...

    def on_packet_crash(self, node: Any, tag: Any, packet: Any, error: BaseException, captured: dict[str, str] | None = None) -> None: ...


_PACKET_HOOKS = ("on_packet_start", "on_packet_end", "on_packet_crash")


def wants_failures(observer: Any) -> bool:
    """Whether ``observer`` takes ``on_packet_crash`` events (every packet's events, or failures
    only); observers written before ``wants_failure_events`` existed follow ``wants_packet_events``."""
    return bool(getattr(observer, "wants_packet_events", True) or getattr(observer, "wants_failure_events", False))


class NoOpObserver:
    """Ignores everything; the base to subclass (override only the hooks you need)."""

    wants_captured_output = False

    @property
    def wants_packet_events(self) -> bool:
        """True when a subclass overrides a per-packet hook."""
        return any(getattr(type(self), h) is not getattr(NoOpObserver, h) for h in _PACKET_HOOKS)

    @property
    def wants_failure_events(self) -> bool:
        """True when a subclass overrides ``on_packet_crash`` (or wants every packet event)."""
        return self.wants_packet_events or type(self).on_packet_crash is not NoOpObserver.on_packet_crash

    def on_run_start(self, pipeline: Any, run_id: str) -> None:
        pass

    def on_run_end(self, pipeline: Any, run_id: str, stats: dict[str, NodeStats], error: BaseException | None) -> None:
        pass

    def on_node_start(self, node: Any, total: int | None) -> None:
        pass

    def on_node_end(self, node: Any, stats: NodeStats) -> None:
        pass

    def on_node_progress(self, node: Any, done: int, total: int) -> None:
        pass

    def on_packet_start(self, node: Any, tag: Any, packet: Any) -> None:
        pass

    def on_packet_end(self, node: Any, tag: Any, packet: Any, output: Any, cached: bool, captured: dict[str, str] | None = None) -> None:
        pass

    def on_packet_crash(self, node: Any, tag: Any, packet: Any, error: BaseException, captured: dict[str, str] | None = None) -> None:
        pass


class CompositeObserver(NoOpObserver):
    """Forwards every event to several observers, in order."""

    def __init__(self, *observers: ExecutionObserver | None):
        self.observers = [o for o in observers if o is not None]

    @property
    def wants_packet_events(self) -> bool:  # type: ignore[override]
        return any(o.wants_packet_events for o in self.observers)

    @property
    def wants_failure_events(self) -> bool:  # type: ignore[override]
        return any(wants_failures(o) for o in self.observers)

    @property
    def wants_captured_output(self) -> bool:  # type: ignore[override]
        return any(o.wants_captured_output for o in self.observers)

    def _each(self, name: str, *args: Any, **kwargs: Any) -> None:
        for o in self.observers:
            getattr(o, name)(*args, **kwargs)

    def on_run_start(self, *a: Any, **k: Any) -> None:
        self._each("on_run_start", *a, **k)

    def on_run_end(self, *a: Any, **k: Any) -> None:
        self._each("on_run_end", *a, **k)

    def on_node_start(self, *a: Any, **k: Any) -> None:
        self._each("on_node_start", *a, **k)

    def on_node_end(self, *a: Any, **k: Any) -> None:
        self._each("on_node_end", *a, **k)

    def on_node_progress(self, *a: Any, **k: Any) -> None:
        self._each("on_node_progress", *a, **k)

    def _packet_event(self, name: str, *args: Any) -> None:
        for o in self.observers:
            if o.wants_packet_events:
                getattr(o, name)(*args)

    def on_packet_start(self, *a: Any) -> None:
        self._packet_event("on_packet_start", *a)

    def on_packet_end(self, *a: Any) -> None:
        self._packet_event("on_packet_end", *a)

    def on_packet_crash(self, *a: Any) -> None:
        for o in self.observers:
            if wants_failures(o):
                o.on_packet_crash(*a)


class StatusObserver(NoOpObserver):
    """Keeps the live status of a run in memory: per-node state and counts, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.run_id: str | None = None
        self.state = "idle"
        self.nodes: dict[str, dict[str, Any]] = {}
        self.failures: list[dict[str, str]] = []

    def on_run_start(self, pipeline: Any, run_id: str) -> None:
        with self._lock:
            self.run_id, self.state, self.nodes, self.failures = run_id, "running", {}, []

    def on_run_end(self, pipeline: Any, run_id: str, stats: dict[str, NodeStats], error: BaseException | None) -> None:
        with self._lock:
            self.state = "failed" if error is not None else "succeeded"

    def on_node_start(self, node: Any, total: int | None) -> None:
        with self._lock:  # total None: not known yet (see the module notes); set at node end
            self.nodes[node.label] = {"state": "running", "total": total, "done": 0, "failed": 0}

    def on_node_progress(self, node: Any, done: int, total: int) -> None:
        with self._lock:
            self.nodes.setdefault(node.label, {"state": "running", "total": 0, "done": 0, "failed": 0})["done"] = done

    def on_packet_crash(self, node: Any, tag: Any, packet: Any, error: BaseException, captured: dict[str, str] | None = None) -> None:
        with self._lock:
            entry = self.nodes.setdefault(node.label, {"state": "running", "total": 0, "done": 0, "failed": 0})
            entry["failed"] += 1
            self.failures.append({"node": node.label, "tag": repr(dict(tag)), "error": repr(error)})

    def on_node_end(self, node: Any, stats: NodeStats) -> None:
        with self._lock:
            self.nodes[node.label] = {**stats.as_dict(), "state": "failed" if stats.failed else "done"}


class ProgressObserver(NoOpObserver):
    """Terminal progress: per-node computed/total and rate while computing (throttled to
    ``every_s``), a line per finished node (rows, computed vs cached, failed, time), and a
    summary table at run end."""

    def __init__(self, stream: TextIO | None = None, every_s: float = 1.0):
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}
        self._last = 0.0

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def on_node_start(self, node: Any, total: int | None) -> None:
        with self._lock:
            self._started[node.label] = time.perf_counter()

    def on_node_progress(self, node: Any, done: int, total: int) -> None:
        # Every report is throttled, the last one too: under the async orchestrator ``done``
        # reaches the (growing) ``total`` after every batch; the node's end line has the counts.
        now = time.perf_counter()
        with self._lock:
            if now - self._last < self.every_s:
                return
            self._last = now
            elapsed = max(now - self._started.get(node.label, now), 1e-9)
        self._print(f"  {node.label}: computed {done}/{total} new packets ({done / elapsed:,.0f}/s)")

    def on_node_end(self, node: Any, stats: NodeStats) -> None:
        rate = stats.total / stats.duration_s if stats.duration_s > 0 else float("inf")
        self._print(f"  {stats.label} [{stats.kind}]: {stats.total} rows{count_text(stats)} in {stats.duration_s:.2f}s ({rate:,.0f} rows/s)")

    def on_run_end(self, pipeline: Any, run_id: str, stats: dict[str, NodeStats], error: BaseException | None) -> None:
        self._print(format_summary(stats.values()))
        if error is not None:
            self._print(f"run {run_id} failed: {''.join(traceback.format_exception_only(error)).strip()}")


class LoggingObserver(NoOpObserver):
    """Stores one log record per computed packet — captured stdout, stderr and (for failures)
    the traceback — in the pipeline database, in batches.

    Records go to ``record_path`` (default ``(*pipeline name, "_logs")``) with columns
    ``node``, ``run_id``, ``tag`` (JSON), ``status`` (``ok``/``failed``), ``stdout``,
    ``stderr``, ``traceback``, ``logged_at``. A failed packet's traceback is the one raised
    where the function ran (a worker process's or a Ray task's included).

    ``capture_output=False`` leaves the functions' stdout/stderr where they go anyway (e.g. a
    Dagster step's compute logs) and records tracebacks only; ``failures_only=True`` records
    failed packets only (a run without failures writes nothing).

    >>> pipeline.run(observer=LoggingObserver())                 # doctest: +SKIP
    >>> LoggingObserver.read(pipeline, node="scored", status="failed")   # doctest: +SKIP
    """

    def __init__(
        self,
        database: Any = None,
        record_path: tuple[str, ...] | None = None,
        batch_size: int = 1000,
        *,
        capture_output: bool = True,
        failures_only: bool = False,
    ):
        self.database = database
        self.record_path = record_path
        self.batch_size = batch_size
        self.capture_output = capture_output
        self.failures_only = failures_only
        self._rows: list[dict[str, Any]] = []
        self._run_id = ""
        self._lock = threading.Lock()

    @property
    def wants_captured_output(self) -> bool:  # type: ignore[override]
        return self.capture_output

    @staticmethod
    def default_record_path(pipeline: Any) -> tuple[str, ...]:
        """Where a pipeline's log records go by default: ``(*pipeline name, "_logs")``."""
        return (*pipeline.name, "_logs")

    def on_run_start(self, pipeline: Any, run_id: str) -> None:
        if self.database is None:
            self.database = pipeline.pipeline_database
        if self.record_path is None:
            self.record_path = self.default_record_path(pipeline)
        self._run_id = run_id

    def _add(self, node: Any, tag: Any, status: str, captured: dict[str, str] | None, error: BaseException | None) -> None:
        import datetime
        import json

        from orcapod_core.capture import captured_of

        captured = captured or {}
        tb = captured.get("traceback") or (captured_of(error)["traceback"] if error is not None else "")
        row = {
            "node": node.label,
            "run_id": self._run_id,
            "tag": json.dumps(dict(tag), sort_keys=True, default=str),
            "status": status,
            "stdout": captured.get("stdout", ""),
            "stderr": captured.get("stderr", ""),
            "traceback": tb,
            "logged_at": datetime.datetime.now(datetime.UTC).replace(tzinfo=None),
        }
        with self._lock:
            self._rows.append(row)
            full = len(self._rows) >= self.batch_size
        if full:
            self.flush()

    def on_packet_end(self, node: Any, tag: Any, packet: Any, output: Any, cached: bool, captured: dict[str, str] | None = None) -> None:
        if not cached and not self.failures_only:
            self._add(node, tag, "ok", captured, None)

    def on_packet_crash(self, node: Any, tag: Any, packet: Any, error: BaseException, captured: dict[str, str] | None = None) -> None:
        self._add(node, tag, "failed", captured, error)

    def on_node_end(self, node: Any, stats: NodeStats) -> None:
        self.flush()

    def on_run_end(self, pipeline: Any, run_id: str, stats: dict[str, NodeStats], error: BaseException | None) -> None:
        self.flush()

    def flush(self) -> None:
        """Write buffered log records (one batch) to the database."""
        import uuid

        import pyarrow as pa

        with self._lock:
            rows, self._rows = self._rows, []
        if not rows or self.database is None or self.record_path is None:
            return
        table = pa.Table.from_pylist(rows)
        ids = pa.array([uuid.uuid4().hex for _ in rows], pa.large_string())
        table = table.add_column(0, "__record_id", ids)
        self.database.add_records(self.record_path, table, flush=True)

    @staticmethod
    def read(
        pipeline: Any,
        record_path: tuple[str, ...] | None = None,
        *,
        node: str | None = None,
        run_id: str | None = None,
        status: str | None = None,
    ) -> Any:
        """The stored log records of ``pipeline`` (a pyarrow Table, or ``None`` when nothing was
        logged), optionally only those of one ``node`` label, one ``run_id`` and one ``status``
        (``"ok"`` / ``"failed"``).

        >>> LoggingObserver.read(pipeline, node="scored", run_id=result.run_id)   # doctest: +SKIP
        """
        path = record_path or LoggingObserver.default_record_path(pipeline)
        equals = {k: v for k, v in (("node", node), ("run_id", run_id), ("status", status)) if v is not None}
        database = pipeline.pipeline_database
        return database.get_records_where(path, equals) if equals else database.get_all_records(path)


def count_text(stats: NodeStats) -> str:
    """`` — 2 computed, 1 cached, 0 failed`` for a function node; empty for the others (sources
    and operators make no calls: counts would be meaningless zeros).

    >>> count_text(NodeStats("scored", "function", total=3, computed=2, cached=1))
    ' — 2 computed, 1 cached, 0 failed'
    """
    if stats.kind != "function":
        return ""
    return f" — {stats.computed} computed, {stats.cached} cached, {stats.failed} failed"


def format_summary(stats: Iterable[NodeStats]) -> str:
    """A plain-text per-node summary table (what :meth:`RunResult.summary` returns and a run in a
    terminal prints at its end); computed/cached/failed are shown for function nodes only (``-``
    for the others: they make no calls and memoize nothing).

    >>> print(format_summary([NodeStats("scored", "function", total=3, computed=2, cached=1, duration_s=0.5)]))
    node    kind      rows  computed  cached  failed  seconds
    ------  --------  ----  --------  ------  ------  -------
    scored  function     3         2       1       0     0.50
    """
    rows = []
    for s in stats:
        counts = [str(s.computed), str(s.cached), str(s.failed)] if s.kind == "function" else ["-", "-", "-"]
        rows.append((s.label, s.kind, str(s.total), *counts, f"{s.duration_s:.2f}"))
    return text_table(("node", "kind", "rows", "computed", "cached", "failed", "seconds"), rows)


def text_table(
    header: Sequence[str], rows: Iterable[Sequence[str]], *, left: Collection[int] = (0, 1), footer: Sequence[str] | None = None
) -> str:
    """A plain-text table with aligned columns — the columns numbered in ``left`` (names)
    left-aligned, the others (numbers) right-aligned — a rule under the header and, with a
    ``footer`` row, a rule above it. The layout of :func:`format_summary`, for other summaries
    (``python -m example_project.summary``) to share.

    >>> print(text_table(("node", "rows"), [("a", "10"), ("bb", "2")], left=(0,), footer=("total", "12")))
    node   rows
    -----  ----
    a        10
    bb        2
    -----  ----
    total    12
    """
    body = [tuple(r) for r in rows]
    every = [tuple(header), *body, *([tuple(footer)] if footer is not None else [])]
    widths = [max(len(r[i]) for r in every) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = [line(header), rule, *map(line, body)]
    if footer is not None:
        lines += [rule, line(footer)]
    return "\n".join(lines)
