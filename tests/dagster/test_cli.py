"""The example code location through the Dagster CLI, as ``make run`` uses it:
``dagster asset materialize --select '*' -m example_project.definitions`` in a subprocess,
with its own ``DAGSTER_HOME`` and Delta store, under the default multiprocess executor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from example_project.pipeline import build_pipeline
from orcapod_dagster import OrcapodTranslator

ROOT = Path(__file__).resolve().parents[2]
COMMAND = [sys.executable, "-m", "dagster", "asset", "materialize", "--select", "*", "-m", "example_project.definitions"]


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def materialize_with_cli(home: Path, store: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DAGSTER_HOME": str(home), "ORCAPOD_STORE": str(store)}
    proc = subprocess.run(COMMAND, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"dagster CLI failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def latest(instance: dg.DagsterInstance, key: dg.AssetKey) -> tuple[str, dict]:
    event = instance.get_latest_materialization_event(key)
    assert event is not None and event.asset_materialization is not None, f"{key.to_user_string()} was not materialized"
    return event.run_id, {name: entry.value for name, entry in event.asset_materialization.metadata.items()}


def test_cli_materializes_every_asset_and_the_second_run_is_all_cached(dagster_home: Path, tmp_path: Path):
    store = tmp_path / "store"
    nodes = build_pipeline(store).nodes
    translator = OrcapodTranslator()
    keys = {label: translator.get_asset_key(node) for label, node in nodes.items()}
    functions = [label for label, node in nodes.items() if node.kind == "function"]
    assert len(functions) >= 2

    proc = materialize_with_cli(dagster_home, store)
    assert "multiprocess" in (proc.stdout + proc.stderr).lower()  # the default executor
    with dg.DagsterInstance.get() as instance:
        first = {label: latest(instance, key) for label, key in keys.items()}
        assert len({run_id for run_id, _ in first.values()}) == 1  # one run materialized everything
        for label in functions:
            metadata = first[label][1]
            # Counts are calls: one per distinct input packet; repeated packets are cached.
            node = nodes[label]
            distinct = len(set(node.join_inputs(node.upstream_nodes).packet_hashes().to_pylist()))
            assert metadata["orcapod/computed"] == distinct > 0, label
            assert metadata["orcapod/computed"] + metadata["orcapod/cached"] == metadata["dagster/row_count"], label
            assert metadata["orcapod/failed"] == 0
        assert any(first[label][1]["orcapod/cached"] for label in functions)  # the example repeats packets

    assert (store / "water_quality").is_dir()  # results went to ORCAPOD_STORE
    # The file-valued step: one report card per station (a group_by group), kept in the store.
    reports = build_pipeline(store).station_reports
    cards = {tag["station_id"]: packet["report"] for tag, packet in reports}
    assert sorted(cards) == ["ST01", "ST02", "ST03", "ST04", "ST05", "ST06"]
    assert all(str(p).startswith(str(store / "_orcapod_files")) and p.read_text().startswith("# ") for p in cards.values())
    assert not (dagster_home / ".orcapod").exists()

    materialize_with_cli(dagster_home, store)
    with dg.DagsterInstance.get() as instance:
        second = {label: latest(instance, key) for label, key in keys.items()}
        (run_id,) = {run_id for run_id, _ in second.values()}
        assert run_id != next(iter(first.values()))[0]
        for label in functions:
            metadata = second[label][1]
            assert metadata["orcapod/computed"] == 0, label
            assert metadata["orcapod/cached"] == metadata["dagster/row_count"] == first[label][1]["dagster/row_count"]
        runs = instance.get_runs()
        assert len(runs) == 2 and all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
