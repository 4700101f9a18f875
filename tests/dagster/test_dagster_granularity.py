"""Node granularity (one step per node, inputs through the IO manager) and the default
multiprocess executor (every step process rebuilds the definitions from the module file)."""

from __future__ import annotations

import os

import dagster as dg
from conftest import materializations
from dagster._core.definitions.reconstruct import ReconstructableRepository

from orcapod_core.pipeline import AsyncPipelineOrchestrator
from orcapod_dagster import forkserver_executor, orcapod_assets


def test_node_granularity_in_process(make_project, instance):
    mod = make_project(defs_kwargs='granularity="node", executor=dg.in_process_executor')
    dg.Definitions.validate_loadable(mod.defs)
    assets = list(mod.defs.assets)
    assert len(assets) == 5 and all(len(a.keys) == 1 for a in assets)
    resources = dict(mod.defs.resources)
    first = materializations(dg.materialize(assets, instance=instance, resources=resources))
    assert first["demo/described"]["orcapod/computed"] == 3
    # One step: its upstream arrives through the IO manager, pinned to the latest materialization.
    described = [a for a in assets if dg.AssetKey(["demo", "described"]) in a.keys]
    again = materializations(dg.materialize(assets, instance=instance, resources=resources, selection=described))
    assert list(again) == ["demo/described"]
    assert (again["demo/described"]["orcapod/cached"], again["demo/described"]["data_version"]) == (3, first["demo/described"]["data_version"])


def test_pipeline_granularity_with_async_orchestrator(make_project, instance):
    mod = make_project()
    assets = orcapod_assets(mod.pipeline, orchestrator=AsyncPipelineOrchestrator())
    mats = materializations(dg.materialize(assets, instance=instance))
    assert mats["demo/described"]["orcapod/computed"] == 3
    # Reported as nodes finish (all at once here): every upstream before its consumers.
    assert set(mats) == {"demo/numbers", "demo/doubled", "demo/names", "demo/joined", "demo/described"}
    order = list(mats)
    for up, down in [("numbers", "doubled"), ("doubled", "joined"), ("names", "joined"), ("joined", "described")]:
        assert order.index(f"demo/{up}") < order.index(f"demo/{down}"), order
    # A subset: `joined` runs on the pinned outputs of `doubled` and `names`.
    subset = materializations(dg.materialize(assets, instance=instance, selection=["demo/joined", "demo/described"]))
    assert list(subset) == ["demo/joined", "demo/described"]
    assert subset["demo/described"]["data_version"] == mats["demo/described"]["data_version"]


def run_job(path, instance):
    job = ReconstructableRepository.for_file(str(path), "defs", working_directory=str(path.parent)).get_reconstructable_job("demo_job")
    result = dg.execute_job(job, instance=instance)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return result


def test_multiprocess_executor_both_granularities(make_project, instance):
    parents = make_project.tmp_path / "parents.txt"
    # `double` records the process it runs in and that process's parent.
    body = f"import os\n    open({str(parents)!r}, 'a').write(f'{{os.getpid()}} {{os.getppid()}}\\n')\n    return 2 * x"
    node = make_project("pipe_node_mp", defs_kwargs='granularity="node"', double_body=body)
    assert node.defs.executor is forkserver_executor(node.pipeline)  # the default for one step per node
    result = run_job(make_project.tmp_path / "pipe_node_mp.py", instance)
    # Five step processes, each rebuilding the pipeline from the module file...
    pids = {e.pid for e in result.all_events if e.event_type_value == "STEP_START"}
    assert len(pids) == 5
    # ... forked from the forkserver: not children of the run's process (execute_job runs the run
    # here), as spawned step processes would be.
    run_pid = os.getpid()
    [(step_pid, parent_pid)] = {tuple(map(int, line.split())) for line in parents.read_text().splitlines()}
    assert step_pid in pids and parent_pid not in (run_pid, *pids)
    mats = materializations(result)
    assert mats["demo/described"]["orcapod/computed"] == 3 and mats["demo/doubled"]["orcapod/computed"] == 3

    # The same pipeline at pipeline granularity (one step process), sharing store and instance:
    # everything is already stored, and the outputs (data versions) are identical.
    make_project("pipe_pipeline_mp", double_body=body)
    again = materializations(run_job(make_project.tmp_path / "pipe_pipeline_mp.py", instance))
    assert sum(m.get("orcapod/computed", 0) for m in again.values()) == 0
    assert {k: m["data_version"] for k, m in again.items()} == {k: m["data_version"] for k, m in mats.items()}
    assert node.defs is not None
