"""What ``pipeline.run()`` shows: the live display on a real pseudo-terminal, nothing noisy off a
terminal, the ``progress=`` overrides, composition with a user observer, and the summary."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from terminal import HIDE_CURSOR, plain, run_with_terminal_stderr

from orcapod_core import DictSource, Pipeline, function_pod
from orcapod_core.databases import DeltaTableDatabase
from orcapod_core.errors import InputValidationError
from orcapod_core.pipeline import CompositeObserver, LiveProgress, NoOpObserver, ProgressObserver
from orcapod_core.pipeline.progress import progress_observer

ROOT = Path(__file__).resolve().parents[2]
TITLE = re.compile(r"nodes: \d+ done, \d+ running")  # the live display's first line: "orcapod demo · 0:00:01 · nodes: 1 done, 1 running"

# A tiny pipeline in a module file (pool workers import its function): 40 rows, 30 distinct
# packets, a slow function (the display redraws several times), one packet that raises.
MODULE = '''
import json, sys, time
from orcapod_core import DictSource, Pipeline, function_pod
from orcapod_core.databases import DeltaTableDatabase
from orcapod_core.pipeline import NoOpObserver


@function_pod(output_keys="y")
def scored(x: int) -> int:
    time.sleep(0.04)
    if x == 7:
        raise ValueError("x=7 is refused")
    return x * 10


class Counting(NoOpObserver):
    """A user observer: counts the events it gets, prints them as JSON on stdout at the end."""

    def __init__(self):
        self.events = {"node_start": 0, "node_end": 0, "progress": 0, "crash": 0}

    def on_node_start(self, node, total):
        self.events["node_start"] += 1

    def on_node_progress(self, node, done, total):
        self.events["progress"] += 1

    def on_node_end(self, node, stats):
        self.events["node_end"] += 1

    def on_packet_crash(self, node, tag, packet, error, captured=None):
        self.events["crash"] += 1


def main(store, progress, mode):
    numbers = DictSource({"id": list(range(40)), "x": [i % 30 for i in range(40)]}, tag_columns="id", source_id="numbers")
    with Pipeline("progress_demo", pipeline_database=DeltaTableDatabase(store)) as p:
        scored.pod(numbers, label="scored")
    kwargs = {"progress": json.loads(progress)}
    counting = Counting() if mode == "observer" else None
    if counting is not None:
        kwargs["observer"] = counting
    if mode == "processes":
        from orcapod_core.executors import LocalProcessExecutor
        kwargs["executor"] = LocalProcessExecutor(max_workers=2)
    if mode == "async":
        from orcapod_core import AsyncPipelineOrchestrator
        kwargs["orchestrator"] = AsyncPipelineOrchestrator(buffer_size=2, chunk_rows=8)
    result = p.run(**kwargs)
    print(json.dumps({"stats": {k: s.as_dict() for k, s in result.stats.items()}, "summary": result.summary(),
                      "events": counting.events if counting else None}))


if __name__ == "__main__":
    main(*sys.argv[1:])
'''


def _script(tmp_path: Path) -> Path:
    path = tmp_path / "progress_demo.py"
    path.write_text(MODULE)
    return path


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]), "TERM": "xterm-256color"}


def run_on_pty(tmp_path: Path, progress: object = "auto", mode: str = "plain") -> tuple[str, dict]:
    """Run the demo with stderr on a pseudo-terminal; → (what the terminal got, with escape
    codes, and the run as the script printed it on stdout)."""
    args = [sys.executable, str(_script(tmp_path)), str(tmp_path / "store"), json.dumps(progress), mode]
    shown, out = run_with_terminal_stderr(args, env=_env(tmp_path), cwd=tmp_path)
    return shown, json.loads(out)


def frames_of(text: str, label: str) -> list[str]:
    """The live lines of node ``label`` (every redraw), escape codes removed."""
    return [line for line in plain(text).splitlines() if line.startswith(f"{label} ") and "ETA" in line]


@pytest.mark.slow
def test_terminal_shows_live_progress_and_summary(tmp_path):
    shown, run = run_on_pty(tmp_path)
    stats = run["stats"]["scored"]
    assert (stats["total"], stats["computed"], stats["cached"], stats["failed"]) == (40, 29, 9, 1)
    assert HIDE_CURSOR in shown and TITLE.search(plain(shown))
    frames = frames_of(shown, "scored")
    assert frames, plain(shown)
    # Every frame counts rows of the node's input; the computed count grows between redraws.
    counts = [int(m.group(1)) for f in frames if (m := re.search(r"(\d+) computed · (\d+) cached · (\d+) failed", f))]
    assert all(re.search(r"\d+/40 rows", f) for f in frames)
    assert counts and counts == sorted(counts) and len(set(counts)) > 1, frames
    # Cached rows: the 10 repeats of 10 packets (9 once the refused packet's repeat is left out).
    assert all("10 cached" in f for f in frames)
    # The node's end line and the summary table — the very text RunResult.summary() returns.
    assert "FAILED scored [function]: 40 rows — 29 computed, 9 cached, 1 failed" in plain(shown)
    assert run["summary"] in plain(shown)
    summary_line = next(line for line in run["summary"].splitlines() if line.startswith("scored"))
    assert summary_line.split()[:6] == ["scored", "function", "40", "29", "9", "1"]


@pytest.mark.slow
def test_terminal_display_follows_a_process_pool(tmp_path):
    shown, run = run_on_pty(tmp_path, mode="processes")
    assert run["stats"]["scored"]["computed"] == 29
    counts = [int(m.group(1)) for f in frames_of(shown, "scored") if (m := re.search(r"(\d+) computed", f))]
    # Workers' results come back chunk by chunk: the display shows some done before the end.
    assert any(0 < c < 29 for c in counts), plain(shown)
    assert run["summary"] in plain(shown)


@pytest.mark.slow
def test_terminal_display_under_the_async_orchestrator(tmp_path):
    shown, run = run_on_pty(tmp_path, mode="async")
    assert run["stats"]["scored"]["computed"] == 29
    frames = frames_of(shown, "scored")
    # The input arrives in batches: packets computed of those found so far; cached rows come
    # with the node's end (never a guess from a partial count).
    assert frames and all(re.search(r"\d+/\d+\+ packets", f) and "… cached" in f for f in frames), plain(shown)
    assert "FAILED scored [function]: 40 rows — 29 computed, 9 cached, 1 failed" in plain(shown)
    assert run["summary"] in plain(shown)


@pytest.mark.slow
def test_progress_false_shows_nothing_on_a_terminal(tmp_path):
    shown, run = run_on_pty(tmp_path, progress=False)
    assert run["stats"]["scored"]["computed"] == 29
    assert shown == ""


@pytest.mark.slow
def test_progress_true_composes_with_a_user_observer(tmp_path):
    shown, run = run_on_pty(tmp_path, progress=True, mode="observer")
    events = run["events"]
    assert events["node_start"] == events["node_end"] == 2  # the source and the function node
    assert events["progress"] >= 2 and events["crash"] == 1  # the user's observer got every event ...
    assert HIDE_CURSOR in shown and frames_of(shown, "scored")  # ... and the display was shown
    assert run["summary"] in plain(shown)


@pytest.mark.slow
def test_auto_with_a_user_observer_leaves_the_terminal_to_it(tmp_path):
    shown, run = run_on_pty(tmp_path, mode="observer")
    assert run["events"]["node_end"] == 2
    assert shown == ""


@pytest.mark.parametrize(("progress", "lines"), [("auto", False), (True, True)])
def test_not_a_terminal_no_live_display(tmp_path, progress, lines):
    args = [sys.executable, str(_script(tmp_path)), str(tmp_path / "store"), json.dumps(progress), "plain"]
    proc = subprocess.run(args, capture_output=True, text=True, env=_env(tmp_path), cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout)
    assert run["stats"]["scored"]["computed"] == 29
    assert "\x1b[" not in proc.stderr and not TITLE.search(proc.stderr)  # never a redrawn display in a pipe
    if lines:  # asked for: plain lines, ending with the summary
        assert "scored [function]: 40 rows — 29 computed, 9 cached, 1 failed" in proc.stderr
        assert proc.stderr.rstrip().endswith(run["summary"])
    else:  # auto: nothing at all
        assert proc.stderr == ""


# -- in-process ------------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal (rich then draws its live display into it)."""

    def isatty(self) -> bool:
        return True


@function_pod(output_keys="half")
def half(n: int) -> float:
    if n < 0:
        raise ValueError("negative")
    return n / 2


def _pipeline(tmp_path: Path, values: list[int]) -> Pipeline:
    src = DictSource({"id": list(range(len(values))), "n": values}, tag_columns="id", source_id="values")
    with Pipeline("inproc", pipeline_database=DeltaTableDatabase(tmp_path / "store")) as p:
        half.pod(src, label="halved")
    return p


def test_summary_matches_the_run_counts(tmp_path):
    p = _pipeline(tmp_path, [1, 2, 2, 3, -1, 3])
    result = p.run(progress=False)
    lines = result.summary().splitlines()
    assert lines[0].split() == ["node", "kind", "rows", "computed", "cached", "failed", "seconds"]
    assert set(lines[1]) == {"-", " "}
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == set(result.stats)
    for label, s in result.stats.items():
        counts = [str(s.computed), str(s.cached), str(s.failed)] if s.kind == "function" else ["-", "-", "-"]
        assert rows[label] == [label, s.kind, str(s.total), *counts, f"{s.duration_s:.2f}"]
    assert rows["halved"][2:6] == ["6", "3", "2", "1"]  # 4 distinct packets: 3 computed, 1 failed; 2 repeats served
    # Columns are aligned: every line is as wide as the rule under the header.
    assert len({len(line.rstrip()) for line in lines[1:]} | {len(lines[1])}) == 1


def test_auto_uses_the_current_stderr(tmp_path, monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    result = _pipeline(tmp_path, [1, 2, 3]).run()
    assert result.computed == 3
    assert HIDE_CURSOR in terminal.getvalue() and result.summary() in plain(terminal.getvalue())
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a pipe, a log file: nothing
    assert _pipeline(tmp_path / "other", [1]).run().computed == 1
    assert sys.stderr.getvalue() == ""


def test_progress_true_off_a_terminal_gives_plain_lines_next_to_the_observer(tmp_path, monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)

    class Ends(NoOpObserver):
        def __init__(self):
            self.ended: list[str] = []

        def on_node_end(self, node, stats):
            self.ended.append(node.label)

    mine = Ends()
    result = _pipeline(tmp_path, [4, 5]).run(observer=mine, progress=True)
    assert mine.ended == list(result.stats)
    assert "halved [function]: 2 rows — 2 computed, 0 cached, 0 failed" in log.getvalue()
    assert log.getvalue().rstrip().endswith(result.summary())


def test_progress_choice_is_checked(tmp_path):
    with pytest.raises(InputValidationError, match=r"progress=.*'yes'"):
        _pipeline(tmp_path, [1]).run(progress="yes")
    assert progress_observer(False, None, FakeTerminal()) is None
    assert isinstance(progress_observer("auto", None, FakeTerminal()), LiveProgress)
    mine = NoOpObserver()
    assert progress_observer("auto", mine, FakeTerminal()) is mine  # an observer given: it alone
    both = progress_observer(True, mine, io.StringIO())
    assert isinstance(both, CompositeObserver) and both.observers[0] is mine and isinstance(both.observers[1], ProgressObserver)


def test_display_counts_failures_without_per_packet_objects(tmp_path, monkeypatch):
    """The display takes crash events only: no Tag/Packet is built for packets that succeed."""
    from orcapod_core.pipeline.function_node import FunctionNode

    built: list[int] = []
    original = FunctionNode._objects
    monkeypatch.setattr(FunctionNode, "_objects", lambda self, t, l, rows: built.append(len(rows)) or original(self, t, l, rows))
    terminal = FakeTerminal()
    display = LiveProgress(terminal)
    assert display.wants_packet_events is False and display.wants_failure_events is True
    failed: list[int] = []
    display_crash = display.on_packet_crash
    monkeypatch.setattr(display, "on_packet_crash", lambda *a, **k: failed.append(1) or display_crash(*a, **k))
    result = _pipeline(tmp_path, [1, -2, 3, -4, 5]).run(observer=display)
    assert result.failed == 2 and len(failed) == 2
    assert built == [1, 1]  # one object per failed packet, none for the 3 computed ones
    assert "FAILED halved [function]: 5 rows — 3 computed, 0 cached, 2 failed" in plain(terminal.getvalue())


def test_a_failing_run_ends_the_display_and_says_why(tmp_path, monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    stdout = sys.stdout
    with pytest.raises(ValueError, match="negative"):
        _pipeline(tmp_path, [1, -1, 2]).run(error_policy="fail_fast")
    assert sys.stdout is stdout and sys.stderr is terminal  # the display gave the streams back
    shown = plain(terminal.getvalue())
    assert "\x1b[?25h" in terminal.getvalue()  # and the cursor
    assert re.search(r"run \S+ failed: ValueError: negative", shown)
    assert "halved" in shown.split("node ")[-1]  # the summary of what ran
