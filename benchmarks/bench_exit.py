"""Clean exits: how many fresh processes abort in interpreter teardown ("terminate called without
an active exception", SIGABRT, exit code -6) after all their work is done.

Each scenario runs ``--runs`` fresh processes, two at a time, each on its own warm Delta store
after its first run (one store per lane), and exits through the interpreter's ordinary shutdown:

* **pipeline.run()** — a script building a 2-node pipeline on a local ``DeltaTableDatabase``;
* **orcapod run** — the console command (``python -m orcapod_core.cli run``) on the same pipeline;
* **example project** — ``python -m example_project STORE`` (13 nodes, CSV/JSON sources).

Target: 0 aborts. Before the fix (in-memory lookups ran as Acero plans holding Python-owned
entry-id buffers, apache/arrow#36389) the first two aborted in 7-15% and 9% of processes here.
``--root`` measures another checkout (e.g. an older commit exported with ``git archive``).

Run: ``.venv/bin/python benchmarks/bench_exit.py [--quick] [--runs N] [--root PATH]``; writes
``benchmarks/results/exit.json`` (not with ``--quick`` or ``--root``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import ROOT, write_results

LANES = 2

TARGET = '''
import sys
from orcapod_core import DeltaTableDatabase, DictSource, Pipeline, function_pod


@function_pod(output_keys="kelvin")
def to_kelvin(celsius: float) -> float:
    return round(celsius + 273.15, 2)


@function_pod(output_keys="fahrenheit")
def to_fahrenheit(kelvin: float) -> float:
    return round(kelvin * 1.8 - 459.67, 2)


def build(store=None):
    stations = DictSource({"station": ["n", "s", "e"], "celsius": [4.5, 12.0, 8.25]}, tag_columns="station", source_id="st")
    with Pipeline("exit", pipeline_database=DeltaTableDatabase(store or sys.argv[-1])) as pipeline:
        to_fahrenheit.pod(to_kelvin.pod(stations, label="kelvin"), label="fahrenheit")
    return pipeline


if __name__ == "__main__":
    build().run(progress=False)
'''

CLI_TARGET = '''
import os
from exit_target import build


def pipeline():
    return build(os.environ["EXIT_BENCH_STORE"])
'''


def scenarios(work: Path) -> dict[str, list[str]]:
    """Each scenario's command, ``{store}`` standing for its store directory."""
    (work / "exit_target.py").write_text(TARGET)
    (work / "exit_cli_target.py").write_text(CLI_TARGET)
    return {
        "pipeline.run()": [sys.executable, str(work / "exit_target.py"), "{store}"],
        "orcapod run": [sys.executable, "-m", "orcapod_core.cli", "run", "exit_cli_target:pipeline", "--no-progress"],
        "example project": [sys.executable, "-m", "example_project", "{store}"],
    }


def count_aborts(index: int, command: list[str], runs: int, work: Path, env: dict[str, str]) -> dict:
    aborted, other, t0 = 0, [], time.perf_counter()
    for first in range(0, runs, LANES):
        procs = []
        for run in range(first, min(first + LANES, runs)):
            store = str(work / f"store{index}-{run % LANES}")
            procs.append(subprocess.Popen([arg.format(store=store) for arg in command], cwd=work,
                                          env={**env, "EXIT_BENCH_STORE": store},
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        for proc in procs:
            _, err = proc.communicate(timeout=300)
            if "terminate called" in err or proc.returncode == -6:
                aborted += 1
            elif proc.returncode != 0:
                other.append((proc.returncode, err[-300:]))
    if other:
        raise RuntimeError(f"{command[1:4]}: {len(other)} runs failed otherwise, e.g. {other[0]}")
    return {"runs": runs, "aborted": aborted, "wall_s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 processes per scenario (nothing written)")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to measure (default: this one)")
    args = parser.parse_args()
    runs = 20 if args.quick else args.runs
    root = args.root.resolve()
    work = Path(tempfile.mkdtemp(prefix="orcapod-bench-exit-"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(work), str(root)])}
    try:
        results = {name: count_aborts(i, command, runs, work, env) for i, (name, command) in enumerate(scenarios(work).items())}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"fresh processes ({LANES} at a time) aborting at exit, checkout {root}")
    print(f"{'scenario':<18} {'aborted':>8} {'runs':>6} {'wall s':>8}")
    for name, r in results.items():
        print(f"{name:<18} {r['aborted']:>8} {r['runs']:>6} {r['wall_s']:>8.1f}")
    if not args.quick and root == ROOT:
        write_results("exit", results, lanes=LANES)


if __name__ == "__main__":
    main()
