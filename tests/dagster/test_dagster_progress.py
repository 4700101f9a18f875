"""Inside a Dagster step, orcapod's live terminal display stays off: the step log has its own
lines, even when the step's stderr is a terminal (`dagster asset materialize` run in one)."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from terminal import HIDE_CURSOR, plain, run_with_terminal_stderr

ROOT = Path(__file__).resolve().parents[2]

STEP = '''
import importlib.util, json, sys
import dagster as dg

spec = importlib.util.spec_from_file_location("progress_project", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
result = dg.materialize(list(mod.defs.assets), instance=dg.DagsterInstance.ephemeral(), resources=dict(mod.defs.resources))
computed = {e.materialization.asset_key.to_user_string(): e.materialization.metadata["orcapod/computed"].value
            for e in result.get_asset_materialization_events() if "orcapod/computed" in e.materialization.metadata}
print(json.dumps({"success": result.success, "computed": computed}))
'''


@pytest.mark.slow
def test_materialize_on_a_terminal_shows_no_live_display(make_project):
    mod = make_project("progress_project")
    script = make_project.tmp_path / "step.py"
    script.write_text(STEP)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color"}
    shown, out = run_with_terminal_stderr(
        [sys.executable, str(script), mod.__file__], env=env, cwd=make_project.tmp_path, timeout=240
    )
    run = json.loads(out)
    assert run["success"] and run["computed"] == {"demo/doubled": 3, "demo/described": 3}
    text = plain(shown)
    assert "orcapod: doubled [function] done" in text  # the step log reached the terminal ...
    assert HIDE_CURSOR not in shown  # ... and no live display did (its title: "nodes: 1 done, 1 running")
    assert not re.search(r"nodes: \d+ done, \d+ running", text)
    assert "node  kind" not in text  # nor run()'s closing summary table
