"""Pictures of a compiled pipeline: Mermaid, Graphviz DOT, plain text, and the HTML a notebook shows.

Every picture is built from the compiled graph alone (``pipeline.nodes`` and each node's
``upstream_nodes``): nothing is read or computed. Output is deterministic — nodes in the
pipeline's topological order, edges in each node's input order — so a picture can be
committed and diffed. Each node shows its label, its kind and what it is: the source class
(``CSVSource``), the operator class (``Join``) or the function's name.

>>> from orcapod_core import DictSource, InMemoryArrowDatabase, Pipeline, function_pod
>>> @function_pod(output_keys="y")
... def double(x: int) -> int:
...     return 2 * x
>>> with Pipeline("demo", pipeline_database=InMemoryArrowDatabase()) as p:
...     _ = double.pod(DictSource({"id": [1], "x": [2]}, tag_columns="id", label="numbers"), label="doubled")
>>> print(p.to_mermaid())
flowchart LR
    n0[("numbers<br/>source: DictSource")]
    n1["doubled<br/>function: double"]
    n0 --> n1
"""

from __future__ import annotations

import html
import shutil
import subprocess
from collections.abc import Iterable
from typing import Any

__all__ = ["node_detail", "to_mermaid", "to_dot", "to_text", "graph_html"]

#: Mermaid node shapes by kind: a cylinder for data coming in, a stadium for structural
#: operators, a box for functions (where the computation is).
_MERMAID_SHAPES = {"source": ('[("', '")]'), "operator": ('(["', '"])'), "function": ('["', '"]')}
_DOT_SHAPES = {"source": "cylinder", "operator": "box, style=rounded", "function": "box"}


def node_detail(node: Any) -> str:
    """What a node is, in a few words: ``source: CSVSource``, ``operator: Join``,
    ``function: calibrate_oxygen``.

    >>> from orcapod_core import DictSource, InMemoryArrowDatabase, Pipeline
    >>> with Pipeline("d", pipeline_database=InMemoryArrowDatabase()) as p:
    ...     _ = DictSource({"id": [1]}, tag_columns="id", label="ids").batch(label="all")
    >>> node_detail(p.all)
    'operator: Batch'
    """
    kind = getattr(node, "kind", "node")
    if kind == "function":
        name = getattr(getattr(node, "packet_function", None), "function_name", None)
        return f"function: {name}" if name else "function"
    producer = getattr(node, "producer", None)
    return f"{kind}: {type(producer).__name__}" if producer is not None else kind


def _edges(nodes: Iterable[Any]) -> list[tuple[str, str]]:
    """``(upstream label, label)`` pairs in node order then input order, each pair once (a node
    reading the same input twice, e.g. a self-join, is still one arrow)."""
    edges: dict[tuple[str, str], None] = {}
    for node in nodes:
        for up in node.upstream_nodes:
            edges[(up.label, node.label)] = None
    return list(edges)


def _mermaid_text(text: str) -> str:
    # Inside a quoted Mermaid label, quotes and markup characters are written as entity codes.
    return "".join({'"': "#quot;", "<": "#lt;", ">": "#gt;", "#": "#35;"}.get(c, c) for c in text)


def to_mermaid(pipeline: Any, direction: str = "LR") -> str:
    """The pipeline's graph as a Mermaid flowchart (``direction``: ``LR``, ``TD``, ``RL``, ``BT``).
    Node ids are ``n0, n1, ...`` in topological order; the label is shown inside each shape.

    >>> print(pipeline.to_mermaid())                     # doctest: +SKIP
    """
    if direction not in ("LR", "TD", "TB", "RL", "BT"):
        raise ValueError(f"direction must be one of LR, TD, TB, RL, BT, got {direction!r}")
    nodes = list(pipeline.nodes.values())
    ids = {node.label: f"n{i}" for i, node in enumerate(nodes)}
    lines = [f"flowchart {direction}"]
    for node in nodes:
        open_, close = _MERMAID_SHAPES.get(node.kind, ('["', '"]'))
        lines.append(f"    {ids[node.label]}{open_}{_mermaid_text(node.label)}<br/>{_mermaid_text(node_detail(node))}{close}")
    lines.extend(f"    {ids[a]} --> {ids[b]}" for a, b in _edges(nodes))
    return "\n".join(lines)


def _dot_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(pipeline: Any, direction: str = "LR") -> str:
    """The pipeline's graph in Graphviz DOT (render with ``dot -Tsvg``); nodes are named by
    their labels.

    >>> print(pipeline.to_dot())                         # doctest: +SKIP
    """
    if direction not in ("LR", "TB", "RL", "BT"):
        raise ValueError(f"direction must be one of LR, TB, RL, BT, got {direction!r}")
    nodes = list(pipeline.nodes.values())
    lines = [
        f"digraph {_dot_string('/'.join(pipeline.name))} {{",
        f"    rankdir={direction};",
        '    node [fontname="Helvetica", fontsize=11];',
    ]
    for node in nodes:
        shape = _DOT_SHAPES.get(node.kind, "box")
        label = _dot_string(f"{node.label}\n{node_detail(node)}").replace("\n", "\\n")
        lines.append(f"    {_dot_string(node.label)} [label={label}, shape={shape}];")
    lines.extend(f"    {_dot_string(a)} -> {_dot_string(b)};" for a, b in _edges(nodes))
    lines.append("}")
    return "\n".join(lines)


def to_text(pipeline: Any) -> str:
    """The graph as a node list, one line per node in topological order with what it reads::

        water_quality: 13 nodes
          samples          source: CSVSource
          readings         operator: Join                 <- samples, calibration
    """
    nodes = list(pipeline.nodes.values())
    width = max((len(n.label) for n in nodes), default=0)
    details = {n.label: node_detail(n) for n in nodes}
    detail_width = max((len(d) for d in details.values()), default=0)
    lines = [f"{'/'.join(pipeline.name)}: {len(nodes)} node{'' if len(nodes) == 1 else 's'}"]
    for node in nodes:
        inputs = list(dict.fromkeys(u.label for u in node.upstream_nodes))
        line = f"  {node.label.ljust(width)}  {details[node.label].ljust(detail_width)}"
        lines.append((f"{line}  <- {', '.join(inputs)}" if inputs else line).rstrip())
    return "\n".join(lines)


def _svg(dot_source: str) -> str | None:
    """The graph as SVG through Graphviz's ``dot`` executable, ``None`` when it is not installed
    (or fails): pictures never require Graphviz."""
    dot = shutil.which("dot")
    if dot is None:
        return None
    try:
        done = subprocess.run([dot, "-Tsvg"], input=dot_source, capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    svg = done.stdout
    start = svg.find("<svg")  # drop the XML prolog and doctype: the SVG goes inside an HTML page
    return svg[start:] if start >= 0 else None


# The Mermaid library renders ``<pre class="mermaid">`` blocks in the browser. Without script
# (a viewer that strips it, no network) the block still shows the readable Mermaid source.
_MERMAID_SCRIPT = """<script type="module">
import mermaid from "https://cdn.jsdelivr.net/npm/mermaid@11/dist/mermaid.esm.min.mjs";
mermaid.initialize({startOnLoad: false});
mermaid.run({nodes: document.querySelectorAll("pre.orcapod-mermaid:not([data-processed])")});
</script>"""


def graph_html(pipeline: Any, *, use_graphviz: bool = True) -> str:
    """What a notebook shows for a pipeline: a title line, then the graph as SVG when
    Graphviz's ``dot`` is installed (and ``use_graphviz``), else as a Mermaid block that the
    Mermaid script renders in the browser (its text is the diagram's source when it cannot).

    >>> graph_html(pipeline, use_graphviz=False)[:40]    # doctest: +SKIP
    """
    n = len(pipeline.nodes)
    title = f"<p><b>Pipeline {html.escape('/'.join(pipeline.name))}</b>: {n} node{'' if n == 1 else 's'}</p>"
    svg = _svg(to_dot(pipeline)) if use_graphviz else None
    if svg is not None:
        return f"<div>{title}{svg}</div>"
    return f'<div>{title}<pre class="mermaid orcapod-mermaid">{html.escape(to_mermaid(pipeline))}</pre>{_MERMAID_SCRIPT}</div>'
