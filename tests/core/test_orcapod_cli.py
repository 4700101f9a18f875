"""The ``orcapod`` command in subprocesses (``python -m orcapod_core.cli``): run, status, graph on
real pipelines over Delta stores in temp dirs; exit codes; errors as one line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from terminal import HIDE_CURSOR, plain, run_with_terminal_stderr

from example_project.pipeline import build_pipeline

ROOT = Path(__file__).resolve().parents[2]

LAB = '''
from orcapod_core import DeltaTableDatabase, DictSource, Pipeline, function_pod


@function_pod(output_keys="y")
def checked(x: int) -> int:
    if x == 3:
        raise ValueError("x must not be 3")
    return 10 * x


@function_pod(output_keys="z")
def plus_one(y: int) -> int:
    return y + 1


def build(xs=(1, 2, 4)):
    numbers = DictSource({"id": list(range(len(xs))), "x": list(xs)}, tag_columns="id", source_id="numbers", label="numbers")
    with Pipeline("lab", pipeline_database=DeltaTableDatabase("store")) as p:
        plus_one.pod(checked.pod(numbers, label="scaled"), label="shifted")
    return p


def build_failing():
    return build((1, 3, 4, 3))


def needs_args(store):
    return build()


def broken():
    raise RuntimeError("the lab is closed")


def not_a_pipeline():
    return 42


@function_pod(output_keys="w")
def slow(x: int) -> int:
    import pathlib, time

    pathlib.Path("started").touch()  # tells the test that packets are being computed
    time.sleep(0.3)
    return x


def build_slow():
    numbers = DictSource({"id": list(range(40)), "x": list(range(40))}, tag_columns="id", source_id="many")
    with Pipeline("slow", pipeline_database=DeltaTableDatabase("store")) as p:
        slow.pod(numbers, label="slowed")
    return p


pipeline = build()
NAME = "lab"
'''


def orcapod(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "orcapod_core.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    (tmp_path / "lab.py").write_text(LAB)
    return tmp_path


def test_run_prints_a_summary_and_a_second_run_is_all_cached(lab: Path):
    first = orcapod(lab, "run", "lab:build")
    assert first.returncode == 0, first.stderr
    assert re.search(r"^scaled\s+function\s+3\s+3\s+0\s+0\s", first.stdout, re.M), first.stdout
    assert re.search(r"^shifted\s+function\s+3\s+3\s+0\s+0\s", first.stdout, re.M)
    assert re.search(r"^run \S+: 6 computed, 0 cached, 0 failed in ", first.stdout, re.M)

    second = orcapod(lab, "run", "lab:pipeline")  # a module-level Pipeline works as well as a builder
    assert second.returncode == 0, second.stderr
    assert re.search(r"^run \S+: 0 computed, 6 cached, 0 failed in ", second.stdout, re.M), second.stdout
    assert (lab / "store" / "lab").is_dir()


def test_progress_goes_to_stderr_with_the_summary_once(lab: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    shown, out = run_with_terminal_stderr([sys.executable, "-m", "orcapod_core.cli", "run", "lab:build"], env=env, cwd=lab)
    assert HIDE_CURSOR in shown  # the live display ran on the terminal ...
    screen = plain(shown)
    assert len(re.findall(r"^scaled\s+function\s+3\s+3\s+0\s+0\s", screen, re.M)) == 1, screen  # ... and printed the summary
    assert re.fullmatch(r"run \S+: 6 computed, 0 cached, 0 failed in [\d.]+s\n", out), out  # stdout: the closing line only

    # --progress off a terminal: plain per-node lines and the summary on stderr, same stdout.
    lines = orcapod(lab, "run", "lab:build", "--progress")
    assert lines.returncode == 0, lines.stderr
    assert "scaled [function]: 3 rows — 0 computed, 3 cached, 0 failed" in lines.stderr
    assert re.search(r"^scaled\s+function\s+3\s+0\s+3\s+0\s", lines.stderr, re.M), lines.stderr
    assert re.fullmatch(r"run \S+: 0 computed, 6 cached, 0 failed in [\d.]+s\n", lines.stdout), lines.stdout


def test_failed_packets_exit_1_and_are_named_on_stderr(lab: Path):
    proc = orcapod(lab, "run", "lab:build_failing")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    # Both rows with x=3 carry one packet: one call, one failure; the others are stored.
    assert re.search(r"^scaled\s+function\s+4\s+2\s+\d+\s+1\s", proc.stdout, re.M), proc.stdout
    assert "orcapod: node 'scaled': 1 packet(s) failed: ValueError: x must not be 3" in proc.stderr
    assert "Traceback" not in proc.stderr

    # The good packets were stored: a second run serves them and retries only the failing one.
    again = orcapod(lab, "run", "lab:build_failing")
    assert again.returncode == 1, (again.stdout, again.stderr)
    assert re.search(r"^scaled\s+function\s+4\s+0\s+2\s+1\s", again.stdout, re.M), again.stdout
    assert re.search(r"^shifted\s+function\s+2\s+0\s+2\s+0\s", again.stdout, re.M), again.stdout


def test_run_node_runs_only_that_node_and_its_inputs(lab: Path):
    proc = orcapod(lab, "run", "lab:build", "--node", "scaled")
    assert proc.returncode == 0, proc.stderr
    labels = [line.split()[0] for line in proc.stdout.splitlines()[2:] if line.strip() and not line.startswith("run ")]
    assert labels == ["numbers", "scaled"]
    # The async orchestrator computes the rest and serves what is there.
    rest = orcapod(lab, "run", "lab:build", "--async", "--no-progress")
    assert rest.returncode == 0, rest.stderr
    assert re.search(r"^run \S+: 3 computed, 3 cached, 0 failed in ", rest.stdout, re.M), rest.stdout


def test_status_reads_the_store_without_writing_to_it(lab: Path):
    before = orcapod(lab, "status", "lab:build")
    assert before.returncode == 0, before.stderr
    assert re.search(r"^scaled\s+function\s+-\s+-\s+-\s+-\s+-$", before.stdout, re.M), before.stdout
    assert not (lab / "store").exists()  # building and inspecting the pipeline created nothing

    run = orcapod(lab, "run", "lab:build_failing")
    run_id = re.search(r"^run (\S+):", run.stdout, re.M).group(1)
    listing = sorted(p.relative_to(lab) for p in (lab / "store").rglob("*"))
    after = orcapod(lab, "status", "lab:build_failing")
    assert after.returncode == 0, after.stderr
    # scaled: the 2 of 4 rows that did not fail are recorded, with their 2 results; shifted too.
    for label, rows, results in (("scaled", 2, 2), ("shifted", 2, 2)):
        match = re.search(rf"^{label}\s+function\s+{rows}\s+{results}\s+([\d.]+) (B|KiB|MiB)\s+(\S+ \S+ UTC)\s+(\S+)$", after.stdout, re.M)
        assert match, after.stdout
        assert float(match.group(1)) > 0
        assert match.group(4) == run_id
    assert re.search(r"^numbers\s+source\s+-\s+-\s+-\s+-\s+-$", after.stdout, re.M)
    assert re.search(r"^lab: 3 nodes, [\d.]+ KiB in store$", after.stdout, re.M), after.stdout
    assert sorted(p.relative_to(lab) for p in (lab / "store").rglob("*")) == listing  # status wrote nothing


def test_graph_formats_match_the_pipeline_pictures(tmp_path: Path):
    expected = build_pipeline(tmp_path / "unused")
    for fmt, text in (("mermaid", expected.to_mermaid()), ("dot", expected.to_dot())):
        proc = orcapod(tmp_path, "graph", "example_project.pipeline:build_pipeline", "--format", fmt)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == text + "\n"
    proc = orcapod(tmp_path, "graph", "example_project.pipeline:build_pipeline")
    assert proc.stdout.splitlines()[0] == "water_quality: 17 nodes"
    assert re.search(r"^  saturation\s+function: oxygen_saturation\s+<- calibrated, temperatures, elevations$", proc.stdout, re.M)
    assert not (tmp_path / ".orcapod").exists()  # the builder's default store was never written


def test_a_file_target_imports_with_its_folder_on_the_path(tmp_path: Path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "lab.py").write_text(LAB)
    (folder / "entry.py").write_text("import lab\n\n\ndef make():\n    return lab.build()\n\n\nclass Maker:\n    make = staticmethod(make)\n")
    proc = orcapod(tmp_path, "graph", "project/entry.py:make")
    assert proc.returncode == 0, proc.stderr
    dotted = orcapod(tmp_path, "graph", "project/entry.py:Maker.make")  # attributes of attributes
    assert dotted.returncode == 0 and dotted.stdout == proc.stdout, dotted.stderr
    assert proc.stdout.splitlines() == [
        "lab: 3 nodes",
        "  numbers  source: DictSource",
        "  scaled   function: checked   <- numbers",
        "  shifted  function: plus_one  <- scaled",
    ]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nosuch.module:build", "target 'nosuch.module:build': no module named 'nosuch'"),
        ("lab:missing", "target 'lab:missing': module 'lab' has no attribute 'missing'"),
        ("lab:pipeline.missing", "target 'lab:pipeline.missing': 'pipeline' has no attribute 'missing'"),
        ("lab:NAME", "target 'lab:NAME' is a str, not a Pipeline or a function returning one"),
        ("lab:not_a_pipeline", "target 'lab:not_a_pipeline': not_a_pipeline() returned a int, not a Pipeline"),
        ("lab:broken", "target 'lab:broken': broken() raised RuntimeError: the lab is closed"),
        ("lab:needs_args", "target 'lab:needs_args': needs_args() needs arguments"),
        ("lab", "target 'lab' is not 'pkg.module:attr' or 'path/to/file.py:attr'"),
        ("nowhere/file.py:build", "target 'nowhere/file.py:build': no file"),
        ("bad_import:build", "target 'bad_import:build': importing 'bad_import' failed: ModuleNotFoundError: No module named 'not_installed_anywhere'"),
    ],
)
def test_errors_are_one_line_naming_the_target(lab: Path, target: str, message: str):
    (lab / "bad_import.py").write_text("import not_installed_anywhere\n")
    for command in ("run", "status", "graph"):
        proc = orcapod(lab, command, target)
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"orcapod: error: {message}"), proc.stderr
        assert proc.stdout == ""


def test_debug_shows_the_traceback_and_bad_usage_is_exit_2(lab: Path):
    proc = orcapod(lab, "--debug", "graph", "lab:broken")
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr and "RuntimeError: the lab is closed" in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("orcapod: error: target 'lab:broken': broken() raised")

    usage = orcapod(lab, "graph", "lab:build", "--format", "png")
    assert usage.returncode == 2 and "invalid choice: 'png'" in usage.stderr
    assert orcapod(lab).returncode == 2  # no command


@pytest.mark.slow
def test_a_stopped_run_exits_130_and_keeps_what_it_computed(lab: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orcapod_core.cli", "run", "lab:build_slow"],
        cwd=lab, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (lab / "started").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(1.0)  # a few packets done
        proc.send_signal(signal.SIGTERM)  # what Dagster and schedulers send
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (out, err)
    assert err.splitlines()[-1] == "orcapod: interrupted; what was computed is stored"
    status = orcapod(lab, "status", "lab:build_slow")
    rows = int(re.search(r"^slowed\s+function\s+(\d+)\s", status.stdout, re.M).group(1))
    assert 0 < rows < 40, status.stdout
