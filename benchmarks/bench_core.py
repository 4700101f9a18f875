"""Core engine benchmarks (issue #2): hashing, function-pod overhead, Join vs polars.

Run: ``.venv/bin/python benchmarks/bench_core.py [--quick]``. Prints a table and writes
``benchmarks/results/core.json``. Each figure is the best of a few repeats, measured in one
run against a plain baseline on the same data.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import struct
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow as pa

from orcapod_core import function_pod
from orcapod_core.hashing import hash_rows
from orcapod_core.operators import Join
from orcapod_core.sources import ArrowTableSource

RESULTS = Path(__file__).parent / "results"


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_hashing(n: int) -> dict:
    table = pa.table({"a": pa.array(range(n), pa.int64()), "b": pa.array(range(0, 3 * n, 3), pa.int64())})
    source = ArrowTableSource(table, tag_columns=[], source_id="bench")

    def orcapod() -> None:
        source.__dict__.pop("_cached_packet_hashes", None)
        source.packet_hashes()

    a, b = table.column("a").to_pylist(), table.column("b").to_pylist()

    def baseline() -> None:  # the obvious per-row approach: pack each row, hash it
        sha, pack = hashlib.sha256, struct.Struct("<qq").pack
        [sha(pack(x, y)).digest() for x, y in zip(a, b)]

    t_orcapod, t_base = best_of(orcapod), best_of(baseline)
    return {
        "name": f"content-hash {n:,} packets (2 int cols)",
        "orcapod_s": t_orcapod,
        "baseline": "per-row struct.pack + sha256 loop",
        "baseline_s": t_base,
        "metric": "packets/s",
        "value": n / t_orcapod,
        "target": ">= 1,000,000 packets/s",
        "met": n / t_orcapod >= 1_000_000,
    }


def bench_function_pod(n: int) -> dict:
    @function_pod(output_keys="y")
    def double(x: int) -> int:
        return x * 2

    table = pa.table({"id": pa.array(range(n), pa.int64()), "x": pa.array(range(n), pa.int64())})
    source = ArrowTableSource(table, tag_columns=["id"], source_id="bench")
    source.packet_hashes()  # the input stream's hashes are shared by both sides

    def orcapod() -> None:
        double.pod(source).as_table()

    def baseline() -> None:  # plain loop calling the same function on the same columns
        xs = table.column("x").to_pylist()
        pa.array([double(x) for x in xs], pa.int64())

    t_orcapod, t_base = best_of(orcapod), best_of(baseline)
    overhead_us = (t_orcapod - t_base) / n * 1e6
    return {
        "name": f"function pod, trivial fn, {n:,} rows",
        "orcapod_s": t_orcapod,
        "baseline": "plain Python loop over the column",
        "baseline_s": t_base,
        "metric": "overhead us/packet",
        "value": overhead_us,
        "target": "<= 10 us/packet",
        "met": overhead_us <= 10,
    }


def bench_join(n: int) -> dict:
    left = pa.table({"id": pa.array(range(n), pa.int64()), "x": pa.array(range(n), pa.int64())})
    right = pa.table({"id": pa.array(range(n - 1, -1, -1), pa.int64()), "y": pa.array(range(n), pa.float64())})
    a = ArrowTableSource(left, tag_columns=["id"], source_id="left")
    b = ArrowTableSource(right, tag_columns=["id"], source_id="right")
    a.as_table(), b.as_table()  # materialize the sources outside the timing
    pl_left, pl_right = pl.from_arrow(left), pl.from_arrow(right)

    def orcapod() -> None:
        Join()(a, b).as_table()

    def baseline() -> None:
        pl_left.join(pl_right, on="id", how="inner")

    t_orcapod, t_base = best_of(orcapod), best_of(baseline)
    return {
        "name": f"Join {n:,} x {n:,} rows",
        "orcapod_s": t_orcapod,
        "baseline": "bare polars inner join",
        "baseline_s": t_base,
        "metric": "x polars",
        "value": t_orcapod / t_base,
        "target": "<= 3x polars",
        "met": t_orcapod / t_base <= 3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10x smaller inputs (smoke run)")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    results = [bench_hashing(1_000_000 // scale), bench_function_pod(100_000 // scale), bench_join(1_000_000 // scale)]

    header = f"{'benchmark':42} {'orcapod s':>10} {'baseline s':>10} {'value':>14} {'target':>24}  met"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['name']:42} {r['orcapod_s']:10.3f} {r['baseline_s']:10.3f} "
            f"{r['value']:>10,.2f} {r['metric'].split()[-1] if r['metric'] != 'x polars' else 'x':<3} {r['target']:>24}  {'yes' if r['met'] else 'NO'}"
        )
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        meta = {"python": sys.version.split()[0], "machine": platform.machine(), "pyarrow": pa.__version__, "polars": pl.__version__}
        (RESULTS / "core.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
        print(f"\nwrote {RESULTS / 'core.json'}")


if __name__ == "__main__":
    main()
