"""Fixtures shared by every test package: a local S3-compatible server for object-store tests.

``s3_server`` starts moto's S3 server (``python -m moto.server``) once per test run, as a
subprocess on a free loopback port, so that child processes (Dagster step processes, concurrent
writers) reach it too; it stops exactly that process at the end. ``s3_store`` gives each test
its own fresh bucket: ``s3_store.uri`` (``s3://<bucket>/store``) and the deltalake
``storage_options`` to open it with.
"""

from __future__ import annotations

import itertools
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

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
