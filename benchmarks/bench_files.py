"""Files as values (issue #11): hashing unchanged files a second time, in a fresh process.

A pipeline over ``--files`` files of ``--mb`` MB each (a function reading only their size): the
first run reads and digests every file; the second — a new process on the same store — finds
every (path, size, mtime_ns) in the store's digest table and reads none. Target: the second
run's hashing ≤ 5% of the first. Both runs are fresh processes; each reports the seconds spent
building the pipeline (hashing the source's files) and running it, after imports (reported apart),
and how many files it read.

Run: ``.venv/bin/python benchmarks/bench_files.py [--files 10000] [--mb 1]``. Prints a table and
writes ``benchmarks/results/files.json``. Scratch data goes to a temp dir, removed at the end.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"

RUN = """
import json, sys, time
from pathlib import Path
t0 = time.perf_counter()
import orcapod_core as oc
from orcapod_core.files import digest_cache_info
import orcapod_core.pipeline, orcapod_core.databases, orcapod_core.sources  # imports are not hashing
t_imported = time.perf_counter()

@oc.function_pod(output_keys="size")
def size(f: Path) -> int:
    return f.stat().st_size

data, store = Path(sys.argv[1]), Path(sys.argv[2])
with oc.Pipeline("files", oc.DeltaTableDatabase(store)) as pipeline:
    size.pod(oc.DictSource({"i": list(range(len(files := sorted(data.iterdir())))), "f": files}, tag_columns="i"), label="sizes")
t1 = time.perf_counter()
stats = pipeline.run().stats["sizes"]
t2 = time.perf_counter()
print(json.dumps({"import_s": t_imported - t0, "build_s": t1 - t_imported, "run_s": t2 - t1, "total_s": t2 - t_imported, "computed": stats.computed,
                  "cached": stats.cached, "files_read": digest_cache_info()["reads"]}))
"""


def make_files(folder: Path, count: int, mb: int) -> None:
    folder.mkdir(parents=True)
    body = os.urandom(mb * 1024 * 1024)
    for i in range(count):
        # Distinct contents cheaply: a per-file header in front of one random body.
        (folder / f"rec{i:06d}.bin").write_bytes(i.to_bytes(8, "little") + body[8:])


def run(data: Path, store: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", RUN, str(data), str(store)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--mb", type=int, default=1)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="orcapod-bench-files-"))
    try:
        make_files(scratch / "data", args.files, args.mb)
        first = run(scratch / "data", scratch / "store")
        second = run(scratch / "data", scratch / "store")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert first["computed"] == args.files and second["computed"] == 0, (first, second)
    ratio = second["total_s"] / first["total_s"]
    rows = [
        ("first run (reads every file)", first),
        ("second run, new process (stat-cached)", second),
    ]
    print(f"{args.files:,} files of {args.mb} MB, fresh processes")
    print(f"{'':42} {'import s':>8} {'build s':>8} {'run s':>8} {'build+run':>9} {'files read':>11}")
    for name, r in rows:
        print(f"{name:42} {r['import_s']:8.2f} {r['build_s']:8.2f} {r['run_s']:8.2f} {r['total_s']:9.2f} {r['files_read']:11,}")
    print(f"second / first (build+run): {ratio:.3f} (target <= 0.05)")
    RESULTS.mkdir(exist_ok=True)
    out = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "files": args.files,
        "mb_per_file": args.mb,
        "first": first,
        "second": second,
        "second_over_first": ratio,
        "target": 0.05,
    }
    (RESULTS / "files.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
