"""What an orcapod asset step does: run the selected nodes, snapshot them, report to Dagster.

1. The upstream nodes the selected nodes read but do not run are **pinned** to the rows of
   their latest materialization (a missing one raises
   :class:`~orcapod_core.errors.NotMaterializedError` naming the asset).
2. The selected nodes run together with the orchestrator — nothing upstream of them is
   recomputed — with ``error_policy="continue"``: a failing packet never loses the others.
3. Each node's output is saved as a snapshot (its data version = a hash over its rows) and
   reported in topological order as a ``MaterializeResult`` with counts, hashes, the pinning
   snapshot and a preview, plus the node's check results.
4. ``on_packet_error="raise"`` withholds nodes with failed packets (and what is downstream of
   them) and fails the step; ``"warn"`` materializes them and the ``no_failed_packets`` check
   reports the failures. Either way a rerun computes only the missing packets.

In a partitioned run (``OrcapodTranslatorSettings.partition_by``) the selected source nodes
carrying the partition column are pinned to the rows of the run's partition keys, and the
upstream pins are each partition's latest materialization (see
:mod:`orcapod_dagster.partitions`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pyarrow as pa

from orcapod_core.errors import InvalidLabelError
from orcapod_core.pipeline import Node, NodeStats, Pipeline
from orcapod_core.pipeline import pinned_outputs, save_snapshot
from orcapod_core.streams import Stream
from orcapod_dagster.checks import evaluate_checks
from orcapod_dagster.metadata import materialization_metadata
from orcapod_dagster.observer import DagsterLogObserver
from orcapod_dagster.partitions import HIDDEN_COLUMNS, partitioned_sources, restrict
from orcapod_dagster.store import PARTITION_BY_KEY, latest_output, latest_partition_outputs, read_partitions
from orcapod_dagster.translator import OrcapodTranslator

__all__ = ["PipelineAssets", "ON_PACKET_ERROR"]

ON_PACKET_ERROR = ("raise", "warn")


@dataclass
class PipelineAssets:
    """A pipeline as seen by its Dagster assets: node keys and how their steps run."""

    pipeline: Pipeline
    translator: OrcapodTranslator
    on_packet_error: str = "raise"
    orchestrator: Any = None
    function_executor: Any = None

    def __post_init__(self) -> None:
        if self.on_packet_error not in ON_PACKET_ERROR:
            raise ValueError(f"on_packet_error must be one of {ON_PACKET_ERROR}, got {self.on_packet_error!r}")
        self.keys: dict[str, dg.AssetKey] = {}
        owner: dict[dg.AssetKey, str] = {}
        for label, node in self.pipeline.nodes.items():
            key = self.translator.get_asset_key(node)
            if key in owner:
                raise InvalidLabelError(
                    f"nodes {owner[key]!r} and {label!r} of pipeline {'/'.join(self.pipeline.name)!r} both map to "
                    f"asset key {key.to_user_string()!r}; give one of them another label"
                )
            owner[key] = label
            self.keys[label] = key
        self.labels: dict[dg.AssetKey, str] = owner
        if self.partition_by is not None:
            partitioned_sources(self.pipeline, self.partition_by)  # fails early, naming the column

    @property
    def partition_by(self) -> str | None:
        """The source tag column whose values are the partition keys (``None``: unpartitioned)."""
        return self.translator.settings.partition_by

    # -- selection ---------------------------------------------------------------------
    def selected_labels(self, context: dg.AssetExecutionContext) -> list[str]:
        """The selected nodes, in topological order."""
        selected = {self.labels[k] for k in context.selected_asset_keys if k in self.labels}
        return [label for label in self.pipeline.nodes if label in selected]

    def frontier(self, labels: Sequence[str]) -> list[Node]:
        """Upstream nodes read by ``labels`` but not among them."""
        chosen = set(labels)
        seen: dict[str, Node] = {}
        for label in labels:
            for up in self.pipeline.nodes[label].upstream_nodes:
                if up.label not in chosen:
                    seen.setdefault(up.label, up)
        return [self.pipeline.nodes[label] for label in self.pipeline.nodes if label in seen]

    def partition_keys(self, context: dg.AssetExecutionContext) -> list[str] | None:
        """The partition keys of the run (``None`` when the run is not partitioned)."""
        if self.partition_by is None or not (context.has_partition_key or context.has_partition_key_range):
            return None
        return list(context.partition_keys)

    def pins_from_store(self, context: dg.AssetExecutionContext, labels: Sequence[str]) -> dict[Node, Stream]:
        """The frontier of ``labels`` read as of each node's latest materialization (in a
        partitioned run: of each of the run's partitions)."""
        consumer = ", ".join(self.keys[label].to_user_string() for label in labels)
        partitions = self.partition_keys(context)
        pins: dict[Node, Stream] = {}
        for node in self.frontier(labels):
            key = self.keys[node.label]
            if partitions is None:
                output = latest_output(context.instance, key, consumer=consumer)
                pins[node] = output.read_snapshot(node.database, layout=node.layout)
            else:
                outputs = latest_partition_outputs(context.instance, key, partitions, consumer=consumer)
                pins[node] = read_partitions(outputs, node.database, layout=node.layout)
        return pins

    def partition_pins(self, context: dg.AssetExecutionContext, labels: Sequence[str]) -> dict[Node, pa.Table]:
        """In a partitioned run, the selected source nodes carrying the partition column pinned
        to the rows of the run's partition keys."""
        partitions, column = self.partition_keys(context), self.partition_by
        if partitions is None or column is None:
            return {}
        nodes = self.pipeline.nodes
        pins = {}
        for label in labels:
            node = nodes[label]
            if node.kind == "source" and column in node.tag_columns:
                node.refresh()  # as a run would: the source's current content
                pins[node] = restrict(node.as_table(columns=HIDDEN_COLUMNS), column, partitions)
        if pins:
            shown = partitions if len(partitions) <= 10 else [*partitions[:10], "..."]
            context.log.info(f"orcapod: partition(s) {shown}: reading the rows whose {column!r} is one of them")
        return pins

    # -- the step ----------------------------------------------------------------------
    def materialize(
        self, context: dg.AssetExecutionContext, labels: Sequence[str], pins: Mapping[Node, Stream]
    ) -> Iterator[dg.MaterializeResult]:
        """Run ``labels`` on the pinned upstream rows and yield their results in topological order."""
        # Checks selected without their asset are evaluated against what is stored.
        yield from self.stored_checks(context, skip=labels)
        if not labels:
            return
        nodes = self.pipeline.nodes
        selected_checks = set(context.selected_asset_check_keys)
        blocking = self.translator.settings.blocking_failed_packets
        partitioned = {PARTITION_BY_KEY: dg.MetadataValue.text(self.partition_by)} if self.partition_keys(context) else {}
        reports = []
        # Snapshots are taken inside the block: partition-pinned source nodes serve the rows the run used.
        with pinned_outputs({**pins, **self.partition_pins(context, labels)}):
            result = self.pipeline.run(
                orchestrator=self.orchestrator,
                executor=self.executors(labels),
                observer=DagsterLogObserver(context.log),
                error_policy="continue",
                nodes=list(labels),
                include_upstream=False,
            )
            failed = [label for label in labels if label in result.stats and result.stats[label].failed]
            withheld = self._withheld(labels, failed)
            for label in labels:
                if label in withheld:
                    continue
                node, key, stats = nodes[label], self.keys[label], result.stats.get(label)
                snapshot = save_snapshot(node)
                checks = evaluate_checks(node, key, stats, selected_checks, blocking) if node.kind == "function" else []  # type: ignore[arg-type]
                reports.append(
                    dg.MaterializeResult(
                        asset_key=key,
                        metadata={**materialization_metadata(node, stats, snapshot), **partitioned},
                        data_version=dg.DataVersion(snapshot.data_version),
                        check_results=checks,
                    )
                )
        yield from reports
        if failed and self.on_packet_error == "raise":
            lines = []
            for label in failed:
                stats = result.stats[label]
                example = f", e.g. {stats.errors[0]}" if stats.errors else ""
                lines.append(f"{self.keys[label].to_user_string()}: {stats.failed} failed packet(s){example}")
            raise dg.Failure(
                description="orcapod: packets failed (results of the other packets are stored; a rerun computes only the "
                "missing ones):\n" + "\n".join(lines),
                metadata={"orcapod/failed_assets": [self.keys[label].to_user_string() for label in failed]},
            )

    def executors(self, labels: Sequence[str]) -> dict[str, Any]:
        """Per selected function node, the executor its packets run on: the translator's choice
        (:meth:`~orcapod_dagster.OrcapodTranslator.get_executor`), else ``function_executor``;
        nodes without either keep their function's own executor."""
        chosen = {}
        for label in labels:
            node = self.pipeline.nodes[label]
            if node.kind == "function":
                executor = self.translator.get_executor(node) or self.function_executor
                if executor is not None:
                    chosen[label] = executor
        return chosen

    def stored_checks(self, context: dg.AssetExecutionContext, skip: Sequence[str] = ()) -> Iterator[dg.AssetCheckResult]:
        """The selected checks of assets not in ``skip``, evaluated on each asset's latest materialization."""
        blocking = self.translator.settings.blocking_failed_packets
        for check_key in context.selected_asset_check_keys:
            label = self.labels.get(check_key.asset_key)
            if label is None or label in skip or self.pipeline.nodes[label].kind != "function":
                continue
            event = context.instance.get_latest_materialization_event(check_key.asset_key)
            if event is None or event.asset_materialization is None:
                continue  # nothing materialized yet: nothing to check
            failed = event.asset_materialization.metadata.get("orcapod/failed")
            stats = NodeStats(label, "function", failed=int(failed.value) if failed is not None else 0)
            node = self.pipeline.nodes[label]
            yield from evaluate_checks(node, check_key.asset_key, stats, {check_key}, blocking)  # type: ignore[arg-type]

    def _withheld(self, labels: Sequence[str], failed: Sequence[str]) -> set[str]:
        """Nodes not to report: with "raise", failed nodes and everything downstream of them;
        with a blocking check, what is downstream of failed nodes."""
        if not failed or (self.on_packet_error == "warn" and not self.translator.settings.blocking_failed_packets):
            return set()
        tainted = set(failed)
        for label in labels:
            if any(up.label in tainted for up in self.pipeline.nodes[label].upstream_nodes):
                tainted.add(label)
        return tainted if self.on_packet_error == "raise" else tainted - set(failed)
