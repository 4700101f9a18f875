"""Translation of compiled nodes into asset specs, and the example code location."""

from __future__ import annotations

import os
import subprocess
import sys

import dagster as dg
import polars as pl
import pytest

from orcapod_core.databases import InMemoryArrowDatabase
from orcapod_core.errors import InputValidationError, InvalidLabelError
from orcapod_core import function_pod
from orcapod_core.pipeline import Pipeline
from orcapod_core.sources import DictSource
from orcapod_dagster import OrcapodTranslator, OrcapodTranslatorSettings, build_definitions, orcapod_assets


def spec_by_key(assets: list[dg.AssetsDefinition]) -> dict[str, dg.AssetSpec]:
    return {spec.key.to_user_string(): spec for a in assets for spec in a.specs}


def test_keys_deps_groups_kinds_and_code_versions(make_project):
    mod = make_project()
    specs = spec_by_key(orcapod_assets(mod.pipeline))
    assert set(specs) == {"demo/numbers", "demo/names", "demo/doubled", "demo/joined", "demo/described"}
    assert {d.asset_key.to_user_string() for d in specs["demo/joined"].deps} == {"demo/doubled", "demo/names"}
    assert {s.group_name for s in specs.values()} == {"demo"}
    assert specs["demo/doubled"].kinds == {"orcapod", "python", "deltalake"}
    assert specs["demo/joined"].kinds == {"orcapod", "deltalake"}
    # code version = node identity: function identity / operator identity
    assert specs["demo/doubled"].code_version == mod.pipeline.doubled.identity_hash().to_string()
    assert specs["demo/joined"].code_version == mod.pipeline.joined.identity_hash().to_string()
    assert specs["demo/doubled"].description == "Twice x."
    assert "Join" in specs["demo/joined"].description

    md = specs["demo/doubled"].metadata
    assert md["orcapod/node_type"] == "function"
    assert md["orcapod/function"] == "pipe_v1.double"
    assert md["orcapod/pipeline_hash"] == mod.pipeline.doubled.pipeline_hash().to_string()
    assert md["orcapod/identity"] == specs["demo/doubled"].code_version
    assert [c.name for c in md["dagster/column_schema"].columns] == ["id", "y"]
    assert md["dagster/uri"].startswith(str(make_project.store))
    lineage = specs["demo/joined"].metadata["dagster/column_lineage"]
    assert lineage.deps_by_column["name"][0].asset_key == dg.AssetKey(["demo", "names"])
    assert {d.asset_key.to_user_string() for d in lineage.deps_by_column["id"]} == {"demo/doubled", "demo/names"}

    # Code versions are deterministic: a second build of the same module agrees.
    again = spec_by_key(orcapod_assets(make_project("pipe_v1_again").pipeline))
    assert {k: s.code_version for k, s in again.items()} == {k: s.code_version for k, s in specs.items()}


def test_checks_only_on_function_nodes_and_blocking_opt_in(make_project):
    mod = make_project()
    [assets] = orcapod_assets(mod.pipeline)
    names = {(k.asset_key.to_user_string(), k.name) for k in assets.check_keys}
    assert names == {(a, c) for a in ("demo/doubled", "demo/described") for c in ("no_failed_packets", "schema_matches")}
    assert not any(s.blocking for s in assets.check_specs)
    blocking = OrcapodTranslator(OrcapodTranslatorSettings(blocking_failed_packets=True))
    [assets] = orcapod_assets(mod.pipeline, translator=blocking)
    assert {s.name for s in assets.check_specs if s.blocking} == {"no_failed_packets"}


def test_custom_translator_is_asked_everywhere(make_project):
    class Science(OrcapodTranslator):
        def get_asset_key(self, node):
            return dg.AssetKey(["science", node.label])

        def get_group_name(self, node):
            return "lab"

    [assets] = orcapod_assets(make_project().pipeline, translator=Science())
    specs = spec_by_key([assets])
    assert "science/joined" in specs and specs["science/joined"].group_name == "lab"
    assert {d.asset_key.to_user_string() for d in specs["science/joined"].deps} == {"science/doubled", "science/names"}
    assert {k.asset_key.to_user_string() for k in assets.check_keys} == {"science/doubled", "science/described"}


@function_pod(output_keys="y")
def plus_one(x: int) -> int:
    return x + 1


def test_sanitised_keys_and_collisions():
    source = DictSource({"id": [1], "x": [1]}, tag_columns=["id"], source_id="s")
    with Pipeline(("my-lab", "v2"), pipeline_database=InMemoryArrowDatabase()) as p:
        plus_one.pod(source, label="step.one")
    specs = spec_by_key(orcapod_assets(p))
    assert "my_lab/v2/step_one" in specs and specs["my_lab/v2/step_one"].group_name == "my_lab_v2"

    with Pipeline("clash", pipeline_database=InMemoryArrowDatabase()) as p:
        plus_one.pod(source, label="a.b")
        plus_one.pod(source, label="a-b")
    with pytest.raises(InvalidLabelError, match=r"'a\.b' and 'a-b'.*clash/a_b"):
        orcapod_assets(p)


def test_bad_options_and_foreign_store(make_project, tmp_path):
    mod = make_project()
    with pytest.raises(ValueError, match="granularity"):
        orcapod_assets(mod.pipeline, granularity="step")
    with pytest.raises(ValueError, match="on_packet_error"):
        orcapod_assets(mod.pipeline, on_packet_error="ignore")
    with pytest.raises(InputValidationError, match="is not the store of pipeline"):
        build_definitions(mod.pipeline, store=tmp_path / "elsewhere")


def test_definitions_have_job_schedule_io_manager_and_load(make_project):
    mod = make_project(defs_kwargs='schedule="0 * * * *"')
    dg.Definitions.validate_loadable(mod.defs)
    assert mod.defs.resolve_job_def("demo_job") is not None
    [schedule] = list(mod.defs.schedules)
    assert schedule.cron_schedule == "0 * * * *" and schedule.job_name == "demo_job"
    io_manager = mod.defs.resources["io_manager"]
    assert io_manager.store_uri == str(make_project.store)


def test_example_project_code_location(monkeypatch, tmp_path):
    monkeypatch.setenv("ORCAPOD_STORE", str(tmp_path / "store"))
    import importlib

    import example_project.definitions as example

    example = importlib.reload(example)
    dg.Definitions.validate_loadable(example.defs)
    keys = {k.to_user_string() for k in example.defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"water_quality/scored", "water_quality/survey", "water_quality/network_summary", "water_quality/readings"} <= keys
    assert [s.cron_schedule for s in example.defs.schedules] == ["0 * * * *"]


def test_preview_cuts_long_lists_before_converting_them():
    import pyarrow as pa

    from orcapod_dagster.metadata import markdown_preview

    table = pa.table({"id": [1, 2, 3], "v": pa.array([list(range(100_000)), [1, 2], None], pa.large_list(pa.int64()))})
    assert markdown_preview(table).splitlines()[2:] == [
        "| 1 | [0, 1, 2, 3, 4, 5, 6, 7, ...] |",
        "| 2 | [1, 2] |",
        "| 3 | None |",
    ]


def test_building_definitions_over_file_sources_reads_no_rows(tmp_path, instance):
    """E5: the definitions of a code location come from schemas only. The Delta source's data files
    are removed to prove no row is read while building; materializing then reads the table."""
    import shutil

    import pyarrow as pa
    from deltalake import write_deltalake

    from orcapod_core.databases import DeltaTableDatabase
    from orcapod_core.sources import CSVSource, DeltaTableSource

    @function_pod(output_keys="y")
    def scale(x: float, k: float) -> float:
        return x * k

    table = tmp_path / "readings"
    write_deltalake(table, pa.table({"id": [1, 2], "x": [1.5, 2.5]}))
    (tmp_path / "k.csv").write_text("id,k\n1,2.0\n2,3.0\n")
    kept = tmp_path / "kept"
    shutil.copytree(table, kept)
    for part in table.glob("*.parquet"):
        part.unlink()

    def build():
        with Pipeline("lazy", pipeline_database=DeltaTableDatabase(tmp_path / "store")) as p:
            scale.pod(DeltaTableSource(table, tag_columns="id", label="readings"), CSVSource(tmp_path / "k.csv", tag_columns="id"), label="scaled")
        return p

    defs = build_definitions(build())
    dg.Definitions.validate_loadable(defs)
    specs = spec_by_key(list(defs.assets))
    assert [c.name for c in specs["lazy/scaled"].metadata["dagster/column_schema"].columns] == ["id", "y"]

    for part in kept.glob("*.parquet"):  # the data is back: a materialization reads it
        shutil.copy(part, table / part.name)
    result = dg.materialize(list(defs.assets), resources=dict(defs.resources), instance=instance)
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(["lazy", "scaled"])]
    assert event.materialization.metadata["orcapod/computed"].value == 2


@function_pod(output_keys="score")
def score_of(x: int) -> float:
    return x / 2


def test_descriptions_are_readable_and_show_no_machine_paths(tmp_path):
    import inspect
    import os

    from orcapod_core.databases import DeltaTableDatabase
    from orcapod_core.sources import CSVSource

    (tmp_path / "visits.csv").write_text("id,x\n1,3\n2,4\n")
    csv = CSVSource(tmp_path / "visits.csv", tag_columns="id", label="visits")  # default source_id: the path
    other = DictSource({"id": [1, 2], "site": ["a", "b"]}, tag_columns="id", source_id="sites", label="sites")
    with Pipeline("words", pipeline_database=DeltaTableDatabase(tmp_path / "store")) as p:
        joined = csv.join(other, label="joined")
        joined.batch(batch_size=3, label="threes")
        joined.batch(label="everything")
        joined.select_packet_columns(["x"], label="only_x")
        joined.map_tags({"id": "visit"}, label="renamed")
        joined.polars_filter(pl.col("x") > 3, site="a", label="filtered")
        joined.semi_join(other, label="matched")
        score_of.pod(csv, label="scored")
    specs = spec_by_key(orcapod_assets(p))
    described = {key.split("/")[1]: spec.description for key, spec in specs.items()}
    assert described["joined"] == "Join of `visits`, `sites` on tag columns [`id`]."
    assert described["threes"] == "Batches of 3 rows of `joined` (every column becomes a list)."
    assert described["everything"] == "Batch of all rows of `joined` in one row (every column becomes a list)."
    assert described["only_x"] == "`joined` with only the packet columns [`x`]."
    assert described["renamed"] == "`joined` with tag columns renamed: `id` → `visit`."
    assert described["filtered"].startswith("Rows of `joined` where `site == 'a'` and `") and "col(\"x\")" in described["filtered"]
    assert described["matched"] == "Rows of `joined` whose [`id`, `site`] occur in `sites`."
    assert not any("object at 0x" in d or "<orcapod_core" in d for d in described.values())
    # A file source: the file by name (it is outside the working directory), never the machine path.
    assert described["visits"] == "CSVSource `visits.csv` reading `visits.csv`."
    assert str(tmp_path) not in "".join(described.values())
    assert specs["words/visits"].metadata["orcapod/source_path"] == str(tmp_path / "visits.csv")  # the full path is metadata
    # Code references: the function's file and line, for the asset page's link.
    [reference] = specs["words/scored"].metadata["dagster/code_references"].code_references
    assert (reference.file_path, reference.line_number) == (os.path.abspath(__file__), inspect.getsourcelines(score_of)[1])
    assert not any("dagster/code_references" in specs[f"words/{label}"].metadata for label in ("visits", "joined"))


def test_a_file_under_the_working_directory_is_shown_relative_to_it(tmp_path, monkeypatch):
    from orcapod_core.databases import DeltaTableDatabase
    from orcapod_core.sources import CSVSource

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "visits.csv").write_text("id,x\n1,3\n")
    monkeypatch.chdir(tmp_path)
    with Pipeline("rel", pipeline_database=DeltaTableDatabase(tmp_path / "store")) as p:
        score_of.pod(CSVSource(tmp_path / "data" / "visits.csv", tag_columns="id", source_id="visits", label="visits"), label="scored")
    assert OrcapodTranslator().get_asset_spec(p.visits).description == "CSVSource `visits` reading `data/visits.csv`."


def test_two_pipelines_merge_into_one_code_location(tmp_path, instance):
    """On two stores with their own IO manager keys, and on one store with the default key; a
    plain asset reads each pipeline's output through that pipeline's IO manager."""
    import polars as pl

    from orcapod_core.databases import DeltaTableDatabase

    def pipeline(name: str, store) -> Pipeline:
        numbers = DictSource({"id": [1, 2], "x": [3, 4]}, tag_columns="id", source_id=f"{name}_numbers", label="numbers")
        with Pipeline(name, pipeline_database=DeltaTableDatabase(store)) as p:
            score_of.pod(numbers, label="scored")
        return p

    lab, field = pipeline("lab", tmp_path / "lab_store"), pipeline("field", tmp_path / "field_store")

    @dg.asset(ins={"scored": dg.AssetIn(key=["field", "scored"])}, io_manager_key="field_store")
    def field_total(scored: pl.DataFrame) -> pl.DataFrame:
        return scored.select(pl.col("score").sum())

    merged = dg.Definitions.merge(
        build_definitions(lab),  # default key "io_manager"
        build_definitions(field, io_manager_key="field_store", extra_assets=[field_total]),
    )
    dg.Definitions.validate_loadable(merged)
    assert merged.resources["field_store"].store_uri == str(tmp_path / "field_store")
    assert merged.resources["io_manager"].store_uri == str(tmp_path / "lab_store")
    result = dg.materialize(list(merged.assets), instance=instance, resources=dict(merged.resources))
    uris = {e.materialization.asset_key.to_user_string(): e.materialization.metadata["dagster/uri"].value for e in result.get_asset_materialization_events()}
    assert uris["lab/scored"].startswith(str(tmp_path / "lab_store")) and uris["field/scored"].startswith(str(tmp_path / "field_store"))
    assert result.output_for_node("field_total")["score"].to_list() == [3.5]
    # Node granularity: inputs reach each step through their pipeline's IO manager.
    per_node = build_definitions(field, io_manager_key="field_store", granularity="node", executor=dg.in_process_executor)
    assert dg.materialize(list(per_node.assets), instance=instance, resources=dict(per_node.resources)).success

    # Two pipelines on one store share its IO manager: the default key merges.
    same = pipeline("same", tmp_path / "lab_store")
    both = dg.Definitions.merge(build_definitions(lab), build_definitions(same))
    assert both.resources["io_manager"] is build_definitions(lab).resources["io_manager"]


def test_the_job_materializes_extra_assets_by_default(make_project):
    mod = make_project()

    @dg.asset(deps=[dg.AssetKey(["demo", "described"])])
    def report() -> None: ...

    external = dg.AssetSpec("outside")
    defs = build_definitions(mod.pipeline, extra_assets=[report, external], schedule="0 * * * *")
    job = defs.resolve_job_def("demo_job")
    keys = {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
    assert "report" in keys and "demo/described" in keys and "outside" not in keys
    assert defs.schedules[0].job_name == "demo_job"
    only = build_definitions(mod.pipeline, extra_assets=[report], job_includes_extra_assets=False)
    assert "report" not in {k.to_user_string() for k in only.resolve_job_def("demo_job").asset_layer.executable_asset_keys}


def test_loading_the_code_location_does_not_import_polars(tmp_path):
    # The run launcher, the webserver's code server and every sensor/schedule tick load the code
    # location without touching a DataFrame: polars is imported when a run first uses it.
    probe = (
        "import sys, example_project.definitions as d; "
        "assert len(d.defs.resolve_asset_graph().get_all_asset_keys()) > 10; "
        "print(sorted(m for m in sys.modules if m == 'polars' or m.startswith('polars.')))"
    )
    env = {**os.environ, "ORCAPOD_STORE": str(tmp_path / "store")}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]", out.stdout
