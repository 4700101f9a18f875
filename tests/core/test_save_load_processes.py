"""Save in one process, delete the function's module, load in fresh processes: cached rows
are served, downstream nodes compute on them, a new packet fails clearly, and binding the
function again computes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

LAB = '''
from orcapod_core import function_pod

@function_pod(output_keys="y", function_name="calibrate", version="v2")
def calibrate(x: int) -> int:
    return x * 2 + 1
'''

REPORT = '''
from orcapod_core import function_pod

@function_pod(output_keys="label")
def label(y: int) -> str:
    return f"value={y}"
'''

BUILD = '''
import json
from orcapod_core.databases import DeltaTableDatabase
from orcapod_core.pipeline import Pipeline
from orcapod_core.sources import CSVSource
import lab, report

with Pipeline("study", DeltaTableDatabase("store")) as p:
    readings = CSVSource("readings.csv", tag_columns="id")
    calibrated = lab.calibrate.pod(readings, label="calibrated")
    report.label.pod(calibrated, label="labelled")
result = p.run(nodes=["calibrated"])   # the downstream node is left for the other process
p.save("study.json")
print(json.dumps({"computed": result.computed}))
'''

LOAD = '''
import json, sys
from orcapod_core.errors import PacketFunctionUnavailableError
from orcapod_core.pipeline import Pipeline

step = sys.argv[1]
p = Pipeline.load("study.json")
out = {"status": {n.label: n.load_status.value for n in p}, "proxy": repr(p.calibrated.packet_function)}
if step == "read":
    out["cached"] = sorted(p.calibrated.as_table().column("y").to_pylist())
    result = p.run()
    out["run"] = {label: [s.computed, s.cached, s.failed] for label, s in result.stats.items()}
    out["labels"] = sorted(p.labelled.as_table().column("label").to_pylist())
elif step == "new-row":
    result = p.run()
    out["run"] = {label: [s.computed, s.cached, s.failed] for label, s in result.stats.items()}
    out["errors"] = result.stats["calibrated"].errors
    try:
        p.run(error_policy="fail_fast")
    except PacketFunctionUnavailableError as exc:
        out["fail_fast"] = str(exc)
elif step == "bind":
    import restored
    p.calibrated.packet_function.bind(restored.calibrate.pod.packet_function)
    out["status_after_bind"] = p.calibrated.load_status.value
    result = p.run()
    out["run"] = {label: [s.computed, s.cached, s.failed] for label, s in result.stats.items()}
    out["labels"] = sorted(p.labelled.as_table().column("label").to_pylist())
print(json.dumps(out))
'''


def run_step(tmp_path, script: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "code")}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_read_only_load_in_fresh_processes_after_the_function_module_is_deleted(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "lab.py").write_text(LAB)
    (code / "report.py").write_text(REPORT)
    (tmp_path / "readings.csv").write_text("id,x\n1,10\n2,20\n3,30\n")

    assert run_step(tmp_path, BUILD) == {"computed": 3}
    (code / "lab.py").unlink()

    read = run_step(tmp_path, LOAD, "read")
    assert read["status"] == {"readings": "full", "calibrated": "read_only", "labelled": "full"}
    assert "PacketFunctionProxy('calibrate', version='v2', lab:calibrate, unbound)" == read["proxy"]
    assert read["cached"] == [21, 41, 61]
    assert read["run"]["calibrated"] == [0, 3, 0] and read["run"]["labelled"] == [3, 0, 0]
    assert read["labels"] == ["value=21", "value=41", "value=61"]

    with open(tmp_path / "readings.csv", "a") as fh:
        fh.write("4,40\n")
    new_row = run_step(tmp_path, LOAD, "new-row")
    assert new_row["run"]["calibrated"] == [0, 3, 1] and new_row["run"]["labelled"] == [0, 3, 0]
    assert "PacketFunctionUnavailableError" in new_row["errors"][0] and "lab:calibrate" in new_row["errors"][0]
    assert "'calibrate'" in new_row["fail_fast"] and "lab:calibrate" in new_row["fail_fast"]

    (code / "restored.py").write_text(LAB)  # the same code, under another module name
    bound = run_step(tmp_path, LOAD, "bind")
    assert bound["status"]["calibrated"] == "read_only" and bound["status_after_bind"] == "full"
    assert bound["run"]["calibrated"] == [1, 3, 0] and bound["run"]["labelled"] == [1, 3, 0]
    assert bound["labels"] == ["value=21", "value=41", "value=61", "value=81"]


TRUST = '''
import json, sys
from pathlib import Path
from orcapod_core.errors import PipelineLoadError
from orcapod_core.pipeline import Pipeline

out = {}
try:
    Pipeline.load("study.json", allowed_modules=sys.argv[1:])
except PipelineLoadError as exc:
    out["refused"] = str(exc)
else:
    out["refused"] = None
out["imported"] = sorted(m for m in ("lab", "report") if m in sys.modules)
out["lab_ran"] = Path("lab.ran").exists()
print(json.dumps(out))
'''


@pytest.mark.slow
def test_a_fresh_process_never_imports_a_module_outside_allowed_modules(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    # lab's top-level code leaves a file behind, so running it shows even across processes
    (code / "lab.py").write_text('import pathlib\npathlib.Path("lab.ran").touch()\n' + LAB)
    (code / "report.py").write_text(REPORT)
    (tmp_path / "readings.csv").write_text("id,x\n1,10\n2,20\n")
    assert run_step(tmp_path, BUILD) == {"computed": 2}
    (tmp_path / "lab.ran").unlink()

    refused = run_step(tmp_path, TRUST, "report", "lab_tools")
    assert "study.json: node 'calibrated'" in refused["refused"]
    assert "module 'lab' is not in allowed_modules ['report', 'lab_tools'], so it was not imported" in refused["refused"]
    assert refused["imported"] == [] and refused["lab_ran"] is False

    allowed = run_step(tmp_path, TRUST, "lab", "report")
    assert allowed == {"refused": None, "imported": ["lab", "report"], "lab_ran": True}
