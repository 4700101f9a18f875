"""The local Dagster instance of `make run` / `make ui`: created once, under a lock, before any
command uses it — so dagster commands started at the same time on a fresh DAGSTER_HOME all work
(real subprocesses: `make`, `python -m orcapod_dagster.instance`, `dagster asset materialize`)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

ASSETS = textwrap.dedent(
    """
    import dagster as dg

    @dg.asset
    def {name}() -> int:
        return 1

    defs = dg.Definitions(assets=[{name}], executor=dg.in_process_executor)
    """
)


def alembic_heads(home: Path) -> dict[str, int]:
    """Rows of ``alembic_version`` in every sqlite database of the instance (one each when sound)."""
    heads = {}
    for db in sorted(home.rglob("*.db")):
        with sqlite3.connect(db) as conn:
            if conn.execute("select count(*) from sqlite_master where name = 'alembic_version'").fetchone()[0]:
                heads[str(db.relative_to(home))] = conn.execute("select count(*) from alembic_version").fetchone()[0]
    return heads


def test_concurrent_inits_create_the_instance_once(tmp_path):
    home = tmp_path / "dagster_home"
    command = [sys.executable, "-m", "orcapod_dagster.instance", str(home)]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert (home / ".initialized").exists()
    assert (home / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"
    heads = alembic_heads(home)
    assert heads and set(heads.values()) == {1}, heads  # run, event-log index and schedule databases
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_runs() == []


def test_make_creates_the_instance_then_concurrent_commands_all_work(tmp_path):
    home = tmp_path / "fresh_home"
    # -o: the venv's install stamp counts as done (the suite runs inside that venv).
    make = ["make", "-s", "-C", str(ROOT), "-o", ".venv/.installed", f"BIN={BIN}", f"DAGSTER_HOME={home}", "instance"]
    done = subprocess.run(make, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (home / ".initialized").exists() and (home / "dagster.yaml").exists()
    again = subprocess.run(make, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "Dagster instance ready" not in again.stdout  # make sees it is done

    env = {**os.environ, "DAGSTER_HOME": str(home)}
    procs = []
    for name in ("first", "second"):
        (tmp_path / f"{name}.py").write_text(ASSETS.format(name=name))
        command = [str(BIN / "dagster"), "asset", "materialize", "--select", "*", "-f", str(tmp_path / f"{name}.py")]
        procs.append(subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert set(alembic_heads(home).values()) == {1}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert len(runs) == 2 and all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
