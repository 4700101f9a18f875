"""Materialization metadata: what one materialization of a node did and produced.

>>> materialization_metadata(node, stats, snapshot)          # doctest: +SKIP
{'dagster/row_count': 72, 'orcapod/computed': 72, 'orcapod/cached': 0, ...}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from orcapod_core.pipeline import Node, NodeStats
from orcapod_core.pipeline import Snapshot, snapshot_path
from orcapod_core.value_types import to_python
from orcapod_dagster.partitions import key_strings
from orcapod_dagster.store import DELTA_VERSION_KEY, snapshot_metadata
from orcapod_dagster.translator import column_schema, node_table_uri

__all__ = ["materialization_metadata", "counts_metadata", "partition_metadata", "markdown_preview"]

PREVIEW_ROWS = 5


def _node_table_version(node: Node) -> int | None:
    path = node.record_path if node.kind == "function" else (*snapshot_path(node), "versions")
    return node.database.table_version(tuple(path))


def counts_metadata(computed: int, cached: int, failed: int) -> dict[str, Any]:
    """``orcapod/computed|cached|failed`` (function nodes only: sources and operators make no calls)."""
    return {
        "orcapod/computed": dg.MetadataValue.int(computed),
        "orcapod/cached": dg.MetadataValue.int(cached),
        "orcapod/failed": dg.MetadataValue.int(failed),
    }


def materialization_metadata(
    node: Node, stats: NodeStats | None, snapshot: Snapshot, preview_rows: int = PREVIEW_ROWS, run_id: str | None = None
) -> dict[str, Any]:
    """Row count, counts (function nodes), timing, hashes, table location and version, column
    schema, a preview and the orcapod run id (what its log records are filed under)."""
    stats = stats or NodeStats(node.label, node.kind, total=snapshot.row_count)
    version = _node_table_version(node)
    metadata: dict[str, Any] = {
        "dagster/row_count": dg.MetadataValue.int(snapshot.row_count),
        **(counts_metadata(stats.computed, stats.cached, stats.failed) if node.kind == "function" else {}),
        "orcapod/duration_s": dg.MetadataValue.float(round(float(stats.duration_s), 6)),
        DELTA_VERSION_KEY: dg.MetadataValue.int(version) if version is not None else dg.MetadataValue.null(),
        "orcapod/content_hash": dg.MetadataValue.text(node.content_hash().to_string()),
        "orcapod/pipeline_hash": dg.MetadataValue.text(node.pipeline_hash().to_string()),
        "dagster/column_schema": column_schema(node),
        "orcapod/preview": dg.MetadataValue.md(markdown_preview(node.as_table().slice(0, preview_rows))),
        **snapshot_metadata(snapshot),
    }
    uri = node_table_uri(node)
    if uri is not None:
        metadata["dagster/uri"] = dg.MetadataValue.text(uri)
    if run_id is not None:
        metadata["orcapod/run_id"] = dg.MetadataValue.text(run_id)
    if stats.errors:
        shown = "\n".join(f"- `{e[:300]}`" for e in stats.errors[:10])
        more = f"\n- … and {len(stats.errors) - 10} more" if len(stats.errors) > 10 else ""
        metadata["orcapod/errors"] = dg.MetadataValue.md(shown + more)
    return metadata


def partition_metadata(
    node: Node,
    rows: pa.Table,
    column: str,
    partitions: Sequence[str],
    computed: Mapping[str, int],
    failed: Mapping[str, int],
    preview_rows: int = PREVIEW_ROWS,
) -> dict[str, dict[str, Any]]:
    """Per partition of a range run, the metadata that differs between partitions: its row
    count, preview and (function nodes) counts — calls are attributed to the partition of the
    first row carrying the packet, so the partitions' counts add up to the run's."""
    keys = key_strings(rows, column, f"node {node.label!r}")
    out: dict[str, dict[str, Any]] = {}
    for partition in partitions:
        mine = rows.filter(pc.fill_null(pc.equal(keys, pa.scalar(partition, pa.large_string())), False))
        metadata: dict[str, Any] = {
            "dagster/row_count": dg.MetadataValue.int(mine.num_rows),
            "orcapod/preview": dg.MetadataValue.md(markdown_preview(_visible(node, mine).slice(0, preview_rows))),
        }
        if node.kind == "function":
            calls = computed.get(partition, 0)
            metadata.update(counts_metadata(calls, max(mine.num_rows - calls, 0), failed.get(partition, 0)))
        out[partition] = metadata
    return out


def _visible(node: Node, table: pa.Table) -> pa.Table:
    return table.select([c for c in (*node.tag_columns, *node.packet_columns) if c in table.column_names])


def _cell(value: Any) -> str:
    text = str(value).replace("|", "\\|").replace("\n", " ")
    if len(text) <= 60:
        return text
    # A path keeps its end (the file name); anything else its start.
    return "..." + text[-57:] if isinstance(value, PurePath) else text[:57] + "..."


def markdown_preview(table: pa.Table) -> str:
    """A markdown table of ``table``'s rows (values shortened to 60 characters).

    >>> markdown_preview(pa.table({"id": [1], "x": ["a"]}))
    '| id | x |\\n| --- | --- |\\n| 1 | a |'
    """
    names = table.column_names
    lines = ["| " + " | ".join(_cell(n) for n in names) + " |", "| " + " | ".join("---" for _ in names) + " |"]
    columns = [_preview_values(table.column(n)) for n in names]
    for row in zip(*columns):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


class _More:
    def __repr__(self) -> str:
        return "..."


def _preview_values(column: pa.ChunkedArray, items: int = 8) -> list[Any]:
    """Python values of a preview column; lists (e.g. a whole batch in one row) are cut to
    their first ``items`` items before conversion, ending in ``...`` when cut."""
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        return to_python(column)  # files as their paths, arrays as arrays
    lengths = pc.list_value_length(column).to_pylist()
    heads = to_python(pc.list_slice(column, 0, items))
    return [h if h is None or n <= items else [*h, _More()] for h, n in zip(heads, lengths)]
