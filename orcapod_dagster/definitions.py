"""build_definitions: everything a Dagster code location needs for one orcapod pipeline.

Assets (and their checks), the IO manager on the pipeline's store, a job selecting the
pipeline's assets (and the extra assets living next to it), the store maintenance job, an
optional schedule and sensors (e.g. an
:func:`~orcapod_dagster.orcapod_source_sensor` watching the sources), optionally partitioned
by a source tag column.

>>> # example_project/definitions.py
>>> defs = build_definitions(build_pipeline(".orcapod"), schedule="0 * * * *")   # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import dagster as dg

from orcapod_core.databases import DeltaTableDatabase
from orcapod_core.errors import InputValidationError
from orcapod_core.pipeline import Pipeline
from orcapod_dagster.assets import DEFAULT_IO_MANAGER_KEY, orcapod_assets
from orcapod_dagster.io_manager import OrcapodIOManager
from orcapod_dagster.maintenance import store_maintenance_job
from orcapod_dagster.partitions import with_partition_by
from orcapod_dagster.sensors import RANGE_END_TAG, RANGE_START_TAG, orcapod_source_sensor
from orcapod_dagster.step_executor import forkserver_executor
from orcapod_dagster.translator import OrcapodTranslator, sanitize_name

__all__ = ["build_definitions", "store_io_manager"]


def _absolute(uri: str) -> str:
    return uri if "://" in uri else os.path.abspath(os.path.expanduser(uri))


def _store_key(uri: str) -> str:
    """One spelling per store, for comparing two: a local path (plain or ``file://``) absolute
    and normalized; an object-store URI with its scheme lower-cased and no trailing ``/``."""
    if "://" not in uri:
        return os.path.normpath(_absolute(uri))
    scheme, rest = uri.split("://", 1)
    if scheme.lower() == "file":
        return os.path.normpath(url2pathname(urlparse(uri).path))
    return f"{scheme.lower()}://{rest.rstrip('/')}"


_managers: dict[tuple[str, tuple[tuple[str, str], ...]], OrcapodIOManager] = {}


def _shared(uri: str, options: dict[str, str]) -> OrcapodIOManager:
    """One IO manager object per store and options: ``Definitions.merge`` accepts two
    definitions with the same resource key only when it holds the same object."""
    key = (_store_key(uri), tuple(sorted(options.items())))
    manager = _managers.get(key)
    if manager is None:
        manager = _managers[key] = OrcapodIOManager(store_uri=uri, storage_options=options)
    return manager


def store_io_manager(pipeline: Pipeline, store: str | os.PathLike[str] | OrcapodIOManager | None = None) -> OrcapodIOManager | None:
    """The IO manager on the pipeline's store (``None`` for a pipeline without a Delta store
    when no ``store`` is given), with the storage options of the pipeline's database unless an
    ``OrcapodIOManager`` given as ``store`` has its own. A ``store`` that is not the pipeline's
    store is refused (``"s3://b/store/"`` and ``"s3://b/store"``, a relative and an absolute
    path are the same store): node outputs and the IO manager must share one store. Pipelines
    on one store get the same IO manager object (so their definitions merge).

    >>> store_io_manager(pipeline).storage_options == pipeline.pipeline_database.storage_options   # doctest: +SKIP
    True
    """
    database = pipeline.pipeline_database
    delta = database if isinstance(database, DeltaTableDatabase) else None
    options = dict(delta.storage_options or {}) if delta is not None else {}
    if store is None:
        if delta is None:
            return None
        return _shared(_absolute(delta.base_uri), options)
    if isinstance(store, OrcapodIOManager):
        manager = store
        if options and not manager.storage_options:  # the same store: it opens the same way
            manager = _shared(manager.store_uri, options)
    else:
        manager = _shared(_absolute(os.fspath(store)), options)
    if delta is not None and _store_key(manager.store_uri) != _store_key(delta.base_uri):
        raise InputValidationError(
            f"store {manager.store_uri!r} is not the store of pipeline {'/'.join(pipeline.name)!r} "
            f"({_absolute(delta.base_uri)!r}); build the pipeline on that store, or omit store="
        )
    return manager


def build_definitions(
    pipeline: Pipeline,
    *,
    translator: OrcapodTranslator | None = None,
    store: str | os.PathLike[str] | OrcapodIOManager | None = None,
    granularity: str = "pipeline",
    schedule: str | dg.ScheduleDefinition | None = None,
    sensors: bool | str | Sequence[str | dg.SensorDefinition] = (),
    executor: dg.ExecutorDefinition | None = None,
    extra_assets: Sequence[dg.AssetsDefinition | dg.AssetSpec] = (),
    on_packet_error: str = "raise",
    resources: Mapping[str, Any] | None = None,
    partition_by: str | None = None,
    store_maintenance: bool = True,
    io_manager_key: str = DEFAULT_IO_MANAGER_KEY,
    job_includes_extra_assets: bool = True,
    **asset_options: Any,
) -> dg.Definitions:
    """A ``Definitions`` with the pipeline's assets and checks, the ``io_manager`` resource (an
    :class:`OrcapodIOManager` on the pipeline's store), the job ``<group>_job`` selecting the
    pipeline's assets and, for a cron string ``schedule``, a schedule running that job (for a
    partitioned pipeline: one run over every registered partition).

    ``sensors``: ``True`` adds an :func:`~orcapod_dagster.orcapod_source_sensor`
    ``<group>_sources_sensor`` running the job when the rows of any source change; source labels
    (a string or strings) add one watching those sources only; ``SensorDefinition`` items are
    added as they are (both may be mixed). ``partition_by``: a source tag column partitioning
    every asset by its values (dynamic partitions, single-run backfills; see
    :mod:`orcapod_dagster.partitions`) — the sensor then registers new values as partitions.

    ``store_maintenance`` (a pipeline on a Delta Lake store): add the job
    ``<group>_store_maintenance``, which compacts, then vacuums, the pipeline's tables (see
    :mod:`orcapod_dagster.maintenance`).

    ``executor`` is the Dagster executor: by default Dagster's multiprocess executor, and with
    ``granularity="node"`` :func:`~orcapod_dagster.forkserver_executor` (steps forked from a
    server that imported the code location's modules once). ``extra_assets`` are plain Dagster
    assets living next to the pipeline (they read and publish tables through the IO manager);
    the job — and so the schedule and sensors — materializes them with the pipeline
    (``job_includes_extra_assets=False``: the pipeline's assets only; assets that cannot be
    materialized, or are partitioned differently, are never in it).

    ``io_manager_key`` is the resource key of the IO manager (default ``"io_manager"``). Several
    pipelines make one code location with ``dg.Definitions.merge``: on one store they share the
    IO manager (the default key works); on different stores give each its own key.
    ``asset_options`` go to :func:`~orcapod_dagster.orcapod_assets` (``name``, ``op_tags``,
    ``pool``, ``retry_policy``, ``backfill_policy``, ``orchestrator``, ``function_executor``).

    >>> defs = build_definitions(pipeline, schedule="0 * * * *")         # doctest: +SKIP
    >>> dg.Definitions.validate_loadable(defs)                           # doctest: +SKIP
    >>> both = dg.Definitions.merge(build_definitions(a, io_manager_key="a_store"), build_definitions(b))  # doctest: +SKIP
    """
    io_manager = store_io_manager(pipeline, store)
    if io_manager is None and granularity == "node":
        raise InputValidationError(
            f"pipeline {'/'.join(pipeline.name)!r}: granularity='node' moves node outputs between steps through the "
            f"IO manager, which needs a Delta Lake store; build the pipeline on a DeltaTableDatabase"
        )
    translator = with_partition_by(translator, partition_by)
    assets = orcapod_assets(
        pipeline,
        translator=translator,
        granularity=granularity,
        on_packet_error=on_packet_error,
        io_manager_key=io_manager_key,
        **asset_options,
    )
    group = sanitize_name("_".join(pipeline.name))
    partitions_def = next((spec.partitions_def for a in assets for spec in a.specs if spec.partitions_def), None)
    with_pipeline = _job_extra_assets(extra_assets, partitions_def) if job_includes_extra_assets else []
    job = dg.define_asset_job(
        f"{group}_job",
        selection=dg.AssetSelection.assets(*assets, *with_pipeline),
        description=f"Materialize the orcapod pipeline {'/'.join(pipeline.name)!r}"
        + (f" and {len(with_pipeline)} asset definition(s) living next to it." if with_pipeline else "."),
    )
    schedules: list[dg.ScheduleDefinition] = []
    if isinstance(schedule, str):
        schedules.append(_schedule(f"{group}_schedule", job, schedule, partitions_def))
    elif schedule is not None:
        schedules.append(schedule)
    all_sensors = _sensors(pipeline, sensors, job, translator)
    jobs = [job]
    if store_maintenance and isinstance(pipeline.pipeline_database, DeltaTableDatabase):
        jobs.append(store_maintenance_job(pipeline))
    all_resources: dict[str, Any] = {}
    if io_manager is not None:
        all_resources[io_manager_key] = io_manager
    all_resources.update(resources or {})
    if executor is None and granularity == "node":
        executor = forkserver_executor(pipeline)
    return dg.Definitions(
        assets=[*assets, *extra_assets],
        jobs=jobs,
        schedules=schedules,
        sensors=all_sensors,
        resources=all_resources,
        executor=executor,
    )


def _job_extra_assets(extra: Sequence[dg.AssetsDefinition | dg.AssetSpec], partitions_def: dg.PartitionsDefinition | None) -> list[dg.AssetsDefinition]:
    """The extra assets the pipeline's job materializes: those that can be materialized and are
    unpartitioned or partitioned like the pipeline (a job has one partitions definition)."""
    chosen = []
    for item in extra:
        if not isinstance(item, dg.AssetsDefinition) or not item.is_materializable:
            continue
        if item.partitions_def is not None and item.partitions_def != partitions_def:
            continue
        chosen.append(item)
    return chosen


def _schedule(name: str, job: Any, cron: str, partitions_def: dg.PartitionsDefinition | None) -> dg.ScheduleDefinition:
    if partitions_def is None:
        return dg.ScheduleDefinition(name=name, job=job, cron_schedule=cron)

    def every_partition(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        keys = partitions_def.get_partition_keys(dynamic_partitions_store=context.instance)
        if not keys:
            return dg.SkipReason(f"no partitions of {partitions_def} are registered yet")
        if len(keys) == 1:
            return dg.RunRequest(partition_key=keys[0])
        return dg.RunRequest(tags={RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]})

    return dg.ScheduleDefinition(name=name, job=job, cron_schedule=cron, execution_fn=every_partition)


def _sensors(
    pipeline: Pipeline, sensors: bool | str | Sequence[str | dg.SensorDefinition], job: Any, translator: OrcapodTranslator
) -> list[dg.SensorDefinition]:
    if isinstance(sensors, bool):
        return [orcapod_source_sensor(pipeline, job=job, translator=translator)] if sensors else []
    items = [sensors] if isinstance(sensors, str) else list(sensors)
    labels = [item for item in items if isinstance(item, str)]
    given = [item for item in items if not isinstance(item, str)]
    for item in given:
        if not isinstance(item, dg.SensorDefinition):
            raise InputValidationError(f"sensors= takes True, source labels or SensorDefinitions, got {item!r}")
    own = [orcapod_source_sensor(pipeline, sources=labels, job=job, translator=translator)] if labels else []
    return [*own, *given]
