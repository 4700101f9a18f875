"""DagsterLogObserver: orcapod run events as lines in the Dagster step log.

Node start and end (rows, computed vs cached, failed, time), packet failures (tag and error,
the first ``max_failure_logs`` per node) and computing progress throttled to one line every
``every_s`` seconds per node.

>>> pipeline.run(observer=DagsterLogObserver(context.log))     # doctest: +SKIP
"""

from __future__ import annotations

import threading
import time
from typing import Any

from orcapod_core.pipeline import NodeStats, NoOpObserver

__all__ = ["DagsterLogObserver"]


class DagsterLogObserver(NoOpObserver):
    """Forwards node events, packet failures and throttled progress to a Dagster logger."""

    def __init__(self, log: Any, every_s: float = 5.0, max_failure_logs: int = 20):
        self.log = log
        self.every_s = every_s
        self.max_failure_logs = max_failure_logs
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._failures: dict[str, int] = {}

    def on_node_start(self, node: Any, total: int | None) -> None:
        with self._lock:
            self._started[node.label] = self._last[node.label] = time.perf_counter()
            self._failures[node.label] = 0
        # total None: the input streams from a function node (async orchestrator), count unknown yet
        rows = f"{total} input rows" if total is not None else "streamed input rows"
        self.log.info(f"orcapod: {node.label} [{node.kind}] started on {rows}")

    def on_node_progress(self, node: Any, done: int, total: int) -> None:
        # Throttled always (the async orchestrator's ``total`` grows batch by batch, so
        # ``done == total`` after each batch); the node's end line has the final counts.
        now = time.perf_counter()
        with self._lock:
            if now - self._last.get(node.label, 0.0) < self.every_s:
                return
            self._last[node.label] = now
            elapsed = max(now - self._started.get(node.label, now), 1e-9)
        self.log.info(f"orcapod: {node.label}: computed {done}/{total} new packets ({done / elapsed:,.1f}/s)")

    def on_packet_crash(self, node: Any, tag: Any, packet: Any, error: BaseException, captured: dict[str, str] | None = None) -> None:
        with self._lock:
            seen = self._failures.get(node.label, 0) + 1
            self._failures[node.label] = seen
        if seen <= self.max_failure_logs:
            self.log.warning(f"orcapod: {node.label}: packet with tag {dict(tag)} failed: {type(error).__name__}: {error}")
        elif seen == self.max_failure_logs + 1:
            self.log.warning(f"orcapod: {node.label}: more packets failed; see the asset's orcapod/failed count")

    def on_node_end(self, node: Any, stats: NodeStats) -> None:
        line = (
            f"orcapod: {stats.label} [{stats.kind}] done: {stats.total} rows, {stats.computed} computed, "
            f"{stats.cached} cached, {stats.failed} failed in {stats.duration_s:.2f}s"
        )
        (self.log.warning if stats.failed else self.log.info)(line)
