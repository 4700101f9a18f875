"""Scale-out benchmark (issue #9): a node's packets serially, on a local process pool and on a
local Ray.

On this machine (2 cores), one pipeline run per measurement, a fresh Delta store each, every
executor on the same data:

* **CPU-bound** — 200 packets of a ~20 ms busy loop: serial (in-process) vs
  ``LocalProcessExecutor(max_workers=2)`` vs ``RayExecutor()`` on a local Ray with 2 CPUs
  (started once, before timing). Targets: speed-up ≥ 1.7× for the process pool (pool start-up
  included) and ≥ 1.5× for Ray; ideal 2×.
* **Sleeping** — 64 packets of ``time.sleep(0.25)`` on a local Ray with 4 CPU slots: wall time
  ≤ 1.3× the ideal 64 × 0.25 s / 4 = 4 s.
* **Overhead** — 2,000 packets of a trivial function: µs per packet of each executor (what a
  packet costs beyond its own work: conversions, transport, storing).

Run: ``.venv/bin/python benchmarks/bench_scale.py [--quick]``; writes
``benchmarks/results/scale.json`` (not with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

FUNCS = '''
import time

from orcapod_core import function_pod


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@function_pod(output_keys="y")
def crunch(x: int) -> int:
    _busy(0.02)
    return x * 2


@function_pod(output_keys="y")
def doze(x: int) -> int:
    time.sleep(0.25)
    return x


@function_pod(output_keys="y")
def trivial(x: int) -> int:
    return x + 1
'''

# One measurement per process: a fresh interpreter, the executor started as a user would.
MEASURE = '''
import json, os, shutil, sys, tempfile, time
sys.path.insert(0, {folder!r})
import bench_scale_funcs as funcs
from orcapod_core import DeltaTableDatabase, DictSource, LocalProcessExecutor, LocalPythonFunctionExecutor, Pipeline, RayExecutor

if __name__ == "__main__":
    kind, fn_name, n, cpus = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if kind == "ray":
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        import ray
        os.environ["PYTHONPATH"] = {folder!r}  # Ray's workers inherit it (no runtime_env to set up per worker)
        # Ray's own temp dir stays short (its socket paths must fit in 107 bytes); removed after shutdown.
        ray_tmp = tempfile.mkdtemp(prefix="orcapod-ray-bench-")
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, _temp_dir=ray_tmp)
        executor = RayExecutor()
    elif kind == "process":
        executor = LocalProcessExecutor(max_workers=cpus)
    else:
        executor = LocalPythonFunctionExecutor()
    fn = getattr(funcs, fn_name)
    source = DictSource({{"id": list(range(n)), "x": list(range(n))}}, "id", source_id=f"bench-{{n}}")
    with Pipeline("bench", DeltaTableDatabase(tempfile.mkdtemp(prefix="store-", dir={folder!r}))) as p:
        fn.pod(source, label="out")
    t0 = time.perf_counter()
    result = p.run(executor=executor)
    wall = time.perf_counter() - t0
    assert result.computed == n, result
    if kind == "ray":
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    print(json.dumps({{"wall_s": wall}}))
'''


def measure(folder: Path, kind: str, fn: str, n: int, cpus: int) -> float:
    script = folder / "measure.py"
    script.write_text(MEASURE.format(folder=str(folder)))
    out = subprocess.run([sys.executable, str(script), kind, fn, str(n), str(cpus)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} {fn} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["wall_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer packets, no results file")
    args = parser.parse_args()
    cpu_n, sleep_n, trivial_n = (60, 16, 500) if args.quick else (200, 64, 2000)
    with tempfile.TemporaryDirectory(prefix="orcapod-bench-scale-") as tmp:
        folder = Path(tmp)
        (folder / "bench_scale_funcs.py").write_text(textwrap.dedent(FUNCS))
        serial = measure(folder, "serial", "crunch", cpu_n, 1)
        pool = measure(folder, "process", "crunch", cpu_n, 2)
        ray = measure(folder, "ray", "crunch", cpu_n, 2)
        doze = measure(folder, "ray", "doze", sleep_n, 4)
        overhead = {kind: measure(folder, kind, "trivial", trivial_n, 2) / trivial_n * 1e6 for kind in ("serial", "process", "ray")}
    ideal_doze = sleep_n * 0.25 / 4
    rows = {
        "cpu_bound": {
            "packets": cpu_n,
            "serial_s": serial,
            "process_s": pool,
            "ray_s": ray,
            "process_speedup": serial / pool,
            "ray_speedup": serial / ray,
            "target_process_speedup": 1.7,
            "target_ray_speedup": 1.5,
        },
        "sleeping_on_ray": {"packets": sleep_n, "slots": 4, "wall_s": doze, "ideal_s": ideal_doze, "ratio": doze / ideal_doze, "target_ratio": 1.3},
        "overhead_us_per_packet": {"packets": trivial_n, **overhead},
    }
    c = rows["cpu_bound"]
    print(f"{'benchmark':<44} {'value':>12} {'target':>10}")
    print(f"{f'{cpu_n} x 20 ms CPU: serial':<44} {serial:>11.2f}s")
    print(f"{f'{cpu_n} x 20 ms CPU: process pool (2)':<44} {pool:>11.2f}s")
    print(f"{f'{cpu_n} x 20 ms CPU: Ray (2 CPUs)':<44} {ray:>11.2f}s")
    print(f"{'speed-up, process pool':<44} {c['process_speedup']:>11.2f}x {'>= 1.7x':>10}")
    print(f"{'speed-up, Ray':<44} {c['ray_speedup']:>11.2f}x {'>= 1.5x':>10}")
    print(f"{f'{sleep_n} x 0.25 s sleep, Ray 4 slots / ideal':<44} {doze / ideal_doze:>11.2f}x {'<= 1.3x':>10}  ({doze:.2f}s vs {ideal_doze:.1f}s)")
    for kind, us in overhead.items():
        print(f"{f'overhead per trivial packet, {kind}':<44} {us:>10.0f}us")
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        meta = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
        (RESULTS / "scale.json").write_text(json.dumps({"meta": meta, **rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
