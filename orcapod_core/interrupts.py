"""Runs that stop cleanly: SIGTERM (what Dagster's "terminate run" and most schedulers send) and
SIGINT (Ctrl-C) ask a running pipeline to stop at the next packet boundary, commit what it has
computed, and raise :class:`RunInterrupted`.

Python's own handling would raise ``KeyboardInterrupt`` (SIGINT) anywhere — in the middle of a
commit — or end the process at once (SIGTERM), losing everything not committed yet. During
``pipeline.run()`` (in the main thread) the first such signal sets a flag — and interrupts the
user function the main thread is running, if any (its packet is not stored, so nothing is
half-written) — executors stop starting new calls, function nodes store what their finished
calls returned, the pipeline commits, and :class:`RunInterrupted` is raised. A second signal
stops at once (Python's usual behaviour). The next run computes only what is missing.

>>> with graceful_stop():               # doctest: +SKIP
...     run_nodes()                      # check_stop() between packets
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["RunInterrupted", "graceful_stop", "stop_requested", "check_stop", "in_user_code"]

_stop = threading.Event()
_signal_name = {"value": ""}
_active = {"value": False}
_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s is not None)


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by SIGTERM/SIGINT after committing what it had computed (a
    ``KeyboardInterrupt``, so code that handles interrupts treats it as one)."""


#: True while the main thread runs a user function (set by the in-process executor): a stop signal
#: then interrupts that call at once — its packet is not stored yet, so nothing is half-written.
in_user_code = [False]


#: ``stop_requested()``: True once a stop signal arrived during the current run. (The event's
#: own bound method: executors ask it before every call.)
stop_requested = _stop.is_set


def check_stop() -> None:
    """Raise :class:`RunInterrupted` if a stop signal arrived (call it at safe points only)."""
    if _stop.is_set():
        raise RunInterrupted(f"the run was stopped by {_signal_name['value'] or 'a signal'}; what it computed is committed")


@contextlib.contextmanager
def graceful_stop() -> Iterator[None]:
    """Within the block (on the main thread), SIGINT/SIGTERM request a clean stop; a second one
    stops at once. Elsewhere (another thread, nested use) it changes nothing."""
    if threading.current_thread() is not threading.main_thread() or _active["value"]:
        yield  # another thread, or inside a run that already handles the signals
        return
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        if _stop.is_set():  # asked twice: stop now, as Python would
            _restore(previous)
            if signum == getattr(signal, "SIGTERM", None) and not callable(previous.get(signum)):
                sys.exit(128 + signum)
            raise KeyboardInterrupt
        _signal_name["value"] = signal.Signals(signum).name
        _stop.set()
        print(
            f"orcapod: {signal.Signals(signum).name} received — stopping: committing what was computed "
            f"(send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )
        if in_user_code[0]:  # the main thread is inside a user function: stop it now
            check_stop()

    try:
        for sig in _SIGNALS:
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, handler)
    except ValueError:  # not the main interpreter thread after all
        _restore(previous)
        yield
        return
    _active["value"] = True
    try:
        yield
    finally:
        _active["value"] = False
        _restore(previous)
        _stop.clear()
        _signal_name["value"] = ""


def _restore(previous: dict[int, Any]) -> None:
    for sig, old in previous.items():
        try:
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        except (ValueError, TypeError):
            pass
