"""The store maintenance job of build_definitions: it compacts and vacuums the pipeline's
tables, reports what it did, and every earlier materialization still reads back exactly."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pyarrow as pa
from conftest import write_data
from deltalake import DeltaTable

from orcapod_core.databases import DeltaTableDatabase
from orcapod_core.pipeline.snapshots import load_snapshot
from orcapod_dagster import build_definitions

OP = "demo_maintain_store"
JOB = "demo_store_maintenance"


@dg.asset(key=["demo", "report"], ins={"described": dg.AssetIn(key=["demo", "described"])})
def report(described: pa.Table) -> pa.Table:
    """A plain asset publishing a table inside the pipeline's part of the store."""
    return pa.table({"n": [described.num_rows]})


def data_files(store: Path) -> set[Path]:
    return {p for p in store.rglob("*.parquet") if "_delta_log" not in p.parts}


def pinned(instance: dg.DagsterInstance, defs: dg.Definitions, store: Path) -> dict[tuple[str, int], pa.Table]:
    """The rows of every materialization so far: orcapod assets by their snapshot, the
    published table at the Delta version that materialization wrote."""
    database = DeltaTableDatabase(store)
    rows = {}
    for key in defs.resolve_asset_graph().get_all_asset_keys():
        records = instance.fetch_materializations(key, limit=100).records
        for i, record in enumerate(records):
            metadata = {k: v.value for k, v in record.asset_materialization.metadata.items()}
            if "orcapod/snapshot" in metadata:
                snapshot = load_snapshot(database, metadata["orcapod/snapshot"].split("/"), metadata["orcapod/data_version"])
                rows[(key.to_user_string(), i)] = snapshot._table()
            else:
                table = DeltaTable(metadata["dagster/uri"], version=metadata["orcapod/delta_version"])
                rows[(key.to_user_string(), i)] = table.to_pyarrow_table()
    return rows


def output_metadata(result: dg.ExecuteInProcessResult) -> dict:
    event = next(e for e in result.all_node_events if e.event_type_value == "STEP_OUTPUT")
    return {k: v.value for k, v in event.event_specific_data.metadata.items()}


def maintain(defs: dg.Definitions, instance: dg.DagsterInstance, **config) -> dict:
    result = defs.resolve_job_def(JOB).execute_in_process(instance=instance, run_config={"ops": {OP: {"config": config}}})
    assert result.success
    return output_metadata(result)


def test_maintenance_job_shrinks_the_store_and_every_pin_still_loads(make_project, instance):
    store = make_project.store
    defs = None
    for version, ids in enumerate([[1, 2, 3], [1, 2, 3, 4, 5], [2, 3, 5, 8]]):
        write_data(make_project.data, ids)
        mod = make_project(f"maintained_v{version}")
        defs = build_definitions(mod.pipeline, extra_assets=[report])
        assert dg.materialize(list(defs.assets), instance=instance, resources=dict(defs.resources)).success
    assert defs.resolve_job_def(JOB).description.startswith("Compact, then vacuum")
    before = pinned(instance, defs, store)
    assert len(before) == 3 * 6 and {k for k, _ in before} >= {"demo/described", "demo/joined", "demo/numbers", "demo/report"}
    files = data_files(store)

    dry = maintain(defs, instance, retention_hours=0, dry_run=True)
    assert dry["orcapod/vacuum/dry_run"] is True and "orcapod/compact/tables" not in dry
    assert dry["orcapod/vacuum/files_removed"] == 0 and data_files(store) == files  # nothing compacted yet: nothing to delete

    done = maintain(defs, instance, retention_hours=0)
    assert done["orcapod/compact/tables"] > 0 and done["orcapod/compact/files_after"] < done["orcapod/compact/files_before"]
    assert done["orcapod/vacuum/files_removed"] >= done["orcapod/compact/files_removed"] > 0
    assert done["orcapod/vacuum/bytes_after"] < done["orcapod/vacuum/bytes_before"]
    assert done["orcapod/vacuum/retention_hours"] == 0 and done["orcapod/vacuum/dry_run"] is False
    assert "`demo/report`" in done["orcapod/skipped"] and "MaintenanceReport(vacuum" in done["orcapod/summary"]
    assert len(data_files(store)) < len(files)

    after = pinned(instance, defs, store)
    assert after.keys() == before.keys()
    for key, rows in before.items():
        assert after[key].equals(rows), key
    # Downstream steps keep reading the latest materializations through the IO manager.
    assert dg.materialize(list(defs.assets), instance=instance, resources=dict(defs.resources), selection=[report]).success
    kept = maintain(defs, instance)  # default retention: a week
    assert kept["orcapod/vacuum/retention_hours"] == 168


def test_maintenance_job_can_be_left_out(make_project):
    mod = make_project()
    assert mod.defs.resolve_job_def(JOB).name == JOB
    without = build_definitions(mod.pipeline, store_maintenance=False)
    assert [job.name for job in without.jobs] == ["demo_job"]
