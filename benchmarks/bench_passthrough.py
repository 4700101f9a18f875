"""Pods that read only their parameters (spec E8): what extra packet columns and
``passthrough=True`` cost a persisted function node.

Pipeline: an Arrow-table source (tag ``id: int``, packet ``x: int`` plus, in the "extra" shapes,
``note: str``, ``a: float``, ``b: int``) → function ``y = x * 2`` stored in a Delta store in a
temp dir. Each shape is timed cold (empty store) and warm (everything stored), building the
pipeline and running it (``with Pipeline`` + ``pipeline.run()``), best of ``repeats`` in this
process; the input table is built once. Shapes:

* ``exact``: the stream's packet columns are exactly the parameters (today's only shape);
* ``extra``: three more packet columns the function does not read (not passed, not hashed);
* ``passthrough``: the same stream with ``passthrough=True`` (the kept columns are read from the
  input, not stored);
* ``unread_edit``: the warm ``extra`` run after every value of an unread column changed
  (nothing is computed: the result cache serves every packet).

Expectation (no target in the issue): ``extra`` and ``passthrough`` warm runs within ~1.3× of
``exact`` — the input packet hash covers one column in every shape, and the passthrough columns
are one Arrow ``select``.

Run: ``.venv/bin/python benchmarks/bench_passthrough.py [--quick]``; writes
``benchmarks/results/passthrough.json`` (not with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orcapod_core import ArrowTableSource, DeltaTableDatabase, Pipeline, function_pod  # noqa: E402

RESULTS = Path(__file__).parent / "results"

DEFINITIONS = {
    "timing": "seconds in this process: build the pipeline + pipeline.run(), best of `repeats`",
    "cold_s": "on an empty store (a new one per repeat)",
    "warm_s": "on the filled store (nothing computed)",
    "warm_vs_exact": "warm_s / warm_s of the exact shape",
    "computed": "packets computed by the measured run (0 for warm runs)",
}


@function_pod(output_keys="y", identity="declared")
def double(x: int) -> int:
    return 2 * x


def table(rows: int, extra: bool, note: str = "n") -> pa.Table:
    ids = pa.array(range(rows), pa.int64())
    columns = {"id": ids, "x": pa.array([i % 1000 for i in range(rows)], pa.int64())}
    if extra:
        columns["note"] = pa.array([f"{note}{i}" for i in range(rows)], pa.large_string())
        columns["a"] = pa.array([i * 0.5 for i in range(rows)], pa.float64())
        columns["b"] = pa.array(range(rows), pa.int64())
    return pa.table(columns)


def run(store: Path, data: pa.Table, passthrough: bool) -> tuple[float, int]:
    t0 = time.perf_counter()
    source = ArrowTableSource(data, tag_columns="id", source_id="numbers")
    with Pipeline("bench", pipeline_database=DeltaTableDatabase(store)) as p:
        double.pod(source, label="doubled", passthrough=passthrough)
    result = p.run()
    rows = p.doubled.as_table().num_rows
    elapsed = time.perf_counter() - t0
    assert rows == data.num_rows
    return elapsed, result.computed


def measure(rows: int, repeats: int, tmp: Path) -> dict[str, dict[str, float]]:
    exact, extra = table(rows, False), table(rows, True)
    edited = table(rows, True, note="edited-")
    out: dict[str, dict[str, float]] = {}
    run(tmp / "warm-up", table(1000, True), True)  # first-use costs (imports, Delta setup) out of the way
    for name, data, passthrough in (("exact", exact, False), ("extra", extra, False), ("passthrough", extra, True)):
        colds = []
        for i in range(repeats):
            colds.append(run(tmp / f"{name}-cold-{i}", data, passthrough)[0])
        warm_store = tmp / f"{name}-cold-0"
        warms = [run(warm_store, data, passthrough) for _ in range(repeats)]
        assert all(c == 0 for _, c in warms)
        out[name] = {"cold_s": round(min(colds), 4), "warm_s": round(min(t for t, _ in warms), 4), "computed": 0}
    edits = [run(tmp / "extra-cold-0", edited, False) for _ in range(repeats)]
    assert all(c == 0 for _, c in edits)
    out["unread_edit"] = {"warm_s": round(min(t for t, _ in edits), 4), "computed": 0}
    for name in ("exact", "extra", "passthrough", "unread_edit"):
        out[name]["warm_vs_exact"] = round(out[name]["warm_s"] / out["exact"]["warm_s"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 rows, one repeat, no results file")
    args = parser.parse_args()
    rows, repeats = (10_000, 1) if args.quick else (100_000, 3)
    with tempfile.TemporaryDirectory() as tmp:
        results = measure(rows, repeats, Path(tmp))
    print(f"rows={rows:,} repeats={repeats}")
    print(f"{'shape':<12} {'cold_s':>8} {'warm_s':>8} {'warm/exact':>10}")
    for name, r in results.items():
        print(f"{name:<12} {r.get('cold_s', float('nan')):>8.3f} {r['warm_s']:>8.3f} {r['warm_vs_exact']:>10.2f}")
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        doc = {
            "benchmark": "passthrough",
            "rows": rows,
            "repeats": repeats,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "note": "2 cores shared with other work while measured: timings are noisy",
            "definitions": DEFINITIONS,
            "results": results,
        }
        (RESULTS / "passthrough.json").write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {RESULTS / 'passthrough.json'}")


if __name__ == "__main__":
    main()
