"""The store side of Dagster pinning: snapshots of node outputs, pinned runs, and plain Dagster
assets feeding an orcapod pipeline through tables published into the store."""

from __future__ import annotations

import dagster as dg
import polars as pl
import pyarrow as pa
import pytest
from conftest import load_module, materializations

from orcapod_core.databases import DeltaTableDatabase, InMemoryArrowDatabase
from orcapod_core.errors import InputValidationError, NotMaterializedError, SchemaMismatchError
from orcapod_core import function_pod
from orcapod_core.pipeline import Pipeline
from orcapod_core.pipeline.snapshots import data_version, load_snapshot, pinned_outputs, save_snapshot
from orcapod_core.sources import DictSource
from orcapod_dagster import OrcapodIOManager, build_definitions, orcapod_assets


@function_pod(output_keys="y")
def square(x: int) -> int:
    return x * x


def build(db, xs):
    source = DictSource({"id": list(range(len(xs))), "x": xs}, tag_columns=["id"], source_id="xs", schema={"id": int, "x": int})
    with Pipeline("snap", pipeline_database=db) as p:
        square.pod(source, label="squared").batch(label="batched")
    return p


def test_snapshots_round_trip_exactly_and_dedupe(tmp_path):
    db = DeltaTableDatabase(tmp_path / "store")
    p = build(db, [3, 1, 2])
    p.run()
    snap = save_snapshot(p.squared)
    assert snap.stored and snap.row_count == 3 and snap.manifest_version is not None
    assert save_snapshot(p.squared) == snap.__class__(**{**snap.__dict__, "stored": False})  # unchanged: nothing written
    assert data_version(p.squared.as_table(all_info=False)) != snap.data_version  # all columns count
    back = load_snapshot(DeltaTableDatabase(tmp_path / "store"), snap.path, snap.data_version)
    assert back._table().equals(p.squared._table()) and back.layout == p.squared.layout  # order and exact schema
    batched = save_snapshot(p.batched)
    assert load_snapshot(db, batched.path, batched.data_version)._table().equals(p.batched._table())

    empty = build(db, [])
    empty.run()
    e = save_snapshot(empty.squared)
    assert e.row_count == 0 and load_snapshot(db, e.path, e.data_version)._table().num_rows == 0
    with pytest.raises(NotMaterializedError, match="not in the store"):
        load_snapshot(db, snap.path, "0" * 32)


def test_pinned_outputs_run_only_named_nodes_and_restore(tmp_path):
    db = InMemoryArrowDatabase()
    p = build(db, [1, 2, 3])
    p.run()
    old = save_snapshot(p.squared)
    q = build(db, [5, 6])  # new data upstream
    pinned = load_snapshot(db, old.path, old.data_version, layout=q.squared.layout)
    with pinned_outputs({q.squared: pinned}):
        result = q.run(nodes=["batched"], include_upstream=False)
        assert list(result.stats) == ["batched"]  # nothing upstream ran
        assert q.batched.as_table()["y"].to_pylist() == [[1, 4, 9]]
    assert "_cached_table" not in q.squared.__dict__  # served what it served before
    with pytest.raises(SchemaMismatchError, match="'squared'"):
        with pinned_outputs({q.squared: pa.table({"id": [1]})}):
            pass


def test_in_memory_pipeline_runs_in_process_without_io_manager(instance):
    p = build(InMemoryArrowDatabase(), [1, 2])
    mats = materializations(dg.materialize(orcapod_assets(p), instance=instance))
    assert mats["snap/squared"]["orcapod/computed"] == 2 and "dagster/uri" not in mats["snap/squared"]
    assert "io_manager" not in build_definitions(p).resources
    with pytest.raises(InputValidationError, match="granularity='node'.*Delta Lake store"):
        build_definitions(p, granularity="node")


def test_checks_can_run_alone_on_the_stored_state(make_project, instance):
    mod = make_project()
    assets = list(mod.defs.assets)
    dg.materialize(assets, instance=instance, resources=dict(mod.defs.resources))
    result = dg.materialize(
        assets,
        instance=instance,
        resources=dict(mod.defs.resources),
        selection=dg.AssetSelection.checks_for_assets(dg.AssetKey(["demo", "described"])),
    )
    assert not materializations(result)
    assert {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()} == {
        "no_failed_packets": True,
        "schema_matches": True,
    }


PUBLISHED = '''
import dagster as dg
from orcapod_core.databases import DeltaTableDatabase
from orcapod_core.pipeline import Pipeline
from orcapod_core.sources import DeltaTableSource
from orcapod_core import function_pod
from orcapod_dagster import build_definitions, OrcapodIOManager

STORE = {store!r}


@function_pod(output_keys="celsius")
def to_celsius(fahrenheit: float) -> float:
    return round((fahrenheit - 32) / 1.8, 2)


@dg.asset(key=["lab", "raw_readings"])
def raw_readings():
    import polars as pl
    return pl.DataFrame({{"sample": ["a", "b"], "fahrenheit": [212.0, 32.0]}})


raw = OrcapodIOManager(store_uri=STORE).table_uri(dg.AssetKey(["lab", "raw_readings"]))
with Pipeline("temps", pipeline_database=DeltaTableDatabase(STORE)) as pipeline:
    to_celsius.pod(DeltaTableSource(raw, tag_columns=["sample"], label="readings"), label="celsius")
defs = build_definitions(pipeline, extra_assets=[raw_readings])
'''


def test_plain_asset_publishes_a_table_an_orcapod_source_reads(tmp_path, instance):
    store = str(tmp_path / "store")
    io_manager = OrcapodIOManager(store_uri=store)

    @dg.asset(key=["lab", "raw_readings"])
    def raw_readings() -> pl.DataFrame:
        return pl.DataFrame({"sample": ["a", "b"], "fahrenheit": [212.0, 32.0]})

    published = materializations(dg.materialize([raw_readings], instance=instance, resources={"io_manager": io_manager}))
    assert published["lab/raw_readings"]["orcapod/delta_version"] == 0

    path = tmp_path / "temps.py"
    path.write_text(PUBLISHED.format(store=store))
    mod = load_module(path, "temps_pipeline")
    spec = next(s for a in mod.defs.assets for s in a.specs if s.key == dg.AssetKey(["temps", "readings"]))
    assert {d.asset_key for d in spec.deps} == {dg.AssetKey(["lab", "raw_readings"])}  # the Dagster -> orcapod edge
    mats = materializations(
        dg.materialize(list(mod.defs.assets), instance=instance, resources=dict(mod.defs.resources), selection=["temps/readings", "temps/celsius"])
    )
    assert mats["temps/celsius"]["orcapod/computed"] == 2

    @dg.asset(ins={"celsius": dg.AssetIn(key=["temps", "celsius"])})
    def check_celsius(celsius: pa.Table) -> None:
        assert sorted(celsius["celsius"].to_pylist()) == [0.0, 100.0]

    dg.materialize([*mod.defs.assets, check_celsius], instance=instance, resources=dict(mod.defs.resources), selection=[check_celsius])
