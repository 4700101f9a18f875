"""Executors: where and how a packet function's Python callable actually runs.

An executor is an immutable value (a frozen dataclass): ``with_options(**opts)`` returns a
new one. It receives a plain callable and its keyword arguments — never packets, tags or
Arrow internals — so the same function can run in-process, on a thread pool or (later) on
a cluster without changing what it computes. Executors are not part of a function's
identity: the same packet gives the same result wherever it ran.

A packet function checks an executor when it is assigned (``pf.executor = ex``), not when it
is called: the executor class must list the function's ``function_type`` in its
``supported_function_types``. The check runs once per (function class, executor class) pair.

>>> ex = LocalPythonFunctionExecutor()
>>> ex.execute_callable(lambda x: x + 1, {"x": 1})
2
>>> ex.with_options(max_workers=4).max_workers, ex.max_workers
(4, 1)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import inspect
import json
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from orcapod_core.errors import ExecutorTypeError, InputValidationError
from orcapod_core.types import Schema

__all__ = [
    "PythonFunctionExecutor",
    "LocalPythonFunctionExecutor",
    "check_executor",
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
class PythonFunctionExecutor:
    """Base of every executor of Python callables (the executor protocol, with defaults).

    Subclasses set ``executor_type``, may widen ``supported_function_types`` and implement
    :meth:`execute_callable` (and, for real concurrency, :meth:`execute_batch` /
    :meth:`async_execute_callable`). Fields are the executor's options.
    """

    executor_type: ClassVar[str] = "abstract"
    supported_function_types: ClassVar[frozenset[str]] = frozenset({"python"})

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


@dataclass(frozen=True)
class LocalPythonFunctionExecutor(PythonFunctionExecutor):
    """Runs functions in this process — the default executor.

    ``max_workers > 1`` runs a batch of packets on a thread pool of that size (useful for
    I/O-bound or GIL-releasing functions); results keep input order.

    >>> LocalPythonFunctionExecutor(max_workers=4).get_executor_data()
    {'executor_type': 'local', 'max_workers': '4'}
    """

    executor_type: ClassVar[str] = "local"

    max_workers: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.max_workers, int) or isinstance(self.max_workers, bool) or self.max_workers < 1:
            raise InputValidationError(f"LocalPythonFunctionExecutor: max_workers must be an int >= 1, got {self.max_workers!r}")

    def execute_callable(self, fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> Any:
        if inspect.iscoroutinefunction(fn):
            return run_coroutine_sync(fn(**kwargs))
        return fn(**kwargs)

    async def async_execute_callable(self, fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> Any:
        if inspect.iscoroutinefunction(fn):
            return await fn(**kwargs)
        if self.max_workers > 1:  # keep the event loop free while a sync function runs
            return await asyncio.to_thread(fn, **kwargs)
        return fn(**kwargs)

    def execute_batch(
        self, fn: Callable[..., Any], kwargs_list: Sequence[Mapping[str, Any]], *, fail_fast: bool = False
    ) -> list[Any]:
        if inspect.iscoroutinefunction(fn):
            return super().execute_batch(fn, kwargs_list, fail_fast=fail_fast)
        out: list[Any] = []
        if self.max_workers == 1 or len(kwargs_list) < 2:
            # The hot path: a plain loop, no per-call dispatch.
            append = out.append
            for kwargs in kwargs_list:
                try:
                    append(fn(**kwargs))
                except Exception as exc:
                    append(exc)
                    if fail_fast:
                        break
            return out
        with concurrent.futures.ThreadPoolExecutor(self.max_workers, thread_name_prefix="orcapod-exec") as pool:
            futures = [pool.submit(fn, **kwargs) for kwargs in kwargs_list]
            for i, future in enumerate(futures):
                try:
                    out.append(future.result())
                except Exception as exc:
                    out.append(exc)
                    if fail_fast:
                        for pending in futures[i + 1 :]:
                            pending.cancel()
                        break
        return out


# Executor capability checks are per class pair, so they are cached once computed.
_SUPPORT_CACHE: dict[tuple[type, type], bool] = {}


def check_executor(function_class: type, function_type: str, executor: Any) -> None:
    """Raise :class:`ExecutorTypeError` unless ``executor`` can run ``function_type`` functions.

    Checked once per (function class, executor class) and cached.
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
