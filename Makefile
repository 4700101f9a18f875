# Two commands do all set-up on a machine with only python3: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Reinstall when the project metadata changes or a package's __init__.py appears/changes: an
# editable install maps the packages that exist when it runs (one missing then would later be
# imported as a namespace package).
PACKAGES := orcapod_core orcapod_dagster example_project
# `make run` and `make ui` share this instance (run history, materializations, schedules).
export DAGSTER_HOME := $(CURDIR)/.dagster
# Step logs at INFO: orcapod's per-node lines without Dagster's debug events.
RUN_CONFIG := {"loggers": {"console": {"config": {"log_level": "INFO"}}}}

.PHONY: run test ui bench install instance clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml $(PACKAGES:%=%/__init__.py) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	$(BIN)/python -I -c "import importlib; bad = [p for p in '$(PACKAGES)'.split() if not (importlib.import_module(p).__file__ or '').startswith('$(CURDIR)/')]; assert not bad, f'not installed as regular packages from $(CURDIR): {bad}'"
	touch $(STAMP)

install: $(STAMP)

# The instance under DAGSTER_HOME (default sqlite storage shared by the CLI and `dagster dev`; no
# telemetry) is created once, under a lock, before any command uses it: two dagster processes
# creating a fresh instance at the same time can break it for good (two alembic heads).
INSTANCE := $(DAGSTER_HOME)/.initialized

$(INSTANCE): | $(STAMP)
	$(BIN)/python -m orcapod_dagster.instance "$(DAGSTER_HOME)"

instance: $(INSTANCE)

# Two warnings Dagster itself prints on every `dagster asset materialize`, silenced for `make run`
# only (exact message prefixes; README "From `make run` to the UI" says more):
# * the command is "superseded" by `dg launch --assets`, which runs the same code but lives in
#   dagster-dg-cli, a package that pins an exact Dagster release and brings the Dagster Cloud CLI;
# * Dagster's own parsing of the selection '*' passes a beta parameter (`include_sources`).
run: export PYTHONWARNINGS := ignore:Function `asset_materialize_command` is superseded,ignore:Parameter `include_sources` of function `AssetSelection.all` is currently in beta

# Materialize every asset of the example code location into ./.orcapod/, then summarize the
# latest materialization of each asset (run it twice: everything is cached the second time).
run: install $(INSTANCE)
	$(BIN)/dagster asset materialize --select '*' -m example_project.definitions --config-json '$(RUN_CONFIG)'
	@echo
	$(BIN)/python -m example_project.summary

test: install
	$(BIN)/python -m pytest -q

# `dagster dev` is superseded by `dg dev` (dagster-dg-cli again): that one warning is silenced too.
ui: export PYTHONWARNINGS := ignore:Function `dev_command` is superseded
ui: install $(INSTANCE)
	$(BIN)/dagster dev -w workspace.yaml

bench: install
	$(BIN)/python benchmarks/bench_core.py
	$(BIN)/python benchmarks/bench_group_by.py
	$(BIN)/python benchmarks/bench_files.py
	$(BIN)/python benchmarks/bench_passthrough.py
	$(BIN)/python benchmarks/bench_pipeline.py
	$(BIN)/python benchmarks/bench_dagster.py
	$(BIN)/python benchmarks/bench_many_nodes.py
	$(BIN)/python benchmarks/bench_node_steps.py
	$(BIN)/python benchmarks/bench_sources.py
	$(BIN)/python benchmarks/bench_scale.py
	$(BIN)/python benchmarks/bench_progress.py
	$(BIN)/python benchmarks/bench_cli.py
	$(BIN)/python benchmarks/bench_exit.py

clean:
	rm -rf $(VENV) .orcapod .dagster
