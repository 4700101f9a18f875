"""build_definitions: everything a Dagster code location needs for one orcapod pipeline.

Assets (and their checks), the IO manager on the pipeline's store, a job selecting the
pipeline's assets, an optional schedule and sensors.

>>> # example_project/definitions.py
>>> defs = build_definitions(build_pipeline(".orcapod"), schedule="0 * * * *")   # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from orcapod_core.databases import DeltaTableDatabase
from orcapod_core.errors import InputValidationError
from orcapod_core.pipeline import Pipeline
from orcapod_dagster.assets import orcapod_assets
from orcapod_dagster.io_manager import OrcapodIOManager
from orcapod_dagster.translator import OrcapodTranslator, sanitize_name

__all__ = ["build_definitions", "store_io_manager"]


def _absolute(uri: str) -> str:
    return uri if "://" in uri else os.path.abspath(os.path.expanduser(uri))


def store_io_manager(pipeline: Pipeline, store: str | os.PathLike[str] | OrcapodIOManager | None = None) -> OrcapodIOManager | None:
    """The IO manager on the pipeline's store (``None`` for a pipeline without a Delta store
    when no ``store`` is given). A ``store`` that is not the pipeline's store is refused: node
    outputs and the IO manager must share one store."""
    database = pipeline.pipeline_database
    own = _absolute(database.base_uri) if isinstance(database, DeltaTableDatabase) else None
    if store is None:
        if own is None:
            return None
        return OrcapodIOManager(store_uri=own, storage_options=dict(database.storage_options or {}))
    manager = store if isinstance(store, OrcapodIOManager) else OrcapodIOManager(store_uri=_absolute(os.fspath(store)))
    if own is not None and _absolute(manager.store_uri) != own:
        raise InputValidationError(
            f"store {manager.store_uri!r} is not the store of pipeline {'/'.join(pipeline.name)!r} ({own!r}); "
            f"build the pipeline on that store, or omit store="
        )
    return manager


def build_definitions(
    pipeline: Pipeline,
    *,
    translator: OrcapodTranslator | None = None,
    store: str | os.PathLike[str] | OrcapodIOManager | None = None,
    granularity: str = "pipeline",
    schedule: str | dg.ScheduleDefinition | None = None,
    sensors: Sequence[dg.SensorDefinition] = (),
    executor: dg.ExecutorDefinition | None = None,
    extra_assets: Sequence[dg.AssetsDefinition | dg.AssetSpec] = (),
    on_packet_error: str = "raise",
    resources: Mapping[str, Any] | None = None,
    **asset_options: Any,
) -> dg.Definitions:
    """A ``Definitions`` with the pipeline's assets and checks, the ``io_manager`` resource (an
    :class:`OrcapodIOManager` on the pipeline's store), the job ``<group>_job`` selecting the
    pipeline's assets and, for a cron string ``schedule``, a schedule running that job.

    ``executor`` is the Dagster executor (default: multiprocess); ``extra_assets`` are plain
    Dagster assets living next to the pipeline (they read and publish tables through the IO
    manager); ``asset_options`` go to :func:`~orcapod_dagster.orcapod_assets` (``name``,
    ``op_tags``, ``pool``, ``retry_policy``, ``backfill_policy``, ``orchestrator``,
    ``function_executor``).

    >>> defs = build_definitions(pipeline, schedule="0 * * * *")         # doctest: +SKIP
    >>> dg.Definitions.validate_loadable(defs)                           # doctest: +SKIP
    """
    io_manager = store_io_manager(pipeline, store)
    if io_manager is None and granularity == "node":
        raise InputValidationError(
            f"pipeline {'/'.join(pipeline.name)!r}: granularity='node' moves node outputs between steps through the "
            f"IO manager, which needs a Delta Lake store; build the pipeline on a DeltaTableDatabase"
        )
    assets = orcapod_assets(
        pipeline, translator=translator, granularity=granularity, on_packet_error=on_packet_error, **asset_options
    )
    group = sanitize_name("_".join(pipeline.name))
    job = dg.define_asset_job(
        f"{group}_job",
        selection=dg.AssetSelection.assets(*assets),
        description=f"Materialize the orcapod pipeline {'/'.join(pipeline.name)!r}.",
    )
    schedules: list[dg.ScheduleDefinition] = []
    if isinstance(schedule, str):
        schedules.append(dg.ScheduleDefinition(name=f"{group}_schedule", job=job, cron_schedule=schedule))
    elif schedule is not None:
        schedules.append(schedule)
    all_resources: dict[str, Any] = {}
    if io_manager is not None:
        all_resources["io_manager"] = io_manager
    all_resources.update(resources or {})
    return dg.Definitions(
        assets=[*assets, *extra_assets],
        jobs=[job],
        schedules=schedules,
        sensors=list(sensors),
        resources=all_resources,
        executor=executor,
    )
