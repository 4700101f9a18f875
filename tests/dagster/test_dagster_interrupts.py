"""Dagster's "terminate run" is a SIGTERM: a materialization stopped that way commits what it
computed, and the next materialization computes only the rest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import load_module

from orcapod_core import DeltaTableDatabase, ResultCache
from orcapod_core.result_cache import result_record_path

CODE_LOCATION = '''
import os, time
from orcapod_core import DeltaTableDatabase, DictSource, Pipeline, function_pod
from orcapod_dagster import build_definitions


@function_pod(output_keys="y")
def crawl(x: int) -> int:
    with open(os.environ["CALLS"], "a") as fh:
        fh.write(f"{{x}}\\n")
    time.sleep(0.05)
    return x + 1


source = DictSource({{"id": list(range(80)), "x": list(range(80))}}, "id", source_id="slow", label="numbers")
with Pipeline("slow", DeltaTableDatabase({store!r}, max_batch_age_s=60)) as pipeline:  # only the stop commits
    crawl.pod(source, label="crawled")
defs = build_definitions(pipeline)
'''


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["multiprocess", "in_process"])
def test_sigterm_of_a_materialization_commits_and_the_rerun_computes_the_rest(tmp_path: Path, executor: str):
    home, store, calls = tmp_path / "home", tmp_path / "store", tmp_path / "calls.txt"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    (tmp_path / "slow_location.py").write_text(CODE_LOCATION.format(store=str(store)))
    env = {**os.environ, "DAGSTER_HOME": str(home), "CALLS": str(calls), "PYTHONPATH": str(tmp_path)}
    command = [sys.executable, "-m", "dagster", "asset", "materialize", "--select", "*", "-m", "slow_location"]
    if executor == "in_process":
        command += ["--config-json", '{"execution": {"config": {"in_process": {}}}}']
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not calls.exists() or len(calls.read_text().split()) < 15):
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # what `dagster run terminate` / the UI's "terminate" sends the run
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    location = load_module(tmp_path / "slow_location.py", f"slow_location_{executor}")  # for the result table path
    found = ResultCache(DeltaTableDatabase(store), result_record_path(location.crawl.pod.packet_function)).get_all_records()
    kept = set() if found is None else {y - 1 for y in found["y"].to_pylist()}
    called = {int(x) for x in calls.read_text().split()}
    assert 0 < len(kept) < 80 and kept <= called, out[-3000:]
    assert len(called - kept) <= 1  # at most the call running when the signal came
    calls.write_text("")
    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert sorted(int(x) for x in calls.read_text().split()) == sorted(set(range(80)) - kept)
