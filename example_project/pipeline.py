"""The water-quality pipeline, built with the public orcapod API.

>>> pipeline = build_pipeline(".orcapod")   # doctest: +SKIP
>>> pipeline.run().summary()                # doctest: +SKIP
"""

from __future__ import annotations

import os

from example_project import sources
from example_project.functions import calibrate_oxygen, network_summary, oxygen_saturation, station_report, water_quality_index
from orcapod_core.databases import ArrowDatabase, DeltaTableDatabase
from orcapod_core.pipeline import DEFAULT_STORE, Pipeline

PIPELINE_NAME = "water_quality"


def build_pipeline(
    store: str | os.PathLike[str] | ArrowDatabase | None = None,
    name: str = PIPELINE_NAME,
    data: str | os.PathLike[str] = sources.DATA,
) -> Pipeline:
    """Record and compile the pipeline against ``store`` (a Delta Lake directory/URI or a database),
    reading ``stations.csv``, ``samples.csv`` and ``calibration.json`` from ``data`` (default: the
    bundled files)."""
    database = store if isinstance(store, ArrowDatabase) else DeltaTableDatabase(os.fspath(store or DEFAULT_STORE))
    stations, samples, calibration = sources.stations(data), sources.samples(data), sources.calibration(data)
    with Pipeline(name, pipeline_database=database) as pipeline:
        # Each sample with its station's probe calibration.
        readings = samples.join(calibration, label="readings")
        calibrated = calibrate_oxygen.pod(
            readings.select_packet_columns(["dissolved_oxygen_mg_l", "do_offset_mg_l"], label="oxygen_readings"),
            label="calibrated",
        )
        # Saturation needs the water temperature and the station's altitude too (a 3-way join).
        saturation = oxygen_saturation.pod(
            calibrated,
            samples.select_packet_columns(["temperature_c"], label="temperatures"),
            stations.select_packet_columns(["elevation_m"], label="elevations"),
            label="saturation",
        )
        scored = water_quality_index.pod(
            saturation,
            samples.select_packet_columns(["ph", "nitrate_mg_l", "turbidity_ntu"], label="chemistry"),
            label="scored",
        )
        network_summary.pod(scored.batch(label="survey"), label="network_summary")
        # The same summary per station (one group per station, its samples in date order), and a
        # report card file per station with its river's name.
        per_station = network_summary.pod(scored.group_by("station_id", label="by_station"), label="station_summary")
        station_report.pod(
            per_station, stations.select_packet_columns(["river"], label="rivers"), label="station_reports"
        )
    return pipeline
