"""The executor protocol: where and how a packet function's Python callable actually runs.

An executor is an immutable value (a frozen dataclass): ``with_options(**opts)`` returns a
new one. It receives a plain callable and its keyword arguments — never packets, tags or
Arrow internals — so the same function runs in-process, on a thread pool, on a local process
pool or on a Ray cluster without changing what it computes. Executors are not part of a
function's identity: the same packet gives the same result wherever it ran.

Two ways to run many calls:

* :meth:`PythonFunctionExecutor.execute_batch` — one batch, results in input order;
* :meth:`PythonFunctionExecutor.map_chunks` — many chunks of calls, each chunk's results
  yielded **as the chunk completes**, so a node stores what is done while the rest still runs.
  Executors that run calls elsewhere (``concurrency() > 1``) get all of a node's packets at once,
  split into chunks by :func:`plan_chunks`.

A packet function checks an executor when it is assigned (``pf.executor = ex``), not when it
is called: the executor class must list the function's ``function_type`` in its
``supported_function_types`` (once per class pair), and the function must be able to reach the
executor's workers (:meth:`PythonFunctionExecutor.check_function`).

>>> from orcapod_core.executors import LocalPythonFunctionExecutor
>>> ex = LocalPythonFunctionExecutor()
>>> ex.execute_callable(lambda x: x + 1, {"x": 1})
2
>>> ex.with_options(max_workers=4).max_workers, ex.max_workers
(4, 1)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import inspect
import json
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from orcapod_core.capture import capturing
from orcapod_core.errors import ExecutorTypeError, InputValidationError
from orcapod_core.interrupts import stop_requested
from orcapod_core.types import Schema

__all__ = [
    "ChunkedExecutor",
    "PythonFunctionExecutor",
    "ChunkDone",
    "check_executor",
    "plan_chunks",
    "run_coroutine_sync",
]

_T = TypeVar("_T")
_E = TypeVar("_E", bound="PythonFunctionExecutor")


def run_coroutine_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to completion from synchronous code.

    Uses ``asyncio.run`` when no event loop is running in this thread; inside a running
    loop (a notebook, an async orchestrator) it runs on a fresh loop in a worker thread,
    because blocking on the running loop from within it would deadlock.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="orcapod-async") as pool:
        return pool.submit(asyncio.run, coro).result()


@dataclass(frozen=True)
class ChunkDone:
    """One completed chunk of calls: its position among the chunks, one result (or raised
    exception) per call in the chunk's order, and where it ran (``info``: e.g. the Ray node or
    the worker process; ``None`` in-process)."""

    index: int
    results: list[Any]
    info: dict[str, str] | None = None


def plan_chunks(n: int, concurrency: int, chunk_size: int | None = None) -> list[tuple[int, int]]:
    """``(start, length)`` chunks covering ``n`` calls for an executor running ``concurrency``
    at once: about four chunks per worker (so uneven calls balance out), at most 1,024 calls per
    chunk (so results stream back), ``chunk_size`` when given.

    >>> plan_chunks(10, 2)
    [(0, 2), (2, 2), (4, 2), (6, 2), (8, 2)]
    """
    size = chunk_size or max(1, min(-(-n // (4 * max(concurrency, 1))), 1024))
    return [(start, min(size, n - start)) for start in range(0, n, size)]


@dataclass(frozen=True)
class PythonFunctionExecutor:
    """Base of every executor of Python callables (the executor protocol, with defaults).

    Subclasses set ``executor_type``, may widen ``supported_function_types`` and implement
    :meth:`execute_callable` (and, for real concurrency, :meth:`execute_batch` /
    :meth:`async_execute_callable`). Fields are the executor's options.
    """

    executor_type: ClassVar[str] = "abstract"
    supported_function_types: ClassVar[frozenset[str]] = frozenset({"python"})
    #: True when calls run in other processes or machines: the function and its arguments
    #: travel (by pickle — transport, never storage) and exceptions come back with their
    #: traceback text.
    remote: ClassVar[bool] = False

    # -- capability -----------------------------------------------------------------
    @classmethod
    def supports(cls, function_type: str) -> bool:
        """Whether this executor class can run functions of ``function_type``."""
        return function_type in cls.supported_function_types

    def with_options(self: _E, **opts: Any) -> _E:
        """A new executor with some options changed (this one is never modified)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(opts) - known)
        if unknown:
            raise InputValidationError(
                f"{type(self).__name__} has no option(s) {unknown}; known options: {sorted(known)}"
            )
        return dataclasses.replace(self, **opts)

    # -- running --------------------------------------------------------------------
    def execute_callable(self, fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> Any:
        """Call ``fn(**kwargs)`` and return its result (coroutine functions are run to completion)."""
        raise NotImplementedError

    async def async_execute_callable(self, fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> Any:
        """Awaitable form of :meth:`execute_callable`."""
        if inspect.iscoroutinefunction(fn):
            return await fn(**kwargs)
        return self.execute_callable(fn, kwargs)

    def execute_batch(
        self, fn: Callable[..., Any], kwargs_list: Sequence[Mapping[str, Any]], *, fail_fast: bool = False
    ) -> list[Any]:
        """Call ``fn`` once per kwargs; each item of the result is the return value or the
        exception it raised, in input order. With ``fail_fast`` the list ends at the first
        exception (later calls are skipped where possible).

        Coroutine functions run concurrently on one event loop; the sequential default
        otherwise calls one after the other in this thread.
        """
        if inspect.iscoroutinefunction(fn):
            return run_coroutine_sync(self._gather(fn, kwargs_list, fail_fast))
        out: list[Any] = []
        append = out.append
        call = self.execute_callable
        for kwargs in kwargs_list:
            if stop_requested():  # a stop signal: the calls made so far are returned
                break
            try:
                append(call(fn, kwargs))
            except Exception as exc:  # the caller decides: re-raise, or record a failed packet
                append(exc)
                if fail_fast:
                    break
        return out

    async def _gather(self, fn: Callable[..., Any], kwargs_list: Sequence[Mapping[str, Any]], fail_fast: bool) -> list[Any]:
        results = await asyncio.gather(
            *(self.async_execute_callable(fn, kwargs) for kwargs in kwargs_list), return_exceptions=True
        )
        if fail_fast:
            for i, r in enumerate(results):
                if isinstance(r, BaseException):
                    return list(results[: i + 1])
        return list(results)

    def concurrency(self) -> int:
        """How many calls this executor runs at once (1: one after the other, here)."""
        return 1

    def check_function(self, function: Callable[..., Any]) -> None:
        """Raise :class:`~orcapod_core.errors.ExecutorTypeError` when ``function`` cannot run on
        this executor's workers (e.g. it cannot travel to another process)."""

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Keep this executor's workers (a process pool, a cluster connection) alive for the
        block: calls inside reuse them. A pipeline run holds one session per executor it uses."""
        yield

    def map_chunks(
        self,
        fn: Callable[..., Any],
        chunks: Iterable[list[dict[str, Any]]],
        *,
        fail_fast: bool = False,
        capture: bool = False,
    ) -> Iterator[ChunkDone]:
        """Run every chunk of calls; yield each chunk's results (:class:`ChunkDone`, results in
        the chunk's order) as the chunk completes — here, one chunk after the other. With
        ``capture`` each result is ``(value, captured output)``. With ``fail_fast`` no chunk is
        started after a failure. Closing the iterator cancels what has not started."""
        function = capturing(fn) if capture else fn
        for i, chunk in enumerate(chunks):
            if stop_requested():
                return
            results = self.execute_batch(function, chunk, fail_fast=fail_fast)
            yield ChunkDone(i, results)
            if fail_fast and any(isinstance(r, BaseException) for r in results):
                return

    # -- description ------------------------------------------------------------------
    def get_executor_data(self) -> dict[str, str]:
        """The executor's type and options as strings (stored with each result)."""
        data = {"executor_type": self.executor_type}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                data[f.name] = ""
            elif isinstance(value, str):
                data[f.name] = value
            else:
                data[f.name] = json.dumps(value, sort_keys=True, default=str)
        return data

    def get_executor_data_schema(self) -> Schema:
        """Schema of :meth:`get_executor_data` (every value is a ``str``)."""
        return Schema({"executor_type": str, **{f.name: str for f in dataclasses.fields(self)}})


# Executor capability checks are per class pair, so they are cached once computed.
_SUPPORT_CACHE: dict[tuple[type, type], bool] = {}


def check_executor(function_class: type, function_type: str, executor: Any, function: Callable[..., Any] | None = None) -> None:
    """Raise :class:`ExecutorTypeError` unless ``executor`` can run ``function_type`` functions
    (checked once per (function class, executor class) and cached) and, given ``function``, that
    very function (:meth:`PythonFunctionExecutor.check_function`).
    """
    key = (function_class, type(executor))
    ok = _SUPPORT_CACHE.get(key)
    if ok is None:
        supports = getattr(type(executor), "supports", None)
        runs = callable(getattr(type(executor), "execute_callable", None))
        ok = bool(runs and callable(supports) and supports(function_type))
        _SUPPORT_CACHE[key] = ok
    if not ok:
        kinds = sorted(getattr(type(executor), "supported_function_types", ()) or ())
        raise ExecutorTypeError(
            f"executor {type(executor).__name__} cannot run {function_type!r} functions "
            f"({function_class.__name__}); it supports {kinds or 'no function types'}"
        )
    if function is not None:
        check = getattr(executor, "check_function", None)
        if check is not None:
            check(function)


class ChunkedExecutor(PythonFunctionExecutor):
    """Base of the executors whose workers run calls in chunks (a process pool, Ray): one call
    or a batch is a run of :meth:`map_chunks` over ``chunk_size`` packets per chunk
    (:func:`plan_chunks`); subclasses implement ``map_chunks`` and declare the field
    ``chunk_size: int | None`` (``None``: the plan's default)."""

    def execute_callable(self, fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> Any:
        (result,) = self.execute_batch(fn, [kwargs])
        if isinstance(result, BaseException):
            raise result
        return result

    def execute_batch(self, fn: Callable[..., Any], kwargs_list: Sequence[Mapping[str, Any]], *, fail_fast: bool = False) -> list[Any]:
        plan = plan_chunks(len(kwargs_list), self.concurrency(), self.chunk_size)
        chunks = [[dict(k) for k in kwargs_list[start : start + size]] for start, size in plan]
        done = {chunk.index: chunk.results for chunk in self.map_chunks(fn, chunks, fail_fast=fail_fast)}
        out: list[Any] = []
        for i in range(len(chunks)):  # in call order, up to the first chunk that did not run
            if i not in done:
                break
            out.extend(done[i])
        if fail_fast:
            first = next((j for j, r in enumerate(out) if isinstance(r, BaseException)), None)
            if first is not None:
                out = out[: first + 1]
        return out
