"""Pipeline: record what is built in a ``with`` block, compile it into nodes, run it.

>>> with Pipeline("demo", pipeline_database=InMemoryArrowDatabase()) as p:   # doctest: +SKIP
...     doubled = double.pod(source, label="doubled")
>>> p.run().computed                                                           # doctest: +SKIP
3
>>> p.doubled.as_table()                                                       # doctest: +SKIP

Storage layout (record paths in the databases):

* function-node pipeline records and operator-node logs: ``(*pipeline name, label, <pipeline hash[:16]>)``
  — keyed by the node's pipeline hash, so runs over different sources of the same shape share
  one table (entry ids keep their rows apart) and a changed node never mixes with old rows;
* function results: ``("results", <function name>, <version>, <identity[:16]>)`` in the result
  database — shared by every pipeline and process that uses the same function.

``pipeline.maintain_store()`` compacts, then vacuums, the tables of one pipeline (see
:mod:`orcapod_core.databases.maintenance`).
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from orcapod_core.databases import DEFAULT_RETENTION_HOURS, ArrowDatabase, MaintenanceReport, RecordPath, validate_record_path
from orcapod_core.databases.file_store import attach_digest_store
from orcapod_core.errors import InputValidationError, InvalidLabelError, InvalidPathError
from orcapod_core.interrupts import graceful_stop
from orcapod_core.function_pods import FunctionPod
from orcapod_core.operators import Operator
from orcapod_core.pipeline.function_node import FunctionNode
from orcapod_core.pipeline.nodes import CacheMode, Node, OperatorNode, SourceNode
from orcapod_core.pipeline.observers import ExecutionObserver, RunResult
from orcapod_core.pipeline.orchestrators import SyncPipelineOrchestrator
from orcapod_core.pipeline.progress import progress_observer
from orcapod_core.pipeline.serialization import load_pipeline, save_pipeline
from orcapod_core.result_cache import ResultCache, result_record_path
from orcapod_core.streams import Stream
from orcapod_core.tracking import Invocation, tracking

__all__ = ["Pipeline", "RunResult", "DEFAULT_STORE"]

#: Where a Pipeline stores its Delta tables when no database is given.
DEFAULT_STORE = ".orcapod"

_LABEL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_RESERVED = {"name", "nodes", "run", "compile", "save", "load", "flush", "record", "pipeline_database", "result_database"}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def check_label(label: str) -> str:
    """Validate a node label: ``[A-Za-z_][A-Za-z0-9_.-]*``, not a Pipeline attribute."""
    if not isinstance(label, str) or not _LABEL_RE.match(label):
        raise InvalidLabelError(
            f"invalid label {label!r}: labels start with a letter or '_' and contain only letters, digits, '_', '.', '-'"
        )
    if label in _RESERVED:
        raise InvalidLabelError(f"invalid label {label!r}: it is reserved by Pipeline ({sorted(_RESERVED)})")
    return label


class Pipeline:
    """A recorded graph of sources, operators and function pods, compiled into nodes that
    persist to ``pipeline_database`` (Delta Lake at ``./.orcapod`` by default) and memoize
    function results in ``result_database`` (default: the pipeline database)."""

    def __init__(
        self,
        name: str | Sequence[str],
        pipeline_database: ArrowDatabase | None = None,
        result_database: ArrowDatabase | None = None,
        *,
        operator_cache_mode: CacheMode = CacheMode.OFF,
    ):
        self.name: tuple[str, ...] = (name,) if isinstance(name, str) else tuple(name)
        try:
            validate_record_path(self.name)
        except InvalidPathError as exc:
            raise InvalidLabelError(f"invalid pipeline name {name!r}: {exc}") from exc
        if pipeline_database is None:
            from orcapod_core.databases import DeltaTableDatabase

            pipeline_database = DeltaTableDatabase(DEFAULT_STORE)
        self.pipeline_database = pipeline_database
        self.result_database = result_database if result_database is not None else pipeline_database
        attach_digest_store(self.pipeline_database)  # input files' digests persist in the store (read lazily)
        self.operator_cache_mode = CacheMode(operator_cache_mode)
        self._invocations: list[Invocation] = []
        self._nodes: dict[str, Node] = {}
        self._tracking = None

    # -- recording ----------------------------------------------------------------------
    def __enter__(self) -> Pipeline:
        self._tracking = tracking(self)
        self._tracking.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._tracking is not None
        self._tracking.__exit__(exc_type, exc, tb)
        self._tracking = None
        if exc_type is None:
            self.compile()

    def record(self, invocation: Invocation) -> None:
        """Called for every pod invocation made inside the ``with`` block."""
        self._invocations.append(invocation)

    # -- compiling ----------------------------------------------------------------------
    def compile(self) -> dict[str, Node]:
        """Turn the recorded invocations into nodes (in topological order)."""
        nodes: dict[str, Node] = dict(self._nodes)
        by_stream: dict[int, Node] = {id(getattr(n, "_recorded_stream", n)): n for n in nodes.values()}
        explicit = {inv.label for inv in self._invocations if inv.label is not None}
        for label in explicit:
            check_label(label)
        seen_explicit: set[str] = set()

        def unique(base: str, explicit_label: bool) -> str:
            if explicit_label:
                if base in seen_explicit or base in nodes:
                    raise InvalidLabelError(f"label {base!r} is used by two nodes of pipeline {'/'.join(self.name)!r}")
                seen_explicit.add(base)
                return base
            base = re.sub(r"[^A-Za-z0-9_.-]", "_", base) or "node"
            if not re.match(r"[A-Za-z_]", base):
                base = f"_{base}"
            label, i = base, 0
            while label in nodes or label in explicit or label in _RESERVED:
                i += 1
                label = f"{base}_{i}"
            return label

        def node_for(stream: Stream) -> Node:
            found = by_stream.get(id(stream))
            if found is not None:
                return found
            if isinstance(stream, Node):
                return stream
            # A stream entering from outside the block: a source (or a bare stream) becomes a SourceNode.
            label_given = getattr(stream, "label", None)
            base = label_given or _snake(type(stream).__name__)
            label = unique(base, False)
            node = self._source_node(stream, label)
            node._recorded_stream = stream  # type: ignore[attr-defined]
            by_stream[id(stream)] = node
            nodes[label] = node
            return node

        for inv in self._invocations:
            if id(inv.output) in by_stream:
                continue
            upstream = [node_for(s) for s in inv.inputs]
            if isinstance(inv.pod, FunctionPod):
                label = unique(inv.label or inv.pod.default_label, inv.label is not None)
                node: Node = self._function_node(inv.pod, upstream, label)
            elif isinstance(inv.pod, Operator):
                label = unique(inv.label or _snake(type(inv.pod).__name__), inv.label is not None)
                node = self._operator_node(inv.pod, upstream, label, self.operator_cache_mode)
            else:
                raise InvalidLabelError(f"cannot compile invocation of {type(inv.pod).__name__}")
            node._recorded_stream = inv.output  # type: ignore[attr-defined]
            by_stream[id(inv.output)] = node
            nodes[label] = node
        self._invocations.clear()
        self._nodes = _topological(nodes)
        return self._nodes

    # Node factories, shared by ``compile`` and ``Pipeline.load``.
    def _source_node(self, stream: Stream, label: str) -> SourceNode:
        node = SourceNode(stream, label, self.pipeline_database, self._path(label, stream))
        node.pipeline_name, node.pipeline = self.name, self
        return node

    def _function_node(self, pod: FunctionPod, upstream: Sequence[Node], label: str) -> FunctionNode:
        cache = ResultCache(self.result_database, result_record_path(pod.packet_function))
        node = FunctionNode(pod, upstream, label, self.pipeline_database, (), cache)
        node.record_path = self._path(label, node)
        node.pipeline_name, node.pipeline = self.name, self
        return node

    def _operator_node(self, operator: Operator, upstream: Sequence[Node], label: str, cache_mode: CacheMode) -> OperatorNode:
        node = OperatorNode(operator, upstream, label, self.pipeline_database, (), cache_mode)
        node.record_path = self._path(label, node)
        node.pipeline_name, node.pipeline = self.name, self
        return node

    def _path(self, label: str, stream: Stream) -> tuple[str, ...]:
        try:
            return validate_record_path((*self.name, label, stream.pipeline_hash().to_hex(16)))
        except InvalidPathError as exc:  # e.g. a label too long to be a table name
            raise InvalidLabelError(f"invalid label {label!r}: {exc}") from exc

    # -- access ---------------------------------------------------------------------------
    @property
    def nodes(self) -> dict[str, Node]:
        """Compiled nodes by label, in topological order."""
        return dict(self._nodes)

    def __getattr__(self, label: str) -> Node:
        nodes = self.__dict__.get("_nodes", {})
        if label in nodes:
            return nodes[label]
        raise AttributeError(f"pipeline {'/'.join(self.__dict__.get('name', ('?',)))!r} has no node or attribute {label!r}")

    def __iter__(self) -> Iterator[Node]:
        return iter(self._nodes.values())

    def __repr__(self) -> str:
        return f"Pipeline({'/'.join(self.name)!r}, nodes={list(self._nodes)})"

    # -- pictures (rendered in orcapod_core.pipeline.pictures) ------------------------------
    def to_mermaid(self, direction: str = "LR") -> str:
        """The compiled graph as a Mermaid flowchart: one shape per node (label, kind, and the
        source class, operator class or function name), arrows from inputs. Deterministic.

        >>> print(pipeline.to_mermaid())          # doctest: +SKIP
        flowchart LR
            n0[("samples<br/>source: CSVSource")]
            ...
        """
        from orcapod_core.pipeline.pictures import to_mermaid

        return to_mermaid(self, direction)

    def to_dot(self, direction: str = "LR") -> str:
        """The compiled graph in Graphviz DOT (``dot -Tsvg``), nodes named by their labels.

        >>> print(pipeline.to_dot())              # doctest: +SKIP
        digraph "water_quality" {
        ...
        """
        from orcapod_core.pipeline.pictures import to_dot

        return to_dot(self, direction)

    def _repr_html_(self) -> str:
        # A notebook shows the graph: SVG when Graphviz is installed, else a Mermaid block.
        from orcapod_core.pipeline.pictures import graph_html

        return graph_html(self)

    def upstream_closure(self, labels: Sequence[str]) -> list[str]:
        """``labels`` plus every node they depend on, in topological order."""
        wanted: set[str] = set()
        stack = list(labels)
        while stack:
            label = stack.pop()
            if label not in self._nodes:
                raise InvalidLabelError(f"pipeline {'/'.join(self.name)!r} has no node {label!r}")
            if label not in wanted:
                wanted.add(label)
                stack.extend(u.label for u in self._nodes[label].upstream_nodes)
        return [label for label in self._nodes if label in wanted]

    # -- running --------------------------------------------------------------------------
    def run(
        self,
        orchestrator: Any = None,
        executor: Any = None,
        observer: ExecutionObserver | None = None,
        error_policy: str = "continue",
        *,
        nodes: Sequence[str] | None = None,
        include_upstream: bool = True,
        progress: bool | str = "auto",
    ) -> RunResult:
        """Run the pipeline (or the ``nodes`` given): compute only what is missing.

        ``progress="auto"`` shows a live per-node display and a closing summary on stderr when
        it is a terminal and no ``observer`` is given (nothing otherwise); ``True`` shows it
        next to the ``observer`` (plain lines when stderr is not a terminal); ``False`` never
        (see :mod:`orcapod_core.pipeline.progress`). ``RunResult.summary()`` is the summary as text.

        ``error_policy="continue"`` reports failing packets (observer + ``failed`` count) and
        stores everything else; ``"fail_fast"`` raises the first error after committing what
        was already computed.

        ``nodes`` run together with every node they depend on; with ``include_upstream=False``
        only the ``nodes`` themselves run, and the upstream nodes they read are not executed:
        they serve their current rows (e.g. rows pinned with
        :func:`~orcapod_core.pipeline.snapshots.pinned_outputs`).

        A SIGTERM (e.g. Dagster's "terminate run") or SIGINT (Ctrl-C) during the run stops it at
        the next packet boundary: what was computed is committed, then
        :class:`~orcapod_core.interrupts.RunInterrupted` is raised; a second signal stops at once.

        ``executor`` runs the function nodes' packets instead of each function's own executor:
        one executor for all of them, or ``{label: executor}`` for some (the rest keep theirs).
        Executors are not identity: results are shared whichever computed them. A process pool
        is started once for the run (when a packet first needs it) and shut down at its end.

        >>> p.run(executor=LocalProcessExecutor())                          # doctest: +SKIP
        >>> p.run(executor={"segment": RayExecutor(address="auto")})       # doctest: +SKIP
        """
        if error_policy not in ("continue", "fail_fast"):
            raise ValueError(f"error_policy must be 'continue' or 'fail_fast', got {error_policy!r}")
        if self._tracking is not None:
            raise RuntimeError("run the pipeline after its `with` block has closed")
        orchestrator = orchestrator or SyncPipelineOrchestrator()
        # Only the sync orchestrator hands a node its whole input: exact totals from the first event.
        observer = progress_observer(progress, observer, exact_totals=isinstance(orchestrator, SyncPipelineOrchestrator))
        # Every run reads its sources' current data (files, tables), pinned for the whole run.
        self.refresh(self.run_selection(nodes, include_upstream), sources_only=True)
        # Passed only when set, so orchestrators written before the option keep working.
        extra = {} if include_upstream else {"include_upstream": False}
        with graceful_stop():  # SIGTERM / SIGINT: stop at the next packet, commit, raise RunInterrupted
            return orchestrator.run(
                self, observer=observer, executor=executor, error_policy=error_policy, nodes=list(nodes) if nodes else None, **extra
            )

    def run_selection(self, nodes: Sequence[str] | None = None, include_upstream: bool = True) -> list[str]:
        """The labels a run over ``nodes`` executes, in topological order (see :meth:`run`)."""
        if nodes and not include_upstream:  # exactly these nodes; upstream ones serve their current rows
            named = set(self.upstream_closure(nodes)) & set(nodes)  # upstream_closure validates the labels
            return [label for label in self._nodes if label in named]
        return self.upstream_closure(nodes) if nodes else list(self._nodes)

    def refresh(self, labels: Sequence[str] | None = None, *, sources_only: bool = False) -> None:
        """Forget the rows nodes read or computed so far (default: every node): file and table
        sources read their current content when next needed, other nodes what the store then
        holds for it. ``run()`` refreshes the sources it runs, so every run sees the current
        data; call this to read fresh rows outside a run. Pinned nodes keep their pins.

        >>> p.refresh()                     # doctest: +SKIP
        >>> p.scores.as_table()             # doctest: +SKIP
        """
        chosen = self._nodes if labels is None else {label: self._nodes[label] for label in labels}
        for node in chosen.values():
            if not sources_only or node.kind == "source":
                node.refresh()

    # -- saving and loading ---------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write this pipeline's JSON description to ``path`` (see
        :mod:`orcapod_core.pipeline.serialization`); rows of sources that cannot be rebuilt
        from config (in-memory data) are stored in the pipeline database so a loaded pipeline
        can still serve them.

        >>> pipeline.save("pipeline.json")                         # doctest: +SKIP
        """
        return save_pipeline(self, path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        pipeline_database: ArrowDatabase | None = None,
        result_database: ArrowDatabase | None = None,
        *,
        storage_options: dict[str, str] | None = None,
        allowed_modules: Sequence[str] | None = None,
    ) -> Pipeline:
        """Rebuild a pipeline saved with :meth:`save`; each node gets a ``load_status``
        (:class:`~orcapod_core.pipeline.nodes.LoadStatus`). Functions that cannot be imported
        become :class:`~orcapod_core.packet_function_proxy.PacketFunctionProxy` (``READ_ONLY``).

        Loading imports the modules the file names, so their top-level code runs: load files
        you trust. By default (``allowed_modules=None``) any module may be imported, but a
        function must be an orcapod function pod (decorated with ``@function_pod``) and an
        operator an :class:`~orcapod_core.operators.Operator` subclass. With
        ``allowed_modules=["my_lab", ...]`` (module-name prefixes, covering submodules) a module
        outside the list is never imported — :class:`~orcapod_core.errors.PipelineLoadError` —
        and plain typed functions inside it are accepted; orcapod_core's operators always are.
        A relative data or store path that climbs out of the file's folder (``..``) is refused.

        >>> p = Pipeline.load("pipeline.json")                     # doctest: +SKIP
        >>> {n.label: n.load_status.value for n in p}              # doctest: +SKIP
        >>> Pipeline.load("pipeline.json", allowed_modules=["my_lab"])   # doctest: +SKIP
        """
        return load_pipeline(
            path,
            pipeline_database,
            result_database,
            storage_options=storage_options,
            allowed_modules=allowed_modules,
            pipeline_class=cls,
        )

    def flush(self) -> None:
        """Commit all pending writes of both databases."""
        self.pipeline_database.flush()
        if self.result_database is not self.pipeline_database:
            self.result_database.flush()

    def maintain_store(
        self, *, retention_hours: int = DEFAULT_RETENTION_HOURS, dry_run: bool = False, target_file_size: int | None = None
    ) -> tuple[MaintenanceReport, ...]:
        """Compact, then vacuum, this pipeline's tables: everything under its name in the
        pipeline database (pipeline records, snapshots, logs, stored source rows) and its
        function nodes' result tables. Returns the compaction and the vacuum report; with
        ``dry_run=True`` nothing changes and only the vacuum report (what it would delete) is
        returned.

        Pinned materializations stay readable: snapshots reference rows of these tables at
        their latest version. ``retention_hours`` (default: a week) keeps the files removed more
        recently, for anyone still reading an older version; ``0`` deletes every file no current
        version needs (older versions of these tables can no longer be read). Tables that are
        not orcapod record tables (e.g. published by a Dagster asset) are never touched.

        >>> pipeline.maintain_store(retention_hours=0)       # doctest: +SKIP
        (MaintenanceReport(compact ...), MaintenanceReport(vacuum ...))
        """
        scopes = self._store_scopes()
        # Operators' logs and stored source rows are replayed in commit order, which
        # compaction does not keep: they are left as they are (they grow by one batch per run).
        ordered = [tuple(n.record_path) for n in self._nodes.values() if getattr(n, "kind", None) in ("operator", "source")]
        reports = []
        if not dry_run:
            reports.append(
                MaintenanceReport.merge(
                    db.compact(prefix, target_file_size=target_file_size, exclude=ordered) for db, prefix in scopes
                )
            )
        reports.append(
            MaintenanceReport.merge(db.vacuum(prefix, retention_hours=retention_hours, dry_run=dry_run) for db, prefix in scopes)
        )
        return tuple(reports)

    def _store_scopes(self) -> list[tuple[Any, RecordPath]]:
        """``(database, path prefix)`` pairs covering this pipeline's tables, none inside another."""
        wanted: list[tuple[Any, RecordPath]] = [(self.pipeline_database, self.name)]
        for node in self._nodes.values():
            cache = getattr(node, "result_cache", None)
            if cache is not None:
                wanted.append((cache.database, tuple(cache.record_path)))
        for database, _ in wanted:
            if not (hasattr(database, "compact") and hasattr(database, "vacuum")):
                raise InputValidationError(
                    f"pipeline {'/'.join(self.name)!r}: its database {database!r} has no compact()/vacuum() to maintain it with"
                )
        scopes: list[tuple[Any, RecordPath]] = []
        for database, prefix in wanted:
            covered = any(db is database and prefix[: len(p)] == p for db, p in wanted if (db, p) != (database, prefix))
            if not covered and not any(db is database and p == prefix for db, p in scopes):
                scopes.append((database, prefix))
        return scopes

    @staticmethod
    def new_run_id() -> str:
        return f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"


# Every public Pipeline attribute (methods included), so ``pipeline.<label>`` always means the node.
_RESERVED |= {n for n in dir(Pipeline) if not n.startswith("_")} | {"operator_cache_mode"}


def _topological(nodes: dict[str, Node]) -> dict[str, Node]:
    """Nodes in a topological order that keeps recording order where possible."""
    order: dict[str, Node] = {}
    visiting: set[str] = set()

    def visit(node: Node) -> None:
        if node.label in order:
            return
        if node.label in visiting:
            raise InvalidLabelError(f"cycle through node {node.label!r}")
        visiting.add(node.label)
        for up in node.upstream_nodes:
            visit(up)
        visiting.discard(node.label)
        order[node.label] = node

    for node in nodes.values():
        visit(node)
    return order
