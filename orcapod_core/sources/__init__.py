"""Sources bring data into a pipeline with provenance (system tags + source info).

>>> from orcapod_core.sources import DictSource
>>> s = DictSource([{"id": 1, "x": 2.0}], tag_columns=["id"], source_id="demo")
>>> s.output_schema()
(Schema({'id': int}), Schema({'x': float}))
"""

# Streams get their operator methods (.join, .batch, .group_by...) from the operators package:
# a source is where most streams start, so importing sources brings them.
import orcapod_core.operators  # noqa: F401
from orcapod_core.sources.base import LiveSource, RootSource, Source
from orcapod_core.sources.files import CSVSource, DeltaTableSource, file_source_from_config
from orcapod_core.sources.memory import ArrowTableSource, DataFrameSource, DictSource, ListSource

__all__ = [
    "file_source_from_config",
    "Source",
    "RootSource",
    "LiveSource",
    "DictSource",
    "ListSource",
    "ArrowTableSource",
    "DataFrameSource",
    "CSVSource",
    "DeltaTableSource",
]
