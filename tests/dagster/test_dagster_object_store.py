"""Dagster on an object store: a pipeline whose store is ``s3://...`` (a local S3 server, see
tests/conftest.py) materializes at both granularities — in-process and with the multiprocess
executor, whose step processes rebuild the pipeline (endpoint included) from the module file —
the IO manager reads pinned snapshots from S3 and publishes plain-asset tables there, and the
source sensor watches a DeltaTableSource on S3."""

from __future__ import annotations

import json

import dagster as dg
import polars as pl
import pyarrow as pa
import pytest
from conftest import materializations
from dagster._core.definitions.reconstruct import ReconstructableRepository
from deltalake import write_deltalake

from orcapod_core import DeltaTableDatabase, DeltaTableSource, Pipeline, function_pod
from orcapod_core.errors import InputValidationError
from orcapod_dagster import OrcapodIOManager, build_definitions, orcapod_source_sensor
from orcapod_dagster.definitions import store_io_manager


def counts(mats: dict, key: str) -> tuple[int, int]:
    return mats[key]["orcapod/computed"], mats[key]["orcapod/cached"]


def test_materialize_on_s3_at_both_granularities_in_process(make_project, instance, s3_store):
    node = make_project(
        "s3_node", store=s3_store.uri, storage_options=s3_store.storage_options,
        defs_kwargs='granularity="node", executor=dg.in_process_executor',
    )
    io_manager = node.defs.resources["io_manager"]
    assert (io_manager.store_uri, io_manager.storage_options) == (s3_store.uri, s3_store.storage_options)
    first = materializations(dg.materialize(list(node.defs.assets), instance=instance, resources=dict(node.defs.resources)))
    assert counts(first, "demo/described") == (3, 0) and counts(first, "demo/doubled") == (3, 0)
    assert first["demo/described"]["dagster/uri"].startswith(s3_store.uri + "/")

    # One step alone: its upstream arrives through the IO manager, pinned, read from S3.
    described = [a for a in node.defs.assets if dg.AssetKey(["demo", "described"]) in a.keys]
    alone = materializations(dg.materialize(list(node.defs.assets), instance=instance, resources=dict(node.defs.resources), selection=described))
    assert list(alone) == ["demo/described"] and counts(alone, "demo/described") == (0, 3)

    whole = make_project("s3_pipeline", store=s3_store.uri, storage_options=s3_store.storage_options)
    again = materializations(dg.materialize(list(whole.defs.assets), instance=instance, resources=dict(whole.defs.resources)))
    assert counts(again, "demo/described") == (0, 3)
    assert again["demo/described"]["data_version"] == first["demo/described"]["data_version"]


@pytest.mark.slow
def test_multiprocess_steps_reach_the_s3_store(make_project, instance, s3_store):
    make_project("s3_node_mp", store=s3_store.uri, storage_options=s3_store.storage_options, defs_kwargs='granularity="node"')
    path = make_project.tmp_path / "s3_node_mp.py"
    job = ReconstructableRepository.for_file(str(path), "defs", working_directory=str(path.parent)).get_reconstructable_job("demo_job")
    result = dg.execute_job(job, instance=instance)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    assert len({e.pid for e in result.all_events if e.event_type_value == "STEP_START"}) == 5  # five step processes
    mats = materializations(result)  # each step read its upstream from S3, as pinned by the one before
    assert counts(mats, "demo/described") == (3, 0) and counts(mats, "demo/doubled") == (3, 0)
    assert mats["demo/joined"]["dagster/row_count"] == 3


@function_pod(output_keys="celsius")
def to_celsius(fahrenheit: float) -> float:
    return round((fahrenheit - 32) / 1.8, 2)


def test_io_manager_on_s3_publishes_plain_tables_and_reads_pinned_outputs(instance, s3_store):
    options = s3_store.storage_options
    io_manager = OrcapodIOManager(store_uri=s3_store.uri, storage_options=options)

    @dg.asset(key=["lab", "raw_readings"])
    def raw_readings() -> pl.DataFrame:
        return pl.DataFrame({"sample": ["a", "b"], "fahrenheit": [212.0, 32.0]})

    published = materializations(dg.materialize([raw_readings], instance=instance, resources={"io_manager": io_manager}))
    raw_uri = published["lab/raw_readings"]["dagster/uri"]
    assert raw_uri == f"{s3_store.uri}/lab/raw_readings" and published["lab/raw_readings"]["orcapod/delta_version"] == 0

    # A pipeline on the same store reads the published table as a live DeltaTableSource.
    source = DeltaTableSource(raw_uri, tag_columns=["sample"], storage_options=options, label="readings")
    with Pipeline("temps", pipeline_database=DeltaTableDatabase(s3_store.uri, storage_options=options)) as pipeline:
        to_celsius.pod(source, label="celsius")
    defs = build_definitions(pipeline, extra_assets=[raw_readings], executor=dg.in_process_executor)
    spec = next(s for a in defs.assets for s in a.specs if s.key == dg.AssetKey(["temps", "readings"]))
    assert {d.asset_key for d in spec.deps} == {dg.AssetKey(["lab", "raw_readings"])}  # the Dagster -> orcapod edge
    resources = dict(defs.resources)
    mats = materializations(dg.materialize(list(defs.assets), instance=instance, resources=resources, selection=["temps/readings", "temps/celsius"]))
    assert counts(mats, "temps/celsius") == (2, 0)

    seen = {}

    @dg.asset(ins={"celsius": dg.AssetIn(key=["temps", "celsius"]), "raw": dg.AssetIn(key=["lab", "raw_readings"])})
    def report(celsius: pl.DataFrame, raw: pa.Table) -> None:
        seen["celsius"] = sorted(celsius["celsius"].to_list())
        seen["raw"] = raw.num_rows

    # New raw rows after the pipeline's materialization: `celsius` is served as pinned then.
    dg.materialize([raw_readings], instance=instance, resources={"io_manager": io_manager})
    write_deltalake(raw_uri, pa.table({"sample": ["c"], "fahrenheit": [50.0]}), mode="append", storage_options=options)
    dg.materialize([*defs.assets, report], instance=instance, resources=resources, selection=[report])
    assert seen == {"celsius": [0.0, 100.0], "raw": 2}  # both as of their latest materializations


def test_store_given_as_a_uri_is_compared_as_a_uri_and_opened_with_the_pipelines_options(s3_store):
    options = s3_store.storage_options
    with Pipeline("uris", pipeline_database=DeltaTableDatabase(s3_store.uri, storage_options=options)) as pipeline:
        pass
    for spelling in (s3_store.uri, s3_store.uri + "/", s3_store.uri.replace("s3://", "S3://", 1)):
        manager = store_io_manager(pipeline, spelling)
        assert manager.storage_options == options, spelling
    given = store_io_manager(pipeline, OrcapodIOManager(store_uri=s3_store.uri))
    assert given.storage_options == options  # the pipeline's store opens the same way
    with pytest.raises(InputValidationError, match=rf"store 's3://other-bucket/store'.*{s3_store.uri}"):
        build_definitions(pipeline, store="s3://other-bucket/store")
    with pytest.raises(InputValidationError, match=r"store 's3://[^']*/store/sub' is not the store"):
        store_io_manager(pipeline, s3_store.uri + "/sub")


def test_source_sensor_watches_a_delta_source_on_s3(instance, s3_store):
    options = s3_store.storage_options
    uri = s3_store.at("incoming", "readings")
    write_deltalake(uri, pa.table({"sample": ["a"], "fahrenheit": [212.0]}), storage_options=options)
    source = DeltaTableSource(uri, tag_columns=["sample"], storage_options=options, label="readings")
    with Pipeline("watched", pipeline_database=DeltaTableDatabase(s3_store.uri, storage_options=options)) as pipeline:
        to_celsius.pod(source, label="celsius")
    defs = build_definitions(pipeline, sensors=["readings"])
    sensor = next(s for s in defs.sensors if s.name == "watched_sources_sensor")

    def tick(cursor):
        context = dg.build_sensor_context(instance=instance, instance_ref=instance.get_ref(), cursor=cursor, definitions=defs)
        return sensor.evaluate_tick(context)

    first = tick(None)
    assert len(first.run_requests) == 1 and json.loads(first.cursor)["@versions"] == {"readings": "delta:0"}
    assert tick(first.cursor).run_requests == []  # same Delta version: no rows read, no run
    write_deltalake(uri, pa.table({"sample": ["b"], "fahrenheit": [32.0]}), mode="append", storage_options=options)
    third = tick(first.cursor)
    assert len(third.run_requests) == 1 and json.loads(third.cursor)["@versions"] == {"readings": "delta:1"}

    run = defs.resolve_job_def("watched_job").execute_in_process(instance=instance, tags=third.run_requests[0].tags)
    assert counts(materializations(run), "watched/celsius") == (2, 0)
    orcapod_source_sensor(pipeline, sources="readings")  # the helper itself builds on S3 sources too
