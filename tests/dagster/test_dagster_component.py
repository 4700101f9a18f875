"""OrcapodPipelineComponent loaded the way ``dg`` loads it: a project whose ``defs/`` folder
holds a ``defs.yaml`` naming the component, built with ``dagster.ComponentTree``."""

from __future__ import annotations

import sys
import textwrap

import dagster as dg
import pytest
from conftest import READINGS, materializations, write_readings

from orcapod_core.errors import InputValidationError
from orcapod_dagster import OrcapodPipelineComponent

PIPELINE_MODULE = '''
from pathlib import Path

from conftest import build_sites_pipeline

HERE = Path(__file__).resolve().parent


def build():
    return build_sites_pipeline(HERE.parent / "readings.csv", HERE.parent / "store")


pipeline = build()
not_a_pipeline = 42
'''


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A dg project ``orca_proj`` in tmp_path; returns a function writing its ``defs.yaml``."""
    write_readings(tmp_path / "readings.csv", READINGS)
    (tmp_path / "pyproject.toml").write_text('[tool.dg.project]\nroot_module = "orca_proj"\n')
    package = tmp_path / "orca_proj"
    (package / "defs" / "sites").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "defs" / "__init__.py").write_text("")
    (package / "pipelines.py").write_text(PIPELINE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield lambda attributes: (package / "defs" / "sites" / "defs.yaml").write_text(
        "type: orcapod_dagster.OrcapodPipelineComponent\nattributes:\n" + textwrap.indent(attributes, "  ")
    )
    for name in [m for m in sys.modules if m == "orca_proj" or m.startswith("orca_proj.")]:
        del sys.modules[name]


def test_defs_yaml_builds_the_pipeline_definitions(project, tmp_path, instance):
    project(
        textwrap.dedent(
            f"""\
            pipeline: orca_proj.pipelines:build
            store: {tmp_path / "store"}
            granularity: node
            schedule: "0 6 * * *"
            sensors: [readings]
            """
        )
    )
    defs = dg.ComponentTree.for_project(tmp_path).build_defs()
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = [k.to_user_string() for k in graph.toposorted_asset_keys]
    assert sorted(keys) == ["sites/offsets", "sites/readings", "sites/shifted", "sites/tripled"]
    assert len(list(defs.assets)) == 4  # granularity: node → one asset definition per node
    assert [s.name for s in defs.schedules] == ["sites_schedule"] and defs.schedules[0].cron_schedule == "0 6 * * *"
    assert [s.name for s in defs.sensors] == ["sites_sources_sensor"]
    assert defs.resources["io_manager"].store_uri == str(tmp_path / "store")

    result = defs.resolve_job_def("sites_job").execute_in_process(instance=instance)
    assert materializations(result)["sites/shifted"]["orcapod/computed"] == 5


def test_a_pipeline_attribute_and_partitions(project, tmp_path):
    project('pipeline: "orca_proj.pipelines:pipeline"\npartition_by: site\nio_manager_key: sites_store\n')
    defs = dg.ComponentTree.for_project(tmp_path).build_defs()
    [step] = defs.assets
    assert {spec.partitions_def for spec in step.specs} == {dg.DynamicPartitionsDefinition(name="sites__site")}
    assert defs.sensors == [] and defs.schedules == []
    assert list(defs.resources) == ["sites_store"] and {step.get_io_manager_key_for_asset_key(k) for k in step.keys} == {"sites_store"}


def test_bad_references_and_fields_are_named(project, tmp_path):
    bad = {
        "orca_proj.missing:build": r"cannot import module 'orca_proj.missing'",
        "orca_proj.pipelines:nope": r"module 'orca_proj.pipelines' has no attribute 'nope'",
        "orca_proj.pipelines:not_a_pipeline": r"is a int, not a Pipeline",
        "orca_proj.pipelines": r"not of the form 'package.module:attribute'",
    }
    for reference, message in bad.items():
        component = OrcapodPipelineComponent.from_attributes_dict(attributes={"pipeline": reference})
        with pytest.raises(InputValidationError, match=message):
            dg.build_defs_for_component(component)
    with pytest.raises(Exception, match="granularity"):
        OrcapodPipelineComponent.from_attributes_dict(attributes={"pipeline": "orca_proj.pipelines:build", "granularity": "step"})
    # A store that is not the pipeline's is refused by build_definitions.
    other = OrcapodPipelineComponent.from_attributes_dict(attributes={"pipeline": "orca_proj.pipelines:build", "store": str(tmp_path / "elsewhere")})
    with pytest.raises(InputValidationError, match="is not the store of pipeline 'sites'"):
        dg.build_defs_for_component(other)
