"""A pipeline loaded from its saved form as a Dagster code location (B5): with a function's
code gone its asset still exists and serves its cached results, downstream assets
materialize from them, and materializing it with new packets fails naming the function."""

from __future__ import annotations

import sys

import dagster as dg
import pytest
from conftest import load_module, materializations

from orcapod_core.databases import DeltaTableDatabase
from orcapod_core.pipeline import LoadStatus, Pipeline
from orcapod_core.sources import CSVSource
from orcapod_dagster import build_definitions

FUNCS = '''
from orcapod_core import function_pod

@function_pod(output_keys="y", function_name="calibrate")
def calibrate(x: int) -> int:
    """Calibrated reading."""
    return 3 * x
'''

DOWNSTREAM = '''
from orcapod_core import function_pod

@function_pod(output_keys="label")
def label(y: int) -> str:
    return f"y={y}"
'''


def run(defs: dg.Definitions, instance, **kwargs):
    return dg.materialize(list(defs.assets), instance=instance, resources=dict(defs.resources), **kwargs)


def test_loaded_pipeline_with_a_missing_function_is_a_working_code_location(tmp_path):
    csv = tmp_path / "readings.csv"
    csv.write_text("id,x\n1,1\n2,2\n")
    (tmp_path / "gone_funcs.py").write_text(FUNCS)
    (tmp_path / "kept_funcs.py").write_text(DOWNSTREAM)
    funcs = load_module(tmp_path / "gone_funcs.py", "gone_funcs")
    downstream = load_module(tmp_path / "kept_funcs.py", "kept_funcs")
    with Pipeline("lab", DeltaTableDatabase(tmp_path / "store")) as p:
        calibrated = funcs.calibrate.pod(CSVSource(csv, tag_columns="id"), label="calibrated")
        downstream.label.pod(calibrated, label="labelled")
    p.run(nodes=["calibrated"])
    p.save(tmp_path / "lab.json")
    sys.modules.pop("gone_funcs")
    (tmp_path / "gone_funcs.py").unlink()

    loaded = Pipeline.load(tmp_path / "lab.json")
    assert loaded.calibrated.load_status is LoadStatus.READ_ONLY
    defs = build_definitions(loaded)
    dg.Definitions.validate_loadable(defs)
    key = dg.AssetKey(["lab", "calibrated"])
    spec = defs.resolve_assets_def(key).specs_by_key[key]
    assert spec.code_version == p.calibrated.identity_hash().to_string()
    assert spec.metadata["orcapod/function"] == "gone_funcs.calibrate"

    with dg.instance_for_test() as instance:
        first = materializations(run(defs, instance))
        assert first["lab/calibrated"]["orcapod/computed"] == 0 and first["lab/calibrated"]["orcapod/cached"] == 2
        assert first["lab/labelled"]["orcapod/computed"] == 2  # computed on the proxy's cached results

        csv.write_text("id,x\n1,1\n2,2\n3,3\n")
        again = Pipeline.load(tmp_path / "lab.json")
        failed = run(build_definitions(again), instance, raise_on_error=False)
        assert not failed.success
        failure = next(e for e in failed.all_events if e.event_type_value == "STEP_FAILURE")
        message = failure.event_specific_data.error.message
        assert "PacketFunctionUnavailableError" in message and "gone_funcs:calibrate" in message
        latest = instance.get_latest_materialization_event(key).asset_materialization.metadata
        assert latest["orcapod/failed"].value == 0  # the failed step recorded no materialization


def test_warn_policy_materializes_a_proxy_asset_and_reports_the_failed_packets(tmp_path):
    csv = tmp_path / "readings.csv"
    csv.write_text("id,x\n1,1\n")
    (tmp_path / "gone2.py").write_text(FUNCS)
    funcs = load_module(tmp_path / "gone2.py", "gone2")
    with Pipeline("lab", DeltaTableDatabase(tmp_path / "store")) as p:
        funcs.calibrate.pod(CSVSource(csv, tag_columns="id"), label="calibrated")
    p.run()
    p.save(tmp_path / "lab.json")
    sys.modules.pop("gone2")
    (tmp_path / "gone2.py").unlink()
    csv.write_text("id,x\n1,1\n2,2\n")

    defs = build_definitions(Pipeline.load(tmp_path / "lab.json"), on_packet_error="warn")
    with dg.instance_for_test() as instance:
        result = materializations(run(defs, instance))
    assert (result["lab/calibrated"]["orcapod/cached"], result["lab/calibrated"]["orcapod/failed"]) == (1, 1)
    assert result["lab/calibrated"]["dagster/row_count"] == 1


@pytest.fixture(autouse=True)
def _clean_modules():
    yield
    for name in ("gone_funcs", "gone2", "kept_funcs"):
        sys.modules.pop(name, None)
