"""orcapod run events in a Dagster step: step log lines, and the failed packets a step reports.

* :class:`DagsterLogObserver` — lines for what a user follows in the step log, and only those
  (every line is an event Dagster stores: a 400-node run logging two lines per node spent
  seconds on them): a function node that computes says so when it starts computing, then
  throttled progress (one line every ``every_s`` seconds) and its end (rows, computed vs cached
  and failed, time); packet failures (tag and error, the first ``max_failure_logs`` per node);
  one summary line per run (nodes, calls, rows served from the store). Nodes that only read
  the store (sources, operators, function nodes served entirely from stored results) add no
  line of their own. Tag values and lines are cut to a readable length (a batch's tag holds a
  whole list of values).
* :class:`FailedPackets` — per node, the number of failed packets and the first ``keep`` of them
  as :class:`PacketFailure` (tag, exception type, message, the last frames of the traceback in the
  user's code), for the ``no_failed_packets`` check.

>>> pipeline.run(observer=DagsterLogObserver(context.log))     # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import sysconfig
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orcapod_core
from orcapod_core.capture import RemoteError, captured_of
from orcapod_core.pipeline import NodeStats, NoOpObserver
from orcapod_core.pipeline.observers import count_text

__all__ = ["DagsterLogObserver", "FailedPackets", "PacketFailure", "tag_text", "user_frames"]

#: Longest shown tag value and log line (characters): a batch's tag is a list of every value.
MAX_VALUE_CHARS = 80
MAX_LINE_CHARS = 1000


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def tag_text(tag: Mapping[str, Any], max_value: int = MAX_VALUE_CHARS) -> str:
    """A tag as ``{'id': 3, 'site': 'north'}`` with every value's repr cut to ``max_value``
    characters.

    >>> tag_text({"id": 3, "ids": list(range(100))}, max_value=20)
    "{'id': 3, 'ids': [0, 1, 2, 3, 4, 5, …}"
    """
    return "{" + ", ".join(f"{k!r}: {_cut(repr(v), max_value)}" for k, v in tag.items()) + "}"


class DagsterLogObserver(NoOpObserver):
    """Forwards node events, packet failures and throttled progress to a Dagster logger."""

    def __init__(self, log: Any, every_s: float = 5.0, max_failure_logs: int = 20, max_line_chars: int = MAX_LINE_CHARS):
        self.log = log
        self.every_s = every_s
        self.max_failure_logs = max_failure_logs
        self.max_line_chars = max_line_chars
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._computing: set[str] = set()

    def _line(self, level: str, text: str) -> None:
        getattr(self.log, level)(_cut(text, self.max_line_chars))

    def on_node_start(self, node: Any, total: int | None) -> None:
        with self._lock:
            self._started[node.label] = self._last[node.label] = time.perf_counter()
            self._failures[node.label] = 0

    def on_node_progress(self, node: Any, done: int, total: int) -> None:
        # The first event says the node computes; later ones are throttled (the async
        # orchestrator's ``total`` grows batch by batch, so ``done == total`` after each batch);
        # the node's end line has the final counts.
        now = time.perf_counter()
        with self._lock:
            first = node.label not in self._computing
            if not first and now - self._last.get(node.label, 0.0) < self.every_s:
                return
            self._computing.add(node.label)
            self._last[node.label] = now
            elapsed = max(now - self._started.get(node.label, now), 1e-9)
        if first:
            self._line("info", f"orcapod: {node.label} [{node.kind}] computing {total} new packets")  # (after its first chunk)
        else:
            self._line("info", f"orcapod: {node.label}: computed {done}/{total} new packets ({done / elapsed:,.1f}/s)")

    def on_packet_crash(self, node: Any, tag: Any, packet: Any, error: BaseException, captured: dict[str, str] | None = None) -> None:
        with self._lock:
            seen = self._failures.get(node.label, 0) + 1
            self._failures[node.label] = seen
        if seen <= self.max_failure_logs:
            failure = PacketFailure.of(tag, error, captured)
            self._line("warning", f"orcapod: {node.label}: packet with tag {failure.tag} failed: {failure.error_type}: {failure.message}")
        elif seen == self.max_failure_logs + 1:
            self._line("warning", f"orcapod: {node.label}: more packets failed; see the asset's no_failed_packets check")

    def on_node_end(self, node: Any, stats: NodeStats) -> None:
        if not (stats.computed or stats.failed or node.label in self._computing):
            return  # served from the store: the run's summary counts it
        line = f"orcapod: {stats.label} [{stats.kind}] done: {stats.total} rows{count_text(stats)} in {stats.duration_s:.2f}s"
        self._line("warning" if stats.failed else "info", line)

    def on_run_end(self, pipeline: Any, run_id: str, stats: dict[str, NodeStats], error: BaseException | None) -> None:
        functions = [s for s in stats.values() if s.kind == "function"]
        calls = sum(s.computed for s in functions)
        cached = sum(s.cached for s in functions)
        failed = sum(s.failed for s in functions)
        took = sum(s.duration_s for s in stats.values())
        ended = "stopped by an error" if error is not None else "done"
        self._line(
            "warning" if failed or error is not None else "info",
            f"orcapod: run {ended}: {len(stats)} nodes ({len(functions)} function nodes: {calls} computed, {cached} cached, "
            f"{failed} failed) in {took:.2f}s",
        )


# -- failed packets -------------------------------------------------------------------------

_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<function>.+)$')
_MARKERS = re.compile(r"^[\s~^]*$")  # the ``^^^^`` lines under a frame's code (Python 3.11+)
_INTERNAL_DIRS = tuple(
    os.path.dirname(os.path.abspath(p)) + os.sep
    for p in (orcapod_core.__file__, __file__, sysconfig.get_paths()["stdlib"] + os.sep + "x")
)
# Frames of another machine or environment (a Ray worker) are recognised by these parts.
_INTERNAL_PARTS = (f"{os.sep}orcapod_core{os.sep}", f"{os.sep}orcapod_dagster{os.sep}", f"{os.sep}ray{os.sep}", "<frozen ")


def _internal(file: str) -> bool:
    return file.startswith(_INTERNAL_DIRS) or any(part in file for part in _INTERNAL_PARTS)


def _shown_path(file: str) -> str:
    relative = os.path.relpath(file, os.getcwd()) if os.path.isabs(file) else file
    return file if relative.startswith("..") else relative


def _installed(file: str) -> bool:
    return f"{os.sep}site-packages{os.sep}" in file or f"{os.sep}dist-packages{os.sep}" in file


def user_frames(traceback_text: str, keep: int = 3) -> list[str]:
    """The last ``keep`` frames of a formatted traceback that are in the user's code (not in
    orcapod, the standard library or Ray; frames of installed libraries such as numpy only when
    no other frame is left), as ``file:line in function: code``; paths under the working
    directory are shown relative to it.

    >>> user_frames('Traceback (most recent call last):\\n  File "/src/fns.py", line 7, in score\\n    return 1 / x\\nZeroDivisionError: division by zero\\n')
    ['/src/fns.py:7 in score: return 1 / x']
    """
    frames: list[tuple[bool, str]] = []
    lines = traceback_text.splitlines()
    for i, line in enumerate(lines):
        match = _FRAME.match(line)
        if match is None or _internal(match["file"]):
            continue
        following = lines[i + 1] if i + 1 < len(lines) else ""
        # The frame's code line is indented under it (absent for code without source).
        code = following.strip() if following.startswith(" ") and not _FRAME.match(following) else ""
        if _MARKERS.match(code):
            code = ""
        where = f"{_shown_path(match['file'])}:{match['line']} in {match['function']}"
        frames.append((_installed(match["file"]), f"{where}: {_cut(code, 160)}" if code else where))
    own = [text for installed, text in frames if not installed]
    chosen = own or [text for _, text in frames]
    return chosen[-keep:] if keep else []


@dataclass(frozen=True)
class PacketFailure:
    """One failed packet as a step reports it: its tag (values cut to a readable length), the
    exception's type and message, and the last frames of its traceback in the user's code."""

    tag: str
    error_type: str
    message: str
    frames: tuple[str, ...] = ()

    @classmethod
    def of(cls, tag: Any, error: BaseException, captured: Mapping[str, str] | None = None) -> PacketFailure:
        """The failure of a packet whose function raised ``error`` (in this process or a worker)."""
        if isinstance(error, RemoteError):  # an exception that could not travel back as it was
            error_type, message = error.type_name, error.message
        else:
            error_type, message = type(error).__name__, str(error)
        text = (captured or {}).get("traceback") or captured_of(error)["traceback"]
        return cls(tag_text(dict(tag)), error_type, _cut(message, 500), tuple(user_frames(text)))

    @classmethod
    def from_log(cls, tag_json: str, traceback_text: str) -> PacketFailure:
        """The failure as :class:`~orcapod_core.pipeline.LoggingObserver` stored it."""
        import json

        try:
            tag = json.loads(tag_json)
        except (TypeError, ValueError):
            tag = {"tag": tag_json}
        last = next((line for line in reversed(traceback_text.splitlines()) if line.strip()), "")
        error_type, _, message = last.partition(": ")
        return cls(tag_text(tag), error_type.strip() or "Exception", _cut(message.strip(), 500), tuple(user_frames(traceback_text)))


@dataclass
class _NodeFailures:
    count: int = 0
    first: list[PacketFailure] = field(default_factory=list)


class FailedPackets(NoOpObserver):
    """Collects, per node and run, the number of failed packets and the first ``keep`` of them."""

    def __init__(self, keep: int = 20):
        self.keep = keep
        self._lock = threading.Lock()
        self._nodes: dict[str, _NodeFailures] = {}

    def on_node_start(self, node: Any, total: int | None) -> None:
        with self._lock:
            self._nodes[node.label] = _NodeFailures()

    def on_packet_crash(self, node: Any, tag: Any, packet: Any, error: BaseException, captured: dict[str, str] | None = None) -> None:
        with self._lock:
            entry = self._nodes.setdefault(node.label, _NodeFailures())
            entry.count += 1
            keep = len(entry.first) < self.keep
        if keep:
            failure = PacketFailure.of(tag, error, captured)
            with self._lock:
                entry.first.append(failure)

    def of(self, label: str) -> list[PacketFailure]:
        """The first failures of node ``label`` in this run."""
        with self._lock:
            entry = self._nodes.get(label)
            return list(entry.first) if entry else []
