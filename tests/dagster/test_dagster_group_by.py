"""A pipeline with a GroupBy node materialized on a real Dagster instance: the group node is an
asset with a readable description, its rows are one per group, and a second run is cached."""

from __future__ import annotations

import dagster as dg
import polars as pl
from conftest import READINGS, materializations, write_readings

from orcapod_core import function_pod
from orcapod_core.databases import DeltaTableDatabase
from orcapod_core.pipeline import Pipeline
from orcapod_core.sources import CSVSource
from orcapod_dagster import build_definitions

PER_SITE = dg.AssetKey(["grouped", "per_site"])


@function_pod(output_keys="total")
def site_total(x: list[int]) -> int:
    """The sum of a site's readings."""
    return sum(x)


def build(tmp_path) -> Pipeline:
    csv = write_readings(tmp_path / "readings.csv", READINGS)
    with Pipeline("grouped", pipeline_database=DeltaTableDatabase(str(tmp_path / "store"))) as pipeline:
        readings = CSVSource(csv, tag_columns=["site", "day"], source_id="readings", label="readings")
        per_site = readings.group_by("site", label="per_site")
        site_total.pod(per_site, label="totals")
    return pipeline


def test_materialize_a_group_by_pipeline_twice(tmp_path, instance):
    defs = build_definitions(build(tmp_path))
    specs = {spec.key: spec for a in defs.assets for spec in a.specs}
    assert specs[PER_SITE].description == (
        "Rows of `readings` grouped by [`site`]: one row per distinct value, in sorted order (other columns become lists)."
    )

    @dg.asset(ins={"totals": dg.AssetIn(key=["grouped", "totals"])})
    def report(totals: pl.DataFrame) -> None:
        assert totals.to_dicts() == [
            {"site": "east", "day": [1, 3], "total": 9},
            {"site": "north", "day": [1, 2], "total": 3},
            {"site": "south", "day": [1], "total": 3},
        ]

    first = materializations(dg.materialize([*defs.assets, report], instance=instance, resources=dict(defs.resources)))
    assert first["grouped/per_site"]["dagster/row_count"] == 3
    assert first["grouped/totals"]["orcapod/computed"] == 3
    second = materializations(dg.materialize(list(defs.assets), instance=instance, resources=dict(defs.resources)))
    assert second["grouped/totals"]["orcapod/computed"] == 0 and second["grouped/totals"]["orcapod/cached"] == 3
    assert {k: m["data_version"] for k, m in second.items()} == {k: m["data_version"] for k, m in first.items() if k != "report"}
