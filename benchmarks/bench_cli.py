"""The ``orcapod`` command's cost (SPEC E9): each command in a fresh process, on the example
project (13 nodes) and on the 400-node pipeline of ``bench_many_nodes.py`` (warm store).

* **graph** — build the pipeline, print its node list (nothing read from the store);
* **status** — build it and read every node's table metadata from the Delta log;
* **run (warm)** — ``orcapod run`` of the filled store, against **plain script**: a ``python -c``
  process that builds the same pipeline and calls ``pipeline.run()`` (what the command adds:
  argument parsing, loading the target, the summary).

No target is set in the spec: numbers are reported, medians of ``--repeats`` fresh processes.

Run: ``.venv/bin/python benchmarks/bench_cli.py [--quick]``; writes ``benchmarks/results/cli.json``
(not with ``--quick``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench_common import ROOT, compile_bytecode, timed, write_results
from bench_many_nodes import write_location


TARGET = '''
from {module} import build_pipeline


def build():
    return build_pipeline({store!r})
'''

PLAIN = "import cli_target; cli_target.build().run()"


def bench_pipeline(work: Path, module: str, repeats: int) -> dict:
    (work / "cli_target.py").write_text(TARGET.format(module=module, store=str(work / "store")))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(work), str(ROOT)])}
    cli = [sys.executable, "-m", "orcapod_core.cli"]
    timed([*cli, "run", "cli_target:build"], env, cwd=work)  # cold: fills the store
    times: dict[str, list[float]] = {"graph": [], "status": [], "run_warm": [], "plain_run_warm": []}
    for _ in range(repeats):  # interleaved, so load changes hit every command alike
        times["graph"].append(timed([*cli, "graph", "cli_target:build"], env, cwd=work)[0])
        times["status"].append(timed([*cli, "status", "cli_target:build"], env, cwd=work)[0])
        times["run_warm"].append(timed([*cli, "run", "cli_target:build"], env, cwd=work)[0])
        times["plain_run_warm"].append(timed([sys.executable, "-c", PLAIN], env, cwd=work)[0])
    out = {name: round(statistics.median(values), 3) for name, values in times.items()}
    out["run_added_s"] = round(out["run_warm"] - out["plain_run_warm"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40-node pipeline, one repeat (nothing written)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    compile_bytecode()  # fresh processes load orcapod from bytecode, as an installed environment does
    repeats = 1 if args.quick else args.repeats
    sources, depth = (4, 7) if args.quick else (20, 17)
    scratch = Path(tempfile.mkdtemp(prefix="orcapod-bench-cli-"))
    try:
        example_dir, many_dir = scratch / "example", scratch / "many"
        example_dir.mkdir()
        many_dir.mkdir()
        nodes = write_location(many_dir, sources, depth)
        results = {
            "example (13 nodes)": bench_pipeline(example_dir, "example_project.pipeline", repeats),
            f"many ({nodes} nodes)": bench_pipeline(many_dir, "many_nodes_pipeline", repeats),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"orcapod command, fresh process each, median of {repeats}; seconds")
    print(f"{'pipeline':<20} {'graph':>7} {'status':>7} {'run warm':>9} {'plain run':>10} {'added':>7}")
    for name, r in results.items():
        print(f"{name:<20} {r['graph']:7.2f} {r['status']:7.2f} {r['run_warm']:9.2f} {r['plain_run_warm']:10.2f} {r['run_added_s']:7.2f}")
    print("plain run: `python -c` building the pipeline and calling pipeline.run(); added: orcapod run - plain run.")
    if not args.quick:
        write_results("cli", results, repeats=repeats)


if __name__ == "__main__":
    main()
