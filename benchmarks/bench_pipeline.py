"""Persisted-pipeline benchmarks (issues #3 and #10): cold, warm and incremental runs on Delta Lake.

Pipeline: a Delta-table source (tag ``id: int``, packet ``x: int``) → function ``y = x * 2``,
stored in a Delta store in a temp dir. Every measured run happens in a fresh process; the
time reported is the user's view inside that process, imports excluded: **build the pipeline
from the Delta table source and run it** (``DeltaTableSource(...)``, the ``with Pipeline``
block, ``pipeline.run()``). The baseline is a plain script timed the same way, from the source
read: read the rows, call the same function in a Python loop, one ``write_deltalake`` of the
outputs. Targets (issue #10, at 100,000 rows):

* warm run (everything stored)  ≤ 3 × the plain script;
* cold run (empty store)        ≤ 5 × the plain script;
* peak RSS of a 1,000,000-row warm run ≤ 1.5 GB;
* incremental (1% new rows) ≤ warm + 2 × the cold cost of the new rows (issue #3).

Also reported, without a target: warm vs merely reading the input rows plus the node's stored
output with polars (``plain_read_s``, ``warm_ratio``: what a warm run costs beyond pure I/O).

Run: ``.venv/bin/python benchmarks/bench_pipeline.py [--quick]``; writes
``benchmarks/results/pipeline.json`` (not with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent

#: What each field of ``pipeline.json`` measures (written into the file).
DEFINITIONS = {
    "timing": "seconds inside a fresh process, imports excluded, best of `repeats` (incremental: one run)",
    "cold_s": "build the pipeline from the Delta source + pipeline.run() on an empty store (a new one per repeat)",
    "warm_s": "the same on the filled store (nothing computed)",
    "plain_cold_s": "plain script: read the Delta rows, a Python loop calling the function, one write_deltalake",
    "cold_ratio": "cold_s / plain_cold_s (target <= 5 at 100,000 rows)",
    "warm_vs_plain_ratio": "warm_s / plain_cold_s (target <= 3 at 100,000 rows)",
    "plain_read_s": "polars reads of the input table and the node's stored result table",
    "warm_ratio": "warm_s / plain_read_s (no target: the warm run's cost beyond pure I/O)",
    "incremental_s": "the run after appending 1% new rows (computes only those)",
    "incremental_target_s": "warm_s + 2 x cold_s x new rows / rows",
    "warm_peak_rss_mb": "peak RSS of the warm run's process (rss_1m: target <= 1536 MB at 1,000,000 rows)",
}

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    mode, src, store, out = sys.argv[1:5]
    import polars as pl, pyarrow as pa
    from deltalake import DeltaTable, write_deltalake
    from orcapod_core.databases import DeltaTableDatabase
    from orcapod_core import function_pod
    from orcapod_core.pipeline import Pipeline
    from orcapod_core.sources import DeltaTableSource

    @function_pod(output_keys="y", identity="declared")
    def double(x: int) -> int:
        return x * 2

    t0 = time.perf_counter()
    if mode == "orcapod":
        source = DeltaTableSource(src, tag_columns=["id"], source_id="bench_input")
        with Pipeline("bench", pipeline_database=DeltaTableDatabase(store)) as p:
            double.pod(source, label="double")
        result = p.run()
        extra = {"computed": result.computed, "cached": result.cached}
    elif mode == "plain_cold":
        table = DeltaTable(src).to_pyarrow_table()
        ys = [double(x) for x in table.column("x").to_pylist()]
        write_deltalake(out, pa.table({"id": table.column("id"), "y": pa.array(ys, pa.int64())}), mode="overwrite")
        extra = {}
    elif mode == "plain_read":
        inp = pl.read_delta(src)
        # the node's stored output: the function's result table (the biggest table it keeps)
        tables = sorted(Path(store).rglob("_delta_log"), key=lambda p: -sum(f.stat().st_size for f in p.parent.rglob("*.parquet")))
        stored = pl.read_delta(str(tables[0].parent))
        extra = {"rows": inp.height + stored.height}
    else:
        raise SystemExit(f"unknown mode {mode}")
    elapsed = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": elapsed, "peak_rss_mb": rss_mb, **extra}))
    """
).replace("from deltalake import", "from pathlib import Path\nfrom deltalake import")


def child(mode: str, src: Path, store: Path, out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(src), str(store), str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_input(path: Path, start: int, stop: int, mode: str) -> None:
    import pyarrow as pa
    from deltalake import write_deltalake

    ids = pa.array(range(start, stop), pa.int64())
    write_deltalake(str(path), pa.table({"id": ids, "x": ids}), mode=mode)


def bench_size(n: int, scratch: Path, repeats: int) -> dict:
    src, store, out = scratch / f"input_{n}", scratch / f"store_{n}", scratch / f"plain_{n}"
    write_input(src, 0, n, "overwrite")
    colds = []
    for i in range(repeats):  # each cold run on its own empty store; the last one is kept for the warm runs
        if i:
            shutil.rmtree(store)
        colds.append(child("orcapod", src, store, out))
        assert colds[-1]["computed"] == n, colds[-1]
    cold = min(colds, key=lambda r: r["seconds"])
    plain_cold = min((child("plain_cold", src, store, out) for _ in range(repeats)), key=lambda r: r["seconds"])
    warm = min((child("orcapod", src, store, out) for _ in range(repeats)), key=lambda r: r["seconds"])
    assert warm["computed"] == 0, warm
    plain_read = min((child("plain_read", src, store, out) for _ in range(repeats)), key=lambda r: r["seconds"])
    new = max(1, n // 100)
    write_input(src, n, n + new, "append")
    incr = child("orcapod", src, store, out)
    assert incr["computed"] == new, incr
    incr_target = warm["seconds"] + 2 * cold["seconds"] * new / n
    return {
        "rows": n,
        "cold_s": cold["seconds"],
        "plain_cold_s": plain_cold["seconds"],
        "cold_ratio": cold["seconds"] / plain_cold["seconds"],
        "cold_met": cold["seconds"] <= 5 * plain_cold["seconds"],
        "warm_s": warm["seconds"],
        "warm_vs_plain_ratio": warm["seconds"] / plain_cold["seconds"],
        "warm_vs_plain_met": warm["seconds"] <= 3 * plain_cold["seconds"],
        "plain_read_s": plain_read["seconds"],
        "warm_ratio": warm["seconds"] / plain_read["seconds"],
        "incremental_s": incr["seconds"],
        "incremental_target_s": incr_target,
        "incremental_met": incr["seconds"] <= incr_target,
        "warm_peak_rss_mb": warm["peak_rss_mb"],
    }


def bench_rss(n: int, scratch: Path) -> dict:
    src, store, out = scratch / f"input_{n}", scratch / f"store_{n}", scratch / f"plain_{n}"
    write_input(src, 0, n, "overwrite")
    child("orcapod", src, store, out)
    warm = child("orcapod", src, store, out)
    return {"rows": n, "warm_s": warm["seconds"], "warm_peak_rss_mb": warm["peak_rss_mb"], "rss_met": warm["peak_rss_mb"] <= 1536}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes only (smoke run, nothing written)")
    args = parser.parse_args()
    sizes = [2_000] if args.quick else [10_000, 100_000]
    scratch = Path(tempfile.mkdtemp(prefix="orcapod-bench-"))
    try:
        rows = [bench_size(n, scratch, repeats=1 if args.quick else 3) for n in sizes]
        rss = None if args.quick else bench_rss(1_000_000, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print("Seconds to build the pipeline from its Delta source and run it (fresh process, imports excluded), best of runs")
    print(f"{'rows':>8} {'plain s':>8} {'cold s':>8} {'x':>6} {'warm s':>8} {'x':>6} {'read s':>8} {'x':>6} {'incr s':>8} {'target':>8}")
    for r in rows:
        print(
            f"{r['rows']:>8,} {r['plain_cold_s']:8.3f} {r['cold_s']:8.3f} {r['cold_ratio']:6.2f} {r['warm_s']:8.3f} "
            f"{r['warm_vs_plain_ratio']:6.2f} {r['plain_read_s']:8.3f} {r['warm_ratio']:6.2f} {r['incremental_s']:8.3f} "
            f"{r['incremental_target_s']:8.3f}"
        )
    print(
        "plain: read the rows + a Python loop calling the function + one write_deltalake.\n"
        "cold x / warm x: cold / warm run over plain (targets <= 5x / <= 3x at 100,000 rows).\n"
        "read: polars reads of the input and the node's stored output; x = warm / read (no target).\n"
        "incr: 1% new rows appended; target = warm + 2 x the cold cost of the new rows."
    )
    for r in rows:
        print(
            f"{r['rows']:>8,} rows: cold {r['cold_ratio']:.2f}x (<= 5x: {'yes' if r['cold_met'] else 'NO'}), "
            f"warm {r['warm_vs_plain_ratio']:.2f}x (<= 3x: {'yes' if r['warm_vs_plain_met'] else 'NO'}), "
            f"incremental {'yes' if r['incremental_met'] else 'NO'}"
        )
    if rss:
        print(f"1,000,000-row warm run: {rss['warm_s']:.2f}s, peak RSS {rss['warm_peak_rss_mb']:.0f} MB (target <= 1536 MB: {'yes' if rss['rss_met'] else 'NO'})")
        RESULTS.mkdir(exist_ok=True)
        meta = {"python": sys.version.split()[0], "machine": platform.machine(), "cpus": os.cpu_count(), "repeats": 3}
        out = {"meta": meta, "definitions": DEFINITIONS, "sizes": rows, "rss_1m": rss}
        (RESULTS / "pipeline.json").write_text(json.dumps(out, indent=2) + "\n")
        print(f"\nwrote {RESULTS / 'pipeline.json'}")


if __name__ == "__main__":
    main()
