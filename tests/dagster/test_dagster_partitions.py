"""Dynamic partitions keyed by a source tag column, on a real Dagster instance: a partition run
reads only its rows, range runs are one run, memoization spans partitions, and subset/node runs
read each upstream partition as of its latest materialization."""

from __future__ import annotations

import dagster as dg
import polars as pl
import pytest
from conftest import READINGS, build_sites_pipeline, materializations, write_readings

from orcapod_core.errors import InputValidationError, NotMaterializedError
from orcapod_dagster import OrcapodTranslator, OrcapodTranslatorSettings, add_partitions, build_definitions, orcapod_assets, partition_keys

PARTITIONS = "sites__site"
SHIFTED = dg.AssetKey(["sites", "shifted"])
RANGE = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")


@pytest.fixture
def sites(tmp_path):
    csv = write_readings(tmp_path / "readings.csv", READINGS)
    return build_sites_pipeline(csv, tmp_path / "store")


def per_partition(result, key: dg.AssetKey) -> dict[str, dict]:
    """``{partition: metadata values}`` of the materializations of ``key`` in a run."""
    events = [e.materialization for e in result.get_asset_materialization_events() if e.materialization.asset_key == key]
    return {m.partition: {k: v.value for k, v in m.metadata.items()} for m in events}


def run(defs, instance, *, partition_key=None, tags=None, selection=None):
    result = dg.materialize(
        list(defs.assets), instance=instance, resources=dict(defs.resources), partition_key=partition_key, tags=tags, selection=selection
    )
    return result, materializations(result)


def test_partitioned_specs_and_single_run_backfill_policy(sites):
    defs = build_definitions(sites, partition_by="site")
    [step] = defs.assets
    assert {spec.partitions_def for spec in step.specs} == {dg.DynamicPartitionsDefinition(name=PARTITIONS)}
    assert step.backfill_policy == dg.BackfillPolicy.single_run()
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_job_def("sites_job").partitions_def == dg.DynamicPartitionsDefinition(name=PARTITIONS)
    # The same through the translator settings; explicit backfill policies win.
    translator = OrcapodTranslator(OrcapodTranslatorSettings(partition_by="site"))
    nodes = orcapod_assets(sites, translator=translator, granularity="node", backfill_policy=dg.BackfillPolicy.multi_run(2))
    assert all(a.backfill_policy == dg.BackfillPolicy.multi_run(2) for a in nodes)
    assert partition_keys(sites, "site") == ["east", "north", "south"]


def test_unknown_partition_column_names_it(sites):
    with pytest.raises(InputValidationError, match=r"partition_by='station'.*'readings': \['site', 'day'\]"):
        build_definitions(sites, partition_by="station")


def test_each_partition_computes_only_its_rows_and_memoizes_across_partitions(sites, instance):
    defs = build_definitions(sites, partition_by="site")
    assert add_partitions(sites, instance, partition_by="site") == ["east", "north", "south"]
    assert add_partitions(sites, instance, partition_by="site") == []  # already registered
    assert instance.get_dynamic_partitions(PARTITIONS) == ["east", "north", "south"]

    _, north = run(defs, instance, partition_key="north")
    assert (north["sites/readings"]["dagster/row_count"], north["sites/offsets"]["dagster/row_count"]) == (2, 3)
    for node in ("tripled", "shifted"):
        counts = north[f"sites/{node}"]
        assert (counts["dagster/row_count"], counts["orcapod/computed"], counts["orcapod/cached"]) == (2, 2, 0)
        assert counts["orcapod/partition_by"] == "site"
    # shifted joins tripled (site, day) with offsets (day): its tags keep that order
    assert "| north | 2 | 206 |" in north["sites/shifted"]["orcapod/preview"]

    _, south = run(defs, instance, partition_key="south")
    assert (south["sites/shifted"]["dagster/row_count"], south["sites/shifted"]["orcapod/computed"]) == (1, 1)
    assert "north" not in south["sites/shifted"]["orcapod/preview"]

    # Every partition in one run (single-run backfill): only east is new.
    result, everything = run(defs, instance, tags=dict(zip(RANGE, ["east", "south"])))
    assert len([e for e in result.all_events if e.event_type_value == "STEP_START"]) == 1
    # Each partition records its own rows, counts and preview; the run's snapshot is shared.
    shifted = per_partition(result, SHIFTED)
    counts = {p: (m["dagster/row_count"], m["orcapod/computed"], m["orcapod/cached"], m["orcapod/failed"]) for p, m in shifted.items()}
    assert counts == {"east": (2, 2, 0, 0), "north": (2, 0, 2, 0), "south": (1, 0, 1, 0)}
    assert "| east | 3 | 315 |" in shifted["east"]["orcapod/preview"] and "north" not in shifted["east"]["orcapod/preview"]
    assert len({m["orcapod/data_version"] for m in shifted.values()}) == 1
    offsets = per_partition(result, dg.AssetKey(["sites", "offsets"]))  # no site column: read whole for each
    assert {p: m["dagster/row_count"] for p, m in offsets.items()} == {"east": 3, "north": 3, "south": 3}
    assert everything["sites/shifted"]["orcapod/partition_by"] == "site"

    # Per-partition history is Dagster's: north's latest materialization is the range run's.
    latest = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=SHIFTED, asset_partitions=["north"]), limit=1)
    assert latest.records[0].run_id == result.run_id

    # Nothing new anywhere afterwards.
    _, again = run(defs, instance, partition_key="east")
    assert (again["sites/shifted"]["orcapod/computed"], again["sites/shifted"]["orcapod/cached"]) == (0, 2)


def test_subset_reads_upstream_partitions_as_materialized(sites, instance, tmp_path):
    defs = build_definitions(sites, partition_by="site")
    add_partitions(sites, instance, partition_by="site")
    with pytest.raises(NotMaterializedError, match=r"'sites/tripled': partition\(s\) \['north'\] were never materialized"):
        run(defs, instance, partition_key="north", selection=[SHIFTED])

    run(defs, instance, tags=dict(zip(RANGE, ["east", "north"])))  # one snapshot covering east and north
    run(defs, instance, partition_key="north")  # north again: its own, newer snapshot
    # North gets a new reading afterwards; a subset run of `shifted` must use the materialized
    # upstream partitions (east from the range run, north from its own run), not the new rows.
    write_readings(tmp_path / "readings.csv", [*READINGS, ("north", 3, 7)])
    later = build_definitions(build_sites_pipeline(tmp_path / "readings.csv", tmp_path / "store"), partition_by="site")
    result, subset = run(later, instance, tags=dict(zip(RANGE, ["east", "north"])), selection=[SHIFTED])
    assert list(subset) == ["sites/shifted"]
    counts = {p: (m["dagster/row_count"], m["orcapod/computed"]) for p, m in per_partition(result, SHIFTED).items()}
    assert counts == {"east": (2, 0), "north": (2, 0)}


def test_node_granularity_partitions_through_the_io_manager(sites, instance):
    defs = build_definitions(sites, partition_by="site", granularity="node")
    add_partitions(sites, instance, partition_by="site")
    _, east = run(defs, instance, partition_key="east")
    assert (east["sites/shifted"]["dagster/row_count"], east["sites/shifted"]["orcapod/computed"]) == (2, 2)
    assert "| east | 3 | 315 |" in east["sites/shifted"]["orcapod/preview"]

    # A plain asset downstream reads the partition's rows, typed by its annotation.
    @dg.asset(partitions_def=dg.DynamicPartitionsDefinition(name=PARTITIONS), ins={"shifted": dg.AssetIn(key=SHIFTED)})
    def site_total(shifted: pl.DataFrame) -> None:
        assert shifted["site"].unique().to_list() == ["east"]
        assert sorted(shifted["z"].to_list()) == [112, 315]

    dg.materialize([*defs.assets, site_total], instance=instance, resources=dict(defs.resources), partition_key="east", selection=[site_total])


def test_schedule_of_a_partitioned_pipeline_runs_every_registered_partition(sites, instance):
    defs = build_definitions(sites, partition_by="site", schedule="0 * * * *")
    [schedule] = defs.schedules

    def evaluate():
        return schedule.evaluate_tick(dg.build_schedule_context(instance=instance, repository_def=defs.get_repository_def()))

    assert evaluate().run_requests == [] and "no partitions" in evaluate().skip_message
    add_partitions(sites, instance, partition_by="site")
    [request] = evaluate().run_requests
    assert (request.tags[RANGE[0]], request.tags[RANGE[1]]) == ("east", "south")
    result, mats = run(defs, instance, tags={k: request.tags[k] for k in RANGE})
    assert result.success and sum(m["dagster/row_count"] for m in per_partition(result, SHIFTED).values()) == 5
