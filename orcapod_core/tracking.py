"""Recording of pod invocations, so a ``with Pipeline(...)`` block sees what is built in it.

Operators and function pods call :func:`record` each time they are applied to
streams; any tracker entered with :func:`tracking` receives the invocation.

>>> with tracking(my_tracker):      # doctest: +SKIP
...     out = Join()(a, b)           # my_tracker.record(Invocation(...)) was called
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Invocation", "Tracker", "tracking", "untracked", "record"]


@dataclass(frozen=True, eq=False)
class Invocation:
    """One application of a pod (operator or function pod) to input streams."""

    pod: Any
    inputs: tuple[Any, ...]
    output: Any
    label: str | None


class Tracker(Protocol):
    def record(self, invocation: Invocation) -> None: ...


_active: ContextVar[tuple[Tracker, ...]] = ContextVar("orcapod_trackers", default=())


@contextmanager
def tracking(tracker: Tracker) -> Iterator[Tracker]:
    """Route invocations made inside the block to ``tracker`` (nesting allowed)."""
    token = _active.set(_active.get() + (tracker,))
    try:
        yield tracker
    finally:
        _active.reset(token)


@contextmanager
def untracked() -> Iterator[None]:
    """Hide invocations made inside the block from every tracker (e.g. the join a
    multi-input function pod applies internally: the pod's own invocation covers it)."""
    token = _active.set(())
    try:
        yield
    finally:
        _active.reset(token)


def record(invocation: Invocation) -> None:
    """Tell every active tracker about ``invocation``."""
    for tracker in _active.get():
        tracker.record(invocation)
