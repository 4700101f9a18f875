"""The water-quality pipeline as a Dagster code location.

``dagster dev -w workspace.yaml`` (``make ui``) shows one asset per pipeline node;
``dagster asset materialize --select '*' -m example_project.definitions`` materializes them.
Results go to the Delta Lake store ``.orcapod/`` at the project root (override with the
``ORCAPOD_STORE`` environment variable, e.g. an ``s3://`` URI); the job runs hourly when the
schedule is switched on, and whenever the rows of a data file change when the sensor
``water_quality_sources_sensor`` is switched on.
"""

from __future__ import annotations

import os
from pathlib import Path

from example_project.pipeline import build_pipeline
from orcapod_dagster import build_definitions

#: The project root's ``.orcapod/``, whatever the working directory of the process loading us.
STORE = os.environ.get("ORCAPOD_STORE") or str(Path(__file__).resolve().parent.parent / ".orcapod")

pipeline = build_pipeline(STORE)
defs = build_definitions(pipeline, schedule="0 * * * *", sensors=True)
