"""orcapod_core: reproducible, memoized pipelines over Arrow-backed streams of (Tag, Packet) rows.

``import orcapod_core as oc`` is enough for everyday work: the main names of every module are
here, and each module is too (``oc.sources``, ``oc.operators``, ``oc.databases``,
``oc.executors``, ``oc.errors``, ``oc.pipeline``, ...).

>>> import orcapod_core as oc
>>> @oc.function_pod(output_keys="doubled")
... def double(x: int) -> int:
...     return 2 * x
>>> source = oc.DictSource({"id": [1, 2], "x": [10, 20]}, tag_columns="id", source_id="demo")
>>> double.pod(source).as_table().to_pylist()
[{'id': 1, 'doubled': 20}, {'id': 2, 'doubled': 40}]

Names and modules load on first use, so importing one module (say ``orcapod_core.types`` in a
worker process) does not import the whole engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name → the module that defines it.
_NAMES: dict[str, str] = {
    # function pods
    "function_pod": "function_pods",
    "FunctionPod": "function_pods",
    "FunctionPodStream": "function_pods",
    "function_pod_from_config": "function_pods",
    "PythonPacketFunction": "packet_function",
    "PacketFunctionProxy": "packet_function_proxy",
    "resolve_packet_function_from_config": "packet_function_proxy",
    # pipelines
    "Pipeline": "pipeline",
    "RunResult": "pipeline",
    "CacheMode": "pipeline",
    "LoadStatus": "pipeline",
    "SyncPipelineOrchestrator": "pipeline",
    "AsyncPipelineOrchestrator": "pipeline",
    "ExecutionObserver": "pipeline",
    "NoOpObserver": "pipeline",
    "CompositeObserver": "pipeline",
    "ProgressObserver": "pipeline",
    "LiveProgress": "pipeline",
    "LoggingObserver": "pipeline",
    "StatusObserver": "pipeline",
    "NodeStats": "pipeline",
    # sources
    "DictSource": "sources",
    "ListSource": "sources",
    "ArrowTableSource": "sources",
    "DataFrameSource": "sources",
    "CSVSource": "sources",
    "DeltaTableSource": "sources",
    # operators
    "Join": "operators",
    "MergeJoin": "operators",
    "SemiJoin": "operators",
    "Batch": "operators",
    "GroupBy": "operators",
    "PolarsFilter": "operators",
    "SelectTagColumns": "operators",
    "SelectPacketColumns": "operators",
    "DropTagColumns": "operators",
    "DropPacketColumns": "operators",
    "MapTags": "operators",
    "MapPackets": "operators",
    # storage and execution
    "DeltaTableDatabase": "databases",
    "InMemoryArrowDatabase": "databases",
    "MaintenanceReport": "databases",
    "ResultCache": "result_cache",
    "LocalPythonFunctionExecutor": "executors",
    "RunInterrupted": "interrupts",
    "LocalProcessExecutor": "executors",
    "RayExecutor": "executors",
    # data model
    "Schema": "types",
    "register_type": "value_types",
    "ValueType": "value_types",
    "ContentHash": "hashing",
    "Tag": "datagrams",
    "Packet": "datagrams",
    "Stream": "streams",
    "ColumnConfig": "columns",
}

_MODULES = frozenset(
    {
        "capture",
        "columns",
        "databases",
        "datagrams",
        "errors",
        "executors",
        "function_identity",
        "function_pods",
        "hashing",
        "interrupts",
        "keysets",
        "operators",
        "packet_function",
        "packet_function_proxy",
        "pipeline",
        "result_cache",
        "sources",
        "streams",
        "tracking",
        "types",
        "values",
        "value_types",
        "files",
    }
)

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    elif name in _MODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_NAMES, *_MODULES})


if TYPE_CHECKING:  # what editors and type checkers see
    from orcapod_core import databases, errors, executors, operators, pipeline, sources  # noqa: F401
    from orcapod_core.columns import ColumnConfig  # noqa: F401
    from orcapod_core.databases import DeltaTableDatabase, InMemoryArrowDatabase  # noqa: F401
    from orcapod_core.datagrams import Packet, Tag  # noqa: F401
    from orcapod_core.executors import LocalProcessExecutor, LocalPythonFunctionExecutor, RayExecutor  # noqa: F401
    from orcapod_core.function_pods import FunctionPod, FunctionPodStream, function_pod, function_pod_from_config  # noqa: F401
    from orcapod_core.hashing import ContentHash  # noqa: F401
    from orcapod_core.interrupts import RunInterrupted  # noqa: F401
    from orcapod_core.operators import (  # noqa: F401
        Batch,
        DropPacketColumns,
        DropTagColumns,
        GroupBy,
        Join,
        MapPackets,
        MapTags,
        MergeJoin,
        PolarsFilter,
        SelectPacketColumns,
        SelectTagColumns,
        SemiJoin,
    )
    from orcapod_core.packet_function import PythonPacketFunction  # noqa: F401
    from orcapod_core.packet_function_proxy import PacketFunctionProxy, resolve_packet_function_from_config  # noqa: F401
    from orcapod_core.pipeline import (  # noqa: F401
        AsyncPipelineOrchestrator,
        CacheMode,
        CompositeObserver,
        ExecutionObserver,
        LiveProgress,
        LoadStatus,
        LoggingObserver,
        NodeStats,
        NoOpObserver,
        Pipeline,
        ProgressObserver,
        RunResult,
        StatusObserver,
        SyncPipelineOrchestrator,
    )
    from orcapod_core.result_cache import ResultCache  # noqa: F401
    from orcapod_core.sources import ArrowTableSource, CSVSource, DataFrameSource, DeltaTableSource, DictSource, ListSource  # noqa: F401
    from orcapod_core.streams import Stream  # noqa: F401
    from orcapod_core.types import Schema  # noqa: F401
    from orcapod_core.value_types import ValueType, register_type  # noqa: F401
