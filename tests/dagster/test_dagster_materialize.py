"""Materializing orcapod assets with a real Dagster instance: memoization across runs,
metadata, pinned reads through the IO manager, subsets, code and data versions, failures."""

from __future__ import annotations

import dagster as dg
import polars as pl
import pyarrow as pa
import pytest
from conftest import materializations, write_data
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

from orcapod_core.errors import NotMaterializedError
from orcapod_core.sources import DeltaTableSource
from orcapod_core.streams import Stream
from orcapod_dagster import OrcapodTranslator, OrcapodTranslatorSettings, orcapod_assets

DESCRIBED = dg.AssetKey(["demo", "described"])


def materialize(mod, instance, *, selection=None, extra=(), assets=None, raise_on_error=True):
    assets = list(assets if assets is not None else mod.defs.assets)
    return dg.materialize(
        [*assets, *extra],
        instance=instance,
        resources=dict(mod.defs.resources),
        selection=selection,
        raise_on_error=raise_on_error,
    )


def stale_status(mod, instance, key: str) -> StaleStatus:
    resolver = get_stale_status_resolver(instance, list(mod.defs.assets))
    return resolver.get_status(dg.AssetKey(key.split("/")))


def test_materialize_twice_second_run_is_all_cached(make_project, instance):
    mod = make_project()
    first = materializations(materialize(mod, instance))
    assert list(first) == ["demo/numbers", "demo/doubled", "demo/names", "demo/joined", "demo/described"]  # topological
    d = first["demo/doubled"]
    assert (d["dagster/row_count"], d["orcapod/computed"], d["orcapod/cached"], d["orcapod/failed"]) == (3, 3, 0, 0)
    for key in ("orcapod/duration_s", "orcapod/delta_version", "orcapod/content_hash", "orcapod/pipeline_hash",
                "dagster/uri", "dagster/column_schema", "orcapod/preview", "orcapod/snapshot", "orcapod/data_version"):
        assert key in d, key
    assert d["orcapod/content_hash"] == mod.pipeline.doubled.content_hash().to_string()
    assert d["dagster/uri"].startswith(str(make_project.store))
    assert "| id | y |" in d["orcapod/preview"] and "| 3 | 6 |" in d["orcapod/preview"]
    assert first["demo/described"]["orcapod/computed"] == 3

    # Only function nodes make calls: sources and operators carry no (meaningless 0/0/0) counts.
    assert {k for k, m in first.items() if "orcapod/computed" in m} == {"demo/doubled", "demo/described"}
    assert not any("orcapod/cached" in m or "orcapod/failed" in m for k, m in first.items() if k not in ("demo/doubled", "demo/described"))

    second = materializations(materialize(mod, instance))
    assert sum(m.get("orcapod/computed", 0) for m in second.values()) == 0
    assert second["demo/described"]["orcapod/cached"] == 3
    assert {k: m["data_version"] for k, m in second.items()} == {k: m["data_version"] for k, m in first.items()}
    assert all(stale_status(mod, instance, k) == StaleStatus.FRESH for k in second)

    checks = {(e.asset_check_key.asset_key.to_user_string(), e.asset_check_key.name): e.passed
              for e in materialize(mod, instance).get_asset_check_evaluations()}
    assert checks == {(a, c): True for a in ("demo/doubled", "demo/described") for c in ("no_failed_packets", "schema_matches")}


def test_plain_assets_read_and_publish_through_the_io_manager(make_project, instance):
    mod = make_project()

    @dg.asset(ins={"described": dg.AssetIn(key=DESCRIBED)})
    def report(described: pl.DataFrame) -> pl.DataFrame:
        return described.sort("id").with_columns(pl.col("label").str.to_uppercase())

    @dg.asset(ins={"report": dg.AssetIn(key="report")})
    def report_rows(report: pl.LazyFrame) -> None:
        assert isinstance(report, pl.LazyFrame)
        assert report.collect()["label"].to_list() == ["N1=2", "N2=4", "N3=6"]

    @dg.asset(ins={"doubled": dg.AssetIn(key=["demo", "doubled"])})
    def provenance(doubled: Stream) -> None:
        table = doubled.as_table(columns={"source": True, "system_tags": True})
        assert table.num_rows == 3 and "_source_y" in table.column_names
        assert any(c.startswith("_tag_source_id") for c in table.column_names)

    result = materialize(mod, instance, extra=[report, report_rows])
    published = materializations(result)["report"]
    assert published["dagster/row_count"] == 3
    uri = mod.defs.resources["io_manager"].table_uri(dg.AssetKey("report"))
    assert published["dagster/uri"] == uri

    # An orcapod DeltaTableSource reads what the plain asset published.
    source = DeltaTableSource(uri, tag_columns=["id"])
    assert source.as_table().sort_by("id")["label"].to_pylist() == ["N1=2", "N2=4", "N3=6"]

    # The orcapod stream annotation gets the rows with their provenance.
    materialize(mod, instance, extra=[provenance], selection=[provenance])


def test_load_input_is_pinned_to_the_latest_materialization(make_project, instance):
    mod = make_project()
    materialize(mod, instance)
    before = materializations(materialize(mod, instance))

    # New rows under the same source_id: entry ids of old rows stay in the shared tables, but
    # the data version changes and consumers see exactly the new materialization.
    write_data(make_project.data, [2, 3, 4], [20, 30, 40])
    v2 = make_project("pipe_v1_new_data")
    after = materializations(materialize(v2, instance))
    assert after["demo/numbers"]["data_version"] != before["demo/numbers"]["data_version"]
    assert after["demo/doubled"]["orcapod/computed"] == 3
    records = v2.pipeline.doubled.get_pipeline_records()
    assert records.num_rows == 6  # the shared table holds both inputs' entries

    @dg.asset(ins={"doubled": dg.AssetIn(key=["demo", "doubled"])})
    def check_doubled(doubled: pa.Table) -> None:
        assert sorted(doubled["y"].to_pylist()) == [40, 60, 80]

    materialize(v2, instance, extra=[check_doubled], selection=[check_doubled])


def test_subset_reads_unselected_upstream_from_its_materialization(make_project, instance):
    mod = make_project()
    with pytest.raises(NotMaterializedError, match=r"upstream asset 'demo/joined' was never materialized"):
        materialize(mod, instance, selection=[DESCRIBED])

    materialize(mod, instance)
    # Upstream data changes after the materialization; a subset run of `described` must use the
    # materialized `joined` (ids 1-3), not recompute it from the new data.
    write_data(make_project.data, [7, 8], [7, 8])
    v2 = make_project("pipe_v1_subset")
    result = materializations(materialize(v2, instance, selection=[DESCRIBED]))
    assert list(result) == ["demo/described"]
    assert (result["demo/described"]["dagster/row_count"], result["demo/described"]["orcapod/computed"]) == (3, 0)
    assert "n1=2" in result["demo/described"]["orcapod/preview"]


def test_function_edit_changes_code_version_and_recomputes(make_project, instance):
    v1 = make_project("pipe_edit_v1")
    materialize(v1, instance)
    first = materializations(materialize(v1, instance))
    assert stale_status(v1, instance, "demo/doubled") == StaleStatus.FRESH

    v2 = make_project("pipe_edit_v2", double_body="return x * 2 + 1")
    spec = lambda mod: next(s for a in mod.defs.assets for s in a.specs if s.key == dg.AssetKey(["demo", "doubled"]))  # noqa: E731
    assert spec(v2).code_version != spec(v1).code_version
    assert stale_status(v2, instance, "demo/doubled") == StaleStatus.STALE

    second = materializations(materialize(v2, instance))
    assert second["demo/doubled"]["orcapod/computed"] == 3
    assert second["demo/doubled"]["data_version"] != first["demo/doubled"]["data_version"]
    assert second["demo/described"]["orcapod/computed"] == 3  # new inputs downstream
    # Docstring/comment edits are not code changes.
    v3 = make_project("pipe_edit_v3", double_body="# a comment\n    return x * 2 + 1")
    assert spec(v3).code_version == spec(v2).code_version


def test_unchanged_upstream_output_keeps_downstream_fresh(make_project, instance):
    mod = make_project()
    materialize(mod, instance)
    # Re-materialize only `numbers`: same rows, same data version -> downstream stays fresh.
    materialize(mod, instance, selection=[dg.AssetKey(["demo", "numbers"])])
    assert stale_status(mod, instance, "demo/described") == StaleStatus.FRESH
    # Changed rows: a new data version marks the direct consumer stale.
    write_data(make_project.data, [1, 2, 3], [1, 2, 5])
    v2 = make_project("pipe_changed_rows")
    materialize(v2, instance, selection=[dg.AssetKey(["demo", "numbers"])])
    assert stale_status(v2, instance, "demo/doubled") == StaleStatus.STALE


def test_packet_failures_raise_or_warn_and_rerun_computes_only_missing(make_project, instance):
    mod = make_project()
    mod.FAIL_ON.add(4)  # describe(y=4) raises
    result = materialize(mod, instance, raise_on_error=False)
    assert not result.success
    mats = materializations(result)
    assert "demo/described" not in mats and mats["demo/joined"]["dagster/row_count"] == 3
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "demo/described: 1 failed packet(s)" in failure.step_failure_data.error.message

    warn = make_project("pipe_warn", defs_kwargs='on_packet_error="warn"')
    warn.FAIL_ON.add(4)
    result = materialize(warn, instance)
    described = materializations(result)["demo/described"]
    assert (described["orcapod/failed"], described["dagster/row_count"], described["orcapod/computed"]) == (1, 2, 0)
    assert "refusing y=4" in described["orcapod/errors"]
    checks = {e.asset_check_key.name: e for e in result.get_asset_check_evaluations() if e.asset_key == DESCRIBED}
    assert not checks["no_failed_packets"].passed and checks["no_failed_packets"].severity == dg.AssetCheckSeverity.WARN

    warn.FAIL_ON.clear()  # fixed: a rerun computes only the failed packet
    described = materializations(materialize(warn, instance))["demo/described"]
    assert (described["orcapod/computed"], described["orcapod/cached"], described["orcapod/failed"]) == (1, 2, 0)


def test_blocking_check_fails_the_step(make_project, instance):
    mod = make_project()
    mod.FAIL_ON.add(2)  # double's output y=2 makes describe fail
    blocking = OrcapodTranslator(OrcapodTranslatorSettings(blocking_failed_packets=True))
    assets = orcapod_assets(mod.pipeline, translator=blocking, on_packet_error="warn")
    result = materialize(mod, instance, assets=assets, raise_on_error=False)
    assert not result.success  # the failed blocking check fails the step
    assert materializations(result)["demo/described"]["orcapod/failed"] == 1


def test_retry_policy_and_op_options_pass_through(make_project):
    mod = make_project()
    policy = dg.RetryPolicy(max_retries=2)
    [step] = orcapod_assets(mod.pipeline, retry_policy=policy, op_tags={"team": "lab"}, name="demo_step")
    assert step.op.retry_policy == policy and step.op.tags["team"] == "lab" and step.op.name == "demo_step"
    nodes = orcapod_assets(mod.pipeline, granularity="node", retry_policy=policy)
    assert len(nodes) == 5 and all(a.op.retry_policy == policy for a in nodes)
