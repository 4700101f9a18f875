"""Per-call capture of stdout/stderr, safe with threads.

``sys.stdout``/``sys.stderr`` are process-wide, so ``contextlib.redirect_stdout`` would mix
the output of packets running on different threads or asyncio tasks. While any capture is
active, both are replaced by a proxy that writes to the *current context's* buffer (a
``ContextVar``: per thread and per task) when it has one, and to the real stream otherwise.

>>> def noisy(x: int) -> int:
...     print("hello", x)
...     return x
>>> result, out = run_captured(noisy, {"x": 1})
>>> result, out["stdout"]
(1, 'hello 1\\n')
"""

from __future__ import annotations

import inspect
import io
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

__all__ = [
    "capture_output",
    "run_captured",
    "run_captured_async",
    "captured_of",
    "capturing",
    "call_many",
    "RemoteError",
    "CAPTURED_ATTRIBUTE",
]

#: Attribute set on an exception raised by a captured call: ``{"stdout", "stderr", "traceback"}``.
CAPTURED_ATTRIBUTE = "__orcapod_captured__"

_buffers: ContextVar[dict[str, io.StringIO] | None] = ContextVar("orcapod_capture", default=None)
_lock = threading.Lock()
_active = 0
_originals: tuple[Any, Any] | None = None


class _ThreadRouter(io.TextIOBase):
    def __init__(self, name: str, fallback: Any):
        self._name = name
        self._fallback = fallback

    def write(self, text: str) -> int:
        buffers = _buffers.get()
        if buffers is not None:
            return buffers[self._name].write(text)
        return self._fallback.write(text)

    def flush(self) -> None:
        if _buffers.get() is None:
            self._fallback.flush()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._fallback, "encoding", "utf-8")


@contextmanager
def capture_output() -> Iterator[dict[str, io.StringIO]]:
    """Capture this thread's stdout/stderr inside the block (other threads are unaffected)."""
    global _active, _originals
    with _lock:
        if _active == 0:
            _originals = (sys.stdout, sys.stderr)
            sys.stdout = _ThreadRouter("stdout", _originals[0])
            sys.stderr = _ThreadRouter("stderr", _originals[1])
        _active += 1
    buffers = {"stdout": io.StringIO(), "stderr": io.StringIO()}
    token = _buffers.set(buffers)
    try:
        yield buffers
    finally:
        _buffers.reset(token)
        with _lock:
            _active -= 1
            if _active == 0 and _originals is not None:
                sys.stdout, sys.stderr = _originals
                _originals = None


def _attach(exc: BaseException, buffers: dict[str, io.StringIO]) -> None:
    setattr(
        exc,
        CAPTURED_ATTRIBUTE,
        {
            "stdout": buffers["stdout"].getvalue(),
            "stderr": buffers["stderr"].getvalue(),
            "traceback": "".join(traceback.format_exception(exc)),
        },
    )


def _texts(buffers: dict[str, io.StringIO]) -> dict[str, str]:
    return {"stdout": buffers["stdout"].getvalue(), "stderr": buffers["stderr"].getvalue(), "traceback": ""}


def run_captured(function: Callable[..., Any], kwargs: dict[str, Any]) -> tuple[Any, dict[str, str]]:
    """Call ``function(**kwargs)`` capturing its output. On error the exception carries the
    captured output and its formatted traceback in :data:`CAPTURED_ATTRIBUTE`."""
    with capture_output() as buffers:
        try:
            result = function(**kwargs)
        except BaseException as exc:
            _attach(exc, buffers)
            raise
    return result, _texts(buffers)


async def run_captured_async(function: Callable[..., Awaitable[Any]], kwargs: dict[str, Any]) -> tuple[Any, dict[str, str]]:
    """:func:`run_captured` for ``async def`` functions (capture is per asyncio task)."""
    with capture_output() as buffers:
        try:
            result = await function(**kwargs)
        except BaseException as exc:
            _attach(exc, buffers)
            raise
    return result, _texts(buffers)


def captured_of(exc: BaseException) -> dict[str, str]:
    """What a failed captured call printed, plus its traceback."""
    return getattr(exc, CAPTURED_ATTRIBUTE, None) or {
        "stdout": "",
        "stderr": "",
        "traceback": "".join(traceback.format_exception(exc)),
    }


def capturing(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` wrapped so each call returns ``(result, captured output)`` (see
    :func:`run_captured`); ``async def`` functions stay awaitable."""
    if inspect.iscoroutinefunction(function):

        async def run_async(**kwargs: Any) -> Any:
            return await run_captured_async(function, kwargs)

        return run_async

    def run(**kwargs: Any) -> Any:
        return run_captured(function, kwargs)

    return run


class RemoteError(Exception):
    """Stands in for an exception raised in a worker that could not travel back as it was (it
    could not be pickled): its type name, message and traceback text are kept."""

    def __init__(self, type_name: str, message: str, traceback_text: str = ""):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    def __reduce__(self) -> Any:
        return (type(self), (self.type_name, self.message, self.traceback_text), self.__dict__)


def _portable(exc: BaseException) -> BaseException:
    """``exc`` with its captured output and traceback text attached (the traceback object
    cannot leave the process), or a :class:`RemoteError` when it cannot be pickled."""
    import pickle

    if getattr(exc, CAPTURED_ATTRIBUTE, None) is None:
        setattr(exc, CAPTURED_ATTRIBUTE, captured_of(exc))
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        info = getattr(exc, CAPTURED_ATTRIBUTE)
        stand_in = RemoteError(type(exc).__qualname__, str(exc), info.get("traceback", ""))
        setattr(stand_in, CAPTURED_ATTRIBUTE, info)
        return stand_in
    return exc


def call_many(
    function: Callable[..., Any],
    kwargs_list: list[dict[str, Any]],
    capture: bool = False,
    fail_fast: bool = False,
    portable: bool = False,
) -> list[Any]:
    """Call ``function(**kwargs)`` for each kwargs, in order; per call its result — with
    ``capture``, ``(result, captured output)`` — or the exception it raised (carrying what it
    printed and its traceback, see :func:`captured_of`). With ``fail_fast`` the list ends at the
    first exception. ``portable``: the list leaves this process (a worker process, a Ray task), so
    every exception is made picklable (:class:`RemoteError` otherwise) and keeps its traceback text.

    A plain module-level function, so worker processes can run it.

    >>> call_many(lambda x: 10 // x, [{"x": 5}, {"x": 0}])[0]
    2
    """
    is_async = inspect.iscoroutinefunction(function)
    out: list[Any] = []
    for kwargs in kwargs_list:
        try:
            if capture:
                result = _run_async(run_captured_async(function, kwargs)) if is_async else run_captured(function, kwargs)
            else:
                result = _run_async(function(**kwargs)) if is_async else function(**kwargs)
        except Exception as exc:
            out.append(_portable(exc) if portable else exc)
            if fail_fast:
                break
            continue
        out.append(result)
    return out


def _run_async(coroutine: Any) -> Any:
    import asyncio

    return asyncio.run(coroutine)
