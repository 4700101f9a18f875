"""Executors: where a packet function's calls run — in this process (threads at most), on a
local process pool, or on a Ray cluster. Executors are values (frozen dataclasses) and never
part of a function's identity: a result computed on one is a cache hit for all the others.

>>> from orcapod_core.executors import LocalPythonFunctionExecutor, LocalProcessExecutor, RayExecutor
>>> LocalProcessExecutor(max_workers=2).with_options(chunk_size=8)
LocalProcessExecutor(max_workers=2, chunk_size=8)
"""

from orcapod_core.executors.base import ChunkDone, PythonFunctionExecutor, check_executor, plan_chunks, run_coroutine_sync
from orcapod_core.executors.local import LocalPythonFunctionExecutor
from orcapod_core.executors.process import LocalProcessExecutor
from orcapod_core.executors.ray_cluster import RayExecutor

__all__ = [
    "PythonFunctionExecutor",
    "LocalPythonFunctionExecutor",
    "LocalProcessExecutor",
    "RayExecutor",
    "ChunkDone",
    "check_executor",
    "plan_chunks",
    "run_coroutine_sync",
]
