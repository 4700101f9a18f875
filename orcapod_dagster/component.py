"""OrcapodPipelineComponent: an orcapod pipeline as a ``dg`` component, configured in YAML.

A thin layer over :func:`~orcapod_dagster.build_definitions`: ``pipeline`` points at a
``Pipeline`` object or a zero-argument callable building one (``"package.module:attribute"``),
the other fields are ``build_definitions`` options.

.. code-block:: yaml

    # my_project/defs/water_quality/defs.yaml
    type: orcapod_dagster.OrcapodPipelineComponent
    attributes:
      pipeline: my_project.pipeline:build_pipeline
      granularity: pipeline
      schedule: "0 * * * *"
      sensors: true
"""

from __future__ import annotations

import importlib
from typing import Literal

import dagster as dg

from orcapod_core.errors import InputValidationError
from orcapod_core.pipeline import Pipeline
from orcapod_dagster.definitions import build_definitions
from orcapod_dagster.io_manager import OrcapodIOManager

__all__ = ["OrcapodPipelineComponent", "load_pipeline"]


class OrcapodPipelineComponent(dg.Component, dg.Resolvable, dg.Model):
    """An orcapod pipeline's assets, checks, IO manager, job, schedule and sensor.

    Attributes (all but ``pipeline`` optional):

    * ``pipeline`` — ``"package.module:attribute"``: a ``Pipeline`` or a zero-argument callable
      returning one;
    * ``store`` / ``storage_options`` — the IO manager's Delta store; it must be the store the
      pipeline is built on (default: that store);
    * ``granularity`` — ``pipeline`` (one step) or ``node`` (one step per node);
    * ``schedule`` — a cron string for the pipeline's job;
    * ``sensors`` — ``true`` (watch every source) or a list of source labels;
    * ``partition_by`` — a source tag column to partition every asset by;
    * ``on_packet_error`` — ``raise`` or ``warn``;
    * ``io_manager_key`` — the IO manager's resource key (default ``io_manager``; give each
      component on its own store its own key).

    >>> component = OrcapodPipelineComponent(pipeline="example_project.pipeline:build_pipeline")  # doctest: +SKIP
    >>> defs = dg.build_defs_for_component(component)                                           # doctest: +SKIP
    """

    pipeline: str
    store: str | None = None
    storage_options: dict[str, str] = {}
    granularity: Literal["pipeline", "node"] = "pipeline"
    schedule: str | None = None
    sensors: bool | list[str] = False
    partition_by: str | None = None
    on_packet_error: Literal["raise", "warn"] = "raise"
    io_manager_key: str = "io_manager"

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        pipeline = load_pipeline(self.pipeline)
        store: str | OrcapodIOManager | None = self.store
        if self.store and self.storage_options:
            store = OrcapodIOManager(store_uri=self.store, storage_options=dict(self.storage_options))
        return build_definitions(
            pipeline,
            store=store,
            granularity=self.granularity,
            schedule=self.schedule,
            sensors=self.sensors,
            partition_by=self.partition_by,
            on_packet_error=self.on_packet_error,
            io_manager_key=self.io_manager_key,
        )


def load_pipeline(reference: str) -> Pipeline:
    """The pipeline a ``"package.module:attribute"`` reference names: the attribute itself when it
    is a ``Pipeline``, else the result of calling it with no arguments.

    >>> load_pipeline("example_project.definitions:pipeline")      # doctest: +SKIP
    Pipeline('water_quality', nodes=[...])
    """
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise InputValidationError(f"pipeline reference {reference!r} is not of the form 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputValidationError(f"pipeline reference {reference!r}: cannot import module {module_name!r}: {exc}") from exc
    target: object = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise InputValidationError(f"pipeline reference {reference!r}: module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if isinstance(target, Pipeline):
        return target
    if not callable(target):
        raise InputValidationError(
            f"pipeline reference {reference!r} is a {type(target).__name__}, not a Pipeline or a callable returning one"
        )
    built = target()
    if not isinstance(built, Pipeline):
        raise InputValidationError(f"pipeline reference {reference!r}: calling it returned {type(built).__name__}, not a Pipeline")
    return built
