"""orcapod_dagster: compiled orcapod pipelines as Dagster assets.

Each compiled node is a Dagster asset; the IO manager is the orcapod Delta Lake store, so
Dagster schedules, lineage and UI sit on top of packet-level memoization.

>>> from example_project.pipeline import build_pipeline          # doctest: +SKIP
>>> defs = build_definitions(build_pipeline(".orcapod"), schedule="0 * * * *", sensors=True)  # doctest: +SKIP
"""

from orcapod_dagster.assets import orcapod_assets
from orcapod_dagster.component import OrcapodPipelineComponent
from orcapod_dagster.definitions import build_definitions
from orcapod_dagster.io_manager import OrcapodIOManager
from orcapod_dagster.maintenance import store_maintenance_job
from orcapod_dagster.observer import DagsterLogObserver
from orcapod_dagster.partitions import add_partitions, partition_keys
from orcapod_dagster.sensors import orcapod_source_sensor
from orcapod_dagster.step_executor import forkserver_executor
from orcapod_dagster.translator import OrcapodTranslator, OrcapodTranslatorSettings

__all__ = [
    "OrcapodTranslator",
    "OrcapodTranslatorSettings",
    "orcapod_assets",
    "build_definitions",
    "OrcapodIOManager",
    "DagsterLogObserver",
    "orcapod_source_sensor",
    "add_partitions",
    "partition_keys",
    "OrcapodPipelineComponent",
    "store_maintenance_job",
    "forkserver_executor",
]
