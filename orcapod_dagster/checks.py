"""Asset checks of function nodes, evaluated right after each materialization.

* ``no_failed_packets`` — no input packet failed (WARN by default; with
  ``OrcapodTranslatorSettings(blocking_failed_packets=True)`` it is a blocking ERROR check). It is
  reported in every mode — also when ``on_packet_error="raise"`` fails the step, before it fails —
  with the first failed packets (tag, error, the traceback's last frames in the user's code) and
  where every traceback is stored;
* ``schema_matches`` — the stored results table has the function's declared output schema.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import dagster as dg

from orcapod_core.pipeline import FunctionNode, NodeStats
from orcapod_core.types import schema_from_arrow, type_to_string
from orcapod_dagster.observer import PacketFailure
from orcapod_dagster.translator import NO_FAILED_PACKETS, SCHEMA_MATCHES

__all__ = ["evaluate_checks", "stored_schema_problems", "failed_packets_markdown"]


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


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def failed_packets_markdown(failures: Sequence[PacketFailure], failed: int) -> str:
    """A markdown table of the first failed packets (tag, error, where in the user's code) and
    a count of the rest."""
    if not failed:
        return "none"
    lines = ["| tag | error | where (last frames in your code) |", "| --- | --- | --- |"]
    for f in failures:
        where = "<br>".join(f"`{_cell(frame)}`" for frame in f.frames) or "-"
        lines.append(f"| `{_cell(f.tag)}` | `{_cell(f.error_type)}: {_cell(f.message)}` | {where} |")
    rest = failed - len(failures)
    if rest > 0:
        lines.append(f"\n… and {rest} more failed packet(s); every traceback is in `orcapod/logs`.")
    return "\n".join(lines)


def evaluate_checks(
    node: FunctionNode,
    key: dg.AssetKey,
    stats: NodeStats | None,
    selected: Collection[dg.AssetCheckKey],
    blocking: bool,
    *,
    failures: Sequence[PacketFailure] = (),
    logs: str | None = None,
    run_id: str | None = None,
    withheld: str | None = None,
) -> list[dg.AssetCheckResult]:
    """Results of the selected checks of ``node`` for one materialization (or one run whose
    output is ``withheld`` — the reason given — and not materialized).

    ``no_failed_packets`` lists the first ``failures`` (tag, error, where in the user's code)
    and says where every traceback is (``logs``, markdown; ``run_id``: the orcapod run the
    log records are filed under)."""
    results = []
    note = f" (not materialized: {withheld})" if withheld else ""
    if dg.AssetCheckKey(key, NO_FAILED_PACKETS) in selected:
        failed = stats.failed if stats is not None else 0
        metadata: dict[str, Any] = {
            "orcapod/failed": dg.MetadataValue.int(failed),
            "orcapod/failed_packets": dg.MetadataValue.md(failed_packets_markdown(failures, failed)),
        }
        if failed and logs:
            metadata["orcapod/logs"] = dg.MetadataValue.md(logs)
        if failed and run_id:
            metadata["orcapod/run_id"] = dg.MetadataValue.text(run_id)
        first = f", e.g. {failures[0].tag}: {failures[0].error_type}: {failures[0].message}" if failed and failures else ""
        results.append(
            dg.AssetCheckResult(
                asset_key=key,
                check_name=NO_FAILED_PACKETS,
                passed=failed == 0,
                severity=dg.AssetCheckSeverity.ERROR if blocking else dg.AssetCheckSeverity.WARN,
                metadata=metadata,
                description=(f"{failed} packet(s) failed{first}" if failed else "no packet failed") + note,
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
                description=("; ".join(problems) or "stored results match the declared output schema") + note,
            )
        )
    return results
