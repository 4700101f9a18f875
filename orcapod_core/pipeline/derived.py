"""DerivedSource: a node's stored output used as a fresh source (``node.as_source()``).

It breaks the upstream chain — its pipeline hash depends on its schema only, so pipelines
built on it do not change when the upstream pipeline does — while keeping every row's
provenance: system tags and source info are carried over unchanged.

>>> scores = pipeline.score.as_source()          # doctest: +SKIP
>>> with Pipeline("report", db): summarize.pod(scores)   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from orcapod_core.hashing import ContentHash, hash_object
from orcapod_core.sources.base import Source
from orcapod_core.streams import Stream, StreamLayout, shape_identity

__all__ = ["DerivedSource"]


class DerivedSource(Source):
    """The current output of a node (what is stored for its current input), as a source."""

    def __init__(self, node: Stream, label: str | None = None):
        self.node = node
        self.label = label or f"{getattr(node, 'label', 'node')}_source"
        self.source_id = f"derived:{node.content_hash().to_hex(16)}"

    def _predict_layout(self) -> StreamLayout:
        return self.node.layout

    def _compute_table(self) -> pa.Table:
        return self.node._table()

    def refresh(self) -> None:
        """Forget the rows read so far: the next read serves what the node's store holds for its
        input as it is then (the node's pipeline re-reads its sources)."""
        for key in ("_cached_table", "_cached_packet_hashes"):
            self.__dict__.pop(key, None)
        pipeline = getattr(self.node, "pipeline", None)
        if pipeline is not None and hasattr(pipeline, "refresh"):
            pipeline.refresh()
        elif hasattr(self.node, "refresh"):
            self.node.refresh()

    def _identity_hashes(self) -> tuple[ContentHash, ContentHash]:
        layout = self.layout
        shape = {
            **shape_identity(layout),
            "system_tags": list(layout.system_tag_columns),
        }
        content = hash_object({"kind": "derived_source", "of": self.node.content_hash(), **shape})
        return content, hash_object({"kind": "derived_source", **shape})

    def to_config(self) -> dict[str, Any]:
        return {"type": "DerivedSource", "node_label": getattr(self.node, "label", None)}
