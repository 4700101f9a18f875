"""``python -m example_project.summary``: what the latest materialization of each asset did.

Reads the Dagster instance at ``$DAGSTER_HOME`` (``make run`` sets it to the project's
``.dagster/``) and prints, per asset of the code location in topological order, the row count
and — for function nodes — how many rows were computed, served from the store, or failed.
Exits with status 1 when an asset has never been materialized.

>>> from example_project.definitions import defs                    # doctest: +SKIP
>>> print(format_table(summarize(defs, dg.DagsterInstance.get())))  # doctest: +SKIP
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import dagster as dg

from orcapod_core.pipeline.observers import text_table

__all__ = ["AssetSummary", "summarize", "format_table"]


@dataclass(frozen=True)
class AssetSummary:
    """The latest materialization of one asset (``run_id`` is ``None`` if there is none)."""

    key: str
    node_type: str
    rows: int | None = None
    computed: int | None = None
    cached: int | None = None
    failed: int | None = None
    seconds: float | None = None
    run_id: str | None = None


def summarize(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[AssetSummary]:
    """One :class:`AssetSummary` per asset of ``defs``, upstream first."""
    graph = defs.resolve_asset_graph()
    out = []
    for key in graph.toposorted_asset_keys:
        node_type = str(graph.get(key).metadata.get("orcapod/node_type", "asset"))
        event = instance.get_latest_materialization_event(key)
        if event is None or event.asset_materialization is None:
            out.append(AssetSummary(key.to_user_string(), node_type))
            continue
        values = {name: entry.value for name, entry in event.asset_materialization.metadata.items()}
        out.append(
            AssetSummary(
                key=key.to_user_string(),
                node_type=node_type,
                rows=values.get("dagster/row_count"),
                computed=values.get("orcapod/computed"),
                cached=values.get("orcapod/cached"),
                failed=values.get("orcapod/failed"),
                seconds=values.get("orcapod/duration_s"),
                run_id=event.run_id,
            )
        )
    return out


def format_table(summaries: list[AssetSummary]) -> str:
    """A plain-text table; computed/cached/failed are shown for function nodes only (the
    others compute nothing that is memoized)."""

    def cell(value: object, shown: bool = True) -> str:
        return "-" if value is None or not shown else f"{value:.2f}" if isinstance(value, float) else str(value)

    header = ("asset", "node", "rows", "computed", "cached", "failed", "seconds", "run")
    rows = [
        (
            s.key,
            s.node_type,
            cell(s.rows),
            cell(s.computed, s.node_type == "function"),
            cell(s.cached, s.node_type == "function"),
            cell(s.failed, s.node_type == "function"),
            cell(s.seconds),
            s.run_id[:8] if s.run_id else "never materialized",
        )
        for s in summaries
    ]
    functions = [s for s in summaries if s.node_type == "function" and s.run_id]
    total = ("total (function nodes)", "", "", *(str(sum(getattr(s, f) or 0 for s in functions)) for f in ("computed", "cached", "failed")), "", "")
    # The layout of orcapod's own run summary (RunResult.summary()), plus the run column.
    return text_table(header, rows, left=(0, 1, 7), footer=total)


def main() -> int:
    from example_project.definitions import defs

    with dg.DagsterInstance.get() as instance:
        summaries = summarize(defs, instance)
    print(format_table(summaries))
    missing = [s.key for s in summaries if s.run_id is None]
    if missing:
        print(f"\nnever materialized: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
