"""A local Dagster instance, created once before concurrent use.

Every ``dagster`` process that opens a ``DAGSTER_HOME`` whose storage does not exist yet creates
its sqlite databases and stamps their schema version. Two processes doing it at the same time
(``make ui`` started while ``make run`` starts) can stamp one database twice and leave the
instance broken for good ("Version table 'alembic_version' has more than one head").
:func:`init_instance` creates the storage once, under a lock file, before anything else uses it:
it writes ``dagster.yaml`` when there is none, opens the instance and brings every storage up
to date (what ``dagster instance migrate`` does), then leaves a marker, ``.initialized``. Running
it again, or from several processes at once, is safe and cheap.

.. code-block:: console

    $ python -m orcapod_dagster.instance .dagster        # what `make run` and `make ui` do first
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["init_instance", "DEFAULT_CONFIG", "MARKER"]

#: The ``dagster.yaml`` written when there is none: default sqlite storage, no telemetry.
DEFAULT_CONFIG = "telemetry:\n  enabled: false\n"
#: Left in the instance directory once its storage exists (``make`` depends on it).
MARKER = ".initialized"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` held by this process for the block (other processes wait)."""
    with open(path, "a+b") as handle:
        if os.name == "nt":  # pragma: no cover - POSIX in CI
            import msvcrt

            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
            try:
                yield
            finally:
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def init_instance(home: str | os.PathLike[str], config: str = DEFAULT_CONFIG) -> Path:
    """Create the Dagster instance at ``home`` once: ``dagster.yaml`` (``config`` when missing)
    and every storage, under the lock file ``<home>/.init.lock``; returns ``home`` (absolute).

    >>> init_instance(".dagster")                                   # doctest: +SKIP
    PosixPath('/path/to/project/.dagster')
    """
    import dagster as dg

    home = Path(home).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home / ".init.lock"):
        if (home / MARKER).exists():
            return home
        settings = home / "dagster.yaml"
        if not settings.exists():
            settings.write_text(config)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            instance.upgrade()  # creates (or migrates) the run, event log and schedule storage
        (home / MARKER).write_text("the Dagster instance storage exists (orcapod_dagster.instance.init_instance)\n")
    return home


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    home = args[0] if args else os.environ.get("DAGSTER_HOME")
    if not home:
        print("usage: python -m orcapod_dagster.instance DAGSTER_HOME (or set $DAGSTER_HOME)", file=sys.stderr)
        return 2
    print(f"Dagster instance ready at {init_instance(home)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
