"""Pipelines: record, compile into nodes, run with an orchestrator, observe.

>>> from orcapod_core.pipeline import Pipeline
>>> from orcapod_core.databases import InMemoryArrowDatabase
>>> with Pipeline("demo", pipeline_database=InMemoryArrowDatabase()) as p:  # doctest: +SKIP
...     out = double.pod(source, label="doubled")
>>> p.run()                                                                 # doctest: +SKIP
"""

from orcapod_core.pipeline.derived import DerivedSource
from orcapod_core.pipeline.graph import DEFAULT_STORE, Pipeline, RunResult
from orcapod_core.pipeline.function_node import FunctionNode
from orcapod_core.pipeline.nodes import (
    CacheMode,
    FunctionNodeProtocol,
    LoadStatus,
    Node,
    OperatorNode,
    OperatorNodeProtocol,
    SourceNode,
    SourceNodeProtocol,
    is_function_node,
    is_operator_node,
    is_source_node,
)
from orcapod_core.pipeline.observers import (
    CompositeObserver,
    ExecutionObserver,
    LoggingObserver,
    NodeStats,
    NoOpObserver,
    ProgressObserver,
    StatusObserver,
)
from orcapod_core.pipeline.orchestrators import AsyncPipelineOrchestrator, SyncPipelineOrchestrator
from orcapod_core.pipeline.progress import LiveProgress
from orcapod_core.pipeline.snapshots import (
    Snapshot,
    data_version,
    has_snapshot,
    load_snapshot,
    pinned_outputs,
    save_snapshot,
    snapshot_path,
)

__all__ = [
    "Pipeline",
    "RunResult",
    "DEFAULT_STORE",
    "DerivedSource",
    "CacheMode",
    "LoadStatus",
    "Node",
    "SourceNode",
    "FunctionNode",
    "OperatorNode",
    "SourceNodeProtocol",
    "FunctionNodeProtocol",
    "OperatorNodeProtocol",
    "is_source_node",
    "is_function_node",
    "is_operator_node",
    "ExecutionObserver",
    "NoOpObserver",
    "CompositeObserver",
    "StatusObserver",
    "ProgressObserver",
    "LiveProgress",
    "LoggingObserver",
    "NodeStats",
    "SyncPipelineOrchestrator",
    "AsyncPipelineOrchestrator",
    "Snapshot",
    "snapshot_path",
    "data_version",
    "save_snapshot",
    "load_snapshot",
    "has_snapshot",
    "pinned_outputs",
]
