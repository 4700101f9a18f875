"""Pictures of a pipeline and notebook reprs: the example project's graph in Mermaid and DOT
(pinned: the text is the deliverable), the HTML a notebook shows for a pipeline and a stream."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from example_project.pipeline import build_pipeline
from orcapod_core import DictSource, InMemoryArrowDatabase, Pipeline, function_pod
from orcapod_core.pipeline.pictures import graph_html, to_text
from orcapod_core.previews import PREVIEW_ROWS, stream_html

EXAMPLE_MERMAID = """\
flowchart LR
    n0[("samples<br/>source: CSVSource")]
    n1[("calibration<br/>source: DictSource")]
    n2(["readings<br/>operator: Join"])
    n3(["oxygen_readings<br/>operator: SelectPacketColumns"])
    n4["calibrated<br/>function: calibrate_oxygen"]
    n5(["temperatures<br/>operator: SelectPacketColumns"])
    n6[("stations<br/>source: CSVSource")]
    n7(["elevations<br/>operator: SelectPacketColumns"])
    n8["saturation<br/>function: oxygen_saturation"]
    n9(["chemistry<br/>operator: SelectPacketColumns"])
    n10["scored<br/>function: water_quality_index"]
    n11(["survey<br/>operator: Batch"])
    n12["network_summary<br/>function: network_summary"]
    n13(["by_station<br/>operator: GroupBy"])
    n14["station_summary<br/>function: network_summary"]
    n15(["rivers<br/>operator: SelectPacketColumns"])
    n16["station_reports<br/>function: station_report"]
    n0 --> n2
    n1 --> n2
    n2 --> n3
    n3 --> n4
    n0 --> n5
    n6 --> n7
    n4 --> n8
    n5 --> n8
    n7 --> n8
    n0 --> n9
    n8 --> n10
    n9 --> n10
    n10 --> n11
    n11 --> n12
    n10 --> n13
    n13 --> n14
    n6 --> n15
    n14 --> n16
    n15 --> n16
"""

EXAMPLE_DOT = r"""
digraph "water_quality" {
    rankdir=LR;
    node [fontname="Helvetica", fontsize=11];
    "samples" [label="samples\nsource: CSVSource", shape=cylinder];
    "calibration" [label="calibration\nsource: DictSource", shape=cylinder];
    "readings" [label="readings\noperator: Join", shape=box, style=rounded];
    "oxygen_readings" [label="oxygen_readings\noperator: SelectPacketColumns", shape=box, style=rounded];
    "calibrated" [label="calibrated\nfunction: calibrate_oxygen", shape=box];
    "temperatures" [label="temperatures\noperator: SelectPacketColumns", shape=box, style=rounded];
    "stations" [label="stations\nsource: CSVSource", shape=cylinder];
    "elevations" [label="elevations\noperator: SelectPacketColumns", shape=box, style=rounded];
    "saturation" [label="saturation\nfunction: oxygen_saturation", shape=box];
    "chemistry" [label="chemistry\noperator: SelectPacketColumns", shape=box, style=rounded];
    "scored" [label="scored\nfunction: water_quality_index", shape=box];
    "survey" [label="survey\noperator: Batch", shape=box, style=rounded];
    "network_summary" [label="network_summary\nfunction: network_summary", shape=box];
    "by_station" [label="by_station\noperator: GroupBy", shape=box, style=rounded];
    "station_summary" [label="station_summary\nfunction: network_summary", shape=box];
    "rivers" [label="rivers\noperator: SelectPacketColumns", shape=box, style=rounded];
    "station_reports" [label="station_reports\nfunction: station_report", shape=box];
    "samples" -> "readings";
    "calibration" -> "readings";
    "readings" -> "oxygen_readings";
    "oxygen_readings" -> "calibrated";
    "samples" -> "temperatures";
    "stations" -> "elevations";
    "calibrated" -> "saturation";
    "temperatures" -> "saturation";
    "elevations" -> "saturation";
    "samples" -> "chemistry";
    "saturation" -> "scored";
    "chemistry" -> "scored";
    "scored" -> "survey";
    "survey" -> "network_summary";
    "scored" -> "by_station";
    "by_station" -> "station_summary";
    "stations" -> "rivers";
    "station_summary" -> "station_reports";
    "rivers" -> "station_reports";
}
"""


@function_pod(output_keys="y")
def double(x: int) -> int:
    return 2 * x


@pytest.fixture
def example(tmp_path: Path) -> Pipeline:
    return build_pipeline(tmp_path / "store")


def test_example_project_mermaid_is_pinned(example: Pipeline):
    assert example.to_mermaid() == EXAMPLE_MERMAID.rstrip("\n")
    # Deterministic: a second build (new objects, same graph) draws the same picture.
    assert build_pipeline(example.pipeline_database.base_uri).to_mermaid() == example.to_mermaid()
    assert example.to_mermaid("TD").splitlines()[0] == "flowchart TD"


def test_example_project_dot_is_pinned(example: Pipeline):
    assert example.to_dot() == EXAMPLE_DOT.strip("\n")


def test_every_compiled_edge_is_drawn_once(example: Pipeline):
    ids = {label: f"n{i}" for i, label in enumerate(example.nodes)}
    drawn = set(re.findall(r"^    (n\d+) --> (n\d+)$", example.to_mermaid(), re.M))
    compiled = {(ids[up.label], ids[node.label]) for node in example for up in node.upstream_nodes}
    assert drawn == compiled and len(re.findall(" --> ", example.to_mermaid())) == len(compiled)
    assert len(re.findall(" -> ", example.to_dot())) == len(compiled)


def test_bad_direction_is_refused(example: Pipeline):
    with pytest.raises(ValueError, match="direction must be one of"):
        example.to_mermaid("sideways")
    with pytest.raises(ValueError, match="direction must be one of"):
        example.to_dot("TD")  # DOT says TB


def test_text_lists_nodes_with_their_inputs():
    numbers = DictSource({"id": [1, 2], "x": [1, 2]}, tag_columns="id", source_id="n", label="numbers")
    with Pipeline("demo", pipeline_database=InMemoryArrowDatabase()) as p:
        doubled = double.pod(numbers, label="doubled")
        doubled.join(numbers.select_packet_columns([], label="ids"), label="both")
    assert to_text(p).splitlines() == [
        "demo: 4 nodes",
        "  numbers  source: DictSource",
        "  doubled  function: double               <- numbers",
        "  ids      operator: SelectPacketColumns  <- numbers",
        "  both     operator: Join                 <- doubled, ids",
    ]


def test_pipeline_html_is_mermaid_without_graphviz(example: Pipeline, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PATH", "")  # no `dot` executable to be found
    html = example._repr_html_()
    assert "<b>Pipeline water_quality</b>: 17 nodes" in html
    block = re.search(r'<pre class="mermaid orcapod-mermaid">(.*?)</pre>', html, re.S).group(1)
    assert block == example.to_mermaid().replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;").replace("'", "&#x27;")
    assert "<br/>" not in block  # escaped: the browser's text content is the Mermaid source
    assert graph_html(example, use_graphviz=False) == html


def test_pipeline_html_is_svg_when_graphviz_is_installed(example: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # A stand-in `dot` that records the DOT it is given and answers with an SVG document.
    fake = tmp_path / "bin" / "dot"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        f"cat > {tmp_path / 'given.dot'}\n"
        "printf '<?xml version=\"1.0\"?>\\n<!DOCTYPE svg>\\n<svg><g>drawn</g></svg>\\n'\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    html = example._repr_html_()
    assert (tmp_path / "given.dot").read_text() == example.to_dot()
    assert html == "<div><p><b>Pipeline water_quality</b>: 17 nodes</p><svg><g>drawn</g></svg>\n</div>"
    assert "mermaid" not in graph_html(example) and "mermaid" in graph_html(example, use_graphviz=False)


def test_stream_preview_escapes_hides_hidden_columns_and_caps_rows():
    n = 40
    source = DictSource(
        {"id": list(range(n)), "note": [f"<script>alert({i})</script> & co" for i in range(n)]},
        tag_columns="id",
        source_id="notes",
        label="notes",
    )
    html = source._repr_html_()
    assert html.startswith("<div><p><b>DictSource &#x27;notes&#x27;</b>: 40 rows × 2 columns; tags: id</p>")
    assert "<script>" not in html and "&lt;script&gt;alert(0)&lt;/script&gt; &amp; co" in html
    assert "_tag_" not in html and "_source_" not in html  # hidden provenance stays hidden
    body = html.split("<tbody>", 1)[1]
    shown = re.findall(r"<tr><td>(\d+|&hellip;)</td>", body)
    assert len([r for r in shown if r != "&hellip;"]) == PREVIEW_ROWS and "&hellip;" in shown
    assert shown[0] == "0" and shown[-1] == str(n - 1)  # first and last rows around the ellipsis


def test_small_stream_shows_every_row_and_a_node_previews_too():
    source = DictSource({"id": [1, 2], "x": [3, 4]}, tag_columns="id", source_id="small", label="small")
    html = stream_html(source)
    assert "2 rows × 2 columns" in html and "&hellip;" not in html
    with Pipeline("demo", pipeline_database=InMemoryArrowDatabase()) as p:
        double.pod(source, label="doubled")
    p.run()
    node_html = p.doubled._repr_html_()
    assert node_html.startswith("<div><p><b>FunctionNode &#x27;doubled&#x27;</b>: 2 rows × 2 columns; tags: id</p>")
    assert re.findall(r"<tr><td>\d+</td><td>(\d+)</td></tr>", node_html) == ["6", "8"]


def test_a_stream_that_cannot_compute_shows_the_error():
    @function_pod(output_keys="y")
    def refuse(x: int) -> int:
        raise ValueError("x <= 0 is not allowed")

    html = refuse.pod(DictSource({"id": [1], "x": [1]}, tag_columns="id", source_id="one"))._repr_html_()
    assert html == "<div><p><b>FunctionPodStream</b>: rows could not be computed</p><pre>ValueError: x &lt;= 0 is not allowed</pre></div>"
