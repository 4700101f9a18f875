"""Dagster overhead benchmark (issue #4): the example pipeline as a Dagster code location vs
the same pipeline's plain ``pipeline.run()``, warm (everything already stored).

The example water-quality pipeline (3 sources, 4 function nodes, joins, a batch) runs on
synthetic data with the bundled files' shape: ``stations x dates`` samples (1,000 and
100,000 rows). Per size, in a temp dir with its own Delta store and ``DAGSTER_HOME``:

* one cold ``dagster asset materialize --select '*'`` fills the store;
* **dagster (multiprocess)** — a warm ``dagster asset materialize --select '*' -f defs.py``
  under the default multiprocess executor (the run in one process, its single step in a child);
* **dagster (in-process)** — the same with ``execution: {config: {in_process: {}}}``;
* **pipeline.run()** — a fresh ``python`` process building the same pipeline on the same store
  and calling ``pipeline.run()``.

Every number is the wall time of a whole fresh process (interpreter start, imports, loading
the definitions included), the median of ``--repeats`` runs; ``step`` is the Dagster step alone
(as logged by Dagster) and ``run()`` is ``pipeline.run()`` alone inside its process. The
Dagster overhead splits in two: **fixed** = dagster process − step (start-up, definitions, run
and event-log bookkeeping), which should not depend on the rows; **in-step** = step − run()
(each node's output is snapshotted — every row hashed — for its data version, plus metadata and
checks), which is proportional to the rows by design and should stay a fraction of run().

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
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import date, timedelta
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent

DEFS = textwrap.dedent(
    """
    from example_project.pipeline import build_pipeline
    from orcapod_dagster import build_definitions

    defs = build_definitions(build_pipeline({store!r}, data={data!r}))
    """
)

PLAIN = textwrap.dedent(
    """
    import json, sys, time
    from example_project.pipeline import build_pipeline

    pipeline = build_pipeline(sys.argv[1], data=sys.argv[2])
    t0 = time.perf_counter()
    result = pipeline.run()
    print(json.dumps({"run_s": time.perf_counter() - t0, "computed": result.computed, "cached": result.cached}))
    """
)

IN_PROCESS = '{"execution": {"config": {"in_process": {}}}}'
# Dagster's format_duration: "8.3ms", "533ms", "2.1s", "4m52s", "1h4m".
STEP_TIME = re.compile(r'STEP_SUCCESS - Finished execution of step "[^"]+" in ([0-9hms.]+)\.\s')
DURATION_PART = re.compile(r"([0-9.]+)(ms|h|m|s)")


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


def timed(command: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])} ... failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed, proc


def step_seconds(proc: subprocess.CompletedProcess[str]) -> float:
    found = STEP_TIME.findall(proc.stdout + proc.stderr)
    if not found:
        raise RuntimeError(f"no STEP_SUCCESS line in the output of {' '.join(proc.args[:6])} ...:\n{proc.stderr[-3000:]}")
    scale = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(value) * scale[unit] for value, unit in DURATION_PART.findall(found[-1]))


def bench_size(scratch: Path, stations: int, dates: int, repeats: int) -> dict:
    work = scratch / f"{stations}x{dates}"
    rows = write_data(work / "data", stations, dates)
    store, home = work / "store", work / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    defs = work / "defs.py"
    defs.write_text(DEFS.format(store=str(store), data=str(work / "data")))
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    materialize = [sys.executable, "-m", "dagster", "asset", "materialize", "--select", "*", "-f", str(defs)]
    plain = [sys.executable, "-c", PLAIN, str(store), str(work / "data")]

    cold_s, _ = timed(materialize, env)
    runs: dict[str, list[tuple[float, float]]] = {"multiprocess": [], "in_process": [], "plain": []}
    for _ in range(repeats):  # interleaved, so drift hits every variant alike
        wall, proc = timed(materialize, env)
        runs["multiprocess"].append((wall, step_seconds(proc)))
        wall, proc = timed([*materialize, "--config-json", IN_PROCESS], env)
        runs["in_process"].append((wall, step_seconds(proc)))
        wall, proc = timed(plain, env)
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["computed"] == 0, f"pipeline.run() was not warm: {out}"
        runs["plain"].append((wall, out["run_s"]))

    def median(variant: str, i: int) -> float:
        return statistics.median(r[i] for r in runs[variant])

    plain_wall = median("plain", 0)
    return {
        "rows": rows,
        "cold_dagster_multiprocess_s": cold_s,
        "dagster_multiprocess_s": median("multiprocess", 0),
        "dagster_multiprocess_step_s": median("multiprocess", 1),
        "dagster_in_process_s": median("in_process", 0),
        "dagster_in_process_step_s": median("in_process", 1),
        "pipeline_run_process_s": plain_wall,
        "pipeline_run_s": median("plain", 1),
        "overhead_multiprocess_s": median("multiprocess", 0) - plain_wall,
        "overhead_in_process_s": median("in_process", 0) - plain_wall,
        "fixed_multiprocess_s": median("multiprocess", 0) - median("multiprocess", 1),
        "fixed_in_process_s": median("in_process", 0) - median("in_process", 1),
        "in_step_overhead_s": median("multiprocess", 1) - median("plain", 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small size only, one repeat (smoke run, nothing written)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shapes = [(20, 50)] if args.quick else [(20, 50), (1_000, 100)]  # 1,000 and 100,000 rows
    scratch = Path(tempfile.mkdtemp(prefix="orcapod-bench-dagster-"))
    try:
        sizes = [bench_size(scratch, s, d, 1 if args.quick else args.repeats) for s, d in shapes]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print("Warm runs of the example pipeline: wall time of a fresh process, median of runs (seconds)")
    print(f"{'rows':>8} {'run() proc':>10} {'run()':>6} {'dagster mp':>10} {'step':>6} {'dagster ip':>10} {'step':>6} {'fixed mp':>8} {'fixed ip':>8} {'in-step':>8}")
    for r in sizes:
        print(
            f"{r['rows']:>8,} {r['pipeline_run_process_s']:10.2f} {r['pipeline_run_s']:6.2f} "
            f"{r['dagster_multiprocess_s']:10.2f} {r['dagster_multiprocess_step_s']:6.2f} "
            f"{r['dagster_in_process_s']:10.2f} {r['dagster_in_process_step_s']:6.2f} "
            f"{r['fixed_multiprocess_s']:8.2f} {r['fixed_in_process_s']:8.2f} {r['in_step_overhead_s']:8.2f}"
        )
    print(
        "run() proc / run(): a fresh process calling pipeline.run() / the call alone.\n"
        "dagster mp / ip: `dagster asset materialize` under the multiprocess / in_process executor; step: its one step.\n"
        "fixed: dagster process - step (start-up, loading the definitions, run and event bookkeeping).\n"
        "in-step: step - run() (snapshotting each node's output for its data version, metadata, checks)."
    )
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        meta = {"python": sys.version.split()[0], "machine": platform.machine(), "cpus": os.cpu_count(), "repeats": args.repeats}
        (RESULTS / "dagster.json").write_text(json.dumps({"meta": meta, "sizes": sizes}, indent=2) + "\n")
        print(f"\nwrote {RESULTS / 'dagster.json'}")


if __name__ == "__main__":
    main()
