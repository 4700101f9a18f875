"""Asset checks of function nodes, evaluated right after each materialization.

* ``no_failed_packets`` — no input packet failed (WARN by default; with
  ``OrcapodTranslatorSettings(blocking_failed_packets=True)`` it is a blocking ERROR check);
* ``schema_matches`` — the stored results table has the function's declared output schema.
"""

from __future__ import annotations

from collections.abc import Collection

import dagster as dg

from orcapod_core.pipeline import FunctionNode, NodeStats
from orcapod_core.types import schema_from_arrow, type_to_string
from orcapod_dagster.translator import NO_FAILED_PACKETS, SCHEMA_MATCHES

__all__ = ["evaluate_checks", "stored_schema_problems"]


def stored_schema_problems(node: FunctionNode) -> list[str]:
    """Differences between the stored result columns and the declared output schema."""
    cache = node.result_cache
    empty = cache.database.get_records_by_ids(cache.record_path, [])  # the stored schema, no rows
    if empty is None:
        return []  # nothing stored yet: nothing can disagree
    declared = node.packet_function.output_schema
    stored = schema_from_arrow([f for f in empty.schema if f.name in declared])
    problems = []
    for name, tp in declared.items():
        if name not in stored:
            problems.append(f"column {name!r} ({type_to_string(tp)}) is not stored")
        elif type_to_string(stored[name]) != type_to_string(tp):
            problems.append(f"column {name!r} is stored as {type_to_string(stored[name])}, declared {type_to_string(tp)}")
    return problems


def evaluate_checks(
    node: FunctionNode,
    key: dg.AssetKey,
    stats: NodeStats | None,
    selected: Collection[dg.AssetCheckKey],
    blocking: bool,
) -> list[dg.AssetCheckResult]:
    """Results of the selected checks of ``node`` for one materialization."""
    results = []
    if dg.AssetCheckKey(key, NO_FAILED_PACKETS) in selected:
        failed = stats.failed if stats is not None else 0
        errors = stats.errors[:5] if stats is not None else []
        results.append(
            dg.AssetCheckResult(
                asset_key=key,
                check_name=NO_FAILED_PACKETS,
                passed=failed == 0,
                severity=dg.AssetCheckSeverity.ERROR if blocking else dg.AssetCheckSeverity.WARN,
                metadata={"orcapod/failed": failed, "orcapod/first_errors": dg.MetadataValue.md("\n".join(f"- `{e[:300]}`" for e in errors) or "none")},
                description=f"{failed} packet(s) failed" if failed else "no packet failed",
            )
        )
    if dg.AssetCheckKey(key, SCHEMA_MATCHES) in selected:
        problems = stored_schema_problems(node)
        results.append(
            dg.AssetCheckResult(
                asset_key=key,
                check_name=SCHEMA_MATCHES,
                passed=not problems,
                metadata={"orcapod/problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none")},
                description="; ".join(problems) or "stored results match the declared output schema",
            )
        )
    return results
