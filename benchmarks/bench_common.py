"""What the Dagster benchmarks share: running a command in a fresh process, timed, and reading a
step's duration from Dagster's log (scripts in this folder import it as ``bench_common``)."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Dagster's format_duration: "8.3ms", "533ms", "2.1s", "4m52s", "1h4m".
STEP_TIME = re.compile(r'STEP_SUCCESS - Finished execution of step "[^"]+" in ([0-9hms.]+)\.\s')
DURATION_PART = re.compile(r"([0-9.]+)(ms|h|m|s)")


def compile_bytecode() -> None:
    """Write the bytecode of orcapod's packages and the example project (``__pycache__``, git-ignored),
    as any interpreter does on a first import: with ``PYTHONDONTWRITEBYTECODE`` set (as on some CI
    machines) every fresh process would otherwise compile them from source again, about 0.5 s
    per process that a user's installed environment never pays (the installed Dagster, polars and
    pyarrow always load from bytecode)."""
    import compileall

    for package in ("orcapod_core", "orcapod_dagster", "example_project"):
        compileall.compile_dir(ROOT / package, quiet=1)


def timed(command: list[str], env: dict[str, str], cwd: Path = ROOT) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run ``command`` to completion; its wall time and the finished process (raises on failure)."""
    t0 = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])} ... failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed, proc


def step_seconds(proc: subprocess.CompletedProcess[str]) -> float | None:
    """The step's duration from Dagster's STEP_SUCCESS line; ``None`` (with a warning and the output
    kept in a temp file) when the line is missing — seen once under load with the in-process
    executor although the run succeeded."""
    found = STEP_TIME.findall(proc.stdout + proc.stderr)
    if not found:
        fd, path = tempfile.mkstemp(prefix="orcapod-bench-no-step-line-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(proc.stdout + proc.stderr)
        print(f"warning: no STEP_SUCCESS line in the output of {' '.join(proc.args[3:])}; output kept in {path}", file=sys.stderr)
        return None
    scale = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(value) * scale[unit] for value, unit in DURATION_PART.findall(found[-1]))


def median(values) -> float | None:
    """Median of the values that are not ``None`` (``None`` if there are none)."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def write_results(name: str, results: dict, **meta) -> Path:
    """Write ``benchmarks/results/<name>.json``: ``{"meta": {python, machine, cpus, **meta}, "results": ...}``."""
    import json
    import platform

    out = Path(__file__).parent / "results" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    info = {"python": sys.version.split()[0], "machine": platform.machine(), "cpus": os.cpu_count(), **meta}
    out.write_text(json.dumps({"meta": info, "results": results}, indent=2) + "\n")
    print(f"\nwrote {out}")
    return out
