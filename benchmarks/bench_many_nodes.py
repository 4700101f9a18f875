"""Many small nodes benchmark (SPEC E7, issue #10): a 400-node pipeline of 10-row tables, warm,
as a plain ``pipeline.run()`` and as a Dagster code location.

The pipeline (module written into a temp dir, Delta store there too): 20 ``DictSource`` s of
10 rows (tag ``id``, packet ``x``), each followed by a chain of 17 function nodes
(``step_01`` … ``step_17``, each ``x -> x + d``; chains share the function of their depth, so a
result table serves 20 nodes); the ends of two chains are renamed (``map_packets`` x→a, x→b),
joined and summed by one more function node: 20 sources + 340 + 20 maps + 10 joins + 10 sums =
400 nodes (350 function nodes, 30 operators). ``--quick``: 4 sources, chains of 7 = 40 nodes.

Measured, after one cold ``pipeline.run()`` and one (first) Dagster materialization filled the
store, ``--repeats`` times interleaved, each a fresh process:

* **run()** — a fresh ``python`` process builds the pipeline and calls ``pipeline.run()``; the
  call alone is the number (build and whole process reported next to it). Target ≤ 4 s.
* **orcapod dagster** — ``dagster asset materialize --select '*' -f defs.py`` of the code
  location ``build_definitions(pipeline)`` (default multiprocess executor, one step).
* **plain dagster** — the same command on a code location with one plain ``@dg.multi_asset`` of
  the same shape: the orcapod location's asset keys, deps, groups and asset checks (names,
  assets, blocking), read from it once; the body does no work and yields one
  ``MaterializeResult`` per asset and one passing ``AssetCheckResult`` per check.

Target: orcapod dagster − plain dagster ≤ 2 × run() (what orcapod adds on top of Dagster's own
cost for the same assets and checks). Per-node milliseconds are printed for each.

Run: ``.venv/bin/python benchmarks/bench_many_nodes.py [--quick]``; writes
``benchmarks/results/many_nodes.json`` (not with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from bench_common import compile_bytecode, median, step_seconds, timed

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent

#: The pipeline module: ``sources`` sources, chains of ``depth`` trivial functions, pairs joined.
PIPELINE = '''
"""{nodes} small nodes: {sources} sources of 10 rows, chains of {depth} functions, pairs joined."""

from orcapod_core import DeltaTableDatabase, DictSource, Pipeline, function_pod

SOURCES, DEPTH = {sources}, {depth}

{steps}

@function_pod(output_keys="x")
def combine(a: int, b: int) -> int:
    return a + b


STEPS = [{step_names}]


def build_pipeline(store):
    with Pipeline("many", pipeline_database=DeltaTableDatabase(store)) as pipeline:
        ends = []
        for i in range(SOURCES):
            stream = DictSource(
                {{"id": list(range(10)), "x": [10 * i + k for k in range(10)]}},
                tag_columns="id", source_id=f"s{{i:02d}}", label=f"s{{i:02d}}",
            )
            for d, step in enumerate(STEPS, 1):
                stream = step.pod(stream, label=f"c{{i:02d}}_{{d:02d}}")
            ends.append(stream)
        for k in range(SOURCES // 2):
            a = ends[2 * k].map_packets({{"x": "a"}}, label=f"a{{k:02d}}")
            b = ends[2 * k + 1].map_packets({{"x": "b"}}, label=f"b{{k:02d}}")
            combine.pod(a.join(b, label=f"j{{k:02d}}"), label=f"sum{{k:02d}}")
    return pipeline
'''

STEP = '''
@function_pod(output_keys="x")
def step_{d:02d}(x: int) -> int:
    return x + {d}
'''

DEFS = textwrap.dedent(
    """
    from many_nodes_pipeline import build_pipeline
    from orcapod_dagster import build_definitions

    defs = build_definitions(build_pipeline({store!r}))
    """
)

# Dagster's own cost for the same assets and checks: one multi_asset of the orcapod location's
# shape (shape.json) whose body does no work.
PLAIN_DEFS = textwrap.dedent(
    """
    import json
    from pathlib import Path

    import dagster as dg

    shape = json.loads((Path(__file__).parent / "shape.json").read_text())
    specs = [dg.AssetSpec(key=s["key"], deps=[dg.AssetKey(d) for d in s["deps"]], group_name=s["group"]) for s in shape["specs"]]
    check_specs = [dg.AssetCheckSpec(c["name"], asset=dg.AssetKey(c["asset"]), blocking=c["blocking"]) for c in shape["checks"]]
    checks_of = {}
    for check in check_specs:
        checks_of.setdefault(check.asset_key, []).append(check)


    @dg.multi_asset(name="plain_many", specs=specs, check_specs=check_specs, can_subset=True)
    def plain_many(context):
        selected, selected_checks = context.selected_asset_keys, context.selected_asset_check_keys
        for spec in specs:  # topological, as orcapod reports them
            if spec.key in selected:
                yield dg.MaterializeResult(asset_key=spec.key)
                for check in checks_of.get(spec.key, ()):
                    if check.key in selected_checks:
                        yield dg.AssetCheckResult(asset_key=spec.key, check_name=check.name, passed=True)


    defs = dg.Definitions(assets=[plain_many])
    """
)

# The orcapod location's shape, for the plain one.
SHAPE = textwrap.dedent(
    """
    import json, runpy, sys
    defs = runpy.run_path(sys.argv[1])["defs"]
    specs, checks = [], []
    for assets_def in defs.resolve_asset_graph().assets_defs:
        for spec in assets_def.specs:
            specs.append({"key": list(spec.key.path), "deps": [list(d.asset_key.path) for d in spec.deps], "group": spec.group_name})
        for check in assets_def.check_specs:
            checks.append({"name": check.name, "asset": list(check.asset_key.path), "blocking": check.blocking})
    print(json.dumps({"specs": specs, "checks": checks}))
    """
)

RUN = textwrap.dedent(
    """
    import json, sys, time
    from many_nodes_pipeline import build_pipeline

    t0 = time.perf_counter()
    pipeline = build_pipeline(sys.argv[1])
    t1 = time.perf_counter()
    result = pipeline.run()
    t2 = time.perf_counter()
    print(json.dumps({"build_s": t1 - t0, "run_s": t2 - t1, "nodes": len(pipeline.nodes), "computed": result.computed, "cached": result.cached}))
    """
)



def write_location(work: Path, sources: int, depth: int) -> int:
    nodes = sources * (depth + 3)
    steps = "\n".join(STEP.format(d=d) for d in range(1, depth + 1))
    names = ", ".join(f"step_{d:02d}" for d in range(1, depth + 1))
    text = PIPELINE.format(nodes=nodes, sources=sources, depth=depth, steps=steps, step_names=names)
    (work / "many_nodes_pipeline.py").write_text(text)
    (work / "defs.py").write_text(DEFS.format(store=str(work / "store")))
    (work / "plain_defs.py").write_text(PLAIN_DEFS)
    return nodes








def last_json(proc: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench(scratch: Path, sources: int, depth: int, repeats: int) -> dict:
    work = scratch / "many"
    home = work / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    nodes = write_location(work, sources, depth)
    # Step processes of the multiprocess executor import the pipeline module too.
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": os.pathsep.join([str(work), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    materialize = [sys.executable, "-m", "dagster", "asset", "materialize", "--select", "*", "-f"]
    run = [sys.executable, "-c", RUN, str(work / "store")]

    _, proc = timed([sys.executable, "-c", SHAPE, str(work / "defs.py")], env)
    shape = last_json(proc)
    (work / "shape.json").write_text(json.dumps(shape))
    assert len(shape["specs"]) == nodes, (len(shape["specs"]), nodes)

    cold_wall, proc = timed(run, env)
    cold = last_json(proc)
    assert cold["nodes"] == nodes and cold["cached"] == 0, cold
    first_wall, proc = timed([*materialize, str(work / "defs.py")], env)  # the first one writes each node's snapshot
    first_step = step_seconds(proc)

    walls: dict[str, list[float]] = {"orcapod": [], "plain": [], "run_process": []}
    steps: dict[str, list[float | None]] = {"orcapod": [], "plain": []}
    runs: list[dict] = []
    for _ in range(repeats):  # interleaved, so drift hits every variant alike
        for variant, location in (("orcapod", "defs.py"), ("plain", "plain_defs.py")):
            wall, proc = timed([*materialize, str(work / location)], env)
            walls[variant].append(wall)
            steps[variant].append(step_seconds(proc))
        wall, proc = timed(run, env)
        out = last_json(proc)
        assert out["computed"] == 0, f"pipeline.run() was not warm: {out}"
        walls["run_process"].append(wall)
        runs.append(out)

    run_s = statistics.median(r["run_s"] for r in runs)
    orcapod_s, plain_s = statistics.median(walls["orcapod"]), statistics.median(walls["plain"])
    added = orcapod_s - plain_s
    return {
        "nodes": nodes,
        "function_nodes": sources * depth + sources // 2,
        "asset_checks": len(shape["checks"]),
        "rows_per_source": 10,
        "cold_run_s": cold["run_s"],
        "cold_run_process_s": cold_wall,
        "first_materialize_s": first_wall,
        "first_materialize_step_s": first_step,
        "run_s": run_s,
        "run_met": run_s <= 4.0,
        "build_s": statistics.median(r["build_s"] for r in runs),
        "run_process_s": statistics.median(walls["run_process"]),
        "run_ms_per_node": 1000 * run_s / nodes,
        "orcapod_dagster_s": orcapod_s,
        "orcapod_dagster_step_s": median(steps["orcapod"]),
        "plain_dagster_s": plain_s,
        "plain_dagster_step_s": median(steps["plain"]),
        "missing_step_lines": sum(v is None for vs in steps.values() for v in vs),
        "orcapod_added_s": added,
        "orcapod_added_ratio": added / run_s,
        "orcapod_added_met": added <= 2 * run_s,
        "orcapod_dagster_ms_per_node": 1000 * orcapod_s / nodes,
        "plain_dagster_ms_per_node": 1000 * plain_s / nodes,
        "orcapod_added_ms_per_node": 1000 * added / nodes,
    }


def num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40 nodes, one repeat (smoke run, nothing written)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    compile_bytecode()  # fresh processes load orcapod from bytecode, as an installed environment does
    sources, depth = (4, 7) if args.quick else (20, 17)
    scratch = Path(tempfile.mkdtemp(prefix="orcapod-bench-many-"))
    try:
        r = bench(scratch, sources, depth, 1 if args.quick else args.repeats)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    n = r["nodes"]
    print(f"{n} nodes ({r['function_nodes']} function nodes, {r['asset_checks']} asset checks) over 10-row tables, warm; median of runs")
    print(f"{'':<28} {'seconds':>8} {'ms/node':>8}  target")
    print(f"{'pipeline.run()':<28} {r['run_s']:8.2f} {r['run_ms_per_node']:8.1f}  <= 4 s: {'yes' if r['run_met'] else 'NO'}")
    print(f"{'  build (not in run())':<28} {r['build_s']:8.2f} {1000 * r['build_s'] / n:8.1f}")
    print(f"{'  whole process':<28} {r['run_process_s']:8.2f} {1000 * r['run_process_s'] / n:8.1f}")
    print(f"{'orcapod dagster materialize':<28} {r['orcapod_dagster_s']:8.2f} {r['orcapod_dagster_ms_per_node']:8.1f}  (step {num(r['orcapod_dagster_step_s'])} s)")
    print(f"{'plain multi_asset':<28} {r['plain_dagster_s']:8.2f} {r['plain_dagster_ms_per_node']:8.1f}  (step {num(r['plain_dagster_step_s'])} s)")
    print(
        f"{'orcapod - plain':<28} {r['orcapod_added_s']:8.2f} {r['orcapod_added_ms_per_node']:8.1f}  "
        f"= {r['orcapod_added_ratio']:.2f} x run(), <= 2 x run(): {'yes' if r['orcapod_added_met'] else 'NO'}"
    )
    print(
        f"cold pipeline.run(): {r['cold_run_s']:.2f} s; first materialize (writes the snapshots): {r['first_materialize_s']:.2f} s "
        f"(step {num(r['first_materialize_step_s'])} s).\n"
        "Dagster rows: wall time of `dagster asset materialize --select '*'` (multiprocess executor, one step), fresh process."
    )
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        meta = {"python": sys.version.split()[0], "machine": platform.machine(), "cpus": os.cpu_count(), "repeats": args.repeats}
        (RESULTS / "many_nodes.json").write_text(json.dumps({"meta": meta, "result": r}, indent=2) + "\n")
        print(f"\nwrote {RESULTS / 'many_nodes.json'}")


if __name__ == "__main__":
    main()
