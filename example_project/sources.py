"""The bundled field data as orcapod sources (or the same files from another directory)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from orcapod_core import CSVSource, DictSource

DATA = Path(__file__).parent / "data"


def stations(data: str | os.PathLike[str] = DATA) -> CSVSource:
    return CSVSource(Path(data) / "stations.csv", tag_columns=["station_id"], record_id_column="station_id", source_id="stations.csv")


def samples(data: str | os.PathLike[str] = DATA) -> CSVSource:
    return CSVSource(Path(data) / "samples.csv", tag_columns=["station_id", "sample_date"], source_id="samples.csv")


def calibration(data: str | os.PathLike[str] = DATA) -> DictSource:
    rows = json.loads((Path(data) / "calibration.json").read_text())
    return DictSource(rows, tag_columns=["station_id"], source_id="calibration.json", record_id_column="station_id", label="calibration")
