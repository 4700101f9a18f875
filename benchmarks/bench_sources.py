"""Lazy file sources benchmark (issue #8, E5): building a pipeline and its Dagster definitions
over a large Delta table (and CSV file) reads no rows.

Per size (rows of a 3-column table: ``id``, ``x``, ``site``), in a temp dir, each in a fresh
``python`` process (interpreter start and imports excluded from the timings):

* **build defs (Delta)** — ``DeltaTableSource`` → a function pod → ``Pipeline`` →
  ``build_definitions``: what loading a Dagster code location does;
* **build defs (CSV)** — the same over a CSV file of the same rows;
* **read (Delta)** / **read (CSV)** — reading the rows once (``len(source)``), for scale: what
  building cost before sources were lazy, when every construction read every row.

The target: build time does not grow with the rows (1M rows within 2× of 1k rows).

Run: ``.venv/bin/python benchmarks/bench_sources.py [--quick]``; writes
``benchmarks/results/sources.json`` (not with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

MEASURE = textwrap.dedent(
    """
    import json, sys, time
    import orcapod_core as oc
    from orcapod_dagster import build_definitions

    kind, path, store = sys.argv[1], sys.argv[2], sys.argv[3]

    @oc.function_pod(output_keys="y")
    def scale(x: float) -> float:
        return 2 * x

    t0 = time.perf_counter()
    if kind == "delta":
        source = oc.DeltaTableSource(path, tag_columns="id", label="readings")
    else:
        source = oc.CSVSource(path, tag_columns="id", label="readings")
    with oc.Pipeline("bench", oc.DeltaTableDatabase(store)) as p:
        scale.pod(source.drop_packet_columns("site"), label="scaled")
    defs = build_definitions(p)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = len(source)
    read_s = time.perf_counter() - t0
    print(json.dumps({"build_s": build_s, "read_s": read_s, "rows": n}))
    """
)


def write_data(tmp: Path, rows: int) -> tuple[Path, Path]:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    from deltalake import write_deltalake

    ids = pa.array(range(rows), pa.int64())
    table = pa.table({"id": ids, "x": pa.array([i * 0.5 for i in range(rows)], pa.float64()), "site": pa.array([f"s{i % 97}" for i in range(rows)])})
    delta, csv = tmp / f"delta_{rows}", tmp / f"table_{rows}.csv"
    write_deltalake(delta, table)
    pacsv.write_csv(table, csv)
    return delta, csv


def measure(kind: str, path: Path, tmp: Path, repeats: int) -> dict[str, float]:
    script = tmp / "measure.py"
    script.write_text(MEASURE)
    runs = []
    for i in range(repeats):
        out = subprocess.run(
            [sys.executable, str(script), kind, str(path), str(tmp / f"store_{kind}_{i}")], capture_output=True, text=True, check=True
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {key: statistics.median(r[key] for r in runs) for key in ("build_s", "read_s")} | {"rows": runs[0]["rows"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat, no results file")
    args = parser.parse_args()
    sizes = [1_000, 100_000] if args.quick else [1_000, 1_000_000]
    repeats = 1 if args.quick else 3
    results = []
    with tempfile.TemporaryDirectory(prefix="orcapod-bench-sources-") as tmp_dir:
        tmp = Path(tmp_dir)
        for rows in sizes:
            delta, csv = write_data(tmp, rows)
            d, c = measure("delta", delta, tmp, repeats), measure("csv", csv, tmp, repeats)
            results.append(
                {
                    "rows": rows,
                    "build_definitions_delta_s": d["build_s"],
                    "read_delta_s": d["read_s"],
                    "build_definitions_csv_s": c["build_s"],
                    "read_csv_s": c["read_s"],
                }
            )
    print(f"{'rows':>10}  {'build defs (Delta) s':>20}  {'read (Delta) s':>14}  {'build defs (CSV) s':>18}  {'read (CSV) s':>12}")
    for r in results:
        print(
            f"{r['rows']:>10,}  {r['build_definitions_delta_s']:>20.3f}  {r['read_delta_s']:>14.3f}  "
            f"{r['build_definitions_csv_s']:>18.3f}  {r['read_csv_s']:>12.3f}"
        )
    small, large = results[0], results[-1]
    growth = large["build_definitions_delta_s"] / small["build_definitions_delta_s"]
    print(f"Delta build time at {large['rows']:,} rows / at {small['rows']:,} rows: {growth:.2f}x (target <= 2x)")
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        meta = {"python": platform.python_version(), "machine": platform.machine(), "repeats": repeats}
        payload = {"meta": meta, "sizes": results, "delta_build_growth": growth, "target_delta_build_growth": 2.0}
        (RESULTS / "sources.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
