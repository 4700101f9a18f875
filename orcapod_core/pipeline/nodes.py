"""Compiled pipeline nodes: the Node base, SourceNode and OperatorNode (FunctionNode lives in
:mod:`orcapod_core.pipeline.function_node`), and the node protocols orchestrators rely on.

A node is a stream (same API as any stream) bound to the pipeline's databases. The
orchestrator drives it through ``execute``; reading a node that was not executed in this
process serves what is stored and never computes new function results.

**OperatorNode** cache modes: ``CacheMode.OFF`` (compute, store nothing), ``LOG`` (compute
and append output rows deduplicated by row hash), ``REPLAY`` (serve stored rows).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from typing import Any, Protocol, TypeGuard, runtime_checkable

import pyarrow as pa

from orcapod_core.databases import RECORD_ID_COLUMN, ArrowDatabase
from orcapod_core.datagrams import Packet, Tag
from orcapod_core.hashing import ContentHash, digests_to_hex, hash_rows
from orcapod_core.operators import Operator
from orcapod_core.operators.base import OperatorStream
from orcapod_core.pipeline.observers import ExecutionObserver, NodeStats, NoOpObserver
from orcapod_core.streams import Stream, StreamLayout, conform

__all__ = [
    "CacheMode",
    "LoadStatus",
    "Node",
    "SourceNode",
    "OperatorNode",
    "SourceNodeProtocol",
    "FunctionNodeProtocol",
    "OperatorNodeProtocol",
    "is_source_node",
    "is_function_node",
    "is_operator_node",
    "ENTRY_ID_COLUMN",
    "COMPUTED_COLUMN",
    "INPUT_SOURCE_COLUMN",
    "RUN_ID_COLUMN",
]

ENTRY_ID_COLUMN = RECORD_ID_COLUMN
COMPUTED_COLUMN = "__computed"
INPUT_SOURCE_COLUMN = "__input_source_info"
RUN_ID_COLUMN = "__run_id"
#: Operator logs: which input a row was logged for; pipeline records: which node content (the
#: input's data identity) a record was made for.
NODE_CONTENT_COLUMN = "__node_content_hash"


class CacheMode(enum.Enum):
    """What an OperatorNode stores: nothing, its output rows, or replays stored rows."""

    OFF = "off"
    LOG = "log"
    REPLAY = "replay"


class LoadStatus(enum.Enum):
    """How much of a node is usable (relevant for pipelines loaded from their saved form).

    * ``FULL`` — everything works: reads serve stored rows, runs compute what is missing.
    * ``READ_ONLY`` — a function node whose code could not be loaded (a
      :class:`~orcapod_core.packet_function_proxy.PacketFunctionProxy`): it serves stored
      results; computing a new packet fails with ``PacketFunctionUnavailableError``.
    * ``CACHE_ONLY`` — a node below an unavailable source: its input is the stored snapshot of
      that source, so it serves the results stored for it and can never see new data.
    * ``UNAVAILABLE`` — a source that cannot be rebuilt from config (in-memory data); it serves
      the rows stored when the pipeline was saved.
    """

    FULL = "full"
    READ_ONLY = "read_only"
    CACHE_ONLY = "cache_only"
    UNAVAILABLE = "unavailable"


class Node(Stream):
    """Base of compiled nodes: a labelled stream with upstream nodes and a storage location."""

    kind: str = "node"
    #: Name of the pipeline that compiled this node (set by ``Pipeline.compile``).
    pipeline_name: tuple[str, ...] = ()
    #: The pipeline that compiled this node (set by ``Pipeline.compile``).
    pipeline: Any = None

    def __init__(self, label: str, upstream_nodes: Sequence[Node], database: ArrowDatabase, record_path: tuple[str, ...]):
        self.label = label
        self.upstream_nodes = tuple(upstream_nodes)
        self.database = database
        self.record_path = record_path
        self.last_stats: NodeStats | None = None

    @property
    def upstreams(self) -> tuple[Stream, ...]:
        return self.upstream_nodes

    @property
    def load_status(self) -> LoadStatus:
        """How usable this node is (see :class:`LoadStatus`); ``FULL`` unless loaded from a
        saved pipeline with missing code or data."""
        if any(u.load_status in (LoadStatus.UNAVAILABLE, LoadStatus.CACHE_ONLY) for u in self.upstream_nodes):
            return LoadStatus.CACHE_ONLY
        return self._own_load_status()

    def _own_load_status(self) -> LoadStatus:
        return LoadStatus.FULL

    def _set_output(self, table: pa.Table) -> None:
        """Make ``table`` (already in this node's layout) the node's current rows."""
        self.__dict__["_cached_table"] = table
        for key in ("_cached_packet_hashes", "_output_entry_ids", "_missing_packets", "_snapshot"):
            self.__dict__.pop(key, None)

    @property
    def pinned(self) -> bool:
        """True inside :func:`~orcapod_core.pipeline.snapshots.pinned_outputs` for this node:
        it serves the pinned rows, and :meth:`refresh` leaves them alone."""
        return bool(self.__dict__.get("_pinned"))

    def refresh(self) -> None:
        """Forget the rows read or computed so far: the next read takes them from the current
        data and store (a pinned node keeps its pinned rows)."""
        if self.pinned:
            return
        for key in ("_cached_table", "_cached_packet_hashes", "_output_entry_ids", "_missing_packets", "_snapshot"):
            self.__dict__.pop(key, None)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label!r}>"


# --------------------------------------------------------------------------------------
# Source nodes
# --------------------------------------------------------------------------------------


class SourceNode(Node):
    """A source (or any stream entering the pipeline from outside) as a node."""

    kind = "source"

    def __init__(self, stream: Stream, label: str, database: ArrowDatabase, record_path: tuple[str, ...]):
        super().__init__(label, (), database, record_path)
        self.stream = stream

    @property
    def source(self) -> Stream:
        return self.stream

    def _own_load_status(self) -> LoadStatus:
        # A loaded source that could not be rebuilt serves its stored snapshot.
        return LoadStatus.UNAVAILABLE if getattr(self.stream, "rebuilt", True) is False else LoadStatus.FULL

    @property
    def producer(self) -> Any:
        return self.stream

    def _predict_layout(self) -> StreamLayout:
        return self.stream.layout

    def _identity_hashes(self) -> tuple[ContentHash, ContentHash]:
        return self.stream.content_hash(), self.stream.pipeline_hash()

    def _compute_table(self) -> pa.Table:
        return self.stream._table()

    def refresh(self) -> None:
        """Forget the rows read so far; a source over files or tables (``CSVSource``,
        ``DeltaTableSource``, a derived source) reads its current content next time."""
        if self.pinned:
            return
        refresh = getattr(self.stream, "refresh", None)
        if refresh is not None:
            refresh()
        super().refresh()

    def execute(self, observer: ExecutionObserver | None = None) -> Stream:
        """Read the source; returns this node with its rows loaded."""
        observer = observer or NoOpObserver()
        start = time.perf_counter()
        table = self._table()
        observer.on_node_start(self, table.num_rows)
        stats = NodeStats(self.label, self.kind, total=table.num_rows, duration_s=time.perf_counter() - start)
        self.last_stats = stats
        observer.on_node_end(self, stats)
        return self

    def as_source(self) -> Stream:
        return self.stream


# --------------------------------------------------------------------------------------
# Operator nodes
# --------------------------------------------------------------------------------------


class OperatorNode(Node):
    """An operator applied to upstream nodes."""

    kind = "operator"

    def __init__(
        self,
        operator: Operator,
        upstream_nodes: Sequence[Node],
        label: str,
        database: ArrowDatabase,
        record_path: tuple[str, ...],
        cache_mode: CacheMode = CacheMode.OFF,
    ):
        super().__init__(label, upstream_nodes, database, record_path)
        self.operator = operator
        self.cache_mode = CacheMode(cache_mode)
        self._stream = OperatorStream(operator, tuple(upstream_nodes), label=label)

    @property
    def producer(self) -> Operator:
        return self.operator

    def _predict_layout(self) -> StreamLayout:
        return self._stream.layout

    def _identity_hashes(self) -> tuple[ContentHash, ContentHash]:
        return self._stream.content_hash(), self._stream.pipeline_hash()

    def identity_hash(self) -> ContentHash:
        """The operator's identity (class + config): the node's code version."""
        from orcapod_core.hashing import hash_object

        return hash_object(self.operator.identity_structure())

    def _compute_table(self) -> pa.Table:
        if self.cache_mode is CacheMode.REPLAY:
            return self._stored_rows()
        return self.operator.compute(*self.upstream_nodes)

    def _stored_rows(self) -> pa.Table:
        # The log table is shared by every input of this shape (its path is keyed by the
        # pipeline hash): replay only the rows logged for this node's current input.
        if not self.database.has_table(self.record_path):
            return self.layout.schema.empty_table()
        stored = self.database.get_records_where(self.record_path, {NODE_CONTENT_COLUMN: self.content_hash().to_string()})
        if stored is None:
            return self.layout.schema.empty_table()
        return conform(stored.select(self.layout.schema.names), self.layout)

    def execute(self, *inputs: Stream, observer: ExecutionObserver | None = None) -> Stream:
        """Compute the operator on ``inputs`` (or replay stored rows); LOG stores new rows."""
        observer = observer or NoOpObserver()
        start = time.perf_counter()
        observer.on_node_start(self, sum(len(s) for s in inputs))
        if self.cache_mode is CacheMode.REPLAY:
            table = self._stored_rows()
        else:
            table = conform(self.operator.compute(*(inputs or self.upstream_nodes)), self.layout)
            if self.cache_mode is CacheMode.LOG and table.num_rows:
                content = pa.repeat(pa.scalar(self.content_hash().to_string(), pa.large_string()), table.num_rows)
                logged = table.append_column(pa.field(NODE_CONTENT_COLUMN, pa.large_string(), False), content)
                ids = digests_to_hex(hash_rows(logged))  # row + input identity: dedup per input
                self.database.add_records(
                    self.record_path,
                    logged.append_column(pa.field(RECORD_ID_COLUMN, pa.large_string(), False), ids),
                    digest_columns=(RECORD_ID_COLUMN,),
                )
                self.database.flush_path(self.record_path)
        self._set_output(table)
        stats = NodeStats(self.label, self.kind, total=table.num_rows, duration_s=time.perf_counter() - start)
        self.last_stats = stats
        observer.on_node_end(self, stats)
        return self

    def as_source(self) -> Stream:
        from orcapod_core.pipeline.derived import DerivedSource

        return DerivedSource(self)


# --------------------------------------------------------------------------------------
# Node protocols (what orchestrators rely on) and TypeGuard dispatch
# --------------------------------------------------------------------------------------


@runtime_checkable
class SourceNodeProtocol(Protocol):
    kind: str
    label: str

    def execute(self, observer: ExecutionObserver | None = None) -> Stream: ...


@runtime_checkable
class OperatorNodeProtocol(Protocol):
    kind: str
    label: str

    def execute(self, *inputs: Stream, observer: ExecutionObserver | None = None) -> Stream: ...


@runtime_checkable
class FunctionNodeProtocol(Protocol):
    kind: str
    label: str

    def execute(
        self,
        input_stream: Stream | None = None,
        observer: ExecutionObserver | None = None,
        *,
        error_policy: str = "continue",
        executor: Any = None,
        run_id: str | None = None,
    ) -> Stream: ...

    def execute_packet(self, tag: Tag, packet: Packet, observer: ExecutionObserver | None = None) -> Packet | None: ...


def is_source_node(node: Any) -> TypeGuard[SourceNodeProtocol]:
    return getattr(node, "kind", None) == "source" and isinstance(node, SourceNodeProtocol)


def is_operator_node(node: Any) -> TypeGuard[OperatorNodeProtocol]:
    return getattr(node, "kind", None) == "operator" and isinstance(node, OperatorNodeProtocol)


def is_function_node(node: Any) -> TypeGuard[FunctionNodeProtocol]:
    return getattr(node, "kind", None) == "function" and isinstance(node, FunctionNodeProtocol)
