"""Services shared by the whole test run, started once and stopped by the fixture that started
them: a folder of importable worker modules (functions that travel to process pools and Ray
workers must live in module files) and a local Ray on loopback."""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path
from types import ModuleType

import pytest


class WorkerModules:
    """Module files in one folder that this process, spawned workers and Ray workers import."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._count = 0

    def write(self, source: str, name: str | None = None) -> ModuleType:
        """Write ``source`` as a new module (a fresh name unless given) and import it."""
        self._count += 1
        name = name or f"worker_mod_{self._count}"
        (self.folder / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        sys.modules.pop(name, None)
        return importlib.import_module(name)


@pytest.fixture(scope="session")
def worker_modules(tmp_path_factory: pytest.TempPathFactory) -> WorkerModules:
    folder = tmp_path_factory.mktemp("worker_modules")
    sys.path.insert(0, str(folder))  # spawned pool workers inherit sys.path
    try:
        yield WorkerModules(folder)
    finally:
        sys.path.remove(str(folder))


@pytest.fixture(scope="session")
def ray_cluster(worker_modules: WorkerModules, tmp_path_factory: pytest.TempPathFactory):
    """A local Ray with 2 CPUs on loopback for the whole test run (``ray.shutdown()`` stops the
    processes it started). Workers import the worker modules through ``PYTHONPATH``."""
    ray = pytest.importorskip("ray")  # installed by `make test` (the [ray] extra)
    saved = {k: os.environ.get(k) for k in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE", "PYTHONPATH")}
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # a single-node Ray bound to 127.0.0.1
    os.environ["RAY_AUTH_MODE"] = "disabled"  # no token written to ~/.ray
    # Ray's workers inherit the environment Ray starts with: they import the worker modules
    # (and this checkout) without a runtime_env to set up per worker.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(worker_modules.folder), *sys.path])
    if ray.is_initialized():
        ray.shutdown()
    temp = tempfile.mkdtemp(prefix="orcapod-ray-")  # short: Ray's socket paths must fit 107 bytes
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    finally:
        if saved["PYTHONPATH"] is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = saved["PYTHONPATH"]
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
