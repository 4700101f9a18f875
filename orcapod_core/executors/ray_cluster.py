"""RayExecutor: a node's packets as Ray tasks, on a cluster or a local Ray.

``ray`` is an optional dependency (``pip install orcapod-dagster[ray]``); it is imported when a
``RayExecutor`` first runs something.

Packets are submitted in chunks (one Ray task runs a chunk, which amortises the per-task
overhead; by default about four tasks per cluster CPU, at most 1,024 packets each) and
results are consumed **as tasks complete**: the node stores them — and commits them in its
result database's batches — while the rest of the cluster still computes, so a killed driver
loses at most the batch not yet committed, and a rerun computes only what is missing. A packet
that raises keeps its exception type and message (the worker's traceback text rides along for
the logs). Functions and arguments travel with Ray's serializer (transport, not storage); what
a task needs to import must be importable on the cluster (``runtime_env=`` ships code and
packages).

``num_cpus``, ``num_gpus`` and ``resources`` are what *each task* asks the cluster for (as in
``@ray.remote(num_cpus=...)``), so ``RayExecutor(num_gpus=1)`` runs one chunk per GPU.

>>> RayExecutor(address="ray://head:10001", num_gpus=1).get_executor_data()["num_gpus"]
'1'
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from orcapod_core.capture import call_many
from orcapod_core.errors import ExecutorTypeError, InputValidationError, PacketComputationError
from orcapod_core.executors.base import ChunkDone, ChunkedExecutor
from orcapod_core.interrupts import stop_requested

__all__ = ["RayExecutor"]

_remote_chunk: Any = None  # the Ray remote function, made once per process


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ExecutorTypeError(
            "RayExecutor needs the optional dependency ray: pip install 'orcapod-dagster[ray]' (or pip install ray)"
        ) from exc
    return ray


def _run_chunk(fn: Callable[..., Any], kwargs_list: list[dict[str, Any]], capture: bool, fail_fast: bool) -> tuple[list[Any], dict[str, str]]:
    """The Ray task: one chunk of calls, and which node ran it."""
    import ray

    context = ray.get_runtime_context()
    info = {
        "node_id": context.get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "hostname": socket.gethostname(),
        "pid": str(os.getpid()),
    }
    return call_many(fn, kwargs_list, capture=capture, fail_fast=fail_fast, portable=True), info


@dataclass(frozen=True, eq=True)
class RayExecutor(ChunkedExecutor):
    """Runs a node's uncached packets as Ray tasks.

    ``address``: the cluster (``"auto"`` for the one ``ray start`` runs on this machine,
    ``"ray://host:10001"`` for a remote one); ``None`` joins the Ray this process already runs,
    or the cluster in ``RAY_ADDRESS``, or starts a local Ray with every core. ``num_cpus``,
    ``num_gpus``, ``resources`` and ``runtime_env`` are per task; ``chunk_size`` is packets per
    task (default: :func:`~orcapod_core.executors.base.plan_chunks`).

    >>> executor = RayExecutor(address="auto", num_cpus=2)              # doctest: +SKIP
    >>> pipeline.run(executor=executor)                                  # doctest: +SKIP
    >>> heavy.pod.packet_function.executor = executor.with_options(num_gpus=1)  # doctest: +SKIP
    """

    executor_type: ClassVar[str] = "ray"
    remote: ClassVar[bool] = True

    address: str | None = None
    num_cpus: float | None = None
    num_gpus: float | None = None
    resources: Mapping[str, float] | None = None
    runtime_env: Mapping[str, Any] | None = None
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_cpus", "num_gpus"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise InputValidationError(f"RayExecutor: {name} must be a number >= 0 or None, got {value!r}")
        if self.chunk_size is not None and (not isinstance(self.chunk_size, int) or isinstance(self.chunk_size, bool) or self.chunk_size < 1):
            raise InputValidationError(f"RayExecutor: chunk_size must be an int >= 1 or None, got {self.chunk_size!r}")
        for name in ("resources", "runtime_env"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Mapping):
                raise InputValidationError(f"RayExecutor: {name} must be a mapping or None, got {type(value).__name__}")

    def __hash__(self) -> int:  # the mappings are options, not identity: hash the scalar fields
        return hash((type(self), self.address, self.num_cpus, self.num_gpus, self.chunk_size))

    # -- the cluster ----------------------------------------------------------------------
    def connect(self) -> Any:
        """The ``ray`` module, connected: to the Ray this process already runs, else to
        ``address`` (or ``RAY_ADDRESS``), else a new local Ray."""
        ray = _import_ray()
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        return ray

    def concurrency(self) -> int:
        ray = self.connect()
        cpus = float(ray.cluster_resources().get("CPU", 1))
        per_task = self.num_cpus if self.num_cpus else 1.0
        by_gpu = None
        if self.num_gpus:
            by_gpu = float(ray.cluster_resources().get("GPU", 0)) / self.num_gpus
        slots = cpus / per_task if per_task else cpus
        if by_gpu is not None:
            slots = min(slots, by_gpu)
        return max(1, int(slots))

    def cluster_address(self) -> str:
        """The address of the connected cluster (its GCS)."""
        ray = self.connect()
        return str(ray.get_runtime_context().gcs_address)

    def _task(self) -> Any:
        global _remote_chunk
        ray = self.connect()
        if _remote_chunk is None:
            _remote_chunk = ray.remote(_run_chunk)
        options = {k: getattr(self, k) for k in ("num_cpus", "num_gpus") if getattr(self, k) is not None}
        if self.resources:
            options["resources"] = dict(self.resources)
        if self.runtime_env:
            options["runtime_env"] = dict(self.runtime_env)
        return _remote_chunk.options(**options) if options else _remote_chunk

    # -- running --------------------------------------------------------------------------
    def map_chunks(
        self,
        fn: Callable[..., Any],
        chunks: Iterable[list[dict[str, Any]]],
        *,
        fail_fast: bool = False,
        capture: bool = False,
    ) -> Iterator[ChunkDone]:
        """Submit the chunks as Ray tasks (at most two per slot waiting at a time) and yield each
        as it completes. A task the cluster could not run (a dead worker, an unimportable
        module) fails the packets of its chunk with the error Ray reports."""
        ray = self.connect()
        task = self._task()
        in_flight = 2 * self.concurrency()
        address = self.cluster_address()
        source = iter(enumerate(chunks))
        pending: dict[Any, tuple[int, int]] = {}
        stop = False

        def submit() -> None:
            while not stop and not stop_requested() and len(pending) < in_flight:
                item = next(source, None)
                if item is None:
                    return
                index, chunk = item
                pending[task.remote(fn, chunk, capture, fail_fast)] = (index, len(chunk))

        try:
            submit()
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    index, size = pending.pop(ref)
                    try:
                        results, info = ray.get(ref)
                        info = {"address": address, **info}
                    except Exception as exc:  # RayTaskError, WorkerCrashedError, RuntimeEnvSetupError...
                        cause = getattr(exc, "cause", None)
                        error = cause if isinstance(cause, Exception) else PacketComputationError(f"Ray could not run this packet: {exc}")
                        results, info = [error] * size, {"address": address}
                    stop = stop or (fail_fast and any(isinstance(r, BaseException) for r in results))
                    yield ChunkDone(index, results, info)
                submit()  # after a stop signal it submits nothing: the tasks already out are awaited
        finally:
            for ref in pending:
                ray.cancel(ref)
