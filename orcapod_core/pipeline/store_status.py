"""What the store holds for each node of a pipeline — read from table metadata, nothing run.

Per node: its own table (a function node's pipeline records, an operator's log under
``CacheMode.LOG``, a source's stored rows), for a function node also its result table (shared
by every pipeline using the function), the bytes of both, when the node's table was last
committed, and — for a function node — the latest run that recorded rows in it (run ids start
with their local start time, ``20261201T183047-…``). A warm run that serves everything from the
store records nothing new, so "last run" is the last run that had something to record.

>>> from orcapod_core import DictSource, InMemoryArrowDatabase, Pipeline, function_pod
>>> @function_pod(output_keys="y")
... def double(x: int) -> int:
...     return 2 * x
>>> with Pipeline("demo", pipeline_database=InMemoryArrowDatabase()) as p:
...     _ = double.pod(DictSource({"id": [1, 2], "x": [1, 2]}, tag_columns="id", label="numbers"), label="doubled")
>>> _ = p.run()
>>> [(s.label, s.records.rows if s.records else None, s.results.rows) for s in store_status(p) if s.kind == "function"]
[('doubled', 2, 2)]
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

import pyarrow.compute as pc

from orcapod_core.databases import TableStats
from orcapod_core.errors import InputValidationError
from orcapod_core.pipeline.nodes import RUN_ID_COLUMN

__all__ = ["NodeStoreStatus", "store_status"]


@dataclass(frozen=True)
class NodeStoreStatus:
    """What the store holds for one node (see the module notes). ``records`` / ``results`` are
    ``None`` when the table does not exist yet (or the database cannot tell)."""

    label: str
    kind: str
    records: TableStats | None = None
    results: TableStats | None = None
    last_run_id: str | None = None

    @property
    def bytes(self) -> int:
        """Bytes of the node's table plus, for a function node, its result table."""
        return sum(t.bytes for t in (self.records, self.results) if t is not None)

    @property
    def last_written(self) -> datetime.datetime | None:
        """When the node's own table was last committed (UTC), if the store records it."""
        return self.records.modified if self.records is not None else None


def _stats(database: Any, path: tuple[str, ...]) -> TableStats | None:
    read = getattr(database, "table_stats", None)  # a database without it: nothing to show
    return read(tuple(path)) if read is not None else None


def _last_run_id(node: Any) -> str | None:
    try:
        run_ids = node.database.get_column(tuple(node.record_path), RUN_ID_COLUMN)
    except InputValidationError:  # records written before run ids were recorded
        return None
    return None if run_ids is None or not len(run_ids) else pc.max(run_ids).as_py()


def store_status(pipeline: Any) -> list[NodeStoreStatus]:
    """One :class:`NodeStoreStatus` per node of ``pipeline``, in topological order. Reads table
    metadata (and, for function nodes, the run-id column of their records); computes, writes
    and creates nothing.

    >>> for s in store_status(pipeline): print(s.label, s.bytes)        # doctest: +SKIP
    """
    out = []
    for node in pipeline.nodes.values():
        records = _stats(node.database, node.record_path)
        results = last_run = None
        cache = getattr(node, "result_cache", None)
        if cache is not None:
            results = _stats(cache.database, cache.record_path)
            if records is not None and records.rows:
                last_run = _last_run_id(node)
        out.append(NodeStoreStatus(node.label, node.kind, records, results, last_run))
    return out
