"""Node granularity benchmark (issue 10, item 7): the bundled example project with
``build_definitions(..., granularity="node")`` — one Dagster step per node — warm (everything
already stored), under the executors a code location can use:

* **default** — what ``build_definitions(granularity="node")`` gives when no executor is passed
  (since issue 10: ``orcapod_dagster.forkserver_executor``, steps forked from a server that
  preloaded Dagster's storage layer, orcapod and the pipeline's function modules);
* **spawn** — Dagster's ``multiprocess_executor`` as Dagster configures it by default (every step
  a fresh interpreter importing everything again; the default before issue 10);
* **forkserver_auto** — ``multiprocess_executor`` with ``start_method: forkserver`` and Dagster's
  own preload (the code location module);
* **in_process** — ``in_process_executor`` (every step in the run process, one after the other).

Per variant, in a temp dir with its own Delta store and ``DAGSTER_HOME``: one cold
``dagster asset materialize --select '*' -m <module>`` fills the store, then ``--repeats`` warm
runs are timed (interleaved; the wall time of the whole ``dagster`` process). The number of
steps is read from the run's output.

``--before DIR`` adds the variant **before**: the default executor of another checkout of the
project at ``DIR`` (e.g. ``git archive <commit> | tar -x -C DIR``), imported first through
``PYTHONPATH``, timed interleaved with the others.

Run: ``.venv/bin/python benchmarks/bench_node_steps.py [--quick] [--before DIR]``; writes
``benchmarks/results/node_steps.json`` (not with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import textwrap
from pathlib import Path

from bench_common import compile_bytecode, timed

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent

EXECUTORS = {
    "default": "None",
    "spawn": "dg.multiprocess_executor",
    "forkserver_auto": 'dg.multiprocess_executor.configured({"start_method": {"forkserver": {}}})',
    "in_process": "dg.in_process_executor",
}

DEFS = textwrap.dedent(
    """
    import dagster as dg
    from example_project.pipeline import build_pipeline
    from orcapod_dagster import build_definitions

    defs = build_definitions(build_pipeline({store!r}), granularity="node", executor={executor})
    """
)




def steps_of_last_run(home: Path) -> int:
    """How many steps the latest run of the instance at ``home`` executed (from its event log)."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        [run] = instance.get_runs(limit=1)
        return len(instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS).records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one warm run per variant (smoke run, nothing written)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default=",".join(EXECUTORS), help=f"comma-separated subset of {list(EXECUTORS)}")
    parser.add_argument("--before", type=Path, help="another checkout of the project: time its default executor too")
    args = parser.parse_args()
    compile_bytecode()  # fresh processes load orcapod from bytecode, as an installed environment does
    variants = [v for v in args.variants.split(",") if v]
    if args.before is not None:
        variants.insert(0, "before")
    repeats = 1 if args.quick else args.repeats
    scratch = Path(tempfile.mkdtemp(prefix="orcapod-bench-nodes-"))
    commands: dict[str, tuple[list[str], dict[str, str], Path]] = {}
    try:
        for variant in variants:
            work = scratch / variant
            home = work / "dagster_home"
            home.mkdir(parents=True)
            (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
            module = f"node_defs_{variant}"  # loaded as a module, as a workspace's python_module is
            executor = EXECUTORS["default" if variant == "before" else variant]
            (work / f"{module}.py").write_text(DEFS.format(store=str(work / "store"), executor=executor))
            command = [sys.executable, "-m", "dagster", "asset", "materialize", "--select", "*", "-m", module, "-d", str(work)]
            env, cwd = {**os.environ, "DAGSTER_HOME": str(home)}, ROOT
            if variant == "before":  # its packages first (the working directory is on sys.path too)
                cwd = args.before.resolve()
                env["PYTHONPATH"] = os.pathsep.join([str(cwd), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
            commands[variant] = (command, env, cwd)
        cold = {variant: timed(*commands[variant])[0] for variant in variants}
        walls: dict[str, list[float]] = {variant: [] for variant in variants}
        steps: dict[str, int] = {}
        for _ in range(repeats):  # interleaved, so drift hits every variant alike
            for variant in variants:
                wall, _ = timed(*commands[variant])
                walls[variant].append(wall)
                steps[variant] = steps_of_last_run(Path(commands[variant][1]["DAGSTER_HOME"]))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    results = {
        variant: {"steps": steps[variant], "cold_s": round(cold[variant], 3), "warm_s": round(statistics.median(walls[variant]), 3),
                  "warm_runs_s": [round(w, 3) for w in walls[variant]]}
        for variant in variants
    }
    print("Warm `dagster asset materialize --select '*'` of the example project, granularity='node' (seconds, median)")
    print(f"{'executor':<12} {'steps':>5} {'cold':>7} {'warm':>7}")
    for variant, r in results.items():
        print(f"{variant:<12} {r['steps']:>5} {r['cold_s']:7.2f} {r['warm_s']:7.2f}")
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        meta = {"python": sys.version.split()[0], "machine": platform.machine(), "cpus": os.cpu_count(), "repeats": repeats,
                "load_average_at_end": list(os.getloadavg())}
        (RESULTS / "node_steps.json").write_text(json.dumps({"meta": meta, "variants": results}, indent=2) + "\n")
        print(f"\nwrote {RESULTS / 'node_steps.json'}")


if __name__ == "__main__":
    main()
