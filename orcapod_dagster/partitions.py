"""Dynamic partitions keyed by a source tag column.

With ``partition_by="site"`` (on :func:`~orcapod_dagster.build_definitions`,
:func:`~orcapod_dagster.orcapod_assets` or ``OrcapodTranslatorSettings``) every asset of the
pipeline is partitioned by the values of the source tag column ``site``. Materializing some
partitions — one key, or a range in one run (the assets' backfill policy is single-run) — runs
the pipeline on the rows of the sources carrying that tag column whose value is one of the keys;
sources without the column (reference tables) are read whole. Function results stay memoized
per packet, so partitions materialized later reuse everything computed before.

Partition keys are the column's values as strings (``str`` of an int, ISO dates, ...); rows
whose value is null belong to no partition.

>>> defs = build_definitions(pipeline, partition_by="site")          # doctest: +SKIP
>>> add_partitions(pipeline, instance, partition_by="site")          # doctest: +SKIP
['north', 'south']
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from orcapod_core.errors import InputValidationError
from orcapod_core.pipeline import Node, Pipeline
from orcapod_core.streams import Stream
from orcapod_dagster.translator import OrcapodTranslator

__all__ = [
    "HIDDEN_COLUMNS",
    "with_partition_by",
    "partitioned_sources",
    "key_strings",
    "restrict",
    "distinct_keys",
    "partition_keys",
    "add_partitions",
]

#: Every column group of a stream except the computed content hash: its full stored rows.
HIDDEN_COLUMNS = {"system_tags": True, "source": True, "meta": True}


def with_partition_by(translator: OrcapodTranslator | None, partition_by: str | None) -> OrcapodTranslator:
    """``translator`` (default: a new one) whose settings partition by ``partition_by`` when given.

    The caller's translator is never modified: a copy carries the new setting."""
    translator = translator or OrcapodTranslator()
    current = translator.settings.partition_by
    if partition_by is None or current == partition_by:
        return translator
    if current is not None:
        raise InputValidationError(
            f"partition_by={partition_by!r} conflicts with the translator's settings (partition_by={current!r})"
        )
    partitioned = copy.copy(translator)
    partitioned.settings = dataclasses.replace(translator.settings, partition_by=partition_by)
    return partitioned


def partitioned_sources(pipeline: Pipeline, column: str) -> list[Node]:
    """The source nodes of ``pipeline`` that have tag column ``column``; raises
    :class:`~orcapod_core.errors.InputValidationError` naming the column when there is none."""
    sources = [node for node in pipeline.nodes.values() if node.kind == "source"]
    keyed = [node for node in sources if column in node.tag_columns]
    if not keyed:
        have = {node.label: list(node.tag_columns) for node in sources}
        raise InputValidationError(
            f"pipeline {'/'.join(pipeline.name)!r}: partition_by={column!r} is not a tag column of any of its "
            f"sources (source tag columns: {have})"
        )
    return keyed


def key_strings(table: pa.Table, column: str, where: str = "") -> pa.ChunkedArray:
    """The partition key of every row of ``table``: column ``column`` cast to strings."""
    values = table.column(column)
    try:
        return pc.cast(values, pa.large_string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        at = f"{where}: " if where else ""
        raise InputValidationError(
            f"{at}partition_by column {column!r} has type {values.type}, which cannot be a partition key "
            f"(use a scalar tag column)"
        ) from exc


def restrict(table: pa.Table, column: str, keys: Sequence[str]) -> pa.Table:
    """The rows of ``table`` whose ``column`` value (as a string) is one of ``keys``."""
    wanted = pa.array(list(keys), pa.large_string())
    return table.filter(pc.fill_null(pc.is_in(key_strings(table, column), value_set=wanted), False))


def distinct_keys(tables: Sequence[pa.Table], column: str) -> list[str]:
    """The distinct non-null values of ``column`` over ``tables``, ordered by value, as strings."""
    uniques = [pc.unique(t.column(column).combine_chunks().drop_null()) for t in tables if t.num_rows]
    if not uniques:
        return []
    try:  # order by value (2 before 10) when the sources agree on the column's type
        first = uniques[0].type
        merged = pc.unique(pa.concat_arrays([u.cast(first) for u in uniques]))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        merged = pc.unique(pa.concat_arrays([pc.cast(u, pa.large_string()) for u in uniques]))
    ordered = merged.take(pc.sort_indices(merged))
    keys = key_strings(pa.table({column: ordered}), column).to_pylist()
    return list(dict.fromkeys(keys))


def partition_keys(pipeline: Pipeline, partition_by: str, sources: Sequence[Stream] | None = None) -> list[str]:
    """The partition keys the pipeline's sources hold now: the distinct values of their tag
    column ``partition_by`` (``sources``: other source streams to read instead of the nodes).

    >>> partition_keys(pipeline, "site")                        # doctest: +SKIP
    ['north', 'south']
    """
    streams = list(sources) if sources is not None else partitioned_sources(pipeline, partition_by)
    for stream in streams:  # the data as it is now (files and tables may have grown)
        refresh = getattr(stream, "refresh", None)
        if refresh is not None:
            refresh()
    return distinct_keys([s.as_table() for s in streams if partition_by in s.tag_columns], partition_by)


def add_partitions(
    pipeline: Pipeline,
    instance: dg.DagsterInstance,
    *,
    partition_by: str | None = None,
    translator: OrcapodTranslator | None = None,
) -> list[str]:
    """Register the partition keys the pipeline's sources hold now (see :func:`partition_keys`)
    as dynamic partitions on ``instance``; returns the keys that were new.

    >>> add_partitions(pipeline, instance, partition_by="site")          # doctest: +SKIP
    ['north', 'south']
    """
    translator = with_partition_by(translator, partition_by)
    column = translator.settings.partition_by
    if column is None:
        raise InputValidationError("add_partitions needs partition_by= (or a translator with settings.partition_by)")
    keyed = partitioned_sources(pipeline, column)
    definition = translator.get_partitions_def(keyed[0])
    if not isinstance(definition, dg.DynamicPartitionsDefinition) or definition.name is None:
        raise InputValidationError(
            f"pipeline {'/'.join(pipeline.name)!r}: the translator's partitions definition is {definition!r}, "
            f"not a named DynamicPartitionsDefinition; there is nothing to register"
        )
    existing = set(instance.get_dynamic_partitions(definition.name))
    new = [key for key in partition_keys(pipeline, column, keyed) if key not in existing]
    if new:
        instance.add_dynamic_partitions(definition.name, new)
    return new
