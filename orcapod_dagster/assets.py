"""orcapod_assets: one Dagster asset per compiled pipeline node.

Two granularities:

* ``"pipeline"`` (default) — one subsettable multi-asset: a single step runs the selected
  nodes with the orchestrator (packet-level parallelism comes from the orcapod executor) and
  reports them in topological order; unselected upstream nodes are read from the store as of
  their latest materialization.
* ``"node"`` — one step per node (per-node ``op_tags``, pools and retries); upstream outputs
  reach each step through the IO manager (:class:`~orcapod_dagster.OrcapodIOManager`).

>>> assets = orcapod_assets(pipeline, granularity="node", retry_policy=dg.RetryPolicy(max_retries=2))  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import dagster as dg

from orcapod_core.pipeline import Pipeline
from orcapod_core.streams import Stream
from orcapod_dagster.materialize import PipelineAssets
from orcapod_dagster.partitions import with_partition_by
from orcapod_dagster.translator import OrcapodTranslator, sanitize_name

__all__ = ["orcapod_assets", "GRANULARITIES", "DEFAULT_IO_MANAGER_KEY"]

GRANULARITIES = ("pipeline", "node")
DEFAULT_IO_MANAGER_KEY = "io_manager"


def orcapod_assets(
    pipeline: Pipeline,
    *,
    translator: OrcapodTranslator | None = None,
    granularity: str = "pipeline",
    name: str | None = None,
    op_tags: Mapping[str, Any] | None = None,
    pool: str | None = None,
    retry_policy: dg.RetryPolicy | None = None,
    backfill_policy: dg.BackfillPolicy | None = None,
    on_packet_error: str = "raise",
    orchestrator: Any = None,
    function_executor: Any = None,
    partition_by: str | None = None,
    io_manager_key: str = "io_manager",
) -> list[dg.AssetsDefinition]:
    """The Dagster assets of a compiled pipeline (keys, specs and checks from ``translator``).

    ``on_packet_error``: ``"raise"`` fails the step when a packet fails (after storing every
    other result); ``"warn"`` materializes anyway and reports the failures (``orcapod/failed``,
    the ``no_failed_packets`` check). ``orchestrator`` and ``function_executor`` are passed to
    ``pipeline.run`` (e.g. ``AsyncPipelineOrchestrator()``, ``LocalProcessExecutor()``); the
    translator's ``get_executor(node)`` overrides ``function_executor`` per node, and with
    ``granularity="node"`` its ``get_op_tags(node)`` adds per-step op tags.

    ``partition_by``: a source tag column; every asset is then partitioned by its values
    (dynamic partitions, see :mod:`orcapod_dagster.partitions`) with a single-run backfill policy
    unless ``backfill_policy`` says otherwise.

    ``io_manager_key``: the resource key of the :class:`~orcapod_dagster.OrcapodIOManager` on the
    pipeline's store (default ``"io_manager"``); give each pipeline of a code location its own
    when they live on different stores, so their assets (and the plain assets reading them) load
    through the right one.

    >>> assets = orcapod_assets(pipeline)                     # doctest: +SKIP
    >>> dg.materialize(assets, resources={"io_manager": OrcapodIOManager(store_uri=".orcapod")})  # doctest: +SKIP
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    translator = with_partition_by(translator, partition_by)
    plan = PipelineAssets(pipeline, translator, on_packet_error, orchestrator, function_executor)
    nodes = pipeline.nodes
    specs = {label: translator.get_asset_spec(node) for label, node in nodes.items()}
    if io_manager_key != DEFAULT_IO_MANAGER_KEY:
        specs = {label: spec.with_io_manager_key(io_manager_key) for label, spec in specs.items()}
    checks = {label: list(translator.get_check_specs(node)) for label, node in nodes.items()}
    if backfill_policy is None and any(spec.partitions_def is not None for spec in specs.values()):
        backfill_policy = dg.BackfillPolicy.single_run()  # a range of partitions = one pipeline run
    step = {"op_tags": op_tags, "pool": pool, "retry_policy": retry_policy, "backfill_policy": backfill_policy}

    if granularity == "pipeline":

        @dg.multi_asset(
            name=name or sanitize_name("_".join(pipeline.name)),
            specs=list(specs.values()),
            check_specs=[c for cs in checks.values() for c in cs],
            can_subset=True,
            **step,
        )
        def _pipeline_step(context):  # type: ignore[no-untyped-def]  (no annotation: Dagster inspects it)
            labels = plan.selected_labels(context)
            yield from plan.materialize(context, labels, plan.pins_from_store(context, labels))

        return [_pipeline_step]

    def node_asset(label: str) -> dg.AssetsDefinition:
        inputs = {_input_name(up.label): up for up in nodes[label].upstream_nodes}

        def _node_step(context, **upstream):  # type: ignore[no-untyped-def]
            pins = {inputs[arg]: stream for arg, stream in upstream.items()}
            yield from plan.materialize(context, plan.selected_labels(context), pins)

        # One parameter per upstream node, annotated as an orcapod stream: Dagster reads the
        # signature to name the inputs, and the IO manager returns streams (hidden columns kept).
        _node_step.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter("context", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
            + [inspect.Parameter(arg, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Stream) for arg in inputs]
        )
        own = {**step, "op_tags": {**(op_tags or {}), **translator.get_op_tags(nodes[label])} or None}
        return dg.multi_asset(
            name=f"{name}__{sanitize_name(label)}" if name else "__".join(plan.keys[label].path),
            specs=[specs[label]],
            check_specs=checks[label],
            ins={arg: dg.AssetIn(key=plan.keys[up.label]) for arg, up in inputs.items()},
            **own,
        )(_node_step)

    return [node_asset(label) for label in nodes]


def _input_name(label: str) -> str:
    name = sanitize_name(label)
    return f"{name}_input" if name in ("context", "config") else name
