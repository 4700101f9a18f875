"""A file-valued pipeline under Dagster: the asset's schema says ``Path``, its preview shows paths,
and a downstream asset receives paths that exist (kept in the result store)."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pyarrow as pa
from conftest import materializations

from orcapod_core import DeltaTableDatabase, DictSource, Pipeline, Stream, function_pod
from orcapod_core.databases.file_store import FILE_AREA
from orcapod_dagster import build_definitions


@function_pod(output_keys="report")
def summarize(samples: list[int], out_dir: str) -> Path:
    path = Path(out_dir) / f"report_{sum(samples)}.md"
    path.write_text(f"# {len(samples)} samples, total {sum(samples)}\n")
    return path


def test_a_file_valued_node_materializes_with_paths(tmp_path, instance):
    work = tmp_path / "work"
    work.mkdir()
    source = DictSource(
        {"station": ["a", "b"], "samples": [[1, 2], [3]], "out_dir": [str(work)] * 2}, tag_columns="station", label="stations"
    )
    with Pipeline("files", DeltaTableDatabase(tmp_path / "store")) as pipeline:
        summarize.pod(source, label="reports")
    defs = build_definitions(pipeline)
    mats = materializations(dg.materialize(list(defs.assets), instance=instance, resources=dict(defs.resources)))
    report = mats["files/reports"]
    assert report["orcapod/computed"] == 2
    columns = {c.name: c.type for c in report["dagster/column_schema"].columns}
    assert columns["report"] == "Path"
    assert report["orcapod/preview"].count("report_3.md |") == 2  # the file names, not a cut-off prefix
    served = [p["report"] for _, p in pipeline.reports]
    assert all(str(p).startswith(str(tmp_path / "store" / FILE_AREA)) for p in served)
    shutil.rmtree(work)  # the function's own copies are gone: the store's remain

    @dg.asset(ins={"reports": dg.AssetIn(key=["files", "reports"])})
    def read_reports(reports: pa.Table) -> None:
        texts = sorted(Path(r["path"]).read_text() for r in reports.column("report").to_pylist())
        assert texts == ["# 1 samples, total 3\n", "# 2 samples, total 3\n"]

    @dg.asset(ins={"reports": dg.AssetIn(key=["files", "reports"])})
    def iterate_reports(reports: Stream) -> None:
        assert sorted(p["report"].read_text()[2] for _, p in reports) == ["1", "2"]

    result = dg.materialize(
        [*defs.assets, read_reports, iterate_reports], instance=instance, resources=dict(defs.resources), selection=[read_reports, iterate_reports]
    )
    assert result.success
