"""Scale-out executors on real workers: a local process pool and a local Ray (the session
fixture ``ray_cluster``). The same battery runs on both: fan-out correctness, a raising packet,
an exception that cannot travel, observer events and captured output from the workers, cache
hits across executors, per-node executors, and what each records as its execution data."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pytest

from orcapod_core import (
    AsyncPipelineOrchestrator,
    DeltaTableDatabase,
    DictSource,
    LocalProcessExecutor,
    LocalPythonFunctionExecutor,
    NoOpObserver,
    Pipeline,
    RayExecutor,
    ResultCache,
    SyncPipelineOrchestrator,
)
from orcapod_core.errors import ExecutorTypeError
from orcapod_core.executors import process as process_executor
from orcapod_core.result_cache import result_record_path

FUNCS = '''
import os
import time

from orcapod_core import function_pod

CALLS = os.environ.get("ORCAPOD_TEST_CALLS")  # a file each call appends its x to


class Unlucky(Exception):
    """A user exception type that must come back as itself."""


class Stubborn(Exception):
    """An exception that cannot be unpickled (its __init__ needs two arguments)."""

    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


def _note(x):
    path = os.environ.get("ORCAPOD_TEST_CALLS")
    if path:
        with open(path, "a") as fh:
            fh.write(f"{x}\\n")


@function_pod(output_keys="y")
def square(x: int) -> int:
    _note(x)
    print(f"squaring {x} in {os.getpid()}")
    if x == 13:
        raise Unlucky(f"x={x} is unlucky")
    if x == 14:
        raise Stubborn("fourteen", "too")
    return x * x


@function_pod(output_keys="z")
def inc(y: int) -> int:
    return y + 1


@function_pod(output_keys="slept")
def nap(x: int) -> float:
    _note(x)
    time.sleep(0.05)
    return x / 2
'''


@pytest.fixture(scope="module")
def funcs(worker_modules):
    return worker_modules.write(FUNCS, "scale_out_funcs")


def source(n: int, repeat: int | None = None) -> DictSource:
    xs = [i % repeat if repeat else i for i in range(n)]
    return DictSource({"id": list(range(n)), "x": xs}, tag_columns="id", source_id=f"xs{n}_{repeat}")


def build(funcs, store: Path, n: int = 40, repeat: int | None = None) -> Pipeline:
    with Pipeline("scale", DeltaTableDatabase(store)) as p:
        squared = funcs.square.pod(source(n, repeat), label="squared")
        funcs.inc.pod(squared, label="incremented")
    return p


class Events(NoOpObserver):
    wants_captured_output = True

    def __init__(self):
        self.started, self.ended, self.crashed, self.progress = [], [], [], []

    def on_packet_start(self, node, tag, packet):
        self.started.append((node.label, tag["id"]))

    def on_packet_end(self, node, tag, packet, output, cached, captured=None):
        self.ended.append((node.label, tag["id"], dict(output), (captured or {}).get("stdout", "")))

    def on_packet_crash(self, node, tag, packet, error, captured=None):
        self.crashed.append((node.label, tag["id"], error, captured or {}))

    def on_node_progress(self, node, done, total):
        self.progress.append((node.label, done, total))


def executors():
    return [
        pytest.param(lambda: LocalProcessExecutor(max_workers=2), id="process"),
        pytest.param(lambda: RayExecutor(chunk_size=3), id="ray", marks=pytest.mark.slow),
    ]


@pytest.fixture
def make_executor(request):
    if "ray" in request.node.name:
        request.getfixturevalue("ray_cluster")
    return request.param


def results_of(p: Pipeline, fn) -> pa.Table:
    return ResultCache(p.result_database, result_record_path(fn.pod.packet_function)).get_all_records()


@pytest.mark.parametrize("make_executor", executors(), indirect=True)
@pytest.mark.parametrize("orchestrator", [SyncPipelineOrchestrator(), AsyncPipelineOrchestrator()], ids=["sync", "async"])
def test_fan_out_gives_the_serial_results_keeps_exceptions_and_observer_events(funcs, tmp_path, make_executor, orchestrator):
    executor = make_executor()
    serial = build(funcs, tmp_path / "serial")
    expected = serial.run()
    fanned = build(funcs, tmp_path / "fanned")
    events = Events()
    result = fanned.run(executor=executor, orchestrator=orchestrator, observer=events)

    # Same rows, same counts as the in-process run.
    assert fanned.incremented.as_table().sort_by("id").equals(serial.incremented.as_table().sort_by("id"))
    assert {k: (s.computed, s.cached, s.failed) for k, s in result.stats.items()} == {
        k: (s.computed, s.cached, s.failed) for k, s in expected.stats.items()
    }
    assert result.stats["squared"].failed == 2 and result.stats["squared"].computed == 38
    # A raising packet keeps its type and message; one that cannot travel keeps both as text.
    crashes = {tag: (error, captured) for node, tag, error, captured in events.crashed}
    assert type(crashes[13][0]) is funcs.Unlucky and str(crashes[13][0]) == "x=13 is unlucky"
    assert "raise Unlucky" in crashes[13][1]["traceback"] and "squaring 13" in crashes[13][1]["stdout"]
    stubborn = crashes[14][0]
    assert type(stubborn).__name__ == "RemoteError" and stubborn.type_name == "Stubborn" and "fourteen/too" in str(stubborn)
    # Every computed packet was started and ended once, with what the worker printed.
    ended = {(node, tag): stdout for node, tag, _, stdout in events.ended}
    assert sorted(t for n, t in events.started if n == "squared") == list(range(40))
    assert len(ended) == 38 + 38 and ended[("squared", 3)].startswith("squaring 3 in ")
    assert events.progress and events.progress[-1][1:] == (38, 38)  # the last node's progress
    # Worker processes ran the packets (not this process).
    pids = {int(stdout.split(" in ")[1]) for (node, _), stdout in ended.items() if node == "squared"}
    assert os.getpid() not in pids


@pytest.mark.parametrize("make_executor", executors(), indirect=True)
def test_results_are_shared_across_executors_and_a_rerun_computes_only_the_failed_packet(funcs, tmp_path, make_executor, monkeypatch):
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("ORCAPOD_TEST_CALLS", str(calls))  # pool workers inherit the environment...
    executor = make_executor()
    if isinstance(executor, RayExecutor):  # ... Ray tasks get it with their runtime_env
        path = os.pathsep.join([str(Path(funcs.__file__).parent), *sys.path])
        executor = executor.with_options(runtime_env={"env_vars": {"ORCAPOD_TEST_CALLS": str(calls), "PYTHONPATH": path}})
    p = build(funcs, tmp_path / "store", n=30, repeat=15)  # each packet twice
    first = p.run(executor=executor)
    assert (first.stats["squared"].computed, first.stats["squared"].cached, first.stats["squared"].failed) == (13, 13, 2)
    assert sorted(map(int, calls.read_text().split())) == sorted(range(15))  # one call per distinct packet
    # The in-process executor finds everything the workers stored (executors are not identity)...
    local = build(funcs, tmp_path / "store", n=30, repeat=15).run(executor=LocalPythonFunctionExecutor())
    assert local.stats["squared"].computed == 0 and local.stats["squared"].cached == 26
    # ... and only the failed packets are called again.
    assert sorted(map(int, calls.read_text().split())) == sorted([*range(15), 13, 14])
    # The other way round: computed here, served there.
    other = build(funcs, tmp_path / "store2", n=10)
    other.run(executor=LocalPythonFunctionExecutor())
    calls.write_text("")
    again = build(funcs, tmp_path / "store2", n=10).run(executor=executor)
    assert again.computed == 0 and calls.read_text() == ""


@pytest.mark.parametrize("make_executor", executors(), indirect=True)
def test_execution_data_says_which_executor_and_worker_computed_each_result(funcs, tmp_path, make_executor):
    executor = make_executor()
    p = build(funcs, tmp_path / "store", n=12)
    p.run(executor={"squared": executor})  # one node fanned out, the other local
    fanned = results_of(p, funcs.square)
    local = results_of(p, funcs.inc)
    assert set(fanned["__execution_executor_type"].to_pylist()) == {executor.executor_type}
    assert set(local["__execution_executor_type"].to_pylist()) == {"local"}
    info = [dict(m) for m in fanned["__execution_executor_info"].to_pylist()]
    assert all(int(i["pid"]) != os.getpid() for i in info)
    if executor.executor_type == "ray":
        ray = pytest.importorskip("ray")
        assert {i["address"] for i in info} == {ray.get_runtime_context().gcs_address}
        assert {i["node_id"] for i in info} == {ray.get_runtime_context().get_node_id()}


def test_a_process_pool_serves_every_node_of_a_run_starts_only_when_needed_and_stops_at_its_end(funcs, tmp_path, monkeypatch):
    made = []
    original = LocalProcessExecutor._new_pool
    monkeypatch.setattr(LocalProcessExecutor, "_new_pool", lambda self: made.append(1) or original(self))  # a spy
    executor = LocalProcessExecutor(max_workers=2)
    p = build(funcs, tmp_path / "store", n=12)  # no failing packet: a warm run has nothing to compute
    p.run(executor=executor)
    assert made == [1]  # one pool for both function nodes
    pids = {dict(m)["pid"] for t in (results_of(p, funcs.square), results_of(p, funcs.inc)) for m in t["__execution_executor_info"].to_pylist()}
    assert 1 <= len(pids) <= 2  # the same two workers computed both nodes
    assert process_executor._pools == {} and multiprocessing.active_children() == []  # shut down
    build(funcs, tmp_path / "store", n=12).run(executor=executor)  # warm: nothing to compute
    assert made == [1]  # no pool was started


def test_functions_that_cannot_travel_are_refused_before_anything_runs(tmp_path, funcs):
    from orcapod_core import function_pod

    @function_pod(output_keys="y")
    def local_double(x: int) -> int:  # defined inside a test function
        return 2 * x

    with pytest.raises(ExecutorTypeError, match=r"LocalProcessExecutor cannot run function .*local_double.*inside another function"):
        local_double.pod.packet_function.executor = LocalProcessExecutor()
    with Pipeline("travel", DeltaTableDatabase(tmp_path / "store")) as p:
        local_double.pod(source(4), label="doubled")
    with pytest.raises(ExecutorTypeError, match="define it at the top level of a module file"):
        p.run(executor=LocalProcessExecutor())
    assert p.pipeline_database.list_tables() == []  # nothing ran
    # A `python -c` function: the same clear error.
    script = textwrap.dedent(
        """
        from orcapod_core import LocalProcessExecutor, function_pod
        from orcapod_core.errors import ExecutorTypeError

        @function_pod(output_keys="y")
        def f(x: int) -> int:
            return x

        try:
            f.pod.packet_function.executor = LocalProcessExecutor()
        except ExecutorTypeError as exc:
            print(exc)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert "defined in `python -c`" in out
    with pytest.raises(Exception, match="not function nodes"):
        p.run(executor={"nope": LocalProcessExecutor()})


KILL_SCRIPT = '''
import os, sys, time
sys.path.insert(0, {modules!r})
from orcapod_core import DeltaTableDatabase, DictSource, Pipeline, LocalProcessExecutor, RayExecutor
import scale_out_funcs as funcs

if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "ray":
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        os.environ["RAY_AUTH_MODE"] = "disabled"
        import ray, tempfile
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=tempfile.mkdtemp(prefix="orcapod-ray-kill-"),
                 runtime_env={{"env_vars": {{"PYTHONPATH": {modules!r}}}}})
        executor = RayExecutor(chunk_size=2)
    else:
        executor = LocalProcessExecutor(max_workers=2, chunk_size=2)
    db = DeltaTableDatabase({store!r}, max_batch_age_s=0.3)
    src = DictSource({{"id": list(range(120)), "x": list(range(120))}}, "id", source_id="kill")
    with Pipeline("kill", db) as p:
        funcs.nap.pod(src, label="napped")
    print("started", flush=True)
    result = p.run(executor=executor)
    print("computed", result.computed, flush=True)
'''


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["process", "ray"])
def test_a_killed_driver_loses_at_most_its_current_batch_and_a_rerun_computes_exactly_the_rest(funcs, worker_modules, tmp_path, kind):
    store, calls = tmp_path / "store", tmp_path / "calls.txt"
    script = tmp_path / "driver.py"
    script.write_text(KILL_SCRIPT.format(modules=str(worker_modules.folder), store=str(store)))
    env = {**os.environ, "ORCAPOD_TEST_CALLS": str(calls)}
    driver = subprocess.Popen([sys.executable, str(script), kind], env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert driver.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill once some results are committed
            if calls.exists() and len(calls.read_text().split()) >= 40:
                break
            time.sleep(0.05)
        _kill_session(driver.pid)  # the driver and everything it started (Ray workers have their own groups)
    finally:
        driver.wait(timeout=30)
    db = DeltaTableDatabase(store)
    stored = ResultCache(db, result_record_path(funcs.nap.pod.packet_function)).get_all_records()
    committed = 0 if stored is None else stored.num_rows
    called_before = set(map(int, calls.read_text().split()))
    assert committed > 0 and committed <= len(called_before) < 120  # it was killed mid-run, after commits
    calls.write_text("")
    rerun = subprocess.run([sys.executable, str(script), kind], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"computed {120 - committed}" in rerun.stdout
    assert sorted(map(int, calls.read_text().split())) == sorted(set(range(120)) - _stored_inputs(stored))  # exactly the rest
    records = db.get_all_records(next(t for t in db.list_tables() if t[1] == "napped"))
    assert records.num_rows == 120 and len(set(records["__record_id"].to_pylist())) == 120


def _stored_inputs(stored: pa.Table | None) -> set[int]:
    """The x of every stored result (slept = x / 2)."""
    if stored is None:
        return set()
    return {int(v * 2) for v in stored["slept"].to_pylist()}


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (the driver was started as a session leader:
    these are exactly the processes it started), and wait until they are gone."""
    deadline = time.monotonic() + 30
    while True:
        members = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":  # field 6 of stat: the session id
                members.append(int(entry.name))
        if not members or time.monotonic() > deadline:
            return
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def test_functions_of_a_script_run_on_the_pool(tmp_path):
    """A pod defined at the top level of the script that runs the pipeline travels too (the
    workers import the script, guarded by ``if __name__ == "__main__"``)."""
    script = tmp_path / "analysis.py"
    script.write_text(textwrap.dedent(
        """
        import os
        from orcapod_core import DictSource, InMemoryArrowDatabase, LocalProcessExecutor, Pipeline, function_pod

        @function_pod(output_keys="y")
        def shifted(x: int) -> int:
            return x + 100 if os.getpid() != PARENT else -1

        PARENT = int(os.environ.get("PARENT_PID", "0"))

        if __name__ == "__main__":
            os.environ["PARENT_PID"] = str(os.getpid())
            PARENT = os.getpid()
            source = DictSource({"id": [1, 2, 3], "x": [1, 2, 3]}, "id", source_id="s")
            with Pipeline("script", InMemoryArrowDatabase()) as p:
                shifted.pod(source, label="shifted")
            result = p.run(executor=LocalProcessExecutor(max_workers=2))
            print(result.computed, p.shifted.as_table().column("y").to_pylist())
        """
    ))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "3 [101, 102, 103]"  # computed in the workers, not the parent
