"""The bundled field data as orcapod sources."""

from __future__ import annotations

import json
from pathlib import Path

from orcapod_core.sources import CSVSource, DictSource

DATA = Path(__file__).parent / "data"


def stations() -> CSVSource:
    return CSVSource(DATA / "stations.csv", tag_columns=["station_id"], record_id_column="station_id", source_id="stations.csv")


def samples() -> CSVSource:
    return CSVSource(DATA / "samples.csv", tag_columns=["station_id", "sample_date"], source_id="samples.csv")


def calibration() -> DictSource:
    rows = json.loads((DATA / "calibration.json").read_text())
    return DictSource(rows, tag_columns=["station_id"], source_id="calibration.json", record_id_column="station_id", label="calibration")
