"""orcapod_source_sensor on a real Dagster instance: a run when a CSV source's rows change
(cursor = last fingerprint per source), new tag values registered as dynamic partitions, and
clear errors for labels that are not sources."""

from __future__ import annotations

import json

import dagster as dg
import pyarrow as pa
import pytest
from deltalake import write_deltalake
from conftest import READINGS, build_sites_pipeline, materializations, write_readings

from orcapod_core.databases import InMemoryArrowDatabase
from orcapod_core.errors import InvalidLabelError
from orcapod_core.pipeline import Pipeline
from orcapod_core.sources import DeltaTableSource, DictSource
from orcapod_dagster import build_definitions, orcapod_source_sensor

RANGE = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")


def tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, defs: dg.Definitions | None, cursor: str | None):
    # As the sensor daemon does: the instance (and its ref, for resolving partition keys).
    context = dg.build_sensor_context(instance=instance, instance_ref=instance.get_ref(), cursor=cursor, definitions=defs)
    return sensor.evaluate_tick(context)


def test_runs_when_csv_rows_change_and_skips_otherwise(tmp_path, instance):
    csv = write_readings(tmp_path / "readings.csv", READINGS)
    pipeline = build_sites_pipeline(csv, tmp_path / "store")
    defs = build_definitions(pipeline, sensors=["readings"])
    sensor = next(s for s in defs.sensors if s.name == "sites_sources_sensor")
    assert sensor.job_name == "sites_job" and sensor.default_status == dg.DefaultSensorStatus.STOPPED
    dg.Definitions.validate_loadable(defs)

    source = pipeline.readings.source
    reads = []
    original = source._read
    source._read = lambda: reads.append(1) or original()  # count the file reads (a spy)

    first = tick(sensor, instance, defs, None)  # no cursor: nothing is known, so run
    assert len(first.run_requests) == 1 and first.run_requests[0].tags["orcapod/changed_sources"] == "readings"
    cursor = json.loads(first.cursor)
    assert set(cursor) == {"readings", "@versions"} and cursor["@versions"]["readings"] == source.fingerprint()
    assert len(reads) == 1

    second = tick(sensor, instance, defs, first.cursor)
    assert second.run_requests == [] and "unchanged" in second.skip_message
    assert second.cursor == first.cursor
    assert len(reads) == 1  # the file did not change (size, mtime): its rows were not read

    write_readings(csv, READINGS)  # rewritten, same rows: read again, still nothing to do
    assert tick(sensor, instance, defs, first.cursor).run_requests == [] and len(reads) == 2

    with csv.open("a") as f:
        f.write("west,2,9\n")
    third = tick(sensor, instance, defs, second.cursor)
    assert len(third.run_requests) == 1 and third.cursor != first.cursor
    assert third.run_requests[0].run_key != first.run_requests[0].run_key
    assert tick(sensor, instance, defs, third.cursor).run_requests == []

    # The requested job materializes the new rows (a run process builds the pipeline afresh).
    fresh = build_definitions(build_sites_pipeline(csv, tmp_path / "store"))
    result = fresh.resolve_job_def("sites_job").execute_in_process(instance=instance, tags=third.run_requests[0].tags)
    assert materializations(result)["sites/shifted"]["dagster/row_count"] == 6


def test_sensors_true_watches_every_source_and_sensor_definitions_pass_through(tmp_path):
    pipeline = build_sites_pipeline(write_readings(tmp_path / "readings.csv", READINGS), tmp_path / "store")

    @dg.sensor(job_name="sites_job")
    def mine(context):  # type: ignore[no-untyped-def]
        return None

    defs = build_definitions(pipeline, sensors=True)
    assert [s.name for s in defs.sensors] == ["sites_sources_sensor"]
    assert "'readings', 'offsets'" in defs.sensors[0].description
    mixed = build_definitions(pipeline, sensors=["offsets", mine])
    assert [s.name for s in mixed.sensors] == ["sites_sources_sensor", "mine"]
    assert build_definitions(pipeline).sensors == []


def test_unknown_or_non_source_labels_are_named(tmp_path):
    pipeline = build_sites_pipeline(write_readings(tmp_path / "readings.csv", READINGS), tmp_path / "store")
    with pytest.raises(InvalidLabelError, match=r"no source 'reading' to watch \(its sources: \['readings', 'offsets'\]\)"):
        orcapod_source_sensor(pipeline, sources="reading")
    with pytest.raises(InvalidLabelError, match=r"node 'tripled' .* is a function node, not a source"):
        build_definitions(pipeline, sensors=["tripled"])


def test_partitioned_sensor_registers_new_keys_and_requests_changed_partitions(tmp_path, instance):
    csv = write_readings(tmp_path / "readings.csv", READINGS)
    defs = build_definitions(build_sites_pipeline(csv, tmp_path / "store"), partition_by="site", sensors=True)
    sensor = next(s for s in defs.sensors if s.name == "sites_sources_sensor")

    def apply(data):  # what the sensor daemon does with the tick's partition requests
        for request in data.dynamic_partitions_requests:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))

    first = tick(sensor, instance, defs, None)
    assert [list(r.partition_keys) for r in first.dynamic_partitions_requests] == [["east", "north", "south"]]
    [everything] = first.run_requests  # every partition changed: one range run
    assert (everything.tags[RANGE[0]], everything.tags[RANGE[1]]) == ("east", "south")
    apply(first)

    second = tick(sensor, instance, defs, first.cursor)
    assert (second.run_requests, second.dynamic_partitions_requests) == ([], [])

    # East gets a reading and a new site appears: east alone, and west (new, registered).
    with csv.open("a") as f:
        f.write("east,2,6\nwest,1,8\n")
    third = tick(sensor, instance, defs, second.cursor)
    assert [list(r.partition_keys) for r in third.dynamic_partitions_requests] == [["west"]]
    assert [r.partition_key for r in third.run_requests] == ["east", "west"]
    apply(third)
    assert instance.get_dynamic_partitions("sites__site") == ["east", "north", "south", "west"]

    # Materializing the requested partition in a fresh run computes only its rows.
    fresh = build_definitions(build_sites_pipeline(csv, tmp_path / "store"), partition_by="site")
    result = dg.materialize(list(fresh.assets), instance=instance, resources=dict(fresh.resources), partition_key="west")
    west = materializations(result)["sites/shifted"]
    assert (west["dagster/row_count"], west["orcapod/computed"]) == (1, 1)


def test_a_pipeline_factory_sees_in_memory_sources_change(tmp_path, instance):
    data = tmp_path / "rows.json"
    data.write_text(json.dumps({"id": [1, 2], "x": [1, 2]}))

    def build() -> Pipeline:
        rows = DictSource(json.loads(data.read_text()), tag_columns="id", source_id="rows", label="rows")
        with Pipeline("mem", pipeline_database=InMemoryArrowDatabase()) as pipeline:
            rows.select_packet_columns(["x"], label="xs")
        return pipeline

    sensor = orcapod_source_sensor(build, minimum_interval_seconds=5)
    assert sensor.name == "mem_sources_sensor" and sensor.minimum_interval_seconds == 5
    defs = None  # standalone: the sensor targets the pipeline's assets
    first = tick(sensor, instance, defs, None)
    assert tick(sensor, instance, defs, first.cursor).run_requests == []
    data.write_text(json.dumps({"id": [1, 2], "x": [1, 3]}))
    assert len(tick(sensor, instance, defs, first.cursor).run_requests) == 1


def test_runs_when_a_delta_source_gets_a_new_version(tmp_path, instance):
    table = tmp_path / "measurements"
    write_deltalake(str(table), pa.table({"sample": ["a", "b"], "value": [1.0, 2.0]}))
    source = DeltaTableSource(str(table), tag_columns="sample", label="measurements")
    with Pipeline("lab", pipeline_database=InMemoryArrowDatabase()) as pipeline:
        source.select_packet_columns(["value"], label="values")
    sensor = orcapod_source_sensor(pipeline, sources=["measurements"])
    first = tick(sensor, instance, None, None)
    assert tick(sensor, instance, None, first.cursor).run_requests == []
    write_deltalake(str(table), pa.table({"sample": ["c"], "value": [3.0]}), mode="append")
    assert len(tick(sensor, instance, None, first.cursor).run_requests) == 1
