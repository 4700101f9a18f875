"""The store maintenance job: compact, then vacuum, a pipeline's tables from Dagster.

:func:`~orcapod_dagster.build_definitions` adds ``<pipeline>_store_maintenance`` for a pipeline
on a Delta Lake store: one op running :meth:`~orcapod_core.pipeline.Pipeline.maintain_store`
with the run config ``retention_hours`` (default 168: files removed less than a week ago stay),
``dry_run`` (change nothing, report what vacuum would delete) and ``target_file_size`` (bytes),
and reporting tables, files and bytes before and after as the op's output metadata. Pinned
materializations stay readable: they reference rows of the store's tables at their latest
version. Launch it from the UI's Launchpad, or schedule it like any job.

>>> job = store_maintenance_job(pipeline)                                            # doctest: +SKIP
>>> job.execute_in_process(run_config={"ops": {"demo_maintain_store": {"config": {"retention_hours": 0}}}})  # doctest: +SKIP
"""

# No ``from __future__ import annotations``: Dagster reads the op's ``config`` annotation as a class.
from collections.abc import Sequence
from typing import Any

import dagster as dg
from pydantic import Field

from orcapod_core.databases import DEFAULT_RETENTION_HOURS, MaintenanceReport
from orcapod_core.pipeline import Pipeline
from orcapod_dagster.translator import sanitize_name

__all__ = ["StoreMaintenanceConfig", "store_maintenance_job", "maintenance_metadata"]


class StoreMaintenanceConfig(dg.Config):
    """Run config of the store maintenance op."""

    retention_hours: int = Field(
        default=DEFAULT_RETENTION_HOURS,
        ge=0,
        description="Vacuum deletes unreferenced files removed more than this many hours ago (0: all of them; "
        "older versions of the store's tables can then no longer be read).",
    )
    dry_run: bool = Field(default=False, description="Change nothing: report what vacuum would delete.")
    target_file_size: int | None = Field(
        default=None, gt=0, description="Approximate size in bytes of compacted files (default: deltalake's, 100 MB)."
    )


def maintenance_metadata(reports: Sequence[MaintenanceReport]) -> dict[str, Any]:
    """Output metadata of the maintenance op: per operation, tables changed, files and bytes
    before and after, files removed (``orcapod/compact/...``, ``orcapod/vacuum/...``)."""
    metadata: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for report in reports:
        key = f"orcapod/{report.operation}"
        metadata.update(
            {
                f"{key}/tables": dg.MetadataValue.int(len(report.tables)),
                f"{key}/files_before": dg.MetadataValue.int(report.files_before),
                f"{key}/files_after": dg.MetadataValue.int(report.files_after),
                f"{key}/files_removed": dg.MetadataValue.int(report.files_removed),
                f"{key}/bytes_before": dg.MetadataValue.int(report.bytes_before),
                f"{key}/bytes_after": dg.MetadataValue.int(report.bytes_after),
            }
        )
        if report.operation == "vacuum":
            metadata[f"{key}/retention_hours"] = dg.MetadataValue.int(report.retention_hours or 0)
            metadata[f"{key}/dry_run"] = dg.MetadataValue.bool(report.dry_run)
        skipped.update({"/".join(table): reason for table, reason in report.skipped})
    metadata["orcapod/summary"] = dg.MetadataValue.text("\n".join(repr(r) for r in reports))
    if skipped:
        lines = [f"- `{table}`: {reason}" for table, reason in list(skipped.items())[:20]]
        more = [f"- … and {len(skipped) - 20} more"] if len(skipped) > 20 else []
        metadata["orcapod/skipped"] = dg.MetadataValue.md("\n".join(lines + more))
    return metadata


def store_maintenance_job(pipeline: Pipeline, name: str | None = None) -> dg.JobDefinition:
    """A job (default name ``<pipeline>_store_maintenance``) whose one op,
    ``<pipeline>_maintain_store``, compacts, then vacuums, the pipeline's tables
    (:meth:`~orcapod_core.pipeline.Pipeline.maintain_store`; config: :class:`StoreMaintenanceConfig`)."""
    group = sanitize_name("_".join(pipeline.name))
    where = "/".join(pipeline.name)

    @dg.op(
        name=f"{group}_maintain_store",
        out=dg.Out(dg.Nothing),
        description=f"Compact, then vacuum, the store tables of the orcapod pipeline {where!r}.",
    )
    def maintain_store(context: dg.OpExecutionContext, config: StoreMaintenanceConfig) -> None:
        reports = pipeline.maintain_store(
            retention_hours=config.retention_hours, dry_run=config.dry_run, target_file_size=config.target_file_size
        )
        for report in reports:
            context.log.info(f"orcapod: {report!r}")
        context.add_output_metadata(maintenance_metadata(reports))

    @dg.job(
        name=name or f"{group}_store_maintenance",
        description=f"Compact, then vacuum, the orcapod store tables of pipeline {where!r} (results, pipeline records, "
        f"snapshots, logs); pinned materializations stay readable.",
    )
    def store_maintenance() -> None:
        maintain_store()

    return store_maintenance
