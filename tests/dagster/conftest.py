"""Tiny real pipelines for the Dagster tests, written as module files so that functions have
source (identity), edits are real file edits, and other processes can import them."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import dagster as dg
import pytest

MODULE = '''
from __future__ import annotations

import json

import dagster as dg
from orcapod_core.databases import DeltaTableDatabase
from orcapod_core import function_pod
from orcapod_core.pipeline import Pipeline
from orcapod_core.sources import DictSource
from orcapod_dagster import build_definitions

STORE = {store!r}
STORAGE_OPTIONS = {storage_options!r}  # an object store's endpoint and keys (a test server's)
DATA = {data!r}
FAIL_ON = set()


@function_pod(output_keys="y")
def double(x: int) -> int:
    """Twice x."""
    {double_body}


@function_pod(output_keys="label")
def describe(y: int, name: str) -> str:
    if y in FAIL_ON:
        raise ValueError(f"refusing y={{y}}")
    return f"{{name}}={{y}}"


def build_pipeline() -> Pipeline:
    rows = json.load(open(DATA))
    numbers = DictSource({{"id": rows["id"], "x": rows["x"]}}, tag_columns=["id"], source_id="numbers", label="numbers")
    names = DictSource({{"id": rows["id"], "name": rows["name"]}}, tag_columns=["id"], source_id="names", label="names")
    with Pipeline("demo", pipeline_database=DeltaTableDatabase(STORE, storage_options=STORAGE_OPTIONS)) as pipeline:
        doubled = double.pod(numbers, label="doubled")
        joined = doubled.join(names, label="joined")
        describe.pod(joined, label="described")
    return pipeline


pipeline = build_pipeline()
defs = build_definitions(pipeline, {defs_kwargs})
{extra}
'''


def write_data(path: Path, ids: list[int], xs: list[int] | None = None) -> Path:
    xs = xs if xs is not None else ids
    path.write_text(json.dumps({"id": ids, "x": xs, "name": [f"n{i}" for i in ids]}))
    return path


def load_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def make_project(tmp_path: Path):
    """``make_project(name, double_body=..., defs_kwargs=..., extra=..., store=..., storage_options=...)``
    → the imported module (``store`` default: ``<tmp_path>/store``; a URI with its
    ``storage_options`` puts it on an object store, written into the module for step processes)."""
    data = write_data(tmp_path / "data.json", [1, 2, 3])
    default_store = tmp_path / "store"

    def make(
        name: str = "pipe_v1",
        *,
        double_body: str = "return 2 * x",
        defs_kwargs: str = "",
        extra: str = "",
        store: str | Path = default_store,
        storage_options: dict[str, str] | None = None,
    ) -> ModuleType:
        path = tmp_path / f"{name}.py"
        path.write_text(
            MODULE.format(
                store=str(store),
                storage_options=storage_options,
                data=str(data),
                double_body=double_body,
                defs_kwargs=defs_kwargs,
                extra=textwrap.dedent(extra),
            )
        )
        return load_module(path, name)

    make.tmp_path = tmp_path  # type: ignore[attr-defined]
    make.data = data  # type: ignore[attr-defined]
    make.store = default_store  # type: ignore[attr-defined]
    return make


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def materializations(result: dg.ExecuteInProcessResult | dg.ExecutionResult) -> dict[str, dict]:
    """``{asset key string: {metadata key: value, "data_version": ...}}`` of a run."""
    out = {}
    for event in result.get_asset_materialization_events():
        mat = event.materialization
        values = {k: v.value for k, v in mat.metadata.items()}
        values["data_version"] = mat.tags.get("dagster/data_version")
        out[mat.asset_key.to_user_string()] = values
    return out


# -- a CSV-backed pipeline for partitions, sensors and the component ---------------------------

from orcapod_core.databases import DeltaTableDatabase  # noqa: E402
from orcapod_core import function_pod  # noqa: E402
from orcapod_core.pipeline import Pipeline  # noqa: E402
from orcapod_core.sources import CSVSource, DictSource  # noqa: E402


@function_pod(output_keys="y")
def triple(x: int) -> int:
    """Three times x."""
    return 3 * x


@function_pod(output_keys="z")
def shift(y: int, offset: int) -> int:
    """y plus the day's offset."""
    return y + offset


def write_readings(path: Path, rows: list[tuple[str, int, int]]) -> Path:
    """``readings.csv`` with columns site, day, x."""
    path.write_text("site,day,x\n" + "".join(f"{site},{day},{x}\n" for site, day, x in rows))
    return path


def build_sites_pipeline(csv: Path, store: Path, name: str = "sites") -> Pipeline:
    """readings (CSV, tags site+day) → tripled → shifted (joined with the per-day offsets, a
    reference source without the ``site`` column)."""
    readings = CSVSource(csv, tag_columns=["site", "day"], source_id="readings", label="readings")
    offsets = DictSource({"day": [1, 2, 3], "offset": [100, 200, 300]}, tag_columns="day", source_id="offsets", label="offsets")
    with Pipeline(name, pipeline_database=DeltaTableDatabase(str(store))) as pipeline:
        tripled = triple.pod(readings, label="tripled")
        shift.pod(tripled, offsets, label="shifted")
    return pipeline


READINGS = [("north", 1, 1), ("north", 2, 2), ("south", 1, 3), ("east", 1, 4), ("east", 3, 5)]
