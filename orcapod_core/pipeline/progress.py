"""What ``pipeline.run()`` shows while it runs: a live per-node display in a terminal.

``run(progress="auto")`` (the default) shows :class:`LiveProgress` on stderr when stderr is a
terminal and no observer is given; nothing when stderr is not a terminal (a log file, a pipe,
pytest, a Dagster step — orcapod_dagster passes ``progress=False`` and logs its own lines).
``progress=True`` shows it next to the observer given (plain
:class:`~orcapod_core.pipeline.observers.ProgressObserver` lines when stderr is not a
terminal); ``progress=False`` never shows anything.

The display is built from the ordinary observer events: ``on_node_start`` (input rows),
``on_node_progress`` (distinct packets computed / to compute, after each computed chunk —
also when a process pool or Ray computes them), ``on_packet_crash`` (failures only: no
per-packet objects are built for it) and ``on_node_end`` (the exact counts). Handling an event
sets a few integers; drawing happens on rich's refresh thread a few times a second, so the
cost does not grow with the number of packets.

>>> pipeline.run()                           # in a terminal: live display + summary   # doctest: +SKIP
>>> pipeline.run(progress=False).summary()   # the same summary as text                 # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, TextIO

from orcapod_core.errors import InputValidationError
from orcapod_core.pipeline.observers import CompositeObserver, ExecutionObserver, NodeStats, NoOpObserver, ProgressObserver, count_text, format_summary

__all__ = ["LiveProgress", "progress_observer", "is_terminal"]

#: Running nodes shown at once (the async orchestrator runs every node concurrently).
MAX_SHOWN_NODES = 12
BAR_WIDTH = 20


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal a live display can redraw (not a file, a
    pipe, a closed stream or ``TERM=dumb``).

    >>> import io; is_terminal(io.StringIO())
    False
    """
    try:
        return bool(stream.isatty()) and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def progress_observer(
    progress: bool | str, observer: ExecutionObserver | None, stream: TextIO | None = None, *, exact_totals: bool = True
) -> ExecutionObserver | None:
    """The observer a run uses for ``run(progress=..., observer=...)``: ``observer`` alone, or
    composed with a progress display on ``stream`` (default: the current ``sys.stderr``).
    ``exact_totals=False``: the orchestrator may stream a node's input (see :class:`LiveProgress`).

    >>> import io; progress_observer("auto", None, io.StringIO()) is None   # not a terminal
    True
    >>> type(progress_observer(True, None, io.StringIO())).__name__         # plain lines
    'ProgressObserver'
    """
    if not (progress is True or progress is False or progress == "auto"):
        raise InputValidationError(f"run(progress=...) must be True, False or 'auto', got {progress!r}")
    stream = stream if stream is not None else sys.stderr
    terminal = is_terminal(stream)
    if progress is False or (progress == "auto" and (observer is not None or not terminal)):
        return observer
    display: ExecutionObserver = LiveProgress(stream, exact_totals=exact_totals) if terminal else ProgressObserver(stream)
    # The display goes last: its summary is the last thing the run prints.
    return display if observer is None else CompositeObserver(observer, display)


@dataclass
class _NodeLine:
    """One running node as the display knows it (plain attributes: set from any thread)."""

    label: str
    kind: str
    rows: int | None  # input rows (None: not known yet, a streaming input)
    started: float
    done: int = 0  # distinct packets computed (or failed) so far
    to_compute: int | None = None  # distinct packets found missing so far
    failed: int = 0
    streaming: bool = False  # the input may arrive batch by batch (so to_compute may grow)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _line_cells(line: _NodeLine, now: float) -> list[Any]:
    """label, bar, done/total, counts, rate and ETA — for one running node (text as rich
    ``Text``: a label is never read as markup)."""
    from rich.progress_bar import ProgressBar
    from rich.text import Text

    done, to_compute, rows, failed = line.done, line.to_compute, line.rows, line.failed  # one read each: other threads write them
    name = Text(line.label if line.kind == "function" else f"{line.label} [{line.kind}]")
    if to_compute is None:  # nothing computed yet: reading, looking up, or the first chunk
        waiting = "computing…" if line.kind == "function" and rows else ""
        return [name, ProgressBar(total=None, pulse=True, width=BAR_WIDTH), Text(f"{rows:,} rows" if rows is not None else ""), Text(waiting), Text("")]
    rate = done / max(now - line.started, 1e-9)
    eta = _clock((to_compute - done) / rate) if rate > 0 else "?"
    computed = max(done - failed, 0)
    style = "yellow" if failed else "green"
    if rows is None or line.streaming:
        # The input arrives batch by batch (async orchestrator): packets to compute are found
        # as it comes, so rows served from the store are known only at the node's end.
        bar = ProgressBar(total=max(to_compute, 1), completed=done, width=BAR_WIDTH, complete_style=style)
        of, cached = f"{done:,}/{to_compute:,}+ packets", "…"
    else:
        # Rows whose packet needs no call are served from the store (or repeat a packet computed now).
        served = max(rows - to_compute, 0)
        bar = ProgressBar(total=max(rows, 1), completed=min(served + done, rows), width=BAR_WIDTH, complete_style=style)
        of, cached = f"{served + done:,}/{rows:,} rows", f"{served:,}"
    # Counts before rate and ETA: a narrow terminal cuts the end of the line.
    return [name, bar, Text(of), Text(f"{computed:,} computed · {cached} cached · {failed:,} failed"), Text(f"{rate:,.1f}/s  ETA {eta}")]


class LiveProgress(NoOpObserver):
    """A live terminal display of a run (rich): one line per running node — done/total rows, a
    bar, the rate of calls and the ETA, computed vs cached and failed — a line per node that
    computed something as it ends, and the per-node summary table when the run ends.

    ``pipeline.run()`` uses it by itself in a terminal; give it explicitly to show it next to
    your own observer or on another stream. With ``exact_totals=False`` (what a run under the
    async orchestrator uses) a function node shows packets computed / found missing so far,
    and its cached rows only at its end: its input may arrive batch by batch, so the packets
    to compute are not all known from the first progress event.

    >>> pipeline.run(observer=CompositeObserver(my_observer, LiveProgress()))   # doctest: +SKIP
    """

    # Counts only: no Tag/Packet objects per computed packet (failures still arrive, see
    # ``wants_failure_events``).
    wants_packet_events = False

    def __init__(self, stream: TextIO | None = None, refresh_per_second: float = 4.0, *, exact_totals: bool = True):
        self.stream = stream if stream is not None else sys.stderr
        self.refresh_per_second = refresh_per_second
        self._every = 1.0 / refresh_per_second
        self._drawn = 0.0
        self.exact_totals = exact_totals
        self._lock = threading.Lock()
        self._nodes: dict[str, _NodeLine] = {}
        self._finished = 0
        self._started = time.perf_counter()
        self._title = ""
        self._console: Any = None
        self._live: Any = None

    # -- drawing (from the progress events' thread, and rich's once a second) -------------
    def _render(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        now = time.perf_counter()
        with self._lock:
            running = list(self._nodes.values())
            finished = self._finished
        title = Text(f"{self._title} · {_clock(now - self._started)} · nodes: {finished} done, {len(running)} running", style="bold")
        grid = Table.grid(padding=(0, 1))
        for _ in range(5):
            grid.add_column(no_wrap=True)
        for line in running[:MAX_SHOWN_NODES]:
            grid.add_row(*_line_cells(line, now))
        more = len(running) - MAX_SHOWN_NODES
        return Group(title, grid, *([Text(f"… and {more} more running", style="dim")] if more > 0 else []))

    def _print(self, text: str, style: str | None = None) -> None:
        from rich.text import Text

        if self._console is not None:  # above the live display, which redraws below it
            self._console.print(Text(text, style=style), soft_wrap=True)
        else:
            print(text, file=self.stream, flush=True)

    # -- events -------------------------------------------------------------------------
    def on_run_start(self, pipeline: Any, run_id: str) -> None:
        from rich.console import Console
        from rich.errors import LiveError
        from rich.live import Live

        with self._lock:  # a display given to several runs starts afresh for each
            self._nodes, self._finished, self._drawn = {}, 0, 0.0
        self._started = time.perf_counter()
        self._title = f"orcapod {'/'.join(getattr(pipeline, 'name', ()) or ('run',))}"
        self._console = Console(file=self.stream, highlight=False)
        # Redrawn by the progress events (throttled, in the thread that computes: no hand-over
        # of the GIL to another thread on every frame) and, for a clock that keeps ticking
        # while a slow packet computes, once a second by rich's own thread.
        live = Live(console=self._console, refresh_per_second=1.0, transient=True, get_renderable=self._render)
        try:
            live.start()
        except LiveError:  # another live display (an enclosing rich progress) owns the terminal
            return
        self._live = live

    def on_node_start(self, node: Any, total: int | None) -> None:
        line = _NodeLine(node.label, getattr(node, "kind", "node"), total, time.perf_counter(), streaming=not self.exact_totals)
        with self._lock:
            self._nodes[node.label] = line

    def on_node_progress(self, node: Any, done: int, total: int) -> None:
        line = self._nodes.get(node.label)
        if line is not None:
            if line.to_compute is not None and total > line.to_compute:
                line.streaming = True
            line.done, line.to_compute = done, total
        now = time.perf_counter()
        live = self._live
        if live is not None and now - self._drawn >= self._every:
            self._drawn = now
            live.refresh()

    def on_packet_crash(self, node: Any, tag: Any, packet: Any, error: BaseException, captured: dict[str, str] | None = None) -> None:
        line = self._nodes.get(node.label)
        if line is not None:
            line.failed += 1

    def on_node_end(self, node: Any, stats: NodeStats) -> None:
        with self._lock:
            self._nodes.pop(node.label, None)
            self._finished += 1
        if stats.kind == "function" and (stats.computed or stats.failed):  # the others: in the summary
            status = "FAILED " if stats.failed else "done "
            text = f"{status}{stats.label} [{stats.kind}]: {stats.total:,} rows{count_text(stats)} in {stats.duration_s:.2f}s"
            self._print(text, "yellow" if stats.failed else None)

    def on_run_end(self, pipeline: Any, run_id: str, stats: dict[str, NodeStats], error: BaseException | None) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.stop()  # transient: the live lines go; the printed lines and the summary stay
        self._console = None
        self._print(format_summary(stats.values()))
        if error is not None:
            self._print(f"run {run_id} failed: {''.join(traceback.format_exception_only(error)).strip()}")
