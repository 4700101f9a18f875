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

import io
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

__all__ = ["capture_output", "run_captured", "run_captured_async", "captured_of", "CAPTURED_ATTRIBUTE"]

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
