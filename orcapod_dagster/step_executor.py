"""The Dagster executor for one step per node: multiprocess steps forked from a preloaded server.

With ``granularity="node"`` every node is a step, and Dagster's default multiprocess executor
starts every step as a fresh interpreter (``spawn``) that imports Dagster, the storage layer of
the instance (sqlalchemy, alembic), polars, pyarrow, deltalake, orcapod and the code location
again: about a second per step before any work. :func:`forkserver_executor` is
``multiprocess_executor`` with ``start_method: forkserver``: one server process per run imports
all of that once (``preload_modules``) and every step is forked from it, so a step starts in
milliseconds and still runs in its own process (per-step isolation, retries, crash safety).

The trade-off: the preloaded modules are imported once per run, in the server, before any step
— a module whose import has side effects (opens connections, starts threads) does that in the
server, and every step inherits its state at import time. ``in_process_executor`` is faster
still (no process per step) but runs every step in the run's process, one after the other.

>>> defs = build_definitions(pipeline, granularity="node")       # forkserver_executor(pipeline)  # doctest: +SKIP
>>> defs = build_definitions(pipeline, granularity="node", executor=dg.in_process_executor)     # doctest: +SKIP
"""

from __future__ import annotations

import functools
import multiprocessing
from collections.abc import Sequence

import dagster as dg

from orcapod_core.pipeline import Pipeline

__all__ = ["forkserver_executor", "preload_modules", "BASE_PRELOAD"]

#: Imported in the forkserver of every run: Dagster, the parts of it a step imports only when
#: it opens the instance (its sqlite storages: sqlalchemy and alembic, ~0.6 s per step
#: otherwise), and orcapod_dagster (orcapod, polars, pyarrow, deltalake). A module that does
#: not exist in the installed Dagster is skipped by the forkserver (an ImportError there is
#: ignored), so a Dagster upgrade that moves one costs speed, never a failure.
BASE_PRELOAD = (
    "dagster",
    "dagster._core.instance.factory",
    "dagster._core.storage.root",
    "dagster._core.storage.sqlite_storage",
    "dagster._core.storage.event_log",
    "dagster._core.storage.runs",
    "dagster._core.storage.schedules",
    "orcapod_dagster",
)


def preload_modules(*pipelines: Pipeline, modules: Sequence[str] = ()) -> list[str]:
    """The modules a forkserver preloads for ``pipelines``: :data:`BASE_PRELOAD`, the modules
    defining their functions (and so whatever those import: numpy, torch, ...) and ``modules``.

    >>> preload_modules(pipeline)[-1]                               # doctest: +SKIP
    'example_project.functions'
    """
    found: list[str] = []
    for pipeline in pipelines:
        for node in pipeline.nodes.values():
            if node.kind != "function":
                continue
            function = getattr(node.packet_function, "function", None)  # type: ignore[attr-defined]
            module = getattr(function, "__module__", None)
            if module and module != "__main__" and module not in found:
                found.append(module)
    return list(dict.fromkeys([*BASE_PRELOAD, *sorted(found), *modules]))


@functools.lru_cache(maxsize=None)
def _configured(preload: tuple[str, ...]) -> dg.ExecutorDefinition:
    # One object per module list: Definitions.merge accepts definitions sharing an executor
    # only when it is the same object.
    return dg.multiprocess_executor.configured(
        {"start_method": {"forkserver": {"preload_modules": list(preload)}}}, name="multiprocess"
    )


def forkserver_executor(*pipelines: Pipeline, modules: Sequence[str] = ()) -> dg.ExecutorDefinition:
    """Dagster's ``multiprocess_executor`` starting steps with ``forkserver``, preloading
    :func:`preload_modules` (the same object for the same modules). Where the platform has no
    forkserver (Windows), Dagster's default multiprocess executor.

    ``build_definitions(pipeline, granularity="node")`` uses it when no ``executor=`` is given;
    to merge two such code locations whose functions live in different modules, give both the
    same one: ``ex = forkserver_executor(a, b)``, ``build_definitions(a, ..., executor=ex)``.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return dg.multiprocess_executor
    return _configured(tuple(preload_modules(*pipelines, modules=modules)))
