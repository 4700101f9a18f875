"""The ``orcapod`` command: run a pipeline, show what its store holds, draw its graph.

::

    orcapod run    pkg.module:attr [--node LABEL ...] [--async] [--progress | --no-progress]
    orcapod status pkg.module:attr
    orcapod graph  pkg.module:attr [--format text|mermaid|dot]

A target names a :class:`~orcapod_core.pipeline.Pipeline`, or a function called with no
arguments that returns one: ``pkg.module:attr`` or ``pkg.module:obj.attr`` (imported with the
working directory on the import path, as ``python -m`` does) or ``path/to/file.py:attr`` (its
folder on the path). ``python -m orcapod_core.cli`` is the same command.

``run`` shows the progress display of ``pipeline.run(progress=...)`` on stderr (``"auto"``: when
stderr is a terminal; ``--progress`` / ``--no-progress`` force it on / off). The per-node
summary follows the display on stderr when there is one, else goes to stdout; the closing line
(``run <id>: N computed, M cached, K failed in T s``) always goes to stdout.

Exit codes: ``0`` success; ``1`` the run finished but packets failed (they are listed);
``2`` an error — a target that cannot be loaded, bad arguments, a run that raised; ``130``
interrupted (Ctrl-C, SIGTERM), after committing what was computed. Errors are one line on
stderr (``orcapod: error: ...``); ``--debug`` adds the traceback.

>>> main(["graph", "example_project.pipeline:build_pipeline", "--format", "mermaid"])   # doctest: +SKIP
flowchart LR
...
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from orcapod_core.errors import TargetLoadError
from orcapod_core.pipeline import AsyncPipelineOrchestrator, Pipeline, SyncPipelineOrchestrator
from orcapod_core.pipeline.pictures import to_text
from orcapod_core.pipeline.progress import progress_observer
from orcapod_core.pipeline.store_status import NodeStoreStatus, store_status

__all__ = ["EXIT_OK", "EXIT_FAILED_PACKETS", "EXIT_ERROR", "EXIT_INTERRUPTED", "load_target", "format_status", "main", "console_main"]

EXIT_OK = 0
EXIT_FAILED_PACKETS = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

#: Failed packets listed per node after a run (all of them are in the RunResult / logs).
SHOWN_FAILURES = 3


def load_target(target: str) -> Pipeline:
    """The pipeline a ``module:attr`` or ``file.py:attr`` target names (calling ``attr`` when
    it is a zero-argument builder). Raises :class:`~orcapod_core.errors.TargetLoadError`
    naming the target and what is wrong with it.

    >>> load_target("example_project.pipeline:build_pipeline")          # doctest: +SKIP
    Pipeline('water_quality', nodes=[...])
    """
    where, sep, attr = target.rpartition(":")
    if not sep or not where or not attr:
        raise TargetLoadError(f"target {target!r} is not 'pkg.module:attr' or 'path/to/file.py:attr'")
    module = _import(target, where)
    value: Any = module
    for i, part in enumerate(attr.split(".")):  # ``module:obj.attr`` walks attributes
        if not hasattr(value, part):
            owner = f"module {module.__name__!r}" if i == 0 else repr(".".join(attr.split(".")[:i]))
            raise TargetLoadError(f"target {target!r}: {owner} has no attribute {part!r}")
        value = getattr(value, part)
    if isinstance(value, Pipeline):
        return value
    if not callable(value):
        raise TargetLoadError(f"target {target!r} is a {type(value).__name__}, not a Pipeline or a function returning one")
    try:
        inspect.signature(value).bind()
    except TypeError:
        raise TargetLoadError(f"target {target!r}: {attr}() needs arguments; name a Pipeline or a zero-argument builder") from None
    except ValueError:  # no signature to inspect (some builtins): just call it
        pass
    try:
        built = value()
    except Exception as exc:
        raise TargetLoadError(f"target {target!r}: {attr}() raised {_one_line(exc)}") from exc
    if not isinstance(built, Pipeline):
        raise TargetLoadError(f"target {target!r}: {attr}() returned a {type(built).__name__}, not a Pipeline")
    return built


def _import(target: str, where: str) -> Any:
    # Modules are found from the working directory, as with ``python -m`` (a console script
    # has its own folder on the path instead).
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    is_file = where.endswith(".py") or "/" in where or os.sep in where
    name = Path(where).stem if is_file else where
    try:
        if is_file:
            return _import_file(target, Path(where))
        return importlib.import_module(where)
    except TargetLoadError:
        raise
    except ModuleNotFoundError as exc:
        if not is_file and exc.name and (where == exc.name or where.startswith(exc.name + ".")):
            raise TargetLoadError(f"target {target!r}: no module named {exc.name!r} (searched from {os.getcwd()})") from exc
        raise TargetLoadError(f"target {target!r}: importing {name!r} failed: {_one_line(exc)}") from exc
    except Exception as exc:
        raise TargetLoadError(f"target {target!r}: importing {name!r} failed: {_one_line(exc)}") from exc


def _import_file(target: str, path: Path) -> Any:
    path = path.resolve()
    if not path.is_file():
        raise TargetLoadError(f"target {target!r}: no file {str(path)!r}")
    sys.path.insert(0, str(path.parent))  # as ``python path/to/file.py`` has it
    # Registered under its stem (so pickling by reference and function identity see a real
    # module), unless that name is taken by another module.
    name = path.stem if path.stem not in sys.modules else f"_orcapod_target_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TargetLoadError(f"target {target!r}: {str(path)!r} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# -- commands ---------------------------------------------------------------------------------


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    pipeline = load_target(args.target)
    orchestrator = AsyncPipelineOrchestrator() if args.use_async else SyncPipelineOrchestrator()
    # The display run(progress=...) would show, built here to know whether it prints the
    # summary (on stderr, after the live lines): then stdout gets only the closing line.
    display = progress_observer(
        {None: "auto", True: True, False: False}[args.progress], None, err, exact_totals=not args.use_async
    )
    result = pipeline.run(orchestrator, observer=display, progress=False, nodes=args.node or None)
    if display is None:
        print(result.summary(), file=out)
        print(file=out)
    print(f"run {result.run_id}: {result.computed} computed, {result.cached} cached, {result.failed} failed in {result.duration_s:.2f}s", file=out)
    if not result.failed:
        return EXIT_OK
    for stats in result.stats.values():
        if stats.failed:
            shown = "; ".join(stats.errors[:SHOWN_FAILURES])
            more = f" (+{len(stats.errors) - SHOWN_FAILURES} more)" if len(stats.errors) > SHOWN_FAILURES else ""
            print(f"orcapod: node {stats.label!r}: {stats.failed} packet(s) failed: {shown}{more}", file=err)
    return EXIT_FAILED_PACKETS


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def _when(moment: datetime.datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment is not None else "-"


def format_status(pipeline: Pipeline, statuses: Sequence[NodeStoreStatus]) -> str:
    """The ``orcapod status`` table: per node, stored rows (the node's own table; results for
    function nodes), bytes, last commit and last recording run."""
    header = ("node", "kind", "rows", "results", "bytes", "last written", "last run")
    rows = [
        (
            s.label,
            s.kind,
            str(s.records.rows) if s.records else "-",
            str(s.results.rows) if s.results else "-",
            _size(s.bytes) if (s.records or s.results) else "-",
            _when(s.last_written),
            s.last_run_id or "-",
        )
        for s in statuses
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if 2 <= i <= 4 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    total = sum(s.bytes for s in statuses)
    store = getattr(pipeline.pipeline_database, "base_uri", None) or repr(pipeline.pipeline_database)
    footer = f"{'/'.join(pipeline.name)}: {len(statuses)} nodes, {_size(total)} in {store}"
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows), "", footer])


def _status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    pipeline = load_target(args.target)
    print(format_status(pipeline, store_status(pipeline)), file=out)
    return EXIT_OK


def _graph(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    pipeline = load_target(args.target)
    text = {"text": to_text, "mermaid": Pipeline.to_mermaid, "dot": Pipeline.to_dot}[args.format](pipeline)
    print(text, file=out)
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orcapod", description="Run orcapod pipelines and inspect their stores.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{run,status,graph}")
    target = "a Pipeline or a zero-argument function returning one: pkg.module:attr or path/to/file.py:attr"

    run = commands.add_parser("run", help="run a pipeline: compute what is missing, print a summary")
    run.add_argument("target", help=target)
    run.add_argument("--node", action="append", metavar="LABEL", help="run only this node and what it needs (repeatable)")
    run.add_argument("--async", dest="use_async", action="store_true", help="all nodes concurrently (AsyncPipelineOrchestrator)")
    progress = run.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None, help="live progress on stderr")
    progress.add_argument("--no-progress", dest="progress", action="store_false", help="no live progress")
    run.set_defaults(handler=_run)

    status = commands.add_parser("status", help="what the store holds per node (runs nothing)")
    status.add_argument("target", help=target)
    status.set_defaults(handler=_status)

    graph = commands.add_parser("graph", help="the pipeline's graph as text, Mermaid or DOT")
    graph.add_argument("target", help=target)
    graph.add_argument("--format", choices=("text", "mermaid", "dot"), default="text")
    graph.set_defaults(handler=_graph)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the ``orcapod`` command with ``argv`` (default: the process's arguments); returns
    the exit code (see the module notes).

    >>> main(["graph", "my_lab.pipelines:build"])          # doctest: +SKIP
    0
    """
    out, err = out or sys.stdout, err or sys.stderr
    args = _parser().parse_args(argv)  # bad usage: argparse's message and exit code 2 (EXIT_ERROR)
    try:
        return args.handler(args, out, err)
    except KeyboardInterrupt:  # also RunInterrupted (SIGTERM/SIGINT): what was computed is committed
        print("orcapod: interrupted; what was computed is stored", file=err)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.debug:
            traceback.print_exc(file=err)
        print(f"orcapod: error: {exc if isinstance(exc, TargetLoadError) else _one_line(exc)}", file=err)
        return EXIT_ERROR


def console_main() -> NoReturn:
    """The console script (and ``python -m orcapod_core.cli``): :func:`main`, then exit with its
    code through the interpreter's ordinary shutdown (exit handlers commit what databases hold
    pending)."""
    sys.exit(main())


if __name__ == "__main__":
    console_main()
