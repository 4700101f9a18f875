"""Live progress display benchmark (issue 12): what the terminal display of ``pipeline.run()``
costs on a 100,000-packet node of a trivial function. Target: ≤ 2 % over ``progress=False``.

One child process runs with its stderr on a real pseudo-terminal (``pty.openpty()``; the
parent reads everything the terminal receives, as a terminal would), so ``progress=True``
draws the real live display (rich, redrawn 4 times a second) and prints the closing summary.
In that process, ``--repeats`` pairs of cold runs (an in-memory store, emptied for every run,
so all 100,000 packets are computed; source: a ``DictSource`` of ``id``/``x`` ints; function
``y = x * 2``) alternate ``progress=False`` and ``progress=True`` (the order flips every pair,
so drift hits both alike); one warm-up pair first (imports, rich included, are not timed).
Each run times ``pipeline.run()`` alone, in wall time and in the process's CPU time (every
thread, rich's refresh thread included). Reported: the medians, and the median of the pairs'
ratios (``True / False``) as the overhead; also what the terminal received (bytes, redraws).
On a loaded machine wall times swing by tens of percent between runs, far more than 2 %, so
the display's own work is also measured directly: the CPU time of every display event
handler and every rich start/refresh/stop (``time.thread_time`` of the thread doing it, 3
instrumented runs), as a share of a ``progress=False`` run's CPU time.

Run: ``.venv/bin/python benchmarks/bench_progress.py [--quick] [--rows N] [--repeats N]``; writes
``benchmarks/results/progress.json`` (not with ``--quick``).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import pty
import select
import statistics
import struct
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent(
    """
    import json, sys, time
    from orcapod_core import DictSource, Pipeline, function_pod
    from orcapod_core.databases import InMemoryArrowDatabase

    rows, repeats = int(sys.argv[1]), int(sys.argv[2])

    @function_pod(output_keys="y", identity="declared")
    def double(x: int) -> int:
        return x * 2

    source = DictSource({"id": list(range(rows)), "x": list(range(rows))}, tag_columns="id", source_id="bench")

    def cold_run(progress):
        with Pipeline("bench", pipeline_database=InMemoryArrowDatabase()) as p:  # empty: every packet computed
            double.pod(source, label="double")
        t0, c0 = time.perf_counter(), time.process_time()
        result = p.run(progress=progress)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert result.computed == rows, result.summary()
        return elapsed, cpu

    cold_run(False), cold_run(True)  # warm-up: imports, rich's included
    pairs = []
    for i in range(repeats):
        order = (False, True) if i % 2 == 0 else (True, False)
        times = {progress: cold_run(progress) for progress in order}
        pairs.append({"off_s": times[False][0], "on_s": times[True][0], "off_cpu_s": times[False][1], "on_cpu_s": times[True][1]})

    # The display's own work, in CPU seconds of the threads doing it (other processes' load
    # barely moves it): every LiveProgress event handler and every rich start/refresh/stop.
    import rich.live
    from orcapod_core.pipeline.progress import LiveProgress

    import threading

    spent, inside = [0.0], threading.local()

    def counted(fn):
        def wrapper(*a, **k):
            if getattr(inside, "depth", 0):  # called by a counted method (stop's last refresh): counted there
                return fn(*a, **k)
            inside.depth, t = 1, time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                spent[0] += time.thread_time() - t
                inside.depth = 0
        return wrapper

    for cls, names in ((rich.live.Live, ("start", "refresh", "stop")),
                       (LiveProgress, ("on_run_start", "on_node_start", "on_node_progress", "on_node_end", "on_run_end"))):
        for name in names:
            setattr(cls, name, counted(getattr(cls, name)))
    display_cpu, run_cpu = [], []
    for _ in range(3):
        spent[0] = 0.0
        cold_run(True)
        display_cpu.append(spent[0])
        run_cpu.append(cold_run(False)[1])
    print(json.dumps({"pairs": pairs, "display_cpu_s": display_cpu, "run_cpu_s": run_cpu, "stderr_isatty": sys.stderr.isatty()}))
    """
)


def on_terminal(command: list[str], env: dict[str, str]) -> tuple[str, bytes]:
    """Run ``command`` with stderr on a new 120-column pseudo-terminal; → (stdout, the bytes the
    terminal received). Reading the terminal as it is written keeps the child from blocking."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=env, cwd=ROOT)
    os.close(slave)
    received = bytearray()
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                received += data
            elif proc.poll() is not None:
                break
        out, _ = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({proc.returncode}):\n{received.decode(errors='replace')[-3000:]}")
    return out.decode(), bytes(received)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10,000 rows, 2 pairs (smoke run, nothing written)")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=15, help="pairs of runs (progress off / on)")
    args = parser.parse_args()
    rows, repeats = (10_000, 2) if args.quick else (args.rows, args.repeats)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep), "TERM": "xterm-256color"}
    t0 = time.perf_counter()
    out, shown = on_terminal([sys.executable, "-c", CHILD, str(rows), str(repeats)], env)
    wall = time.perf_counter() - t0
    child = json.loads(out)
    assert child["stderr_isatty"], "the child's stderr was not a terminal"
    pairs = child["pairs"]
    off = statistics.median(p["off_s"] for p in pairs)
    on = statistics.median(p["on_s"] for p in pairs)
    ratio = statistics.median(p["on_s"] / p["off_s"] for p in pairs)
    cpu_ratio = statistics.median(p["on_cpu_s"] / p["off_cpu_s"] for p in pairs)
    text = shown.decode(errors="replace")
    display_cpu = statistics.median(child["display_cpu_s"])
    run_cpu = statistics.median(child["run_cpu_s"])
    results = {
        "rows": rows,
        "pairs": repeats,
        "off_median_s": round(off, 4),
        "on_median_s": round(on, 4),
        "overhead_pct": round((ratio - 1) * 100, 2),
        "cpu_overhead_pct": round((cpu_ratio - 1) * 100, 2),
        "target_pct": 2.0,
        "display_cpu_s": round(display_cpu, 5),
        "run_cpu_s": round(run_cpu, 4),
        "display_cpu_pct": round(100 * display_cpu / run_cpu, 3),
        "terminal_bytes": len(shown),
        "redraws": text.count("\x1b[2K\x1b[1A"),  # rich erases the previous frame before each redraw
        "summaries_shown": text.count("computed  cached  failed  seconds"),  # the summary table's header
        "runs_s": [{k: round(v, 4) for k, v in p.items()} for p in pairs],
    }
    print(f"pipeline.run() of a {rows:,}-packet node of a trivial function, cold, stderr on a pseudo-terminal "
          f"({repeats} pairs, medians; machine load average {os.getloadavg()[0]:.1f})")
    print(f"{'progress':<10} {'run s':>8}")
    print(f"{'False':<10} {off:8.3f}")
    print(f"{'True':<10} {on:8.3f}")
    print(f"overhead, median of paired ratios: wall {results['overhead_pct']:+.2f} %, CPU time (all threads) "
          f"{results['cpu_overhead_pct']:+.2f} % (target <= 2 %)")
    print(f"the display's own CPU time: {display_cpu * 1000:.1f} ms per run = {results['display_cpu_pct']:.2f} % of a run's "
          f"{run_cpu:.3f} CPU s (median of 3)")
    print(f"terminal got {len(shown):,} bytes, {results['redraws']} redraws, {results['summaries_shown']} summaries; wall {wall:.1f}s")
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        meta = {"python": sys.version.split()[0], "machine": platform.machine(), "cpus": os.cpu_count(),
                "load_average_at_end": list(os.getloadavg())}
        (RESULTS / "progress.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
        print(f"\nwrote {RESULTS / 'progress.json'}")


if __name__ == "__main__":
    main()
