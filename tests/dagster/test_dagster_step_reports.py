"""What one pipeline-granularity step reports, on a real Dagster instance: each node's result as
soon as the node finishes (while the step still runs), the no_failed_packets check in every
mode — with the failed packets' tags, errors and user-code frames, and every traceback in the
pipeline database — and step log lines cut to a readable length."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
from conftest import materializations

from orcapod_core import DeltaTableDatabase, DictSource, Pipeline, function_pod
from orcapod_core.pipeline import AsyncPipelineOrchestrator, LoggingObserver, SyncPipelineOrchestrator
from orcapod_dagster import OrcapodTranslator, OrcapodTranslatorSettings, build_definitions, orcapod_assets
from orcapod_dagster.materialize import _StepRun

THIS_FILE = Path(__file__).name
#: Set by a test: the instance and the asset keys the slow function waits for.
WAITING: dict = {}


@function_pod(output_keys="y")
def double(x: int) -> int:
    return 2 * x


@function_pod(output_keys="z")
def wait_for_upstream(y: int) -> bool:
    """True when the upstream assets' materializations reached the instance while this runs."""
    # A bound, not a measurement: a step that reports nothing before its end fails the test.
    deadline = WAITING.setdefault("deadline", time.monotonic() + 60)
    while time.monotonic() < deadline:
        if all(WAITING["instance"].get_latest_materialization_event(key) is not None for key in WAITING["keys"]):
            return True
        time.sleep(0.05)
    return False


def streaming_pipeline(store: Path) -> Pipeline:
    numbers = DictSource({"id": [1, 2, 3], "x": [1, 2, 3]}, tag_columns="id", source_id="numbers", label="numbers")
    with Pipeline("stream", pipeline_database=DeltaTableDatabase(str(store))) as pipeline:
        doubled = double.pod(numbers, label="doubled")
        wait_for_upstream.pod(doubled, label="waited")
    return pipeline


@pytest.mark.parametrize("orchestrator", [SyncPipelineOrchestrator(), AsyncPipelineOrchestrator()], ids=["sync", "async"])
def test_each_node_is_reported_while_the_step_still_runs(tmp_path, instance, orchestrator):
    pipeline = streaming_pipeline(tmp_path / "store")
    WAITING.clear()
    WAITING.update(instance=instance, keys=[dg.AssetKey(["stream", "numbers"]), dg.AssetKey(["stream", "doubled"])])
    assets = orcapod_assets(pipeline, orchestrator=orchestrator)
    result = dg.materialize(assets, instance=instance, resources=dict(build_definitions(pipeline).resources))
    # The last node's function saw the first nodes' materializations in the event log (and their
    # checks) while it was running inside the same step.
    assert pipeline.waited.as_table()["z"].to_pylist() == [True, True, True]
    records = instance.get_records_for_run(result.run_id).records
    order = [r.event_log_entry.dagster_event.event_type_value for r in records if r.event_log_entry.is_dagster_event]
    materialized = [
        r.event_log_entry.dagster_event.asset_key.to_user_string()
        for r in records
        if r.event_log_entry.is_dagster_event and r.event_log_entry.dagster_event.event_type_value == "ASSET_MATERIALIZATION"
    ]
    assert materialized == ["stream/numbers", "stream/doubled", "stream/waited"]
    assert order.index("ASSET_MATERIALIZATION") < order.index("STEP_SUCCESS")


# -- failures ----------------------------------------------------------------------------------


@function_pod(output_keys="y")
def fragile(x: int) -> int:
    if x % 2:
        raise ValueError(f"odd x={x} is not allowed")  # the frame the check points at
    return x


@function_pod(output_keys="w")
def plus_one(y: int) -> int:
    return y + 1


def failing_pipeline(store: Path, n: int = 25, long_tags: bool = False) -> Pipeline:
    ids = list(range(2 * n))
    data = {"id": ids, "x": ids}
    tags = ["id"]
    if long_tags:  # a tag whose value is a long text (like a batch's list of every value)
        data["sample"] = [f"sample-{i}-" + "z" * 3000 for i in ids]
        tags = ["id", "sample"]
    numbers = DictSource(data, tag_columns=tags, source_id="numbers", label="numbers")
    with Pipeline("fails", pipeline_database=DeltaTableDatabase(str(store))) as pipeline:
        checked = fragile.pod(numbers, label="checked")
        plus_one.pod(checked, label="after")
    return pipeline


def check_evaluations(result) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    return {(e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()}


def line_of(text: str) -> int:
    return next(i for i, line in enumerate(Path(__file__).read_text().splitlines(), 1) if text in line)


def test_raise_reports_the_failed_check_with_packets_frames_and_all_tracebacks(tmp_path, instance):
    pipeline = failing_pipeline(tmp_path / "store", n=25)
    defs = build_definitions(pipeline)  # on_packet_error="raise"
    result = dg.materialize(list(defs.assets), instance=instance, resources=dict(defs.resources), raise_on_error=False)
    assert not result.success
    assert list(materializations(result)) == ["fails/numbers"]  # the failed node and what is below it are withheld

    checks = check_evaluations(result)
    failed_check = checks[("fails/checked", "no_failed_packets")]
    assert not failed_check.passed  # evaluated, not "execution failed"
    assert failed_check.description.startswith("25 packet(s) failed, e.g. {'id': 1}: ValueError: odd x=1 is not allowed")
    metadata = {k: v.value for k, v in failed_check.metadata.items()}
    assert metadata["orcapod/failed"] == 25
    table = metadata["orcapod/failed_packets"]
    rows = [line for line in table.splitlines() if line.startswith("| `{")]
    assert len(rows) == 20 and "… and 5 more failed packet(s)" in table  # capped, with a count of the rest
    assert rows[0].startswith("| `{'id': 1}` | `ValueError: odd x=1 is not allowed` |")
    # The frame in the user's code, file:line; no orcapod internals.
    raise_line = line_of('raise ValueError(f"odd x={x} is not allowed")')
    assert f"{THIS_FILE}:{raise_line} in fragile" in rows[0] and "orcapod_core" not in table
    # Downstream of the failed node: its checks are evaluated too, saying why it was withheld.
    after = checks[("fails/after", "no_failed_packets")]
    assert after.passed and "not materialized: upstream fails/checked has failed packets" in after.description

    # The check results come before the step fails.
    records = instance.get_records_for_run(result.run_id).records
    types = [r.event_log_entry.dagster_event.event_type_value for r in records if r.event_log_entry.is_dagster_event]
    assert types.index("ASSET_CHECK_EVALUATION") < types.index("STEP_FAILURE")

    # Every traceback is in the pipeline database, reachable from the check's metadata.
    run_id = metadata["orcapod/run_id"]
    assert f"LoggingObserver.read(pipeline, node='checked', run_id='{run_id}', status=\"failed\")" in metadata["orcapod/logs"]
    assert pipeline.pipeline_database.table_uri(LoggingObserver.default_record_path(pipeline)) in metadata["orcapod/logs"]
    logs = LoggingObserver.read(pipeline, node="checked", run_id=run_id, status="failed")
    assert logs.num_rows == 25
    assert all(f'line {raise_line}, in fragile' in tb and "ValueError: odd x=" in tb for tb in logs["traceback"].to_pylist())
    assert LoggingObserver.read(pipeline, status="ok").num_rows == 0  # the step stores failures only


def test_warn_materializes_and_a_check_run_alone_reads_the_stored_failures(tmp_path, instance):
    pipeline = failing_pipeline(tmp_path / "store", n=2)
    defs = build_definitions(pipeline, on_packet_error="warn")
    result = dg.materialize(list(defs.assets), instance=instance, resources=dict(defs.resources))
    mats = materializations(result)
    assert (mats["fails/checked"]["orcapod/failed"], mats["fails/checked"]["dagster/row_count"]) == (2, 2)
    assert not check_evaluations(result)[("fails/checked", "no_failed_packets")].passed

    # The check alone (no materialization): evaluated on the latest one, failures from the log table.
    check = dg.AssetCheckKey(dg.AssetKey(["fails", "checked"]), "no_failed_packets")
    alone = dg.materialize(list(defs.assets), instance=instance, resources=dict(defs.resources), selection=dg.AssetSelection.checks(check))
    assert materializations(alone) == {}
    evaluation = check_evaluations(alone)[("fails/checked", "no_failed_packets")]
    table = evaluation.metadata["orcapod/failed_packets"].value
    assert not evaluation.passed and "| `{'id': 1}` | `ValueError: odd x=1 is not allowed` |" in table
    assert f"{THIS_FILE}:{line_of('raise ValueError(f')} in fragile" in table


def test_blocking_check_with_raise_is_reported_before_the_step_fails(tmp_path, instance):
    pipeline = failing_pipeline(tmp_path / "store", n=1)
    blocking = OrcapodTranslator(OrcapodTranslatorSettings(blocking_failed_packets=True))
    result = dg.materialize(orcapod_assets(pipeline, translator=blocking), instance=instance, raise_on_error=False)
    assert not result.success
    evaluation = check_evaluations(result)[("fails/checked", "no_failed_packets")]
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR


def test_step_log_lines_cut_long_tag_values(tmp_path, instance):
    pipeline = failing_pipeline(tmp_path / "store", n=1, long_tags=True)
    defs = build_definitions(pipeline, on_packet_error="warn")
    result = dg.materialize(list(defs.assets), instance=instance, resources=dict(defs.resources))
    messages = [entry.user_message for entry in instance.all_logs(result.run_id) if "orcapod:" in entry.user_message]
    [failure] = [m for m in messages if "failed:" in m and "packet with tag" in m]
    assert "sample-1-zzz" in failure and "z" * 100 not in failure  # the value is cut...
    assert "ValueError: odd x=1 is not allowed" in failure  # ... the error is kept
    assert max(len(m) for m in messages) <= 1000
    # A line per computing node and one per run; sources and operators (no calls) add none.
    assert any("checked [function] done: 2 rows — 1 computed, 0 cached, 1 failed in" in m for m in messages)
    assert not any("[source]" in m or "[operator]" in m for m in messages)
    [summary] = [m for m in messages if m.startswith("orcapod: run done: ")]
    assert summary.startswith("orcapod: run done: 3 nodes (2 function nodes: 2 computed, 0 cached, 1 failed) in ")
    table = check_evaluations(result)[("fails/checked", "no_failed_packets")].metadata["orcapod/failed_packets"].value
    assert "z" * 100 not in table


# -- an interrupted step -----------------------------------------------------------------------

STARTED = threading.Event()


@function_pod(output_keys="y")
def slowly(x: int) -> int:
    STARTED.set()
    time.sleep(0.005)
    return x


def test_closing_a_step_stops_its_run_and_keeps_what_it_computed(tmp_path):
    """What Dagster does to an interrupted step (run termination): the step's generator is closed
    while its run is computing; the run stops at its next chunk, committing what it computed."""
    numbers = DictSource({"id": list(range(400)), "x": list(range(400))}, tag_columns="id", source_id="many", label="many")
    with Pipeline("stop", pipeline_database=DeltaTableDatabase(str(tmp_path / "store"))) as pipeline:
        slowly.pod(numbers, label="slow")
    STARTED.clear()
    run = _StepRun(lambda observer: pipeline.run(observer=observer), logging.getLogger("test"), [])
    finished = run.finished_nodes()
    node, _ = next(finished)
    assert node.label == "many"
    assert STARTED.wait(30)  # the slow node is computing
    finished.close()  # returns once the run has stopped
    assert not [t for t in threading.enumerate() if t.name == "orcapod-step-run"]
    assert run.result is None  # the run did not finish...
    pipeline.refresh()
    kept = pipeline.slow.get_pipeline_records().num_rows
    assert 0 < kept < 400  # ... and what it computed is stored
    assert pipeline.run().computed == 400 - kept


def test_failure_frames_are_the_users_code():
    import os

    import orcapod_core
    from orcapod_core.capture import RemoteError
    from orcapod_dagster.observer import PacketFailure, user_frames

    core = os.path.dirname(orcapod_core.__file__)
    text = (
        "Traceback (most recent call last):\n"
        f'  File "{core}/capture.py", line 9, in run_captured\n    result = function(**kwargs)\n'
        '  File "/home/me/project/fns.py", line 7, in score\n    return np.log(x)\n           ^^^^^^^^^\n'
        '  File "/venv/lib/python3.11/site-packages/numpy/core/umath.py", line 3, in log\n    raise ValueError("bad")\n'
        "ValueError: bad\n"
    )
    # orcapod's frames never; installed libraries only when nothing else is left.
    assert user_frames(text) == ["/home/me/project/fns.py:7 in score: return np.log(x)"]
    assert user_frames(text.replace("/home/me/project", "/venv/lib/python3.11/site-packages/project"))[-1].endswith("in log: raise ValueError(\"bad\")")
    # An exception that came back from a worker as a stand-in keeps its type, message and frames.
    remote = RemoteError("LinAlgError", "Singular matrix", text)
    failure = PacketFailure.of({"id": 3, "ids": list(range(1000))}, remote, {"traceback": text})
    assert (failure.error_type, failure.message, failure.frames) == ("LinAlgError", "Singular matrix", ("/home/me/project/fns.py:7 in score: return np.log(x)",))
    assert len(failure.tag) < 120 and failure.tag.startswith("{'id': 3, 'ids': [0, 1, 2")
