"""Pipelines across real processes on one Delta Lake store: a run killed mid-way loses at most
its pending batch and a rerun computes only what is missing; two processes running the same
pipeline at once neither lose nor duplicate a record."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from orcapod_core.databases import RECORD_ID_COLUMN

pytestmark = pytest.mark.slow

#: Records per Delta commit in these tests, and the largest compute chunk: together they bound
#: what a killed run can lose (results pending in the buffer + the chunk being computed).
BATCH = 250
MAX_CHUNK = 64

_SCRIPT = """
import json, os, sys, time
from orcapod_core.databases import DeltaTableDatabase
from orcapod_core import function_pod
from orcapod_core.pipeline import AsyncPipelineOrchestrator, FunctionNode, Pipeline
from orcapod_core.sources import DictSource

store, calls_path, n, go, orchestrator = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
FunctionNode.max_chunk = {max_chunk}
log = open(calls_path, "a", buffering=1)


@function_pod(output_keys="y")
def slow_square(x: int) -> int:
    time.sleep({sleep_s})
    log.write(f"{{x}}\\n")  # one line per call, flushed (line-buffered) before the result exists
    return x * x


@function_pod(output_keys="z")
def plus_one(y: int) -> int:
    return y + 1


src = DictSource({{"id": list(range(n)), "x": [i % {distinct} for i in range(n)]}}, tag_columns="id", source_id="src")
db = DeltaTableDatabase(store, batch_size={batch})
with Pipeline("procs", pipeline_database=db) as p:
    plus_one.pod(slow_square.pod(src))
print("ready", flush=True)
while go != "-" and not os.path.exists(go):  # start line for runs that should overlap
    time.sleep(0.002)
result = p.run(orchestrator=AsyncPipelineOrchestrator() if orchestrator == "async" else None)
print(json.dumps({{
    "computed": {{k: s.computed for k, s in result.stats.items()}},
    "cached": {{k: s.cached for k, s in result.stats.items()}},
    "rows": p.plus_one.as_table().sort_by("id").to_pylist(),
    "paths": {{"square_records": list(p.slow_square.record_path), "plus_records": list(p.plus_one.record_path)}},
}}), flush=True)
p.flush()
"""


def _script(tmp_path, *, sleep_s, distinct, batch=BATCH, max_chunk=MAX_CHUNK):
    path = tmp_path / "run_pipeline.py"
    path.write_text(_SCRIPT.format(sleep_s=sleep_s, distinct=distinct, batch=batch, max_chunk=max_chunk))
    return path


def _start(script, store, calls, n, go="-", orchestrator="sync"):
    return subprocess.Popen(
        [sys.executable, str(script), str(store), str(calls), str(n), str(go), orchestrator],
        cwd=script.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def _delta(store, path):
    """Every physical row of a stored table, read with deltalake itself (no dedup on read)."""
    return DeltaTable(os.path.join(store, *path)).to_pyarrow_table()


def _result_table_dir(store, name):
    dirs = glob.glob(os.path.join(store, "results", name, "v0", "*"))
    assert len(dirs) <= 1, dirs
    return dirs[0] if dirs else None


def _n_calls(calls):
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def _assert_unique(table, expected):
    ids = table[RECORD_ID_COLUMN]
    assert table.num_rows == expected
    assert pc.count_distinct(ids).as_py() == expected, "duplicated records"


def _records_table_dir(store, label):
    """The pipeline-record table of node ``label`` of the "procs" pipeline (None before it exists)."""
    dirs = glob.glob(os.path.join(store, "procs", label, "*"))
    assert len(dirs) <= 1, dirs
    return dirs[0] if dirs and glob.glob(os.path.join(dirs[0], "_delta_log", "*.json")) else None


@pytest.mark.parametrize("orchestrator", ["sync", "async"])
def test_a_killed_run_loses_at_most_its_pending_batch_and_a_rerun_computes_only_the_rest(tmp_path, orchestrator):
    n = 3000
    store, calls = tmp_path / "store", tmp_path / "calls.txt"
    script = _script(tmp_path, sleep_s=0.001, distinct=n)
    proc = _start(script, store, calls, n, orchestrator=orchestrator)
    try:
        # Wait for the first committed batch of results (and of pipeline records, committed
        # right after it), and a bit of work beyond it.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            table_dir = _result_table_dir(store, "slow_square")
            if (
                table_dir
                and glob.glob(os.path.join(table_dir, "_delta_log", "*.json"))
                and _records_table_dir(store, "slow_square")
                and _n_calls(calls) >= 2 * BATCH
            ):
                break
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.01)
        else:
            pytest.fail("no batch was committed within 60 s")
        os.kill(proc.pid, signal.SIGKILL)  # this process only, by its pid
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    first_calls = _n_calls(calls)
    assert first_calls < n, "the run finished before it could be killed"
    committed = DeltaTable(table_dir).to_pyarrow_table()
    kept = committed.num_rows
    assert 0 < kept <= first_calls
    # Lost: results still pending in the buffer plus the chunk being computed.
    assert first_calls - kept < BATCH + MAX_CHUNK
    result_hashes = set(committed["__record_id"].to_pylist())
    # Pipeline records were committed during the run, in step with the results: each one links
    # to a committed result (never ahead of them), and they trail the results by at most the
    # batch committed last (a kill between the result commit and the record commit).
    early = DeltaTable(_records_table_dir(store, "slow_square")).to_pyarrow_table()
    recorded = early.num_rows
    assert 0 < recorded <= kept and kept - recorded < BATCH + MAX_CHUNK
    _assert_unique(early, recorded)
    assert set(early["__packet_hash"].to_pylist()) <= result_hashes, "a pipeline record points to a missing result"
    assert all(early["__computed"].to_pylist())

    rerun = _finish(_start(script, store, calls, n, orchestrator=orchestrator))
    second_calls = _n_calls(calls) - first_calls
    assert second_calls == n - kept  # the rerun computes exactly what was not committed
    assert _n_calls(calls) <= n + BATCH + MAX_CHUNK
    assert rerun["computed"]["slow_square"] == n - kept and rerun["cached"]["slow_square"] == kept
    assert [r["z"] for r in rerun["rows"]] == [i * i + 1 for i in range(n)]

    # Every row present exactly once: results, and the pipeline records of both nodes.
    results = DeltaTable(table_dir).to_pyarrow_table()
    _assert_unique(results, n)
    records = _delta(str(store), rerun["paths"]["square_records"])
    _assert_unique(records, n)
    _assert_unique(_delta(str(store), rerun["paths"]["plus_records"]), n)
    assert set(records["__packet_hash"].to_pylist()) <= set(results["__record_id"].to_pylist())
    # The records the killed run committed are kept; the rerun added the others: rows whose
    # result survived the kill as not computed, the rest as computed.
    by_run = {}
    for run_id, computed in zip(records["__run_id"].to_pylist(), records["__computed"].to_pylist()):
        by_run.setdefault(run_id, []).append(computed)
    first_run = early["__run_id"][0].as_py()
    assert by_run.pop(first_run) == [True] * recorded
    (rerun_flags,) = by_run.values()
    assert rerun_flags.count(False) == kept - recorded and rerun_flags.count(True) == n - kept

    # And a third run computes nothing.
    third = _finish(_start(script, store, calls, n, orchestrator=orchestrator))
    assert sum(third["computed"].values()) == 0 and _n_calls(calls) == first_calls + second_calls


def test_two_processes_running_one_pipeline_at_once_neither_lose_nor_duplicate_records(tmp_path):
    n, distinct = 1200, 900  # some packets repeat under different tags
    store, go = tmp_path / "store", tmp_path / "go"
    script = _script(tmp_path, sleep_s=0.0003, distinct=distinct)
    procs = [_start(script, store, tmp_path / f"calls{i}.txt", n, go) for i in range(2)]
    try:
        for proc in procs:  # both imported and built their pipeline: release them together
            assert proc.stdout.readline().strip() == "ready", proc.communicate()[1]
        go.touch()
        outputs = [_finish(proc) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert outputs[0]["rows"] == outputs[1]["rows"]
    assert [r["z"] for r in outputs[0]["rows"]] == [(i % distinct) ** 2 + 1 for i in range(n)]
    for out in outputs:
        assert out["computed"]["slow_square"] + out["cached"]["slow_square"] == n
    # Released together, both computed (so both wrote the same records, racing).
    assert all(out["computed"]["slow_square"] > 0 for out in outputs)

    _assert_unique(DeltaTable(_result_table_dir(str(store), "slow_square")).to_pyarrow_table(), distinct)
    _assert_unique(DeltaTable(_result_table_dir(str(store), "plus_one")).to_pyarrow_table(), distinct)
    paths = outputs[0]["paths"]
    _assert_unique(_delta(str(store), paths["square_records"]), n)
    _assert_unique(_delta(str(store), paths["plus_records"]), n)

    third = _finish(_start(script, store, tmp_path / "calls3.txt", n))
    assert sum(third["computed"].values()) == 0
    assert third["rows"] == outputs[0]["rows"]
    assert _n_calls(tmp_path / "calls3.txt") == 0


_RUN_AND_EXIT = """
import sys
from orcapod_core import DeltaTableDatabase, DictSource, Pipeline, function_pod


@function_pod(output_keys="kelvin")
def to_kelvin(celsius: float) -> float:
    return round(celsius + 273.15, 2)


@function_pod(output_keys="fahrenheit")
def to_fahrenheit(kelvin: float) -> float:
    return round(kelvin * 1.8 - 459.67, 2)


stations = DictSource({"station": ["n", "s", "e"], "celsius": [4.5, 12.0, 8.25]}, tag_columns="station", source_id="st")
with Pipeline("exit", pipeline_database=DeltaTableDatabase(sys.argv[1])) as pipeline:
    to_fahrenheit.pod(to_kelvin.pod(stations, label="kelvin"), label="fahrenheit")
result = pipeline.run(progress=False)
print(result.computed, result.cached, pipeline.fahrenheit.as_table().sort_by("station")["fahrenheit"].to_pylist())
# and a plain exit: the interpreter's own teardown
"""


def test_processes_running_a_pipeline_exit_cleanly(tmp_path):
    # Regression: ~3-15% of plain `pipeline.run()` processes on a local Delta store aborted in
    # interpreter teardown ("terminate called without an active exception", exit -6): an Acero
    # plan of an in-memory lookup, dropped by an Arrow pool thread after the lookup returned,
    # freed Python-owned entry-id buffers there and that thread could not take the GIL
    # (apache/arrow#36389). At 3% per process, 100 processes all pass with probability 5%.
    script = tmp_path / "run_and_exit.py"
    script.write_text(_RUN_AND_EXIT)
    # Compiled once into the temp dir, not by every process (the environment may forbid writing
    # bytecode next to the sources): imports are most of what each process costs.
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(tmp_path / "pycache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    runs, lanes, failures, outputs = 100, 3, [], []
    for first in range(0, runs, lanes):  # a few processes at a time, one store per lane (warm after its first run)
        procs = [
            (run, subprocess.Popen([sys.executable, str(script), str(tmp_path / f"store{run % lanes}")],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
            for run in range(first, min(first + lanes, runs))
        ]
        for run, proc in procs:
            out, err = proc.communicate(timeout=120)
            if proc.returncode != 0 or "terminate called" in err:
                failures.append((run, proc.returncode, err[-300:]))
            outputs.append((run, out.strip()))
    assert not failures, f"{len(failures)}/{runs} runs failed: {failures[:3]}"
    rows = [round(round(c + 273.15, 2) * 1.8 - 459.67, 2) for c in (8.25, 4.5, 12.0)]  # stations e, n, s
    for run, out in outputs:  # each lane's first run computes both nodes' 3 packets, later runs serve them
        assert out == (f"6 0 {rows}" if run < lanes else f"0 6 {rows}"), (run, out)
