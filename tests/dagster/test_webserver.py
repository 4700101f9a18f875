"""The example code location in a real ``dagster-webserver`` (what ``make ui`` serves): the
workspace loads, a run launched over GraphQL materializes the assets in a run worker process,
and the orcapod materialization metadata is readable through GraphQL."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
REPOSITORY = "__repository__"
JOB = "water_quality_job"
FUNCTION_ASSET = ["water_quality", "scored"]

DAGSTER_YAML = """\
telemetry:
  enabled: false
# No daemon runs next to a bare dagster-webserver: launch runs immediately instead of queueing.
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
"""

WORKSPACE = """
{
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on RepositoryLocation { repositories { name jobs { name } } }
          ... on PythonError { message }
        }
      }
    }
  }
}
"""

LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}
"""

RUN = """
query Run($runId: ID!) {
  runOrError(runId: $runId) { __typename ... on Run { status } ... on Error { message } }
}
"""

LATEST_MATERIALIZATION = """
query Latest($key: AssetKeyInput!) {
  assetOrError(assetKey: $key) {
    __typename
    ... on Asset {
      assetMaterializations(limit: 1) {
        runId
        metadataEntries { label ... on IntMetadataEntry { intValue } }
      }
    }
  }
}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class GraphQL:
    def __init__(self, port: int):
        self.url = f"http://{HOST}:{port}/graphql"

    def __call__(self, query: str, **variables: Any) -> dict:
        body = json.dumps({"query": query, "variables": variables}).encode()
        request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = json.load(response)
        assert not payload.get("errors"), payload["errors"]
        return payload["data"]


@contextlib.contextmanager
def webserver(home: Path, store: Path, log: Path) -> Iterator[tuple[subprocess.Popen, int]]:
    """A dagster-webserver on ``workspace.yaml`` in its own process group (its code server and
    run workers inherit ``ORCAPOD_STORE`` from it); the whole group is stopped on exit."""
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "ORCAPOD_STORE": str(store)}
    command = [sys.executable, "-m", "dagster_webserver", "-w", str(ROOT / "workspace.yaml"), "-h", HOST, "-p", str(port)]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc, port
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group we created (server, code server, run workers), then SIGKILL
    whatever outlived it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def wait_for(what: str, probe, timeout: float, proc: subprocess.Popen, log: Path, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dagster-webserver exited ({proc.returncode}) while waiting for {what}:\n{log.read_text()[-4000:]}")
        try:
            last = probe()
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = exc
        else:
            if last is not None and not isinstance(last, Exception) and last is not False:
                return last
        time.sleep(every)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r}):\n{log.read_text()[-4000:]}")


@pytest.mark.slow
def test_webserver_launches_a_run_and_serves_orcapod_metadata(tmp_path: Path):
    home, store, log = tmp_path / "dagster_home", tmp_path / "store", tmp_path / "webserver.log"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    samples = (ROOT / "example_project" / "data" / "samples.csv").read_text().strip().splitlines()[1:]

    with webserver(home, store, log) as (proc, port):
        gql = GraphQL(port)

        def loaded_location() -> str | None:
            for entry in gql(WORKSPACE)["workspaceOrError"]["locationEntries"]:
                location = entry["locationOrLoadError"]
                if location and location["__typename"] == "PythonError":
                    pytest.fail(f"code location {entry['name']} failed to load: {location['message']}")
                if entry["loadStatus"] == "LOADED" and location:
                    repos = {r["name"]: {j["name"] for j in r["jobs"]} for r in location["repositories"]}
                    assert JOB in repos.get(REPOSITORY, set()), repos
                    return entry["name"]
            return None

        location = wait_for("the code location to load", loaded_location, 120, proc, log)
        assert location == "example_project.definitions"

        params = {"selector": {"repositoryLocationName": location, "repositoryName": REPOSITORY, "jobName": JOB}, "runConfigData": {}}
        launched = gql(LAUNCH, params=params)["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]

        def finished() -> str | None:
            status = gql(RUN, runId=run_id)["runOrError"]["status"]
            return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None

        status = wait_for(f"run {run_id} to finish", finished, 180, proc, log)
        assert status == "SUCCESS", f"run {run_id} ended {status}:\n{log.read_text()[-4000:]}"

        asset = gql(LATEST_MATERIALIZATION, key={"path": FUNCTION_ASSET})["assetOrError"]
        assert asset["__typename"] == "Asset", asset
        (materialization,) = asset["assetMaterializations"]
        assert materialization["runId"] == run_id
        ints = {e["label"]: e["intValue"] for e in materialization["metadataEntries"] if "intValue" in e}
        # A fresh store: every row of the function asset was computed, in the run worker.
        assert ints["orcapod/computed"] == ints["dagster/row_count"] == len(samples) > 0
        assert ints["orcapod/cached"] == ints["orcapod/failed"] == 0

    assert proc.poll() is not None
    assert (store / "water_quality").is_dir()  # the run worker wrote to the store it was given
