"""LocalProcessExecutor: a node's packets on a pool of local worker processes (every core).

Workers are started with ``spawn`` (never ``fork``: the parent runs threads — Arrow, Polars,
Dagster — and a forked copy of a lock held by another thread deadlocks). A function travels to
them **by reference** — module and qualified name, as ``pickle`` does — so it must be defined at
the top level of an importable module: functions defined inside other functions, in
``python -c``, ``exec`` or a REPL are refused when the executor is assigned, with the reason.
Arguments and results travel by pickle too (transport, not storage). A script that uses a
process pool keeps its top-level work under ``if __name__ == "__main__":`` (``spawn`` imports the
main module in every worker).

Within a pipeline run one pool serves every node (:meth:`LocalProcessExecutor.session`) and is
shut down when the run ends; outside a run each batch starts its own.

>>> ex = LocalProcessExecutor(max_workers=4)
>>> ex.concurrency(), ex.get_executor_data()
(4, {'executor_type': 'process', 'max_workers': '4', 'chunk_size': ''})
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import inspect
import multiprocessing
import os
import pickle
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, ClassVar

from orcapod_core.capture import call_many
from orcapod_core.errors import ExecutorTypeError, InputValidationError, PacketComputationError
from orcapod_core.executors.base import ChunkDone, ChunkedExecutor
from orcapod_core.interrupts import stop_requested

__all__ = ["LocalProcessExecutor", "check_travels"]

_pools: dict[LocalProcessExecutor, list] = {}  # executor → [pool or None (not started yet), session depth]
_pools_lock = threading.Lock()


def check_travels(function: Callable[..., Any], executor: str) -> None:
    """Raise :class:`ExecutorTypeError` unless ``function`` can be sent to another process by
    reference (defined at the top level of an importable module)."""
    name = getattr(function, "__qualname__", repr(function))
    module = getattr(function, "__module__", None)
    where = None
    if "<locals>" in name:
        where = "it is defined inside another function"
    elif module == "__main__" and not hasattr(sys.modules.get("__main__"), "__file__"):
        where = "it is defined in `python -c`, `exec` or an interactive session, which worker processes cannot import"
    else:
        try:
            pickle.dumps(function)
        except Exception as exc:  # PicklingError, AttributeError, TypeError...
            where = f"it cannot be pickled by reference ({exc})"
    if where is not None:
        raise ExecutorTypeError(
            f"{executor} cannot run function {name!r} (module {module!r}): {where}. Functions travel to worker "
            f"processes by module and name: define it at the top level of a module file"
        )


def _worker_context() -> Any:
    """``spawn``, but a worker does not run the parent's main module again when no function
    lives there — a Dagster step's main module is the ``dagster`` command, whose import costs a
    worker a second or more; a script's main module (its functions) is still run, as ``spawn``
    does."""
    main = sys.modules.get("__main__")
    defines = any(inspect.isfunction(v) and v.__module__ == "__main__" for v in vars(main).values()) if main else False
    if defines or _popen is None:
        return multiprocessing.get_context("spawn")
    return _NoMainContext()


try:  # POSIX: the spawn launcher, with the preparation data minus the main module
    import io
    from multiprocessing import popen_spawn_posix, reduction, spawn
    from multiprocessing.context import SpawnContext, SpawnProcess, set_spawning_popen

    class _NoMainPopen(popen_spawn_posix.Popen):
        def _launch(self, process_obj: Any) -> None:  # popen_spawn_posix.Popen._launch, main module dropped
            from multiprocessing import resource_tracker, util

            tracker_fd = resource_tracker.getfd()
            self._fds.append(tracker_fd)
            prep_data = spawn.get_preparation_data(process_obj._name)
            prep_data.pop("init_main_from_path", None)
            prep_data.pop("init_main_from_name", None)
            fp = io.BytesIO()
            set_spawning_popen(self)
            try:
                reduction.dump(prep_data, fp)
                reduction.dump(process_obj, fp)
            finally:
                set_spawning_popen(None)
            parent_r = child_w = child_r = parent_w = None
            try:
                parent_r, child_w = os.pipe()
                child_r, parent_w = os.pipe()
                cmd = spawn.get_command_line(tracker_fd=tracker_fd, pipe_handle=child_r)
                self._fds.extend([child_r, child_w])
                self.pid = util.spawnv_passfds(spawn.get_executable(), cmd, self._fds)
                self.sentinel = parent_r
                with open(parent_w, "wb", closefd=False) as f:
                    f.write(fp.getbuffer())
            finally:
                self.finalizer = util.Finalize(self, util.close_fds, [fd for fd in (parent_r, parent_w) if fd is not None])
                for fd in (child_r, child_w):
                    if fd is not None:
                        os.close(fd)

    class _NoMainProcess(SpawnProcess):
        @staticmethod
        def _Popen(process_obj: Any) -> Any:
            return _NoMainPopen(process_obj)

    class _NoMainContext(SpawnContext):
        Process = _NoMainProcess

    _popen: Any = _NoMainPopen
except (ImportError, AttributeError):  # another platform: plain spawn
    _popen = None


def _ignore_interrupts() -> None:
    """Workers ignore Ctrl-C (a terminal sends it to the whole process group): the parent stops
    the run cleanly and the pool finishes or cancels their chunks."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker_info() -> dict[str, str]:
    return {"pid": str(os.getpid())}


def _run_chunk(fn: Callable[..., Any], kwargs_list: list[dict[str, Any]], capture: bool, fail_fast: bool) -> tuple[list[Any], dict[str, str]]:
    return call_many(fn, kwargs_list, capture=capture, fail_fast=fail_fast, portable=True), _worker_info()


@dataclass(frozen=True)
class LocalProcessExecutor(ChunkedExecutor):
    """Runs a node's uncached packets on a pool of ``max_workers`` local processes (default: one
    per core), in chunks, results streamed back as chunks complete.

    ``chunk_size``: packets per submitted chunk (default: about four chunks per worker, at most
    1,024 packets each — see :func:`~orcapod_core.executors.base.plan_chunks`).

    >>> @function_pod(output_keys="y", executor=LocalProcessExecutor())    # doctest: +SKIP
    ... def segment(path: str) -> int: ...
    >>> pipeline.run(executor=LocalProcessExecutor(max_workers=8))          # doctest: +SKIP
    """

    executor_type: ClassVar[str] = "process"
    remote: ClassVar[bool] = True

    max_workers: int | None = None
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_workers", "chunk_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise InputValidationError(f"LocalProcessExecutor: {name} must be an int >= 1 or None, got {value!r}")

    def concurrency(self) -> int:
        return self.max_workers or os.cpu_count() or 1

    def check_function(self, function: Callable[..., Any]) -> None:
        check_travels(function, "LocalProcessExecutor")

    # -- the pool -------------------------------------------------------------------------
    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """One pool for every batch inside the block (nested sessions share it), started when
        the first packet needs it — a run with nothing to compute starts no process — and shut
        down at the end of the outermost session."""
        with _pools_lock:
            entry = _pools.setdefault(self, [None, 0])
            entry[1] += 1
        try:
            yield
        finally:
            with _pools_lock:
                entry[1] -= 1
                pool = entry[0] if entry[1] == 0 else None
                if entry[1] == 0:
                    del _pools[self]
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(self.concurrency(), mp_context=_worker_context(), initializer=_ignore_interrupts)

    @contextlib.contextmanager
    def _pool(self) -> Iterator[concurrent.futures.ProcessPoolExecutor]:
        """The session's pool (started now if needed; a fresh one if a worker died), or a pool
        for this call alone outside a session."""
        with _pools_lock:
            entry = _pools.get(self)
            if entry is not None and (entry[0] is None or getattr(entry[0], "_broken", False)):
                entry[0] = self._new_pool()
        if entry is not None:
            yield entry[0]
            return
        with self.session():
            yield self._pool_now()

    def _pool_now(self) -> concurrent.futures.ProcessPoolExecutor:
        with _pools_lock:
            entry = _pools[self]
            if entry[0] is None:
                entry[0] = self._new_pool()
            return entry[0]

    # -- running --------------------------------------------------------------------------
    def map_chunks(
        self,
        fn: Callable[..., Any],
        chunks: Iterable[list[dict[str, Any]]],
        *,
        fail_fast: bool = False,
        capture: bool = False,
    ) -> Iterator[ChunkDone]:
        """Submit the chunks to the pool (at most two per worker waiting at a time) and yield
        each as it completes. A worker that dies fails the packets of its chunk with
        :class:`~orcapod_core.errors.PacketComputationError`."""
        self.check_function(fn)
        with self._pool() as pool:
            yield from _stream(pool, fn, iter(enumerate(chunks)), 2 * self.concurrency(), capture, fail_fast)


def _stream(
    pool: concurrent.futures.ProcessPoolExecutor,
    fn: Callable[..., Any],
    chunks: Iterator[tuple[int, list[dict[str, Any]]]],
    in_flight: int,
    capture: bool,
    fail_fast: bool,
) -> Iterator[ChunkDone]:
    pending: dict[concurrent.futures.Future, tuple[int, int]] = {}
    stop = False

    def submit() -> None:
        while not stop and not stop_requested() and len(pending) < in_flight:
            item = next(chunks, None)
            if item is None:
                return
            index, chunk = item
            pending[pool.submit(_run_chunk, fn, chunk, capture, fail_fast)] = (index, len(chunk))

    try:
        submit()
        while pending:
            finished, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                index, size = pending.pop(future)
                try:
                    results, info = future.result()
                except BrokenProcessPool as exc:
                    error = PacketComputationError(f"the worker process running this packet died ({exc})")
                    results, info = [error] * size, None
                failed = any(isinstance(r, BaseException) for r in results)
                stop = stop or (fail_fast and failed)
                yield ChunkDone(index, results, info)
            if stop_requested():  # a stop signal: what has not started is cancelled, what runs is awaited
                for future in [f for f in pending if f.cancel()]:
                    del pending[future]
            submit()
    finally:
        for future in pending:
            future.cancel()
