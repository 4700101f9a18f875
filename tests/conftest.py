"""Services shared by the whole test run, each started once by a session fixture and stopped
by the PID (or the API) that started it:

* ``worker_modules`` — a folder of importable module files: functions that travel to process
  pools and Ray workers must live in module files;
* ``ray_cluster`` — a local Ray with 2 CPUs on loopback;
* ``s3_server`` — moto's S3 server (``python -m moto.server``) as a subprocess on a free loopback
  port, so child processes (Dagster step processes, concurrent writers) reach it too; ``s3_store``
  gives each test its own fresh bucket: ``s3_store.uri`` (``s3://<bucket>/store``) and the
  deltalake ``storage_options`` to open it with.
"""

from __future__ import annotations

import importlib
import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
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


# -- a local S3-compatible server ------------------------------------------------------------

#: Credentials moto accepts (any non-empty pair); never real secrets.
FAKE_KEY_ID = "orcapod-test-key"
FAKE_SECRET = "orcapod-test-secret"
_START_TIMEOUT_S = 30.0
# Loopback only: never route the test server's traffic through a proxy from the environment.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class S3Server:
    """A running local S3-compatible server."""

    endpoint: str  # http://127.0.0.1:<port>
    pid: int

    def storage_options(self) -> dict[str, str]:
        """deltalake storage options for this server (what a user passes for MinIO/moto)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": FAKE_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
            "conditional_put": "etag",  # safe concurrent commits (see README "Object storage")
        }

    def create_bucket(self, name: str) -> None:
        """Create the bucket ``name`` (a valid S3 bucket name: 3-63 of [a-z0-9-])."""
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        with _LOCAL.open(request, timeout=10) as response:
            assert response.status == 200, f"creating bucket {name!r} on {self.endpoint}: HTTP {response.status}"


@dataclass(frozen=True)
class S3Store:
    """One test's bucket on the test server."""

    bucket: str
    uri: str  # s3://<bucket>/store
    storage_options: dict[str, str]

    def at(self, *parts: str) -> str:
        """A URI inside this test's bucket (``s3://<bucket>/<parts...>``)."""
        return "/".join([f"s3://{self.bucket}", *parts])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ready(endpoint: str) -> bool:
    try:
        with _LOCAL.open(f"{endpoint}/moto-api/", timeout=1):
            return True
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """moto's S3 server on 127.0.0.1 for the whole test run (stopped by its PID at the end)."""
    log_path: Path = tmp_path_factory.mktemp("s3-server") / "moto.log"
    for _attempt in range(3):  # another process may take the free port before moto binds it
        port = _free_port()
        endpoint = f"http://127.0.0.1:{port}"
        log = open(log_path, "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline and not _ready(endpoint):
            time.sleep(0.1)
        if proc.poll() is None and _ready(endpoint):
            break
        _stop(proc)
    else:
        pytest.fail(f"the moto S3 server did not start on 127.0.0.1; its log: {log_path.read_text()[-2000:]}")
    try:
        yield S3Server(endpoint, proc.pid)
    finally:
        _stop(proc)


_buckets = itertools.count()


@pytest.fixture
def s3_store(s3_server: S3Server) -> S3Store:
    """A fresh bucket for this test: the store URI and the storage options to open it with."""
    bucket = f"orcapod-{next(_buckets)}-{uuid.uuid4().hex[:8]}"
    s3_server.create_bucket(bucket)
    return S3Store(bucket=bucket, uri=f"s3://{bucket}/store", storage_options=s3_server.storage_options())
