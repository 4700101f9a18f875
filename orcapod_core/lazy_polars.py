"""polars, imported on its first use.

Loading a Dagster code location (the run launcher, the webserver's code server, every sensor and
schedule tick) builds the pipeline and its definitions without touching a DataFrame, and a worker
process only calls functions: importing polars up front cost them about 0.15 s each. Modules of
orcapod_core that use polars import ``pl`` from here; the first attribute read imports polars and
keeps the attribute, so later reads are plain attribute reads.

>>> from orcapod_core.lazy_polars import pl
>>> pl.DataFrame({"x": [1]}).height
1
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["pl"]


class _Polars:
    def __getattr__(self, name: str) -> Any:
        value = getattr(importlib.import_module("polars"), name)
        setattr(self, name, value)
        return value

    def __repr__(self) -> str:
        return "<polars, imported on first use>"


pl: Any = _Polars()
