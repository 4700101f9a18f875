"""Dagster overhead and store size benchmark (issues #4 and #10): the example pipeline as a
Dagster code location vs the same pipeline's plain ``pipeline.run()``, warm (everything already
stored), and the bytes the store keeps.

The example water-quality pipeline (3 sources, 4 function nodes, joins, a batch) runs on
synthetic data with the bundled files' shape: ``stations x dates`` samples (1,000 and
100,000 rows). Per size, in a temp dir with its own Delta store and ``DAGSTER_HOME``:

* one cold ``dagster asset materialize --select '*'`` fills the store;
* **dagster (multiprocess)** — a warm ``dagster asset materialize --select '*' -f defs.py``
  under the default multiprocess executor (the run in one process, its single step in a child);
* **dagster (in-process)** — the same with ``execution: {config: {in_process: {}}}``;
* **trivial (multiprocess / in-process)** — the same CLI and executor materializing a code
  location with one plain ``@dg.asset`` returning ``1``: Dagster's fixed cost (interpreter,
  imports, loading a code location, run and event bookkeeping, the step process);
* **pipeline.run()** — a fresh ``python`` process building the same pipeline on the same store
  and calling ``pipeline.run()``;
* **same shape (multiprocess)**, for information only — the same CLI on a plain Dagster
  ``multi_asset`` with the pipeline's 17 asset keys, their deps and its 12 asset checks, one step
  yielding a ``MaterializeResult`` with its check results per asset and nothing else: Dagster's
  own cost for these assets and checks (planned events, outputs, materializations, check
  evaluations), which the target counts as orcapod's (the trivial baseline has one asset).

Every number is the wall time of a whole fresh process (interpreter start, imports, loading
the definitions included; orcapod's bytecode written first, as a first import does), the median of ``--repeats`` runs, interleaved; ``step`` is the
Dagster step alone (as logged by Dagster) and ``run()`` is ``pipeline.run()`` alone inside its
process. Target (issue #10, warm, at 100,000 rows): **(dagster − trivial) / run() ≤ 1.5** —
what orcapod's assets cost under Dagster beyond Dagster's own fixed cost, per second of a warm
``pipeline.run()``; reported for both executors (the default, multiprocess, is the target).
The rest splits the Dagster time as before: **fixed** = dagster process − step; **in-step** =
step − run() (data versions, snapshots, metadata and checks of every node).

**Phases** (median, from the event timestamps Dagster stores for each run): *load* — process
start to the run's first event (interpreter, imports, loading the code location, creating the
run); *planning* — the run's planned-materialization and planned-check events; *step process* —
starting the step's process (multiprocess: a fresh interpreter importing Dagster); *step load* —
that process loading the code location again (imports, building the pipeline and definitions)
up to the step's resources; *step*; *exit* — after the step until the CLI process has exited.

**Store size** (target ≤ 4×): the bytes of the orcapod Delta store right after the cold
materialization, against the input files' bytes plus a plain Parquet file of every node's
visible output (``node.as_table()`` written with ``pyarrow.parquet.write_table``, default
options). The store is split per top-level folder — ``results`` (function results),
``pipeline_records`` (each function node's records), ``snapshots`` (what each materialization
pins), ``logs`` — each into Parquet data and ``_delta_log`` bytes, and measured again after the
warm materializations (what each warm materialization adds).

Run: ``.venv/bin/python benchmarks/bench_dagster.py [--quick]``; writes
``benchmarks/results/dagster.json`` (not with ``--quick``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from datetime import date, timedelta
from pathlib import Path

from bench_common import compile_bytecode, median, step_seconds, timed

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent

DEFS = textwrap.dedent(
    """
    from example_project.pipeline import build_pipeline
    from orcapod_dagster import build_definitions

    defs = build_definitions(build_pipeline({store!r}, data={data!r}))
    """
)

# Dagster's fixed cost: the same CLI and executor on one plain asset that does nothing.
TRIVIAL = textwrap.dedent(
    """
    import dagster as dg


    @dg.asset
    def tiny() -> int:
        return 1


    defs = dg.Definitions(assets=[tiny])
    """
)

PLAIN = textwrap.dedent(
    """
    import json, sys, time
    from example_project.pipeline import build_pipeline

    t0 = time.perf_counter()
    pipeline = build_pipeline(sys.argv[1], data=sys.argv[2])
    t1 = time.perf_counter()
    result = pipeline.run()
    t2 = time.perf_counter()
    print(json.dumps({"build_s": t1 - t0, "run_s": t2 - t1, "computed": result.computed, "cached": result.cached}))
    """
)

# Every node's visible output as a plain Parquet file: the store-size baseline.
PLAIN_PARQUET = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import pyarrow.parquet as pq
    from example_project.pipeline import build_pipeline

    pipeline = build_pipeline(sys.argv[1], data=sys.argv[2])
    out = Path(sys.argv[3])
    sizes = {}
    for node in pipeline:
        path = out / f"{node.label}.parquet"
        pq.write_table(node.as_table(), path)
        sizes[node.label] = path.stat().st_size
    print(json.dumps(sizes))
    """
)

# Writes (to argv[2]) SAME_SHAPE_SOURCE (read from argv[3]) filled with the asset keys, deps and
# checks of the code location argv[1].
SAME_SHAPE = textwrap.dedent(
    """
    import runpy, sys

    defs = runpy.run_path(sys.argv[1])["defs"]
    specs = [(list(s.key.path), [list(d.asset_key.path) for d in s.deps]) for a in defs.assets for s in a.specs]
    checks = [(list(c.asset_key.path), c.name) for a in defs.assets for c in a.check_specs]
    with open(sys.argv[3]) as f:
        source = f.read()
    with open(sys.argv[2], "w") as f:
        f.write(source.format(specs=specs, checks=checks))
    """
)

SAME_SHAPE_SOURCE = textwrap.dedent(
    """
    import dagster as dg

    SPECS = {specs!r}
    CHECKS = {checks!r}


    @dg.multi_asset(
        name="same_shape",
        specs=[dg.AssetSpec(dg.AssetKey(k), deps=[dg.AssetKey(d) for d in deps]) for k, deps in SPECS],
        check_specs=[dg.AssetCheckSpec(name, asset=dg.AssetKey(k)) for k, name in CHECKS],
    )
    def same_shape():
        for k, _ in SPECS:
            key = dg.AssetKey(k)
            checks = [dg.AssetCheckResult(asset_key=key, check_name=n, passed=True) for ck, n in CHECKS if ck == k]
            yield dg.MaterializeResult(asset_key=key, metadata={{"dagster/row_count": 1}}, check_results=checks)


    defs = dg.Definitions(assets=[same_shape])
    """
)

IN_PROCESS = '{"execution": {"config": {"in_process": {}}}}'

PHASES = ("load", "planning", "step_process", "step_load", "step", "exit")


def run_phases(home: Path, started: float, wall: float) -> dict[str, float]:
    """The phases of the latest run in ``home`` (see the module notes), from the timestamps of
    its stored events; ``started``: the wall-clock time the CLI process was started."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        run = instance.get_runs(limit=1)[0]
        first: dict[str, float] = {}
        for record in instance.all_logs(run.run_id):
            kind = record.dagster_event.event_type_value if record.dagster_event else "log"
            first.setdefault(kind, record.timestamp)
    start = min(first.values())
    run_start = first["PIPELINE_START"]
    worker = first.get("STEP_WORKER_STARTING", run_start)
    worker_started = first.get("STEP_WORKER_STARTED", worker)
    return {
        "load": start - started,
        "planning": run_start - start,
        "step_process": worker_started - worker,
        "step_load": first["RESOURCE_INIT_STARTED"] - worker_started,
        "step": first["STEP_SUCCESS"] - first["STEP_START"],
        "exit": started + wall - first["STEP_SUCCESS"],
    }


def write_data(data: Path, stations: int, dates: int, seed: int = 0) -> int:
    """Synthetic ``stations.csv``, ``samples.csv`` and ``calibration.json``: ``stations x dates`` samples."""
    rng = random.Random(seed)
    data.mkdir(parents=True)
    ids = [f"ST{i:05d}" for i in range(stations)]
    with open(data / "stations.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["station_id", "river", "latitude", "longitude", "elevation_m"])
        for i, sid in enumerate(ids):
            w.writerow([sid, f"River {i // 10}", round(rng.uniform(45, 49), 2), round(rng.uniform(-123, -120), 2), round(rng.uniform(0, 1500), 1)])
    calibration = [{"station_id": sid, "probe_serial": f"YSI-{1000 + i}", "do_offset_mg_l": round(rng.uniform(-0.05, 0.05), 3)} for i, sid in enumerate(ids)]
    (data / "calibration.json").write_text(json.dumps(calibration))
    first = date(2026, 3, 2)
    with open(data / "samples.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["station_id", "sample_date", "temperature_c", "ph", "dissolved_oxygen_mg_l", "nitrate_mg_l", "turbidity_ntu"])
        for sid in ids:
            for d in range(dates):
                w.writerow([
                    sid, (first + timedelta(days=d)).isoformat(), round(rng.uniform(2, 22), 1), round(rng.uniform(6.5, 8.2), 2),
                    round(rng.uniform(6, 12), 2), round(rng.uniform(0.2, 4), 2), round(rng.uniform(0.5, 15), 1),
                ])
    return stations * dates








def store_bytes(store: Path, pipeline_name: str = "water_quality") -> dict:
    """Bytes of every file under ``store``, per top-level folder of the store's layout, each split
    into Parquet data and ``_delta_log`` (commits, checkpoints); plus the biggest Delta tables."""
    folders: dict[str, dict[str, int]] = {}
    tables: dict[str, int] = {}
    for path in store.rglob("*"):
        if not path.is_file():
            continue
        parts = path.relative_to(store).parts
        if parts[0] == "results":
            folder = "results"
        elif "_snapshots" in parts:
            folder = "snapshots"
        elif "_logs" in parts:
            folder = "logs"
        elif parts[0] == pipeline_name:
            folder = "pipeline_records"
        else:
            folder = "other"
        size = path.stat().st_size
        entry = folders.setdefault(folder, {"bytes": 0, "data_bytes": 0, "delta_log_bytes": 0, "files": 0})
        entry["bytes"] += size
        entry["delta_log_bytes" if "_delta_log" in parts else "data_bytes"] += size
        entry["files"] += 1
        table = parts[: parts.index("_delta_log")] if "_delta_log" in parts else parts[:-1]
        tables["/".join(table)] = tables.get("/".join(table), 0) + size
    empty = {"bytes": 0, "data_bytes": 0, "delta_log_bytes": 0, "files": 0}
    order = ("results", "pipeline_records", "snapshots", "logs")
    folders = {name: folders.get(name, dict(empty)) for name in order} | {k: v for k, v in folders.items() if k not in order}
    biggest = dict(sorted(tables.items(), key=lambda kv: -kv[1])[:8])
    return {"bytes": sum(f["bytes"] for f in folders.values()), "folders": folders, "tables": len(tables), "biggest_tables": biggest}


def bench_size(scratch: Path, stations: int, dates: int, repeats: int) -> dict:
    work = scratch / f"{stations}x{dates}"
    rows = write_data(work / "data", stations, dates)
    store, home = work / "store", work / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    defs, trivial = work / "defs.py", work / "trivial.py"
    defs.write_text(DEFS.format(store=str(store), data=str(work / "data")))
    trivial.write_text(TRIVIAL)
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    materialize = [sys.executable, "-m", "dagster", "asset", "materialize", "--select", "*", "-f"]
    plain = [sys.executable, "-c", PLAIN, str(store), str(work / "data")]

    cold_s, _ = timed([*materialize, str(defs)], env)
    same_shape, template = work / "same_shape.py", work / "same_shape.template"
    template.write_text(SAME_SHAPE_SOURCE)
    timed([sys.executable, "-c", SAME_SHAPE, str(defs), str(same_shape), str(template)], env)
    # The store as one cold Dagster materialization leaves it, against inputs + plain Parquet outputs.
    cold_store = store_bytes(store)
    input_bytes = {f.name: f.stat().st_size for f in sorted((work / "data").iterdir())}
    (work / "parquet").mkdir()
    _, proc = timed([sys.executable, "-c", PLAIN_PARQUET, str(store), str(work / "data"), str(work / "parquet")], env)
    parquet_bytes = json.loads(proc.stdout.strip().splitlines()[-1])
    baseline_bytes = sum(input_bytes.values()) + sum(parquet_bytes.values())

    variants = ("multiprocess", "in_process", "trivial_multiprocess", "trivial_in_process", "same_shape_multiprocess")
    runs: dict[str, list[tuple[float, float | None]]] = {v: [] for v in (*variants, "plain")}
    phases: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    builds: list[float] = []
    for _ in range(repeats):  # interleaved, so drift hits every variant alike
        for variant in variants:
            location = trivial if variant.startswith("trivial") else same_shape if variant.startswith("same_shape") else defs
            config = ["--config-json", IN_PROCESS] if variant.endswith("in_process") else []
            started = time.time()
            wall, proc = timed([*materialize, str(location), *config], env)
            runs[variant].append((wall, step_seconds(proc)))
            phases[variant].append(run_phases(home, started, wall))
        wall, proc = timed(plain, env)
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["computed"] == 0, f"pipeline.run() was not warm: {out}"
        runs["plain"].append((wall, out["run_s"]))
        builds.append(out["build_s"])
    warm_store = store_bytes(store)

    def med(variant: str, i: int) -> float | None:
        return median(r[i] for r in runs[variant])

    def minus(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    plain_wall, run_s = med("plain", 0), med("plain", 1)
    beyond_mp = med("multiprocess", 0) - med("trivial_multiprocess", 0)
    beyond_ip = med("in_process", 0) - med("trivial_in_process", 0)
    return {
        "rows": rows,
        "cold_dagster_multiprocess_s": cold_s,
        "dagster_multiprocess_s": med("multiprocess", 0),
        "dagster_multiprocess_step_s": med("multiprocess", 1),
        "dagster_in_process_s": med("in_process", 0),
        "dagster_in_process_step_s": med("in_process", 1),
        "trivial_multiprocess_s": med("trivial_multiprocess", 0),
        "trivial_multiprocess_step_s": med("trivial_multiprocess", 1),
        "trivial_in_process_s": med("trivial_in_process", 0),
        "trivial_in_process_step_s": med("trivial_in_process", 1),
        "pipeline_run_process_s": plain_wall,
        "pipeline_build_s": statistics.median(builds),
        "pipeline_run_s": run_s,
        "beyond_trivial_multiprocess_s": beyond_mp,
        "beyond_trivial_in_process_s": beyond_ip,
        "beyond_trivial_multiprocess_ratio": beyond_mp / run_s,
        "beyond_trivial_in_process_ratio": beyond_ip / run_s,
        "beyond_trivial_met": beyond_mp <= 1.5 * run_s,
        "overhead_multiprocess_s": med("multiprocess", 0) - plain_wall,
        "overhead_in_process_s": med("in_process", 0) - plain_wall,
        "fixed_multiprocess_s": minus(med("multiprocess", 0), med("multiprocess", 1)),
        "fixed_in_process_s": minus(med("in_process", 0), med("in_process", 1)),
        "in_step_overhead_s": minus(med("multiprocess", 1), run_s),
        "missing_step_lines": sum(r[1] is None for v in variants for r in runs[v]),
        "same_shape_multiprocess_s": med("same_shape_multiprocess", 0),
        "beyond_same_shape_multiprocess_ratio": (med("multiprocess", 0) - med("same_shape_multiprocess", 0)) / run_s,
        "phases": {v: {p: statistics.median(r[p] for r in phases[v]) for p in PHASES} for v in variants},
        "store_bytes": cold_store["bytes"],
        "input_bytes": sum(input_bytes.values()),
        "plain_parquet_bytes": sum(parquet_bytes.values()),
        "store_ratio": cold_store["bytes"] / baseline_bytes,
        "store_met": cold_store["bytes"] <= 4 * baseline_bytes,
        "store": cold_store,
        "input_bytes_per_file": input_bytes,
        "plain_parquet_bytes_per_node": parquet_bytes,
        "store_after_warm_runs": {**warm_store, "warm_materializations": 2 * repeats},
    }


def num(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small size only, one repeat (smoke run, nothing written)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shapes = [(20, 50)] if args.quick else [(20, 50), (1_000, 100)]  # 1,000 and 100,000 rows
    compile_bytecode()
    scratch = Path(tempfile.mkdtemp(prefix="orcapod-bench-dagster-"))
    try:
        sizes = [bench_size(scratch, s, d, 1 if args.quick else args.repeats) for s, d in shapes]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print("Warm runs of the example pipeline: wall time of a fresh process, median of runs (seconds)")
    print(
        f"{'rows':>8} {'run() proc':>10} {'run()':>6} {'dagster mp':>10} {'step':>6} {'trivial mp':>10} {'beyond':>6} {'x run()':>7} "
        f"{'dagster ip':>10} {'step':>6} {'trivial ip':>10} {'beyond':>6} {'x run()':>7} {'in-step':>8}"
    )
    for r in sizes:
        print(
            f"{r['rows']:>8,} {r['pipeline_run_process_s']:10.2f} {r['pipeline_run_s']:6.2f} "
            f"{r['dagster_multiprocess_s']:10.2f} {num(r['dagster_multiprocess_step_s'], 6)} {r['trivial_multiprocess_s']:10.2f} "
            f"{r['beyond_trivial_multiprocess_s']:6.2f} {r['beyond_trivial_multiprocess_ratio']:7.2f} "
            f"{r['dagster_in_process_s']:10.2f} {num(r['dagster_in_process_step_s'], 6)} {r['trivial_in_process_s']:10.2f} "
            f"{r['beyond_trivial_in_process_s']:6.2f} {r['beyond_trivial_in_process_ratio']:7.2f} {num(r['in_step_overhead_s'], 8)}"
        )
    print(
        "run() proc / run(): a fresh process building the pipeline and calling pipeline.run() / the call alone.\n"
        "dagster mp / ip: `dagster asset materialize` under the multiprocess / in_process executor; step: its one step.\n"
        "trivial: the same command on a code location with one plain @dg.asset returning 1 (Dagster's fixed cost).\n"
        "beyond: dagster - trivial; x run(): beyond / run() (target <= 1.5, multiprocess, 100,000 rows).\n"
        "in-step: step - run() (data versions, snapshots, metadata and checks of every node)."
    )
    for r in sizes:
        print(
            f"{r['rows']:>8,} rows: (dagster - trivial) / run() = {r['beyond_trivial_multiprocess_ratio']:.2f} multiprocess, "
            f"{r['beyond_trivial_in_process_ratio']:.2f} in-process (<= 1.5: {'yes' if r['beyond_trivial_met'] else 'NO'})"
        )

    print("\nWhere the time goes (median seconds, from Dagster's event timestamps; see the module notes)")
    names = {"multiprocess": "dagster mp", "trivial_multiprocess": "trivial mp", "same_shape_multiprocess": "same shape mp",
             "in_process": "dagster ip", "trivial_in_process": "trivial ip"}
    for r in sizes:
        print(f"{r['rows']:>8,} rows  {'':14}" + " ".join(f"{p:>12}" for p in PHASES))
        for variant, name in names.items():
            row = r["phases"][variant]
            print(f"{'':>8}  {name:>14}" + " ".join(f"{row[p]:12.2f}" for p in PHASES))
        print(
            f"{'':>8}  same shape: a plain Dagster multi_asset with the pipeline's assets and checks, "
            f"{r['same_shape_multiprocess_s']:.2f} s; (dagster - same shape) / run() = {r['beyond_same_shape_multiprocess_ratio']:.2f} "
            f"(for information; the target is against trivial)"
        )

    mb = 1e6
    print("\nStore after one cold materialization (MB): total vs inputs + a plain Parquet of every node's output")
    print(f"{'rows':>8} {'store':>8} {'inputs':>8} {'parquet':>8} {'x':>6}  " + "  ".join(f"{f:>16}" for f in ("results", "pipeline_records", "snapshots", "logs")) + f"  {'after warm':>10}")
    for r in sizes:
        folders = r["store"]["folders"]
        print(
            f"{r['rows']:>8,} {r['store_bytes'] / mb:8.2f} {r['input_bytes'] / mb:8.2f} {r['plain_parquet_bytes'] / mb:8.2f} {r['store_ratio']:6.2f}  "
            + "  ".join(f"{folders[f]['bytes'] / mb:16.2f}" for f in ("results", "pipeline_records", "snapshots", "logs"))
            + f"  {r['store_after_warm_runs']['bytes'] / mb:10.2f}"
        )
    print(
        "x: store / (inputs + parquet), target <= 4. after warm: the store after the warm materializations.\n"
        "Per folder, data (Parquet) + _delta_log (commits, checkpoints) MB:"
    )
    for r in sizes:
        folders = r["store"]["folders"]
        print(
            f"{r['rows']:>8,} rows: "
            + ", ".join(f"{f} {v['data_bytes'] / mb:.2f} + {v['delta_log_bytes'] / mb:.2f} ({v['files']} files)" for f, v in folders.items())
            + f"; {r['store']['tables']} tables"
        )
        print(f"{'':>8}   store <= 4x (inputs + parquet): {'yes' if r['store_met'] else 'NO'} ({r['store_ratio']:.2f}x)")
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        meta = {
            "python": sys.version.split()[0], "machine": platform.machine(), "cpus": os.cpu_count(), "repeats": args.repeats,
            # Whatever it is, orcapod's bytecode was written first (bench_common.compile_bytecode).
            "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"),
            "load_average_at_end": os.getloadavg(),
        }
        (RESULTS / "dagster.json").write_text(json.dumps({"meta": meta, "sizes": sizes}, indent=2) + "\n")
        print(f"\nwrote {RESULTS / 'dagster.json'}")


if __name__ == "__main__":
    main()
