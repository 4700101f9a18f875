"""``make run`` prints no warnings: the Dagster CLI command of its recipe, run with the warning
filters the Makefile sets for it, materializes the example project with nothing on stderr that
is a warning — neither ours nor the two Dagster prints for the command itself (which the
Makefile silences by their exact messages, see its comment)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def makefile_warning_filters() -> str:
    found = re.search(r"^run: export PYTHONWARNINGS := (.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert found, "the Makefile no longer sets PYTHONWARNINGS for `make run`"
    return found.group(1).strip()


@pytest.mark.slow
def test_make_run_materializes_without_warnings(tmp_path: Path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "ORCAPOD_STORE": str(tmp_path / "store"), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "dagster", "asset", "materialize", "--select", "*", "-m", "example_project.definitions"]
    bare = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bare.returncode == 0, bare.stderr[-4000:]
    # Without the filters Dagster warns (so the filters below are not silencing nothing) ...
    assert "SupersessionWarning: Function `asset_materialize_command` is superseded" in bare.stderr

    filtered = subprocess.run(
        command, cwd=ROOT, env={**env, "PYTHONWARNINGS": makefile_warning_filters()}, capture_output=True, text=True, timeout=300
    )
    assert filtered.returncode == 0, filtered.stderr[-4000:]
    # ... and with them, nothing that is a warning is printed.
    warnings = [line for line in (filtered.stdout + filtered.stderr).splitlines() if re.search(r"\w*Warning\b", line)]
    assert warnings == []
    assert "orcapod: run done" in filtered.stderr
