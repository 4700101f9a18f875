"""Per-asset executors: one heavy asset fans out on Ray (or a process pool) while the rest runs
locally, chosen by the translator; results are shared with local runs."""

from __future__ import annotations

import dagster as dg
import pytest
from conftest import materializations

from orcapod_core import DeltaTableDatabase, DictSource, LocalProcessExecutor, Pipeline, RayExecutor, ResultCache
from orcapod_core.result_cache import result_record_path
from orcapod_dagster import OrcapodIOManager, OrcapodTranslator, build_definitions, orcapod_assets

FUNCS = '''
from orcapod_core import function_pod


@function_pod(output_keys="features")
def extract(x: int) -> int:
    """A heavy step: fans out."""
    return x * 10


@function_pod(output_keys="score")
def score(features: int) -> float:
    """A light step: runs locally."""
    return features / 4
'''


class HeavyElsewhere(OrcapodTranslator):
    def __init__(self, executor):
        super().__init__()
        self.executor = executor

    def get_executor(self, node):
        return self.executor if node.label == "extracted" else None


def build(funcs, store):
    source = DictSource({"id": list(range(8)), "x": list(range(8))}, tag_columns="id", source_id="xs", label="xs")
    with Pipeline("lab", DeltaTableDatabase(store)) as p:
        extracted = funcs.extract.pod(source, label="extracted")
        funcs.score.pod(extracted, label="scored")
    return p


def executor_types(p, fn):
    records = ResultCache(p.result_database, result_record_path(fn.pod.packet_function)).get_all_records()
    return set(records["__execution_executor_type"].to_pylist())


@pytest.mark.slow
def test_one_asset_on_ray_the_rest_local_and_results_shared(worker_modules, ray_cluster, tmp_path, instance):
    funcs = worker_modules.write(FUNCS, "dagster_exec_funcs")
    p = build(funcs, tmp_path / "store")
    translator = HeavyElsewhere(RayExecutor(chunk_size=2))
    defs = build_definitions(p, translator=translator)
    spec = next(s for a in defs.assets for s in a.specs if s.key == dg.AssetKey(["lab", "extracted"]))
    assert spec.metadata["orcapod/executor"]["executor_type"] == "ray"
    result = dg.materialize(list(defs.assets), resources=dict(defs.resources), instance=instance)
    assert result.success
    mats = materializations(result)
    assert mats["lab/extracted"]["orcapod/computed"] == 8 and mats["lab/scored"]["orcapod/computed"] == 8
    assert executor_types(p, funcs.extract) == {"ray"} and executor_types(p, funcs.score) == {"local"}
    # A plain local run of the same pipeline finds everything (executors are not identity).
    again = build(funcs, tmp_path / "store").run()
    assert again.computed == 0 and again.cached == 16


def test_node_granularity_tags_the_fanned_out_step(worker_modules, tmp_path, instance):
    funcs = worker_modules.write(FUNCS, "dagster_exec_funcs_nodes")
    p = build(funcs, tmp_path / "store")
    translator = HeavyElsewhere(LocalProcessExecutor(max_workers=2))
    assets = orcapod_assets(p, translator=translator, granularity="node", op_tags={"team": "lab"})
    tags = {a.key.to_user_string(): dict(a.op.tags) for a in assets}
    assert tags["lab/extracted"] == {"team": "lab", "orcapod/executor": "process"}
    assert tags["lab/scored"] == {"team": "lab"}
    store = OrcapodIOManager(store_uri=str(tmp_path / "store"))
    result = dg.materialize(assets, resources={"io_manager": store}, instance=instance)
    assert result.success and materializations(result)["lab/extracted"]["orcapod/computed"] == 8
    assert executor_types(p, funcs.extract) == {"process"} and executor_types(p, funcs.score) == {"local"}
