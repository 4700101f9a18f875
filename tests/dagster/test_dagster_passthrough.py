"""A passthrough function node as a Dagster asset: it materializes, its column schema (and
column lineage) shows the kept input columns beside the outputs, a downstream Dagster asset reads them through the IO
manager, and an edit of an unread column recomputes nothing but gives a new data version."""

from __future__ import annotations

import dagster as dg
import polars as pl
from conftest import materializations

from orcapod_core import DeltaTableDatabase, Pipeline, function_pod
from orcapod_core.sources import CSVSource
from orcapod_dagster import build_definitions

SCALED = dg.AssetKey(["lab", "scaled"])


@function_pod(output_keys="y")
def triple(x: int) -> int:
    return 3 * x


def test_a_passthrough_node_materializes_with_its_kept_columns(tmp_path):
    csv = tmp_path / "readings.csv"
    csv.write_text("id,x,note\n1,1,a\n2,2,b\n3,1,c\n")
    with Pipeline("lab", DeltaTableDatabase(tmp_path / "store")) as p:
        triple.pod(CSVSource(csv, tag_columns="id", source_id="readings"), label="scaled", passthrough=True)

    seen: list[list[dict]] = []

    @dg.asset(deps=[SCALED], ins={"scaled": dg.AssetIn(key=SCALED)})
    def report(scaled: pl.DataFrame) -> None:
        seen.append(scaled.sort("id").to_dicts())

    defs = build_definitions(p, extra_assets=[report])
    spec = defs.resolve_assets_def(SCALED).specs_by_key[SCALED]
    columns = [(c.name, c.type) for c in spec.metadata["dagster/column_schema"].columns]
    assert columns == [("id", "int"), ("x", "int"), ("note", "str"), ("y", "int")]
    lineage = spec.metadata["dagster/column_lineage"].deps_by_column
    source_key = dg.AssetKey(["lab", "readings"])
    assert {c: [(d.asset_key, d.column_name) for d in deps] for c, deps in lineage.items()} == {
        c: [(source_key, c)] for c in ("id", "x", "note")
    }  # the kept columns come from the source; 'y' from the function

    def run(instance):
        result = dg.materialize(list(defs.assets), instance=instance, resources=dict(defs.resources))
        return materializations(result)["lab/scaled"]

    with dg.instance_for_test() as instance:
        first = run(instance)
        assert (first["dagster/row_count"], first["orcapod/computed"], first["orcapod/cached"]) == (3, 2, 1)
        assert "| id | x | note | y |" in first["orcapod/preview"]
        assert seen[-1] == [
            {"id": 1, "x": 1, "note": "a", "y": 3}, {"id": 2, "x": 2, "note": "b", "y": 6}, {"id": 3, "x": 1, "note": "c", "y": 3},
        ]

        csv.write_text("id,x,note\n1,1,a\n2,2,edited\n3,1,c\n")  # only the unread column changes
        second = run(instance)
        assert second["orcapod/computed"] == 0 and second["orcapod/cached"] == 3
        assert second["data_version"] != first["data_version"]  # the rows it produced changed
        assert [r["note"] for r in seen[-1]] == ["a", "edited", "c"]
