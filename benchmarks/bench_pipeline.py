"""Persisted-pipeline benchmarks (issue #3): cold, warm and incremental runs on Delta Lake.

Pipeline: a Delta-table source (tag ``id: int``, packet ``x: int``) → function ``y = x * 2``,
stored in a Delta store in a temp dir. Every measured run happens in a fresh process; the
time reported is the run inside that process (imports excluded), next to plain baselines:

* cold  vs a plain script: read the rows, call the function in a loop, one ``write_deltalake``;
* warm  vs reading the input rows plus the node's stored output with deltalake/polars;
* incremental (1% new rows) vs warm + 2 x the cold cost of the new rows;
* peak RSS of a 1,000,000-row warm run.

Run: ``.venv/bin/python benchmarks/bench_pipeline.py [--quick]``; writes
``benchmarks/results/pipeline.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent

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
    cold = child("orcapod", src, store, out)
    assert cold["computed"] == n, cold
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
        "plain_read_s": plain_read["seconds"],
        "warm_ratio": warm["seconds"] / plain_read["seconds"],
        "warm_met": warm["seconds"] <= 3 * plain_read["seconds"],
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

    print(f"{'rows':>8} {'cold s':>8} {'plain s':>8} {'x':>6} {'warm s':>8} {'read s':>8} {'x':>6} {'incr s':>8} {'target':>8}  met")
    for r in rows:
        met = all((r["cold_met"], r["warm_met"], r["incremental_met"]))
        print(
            f"{r['rows']:>8,} {r['cold_s']:8.3f} {r['plain_cold_s']:8.3f} {r['cold_ratio']:6.2f} {r['warm_s']:8.3f} "
            f"{r['plain_read_s']:8.3f} {r['warm_ratio']:6.2f} {r['incremental_s']:8.3f} {r['incremental_target_s']:8.3f}  "
            f"{'yes' if met else 'NO'} (cold<=5x {r['cold_met']}, warm<=3x {r['warm_met']}, incr {r['incremental_met']})"
        )
    if rss:
        print(f"1,000,000-row warm run: {rss['warm_s']:.2f}s, peak RSS {rss['warm_peak_rss_mb']:.0f} MB (target <= 1536 MB: {'yes' if rss['rss_met'] else 'NO'})")
        RESULTS.mkdir(exist_ok=True)
        meta = {"python": sys.version.split()[0], "machine": platform.machine()}
        (RESULTS / "pipeline.json").write_text(json.dumps({"meta": meta, "sizes": rows, "rss_1m": rss}, indent=2) + "\n")
        print(f"\nwrote {RESULTS / 'pipeline.json'}")


if __name__ == "__main__":
    main()
