"""orcapod_source_sensor: request a run when the rows of a pipeline's sources change.

Every tick asks each watched source whether its data may have changed — a cheap fingerprint
that reads no rows: a Delta table's version, a CSV file's size and modification time — and
only for a source whose fingerprint moved re-reads its rows the way a run does (the source's
``refresh()``: its current content) and fingerprints them. A run is requested exactly when a
source's rows changed since the previous tick — e.g. new lines appended to a CSV file or a new
version of a Delta table; a rewrite with the same rows requests nothing. A source's row
fingerprint is a hash over its row hashes (every column: tags, system tags, values, source
info; row order ignored). It differs from the source's *content hash*, which covers its
``source_id`` and schema only and so stays the same when rows are appended.

The cursor holds the last row fingerprint per source and, under ``"@versions"``, the data
fingerprints they were taken at.

* The first tick (no cursor) requests a run: the sensor cannot know what was materialized before.
* Unchanged rows → ``SkipReason``; the cursor is rewritten either way.
* For a partitioned pipeline (``partition_by``) the cursor keeps one fingerprint per source and
  partition key: new tag values are added as dynamic partitions (``SensorResult``'s
  ``dynamic_partitions_requests``) and only the partitions whose rows changed are requested —
  one run per contiguous block of partition keys (a single key, or a partition range run). A
  changed source without the partition column (reference data) requests every partition.

Sources that hold their rows in memory change only when the pipeline is built again: pass
``pipeline`` as a zero-argument callable that builds it, and every tick builds a fresh one.

>>> sensor = orcapod_source_sensor(pipeline, sources=["samples"], job=job)   # doctest: +SKIP
>>> defs = build_definitions(pipeline, sensors=["samples"])                   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dagster as dg
import pyarrow as pa

from orcapod_core.errors import InvalidLabelError
from orcapod_core.hashing import digests_to_hex, hash_rows
from orcapod_core.pipeline import Pipeline
from orcapod_core.streams import Stream
from orcapod_dagster.partitions import HIDDEN_COLUMNS, distinct_keys, key_strings, partitioned_sources, with_partition_by
from orcapod_dagster.translator import OrcapodTranslator, sanitize_name

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

__all__ = ["orcapod_source_sensor", "row_fingerprints", "watched_sources", "VERSIONS_KEY"]

# Run tags that make one run materialize a range of partitions (what a single-run backfill launches).
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
CHANGED_SOURCES_TAG = "orcapod/changed_sources"
#: Cursor entry with the data fingerprints (Delta version, CSV size + mtime) the row fingerprints were taken at.
VERSIONS_KEY = "@versions"


def orcapod_source_sensor(
    pipeline: Pipeline | Callable[[], Pipeline],
    *,
    sources: str | Sequence[str] | None = None,
    job: dg.JobDefinition | UnresolvedAssetJobDefinition | None = None,
    name: str | None = None,
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    translator: OrcapodTranslator | None = None,
    partition_by: str | None = None,
    description: str | None = None,
) -> dg.SensorDefinition:
    """A sensor requesting a run of the pipeline when the rows of its sources change.

    ``pipeline``: the pipeline, or a zero-argument callable building it (called at definition
    time and on every tick: in-memory sources change only when rebuilt). ``sources``: labels of
    the source nodes to watch (default: all). ``job``: the job to run (default: the pipeline's
    assets; :func:`~orcapod_dagster.build_definitions` passes ``<pipeline>_job``). ``name``
    defaults to ``<pipeline>_sources_sensor``. ``translator`` / ``partition_by`` as for
    :func:`~orcapod_dagster.orcapod_assets`: with a partition column the sensor registers new
    partition keys and requests only the partitions whose rows changed. Like schedules, the
    sensor is off until switched on (``default_status``).

    >>> sensor = orcapod_source_sensor(pipeline, sources="samples", minimum_interval_seconds=60)  # doctest: +SKIP
    >>> dg.Definitions(assets=orcapod_assets(pipeline), sensors=[sensor])                         # doctest: +SKIP
    """
    build = pipeline if not isinstance(pipeline, Pipeline) else None
    if build is not None and not callable(build):
        raise TypeError(f"pipeline must be a Pipeline or a zero-argument callable returning one, got {pipeline!r}")
    defined = _built(build) if build is not None else pipeline
    assert isinstance(defined, Pipeline)
    translator = with_partition_by(translator, partition_by)
    column = translator.settings.partition_by
    labels = watched_sources(defined, sources)
    partitions_def = translator.get_partitions_def(partitioned_sources(defined, column)[0]) if column else None
    group = sanitize_name("_".join(defined.name))
    what = ", ".join(repr(label) for label in labels)
    target = job if job is not None else dg.AssetSelection.assets(*(translator.get_asset_key(n) for n in defined.nodes.values()))

    @dg.sensor(
        name=name or f"{group}_sources_sensor",
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        target=target,
        description=description or f"Runs the orcapod pipeline {'/'.join(defined.name)!r} when the rows of {what} change.",
    )
    def _sensor(context):  # type: ignore[no-untyped-def]  (Dagster inspects the parameter name)
        current = _built(build) if build is not None else defined  # a fresh build holds the current rows
        seen = _read_cursor(context)
        versions_seen = seen.get(VERSIONS_KEY) if isinstance(seen.get(VERSIONS_KEY), dict) else {}
        nodes = {label: current.nodes[label] for label in watched_sources(current, labels)}
        now: dict[str, Any] = {}
        versions: dict[str, str] = {}
        read: list[str] = []  # sources whose rows were read this tick
        for label, node in nodes.items():
            fingerprint = getattr(node.source, "fingerprint", None)  # type: ignore[attr-defined]
            token = fingerprint() if fingerprint is not None else None
            if token is not None:
                versions[label] = token
            if token is not None and token == versions_seen.get(label) and label in seen:
                now[label] = seen[label]  # the data did not change: nothing to read
                continue
            node.refresh()  # what a run does: the source's current content
            now[label] = row_fingerprints(node.source, column)  # type: ignore[attr-defined]
            read.append(label)
        cursor = json.dumps({**now, VERSIONS_KEY: versions}, sort_keys=True)
        changed = [label for label in labels if seen.get(label) != now[label]]
        if column is None or partitions_def is None:
            if not changed:
                return dg.SensorResult(skip_reason=f"the rows of {what} are unchanged", cursor=cursor)
            run = dg.RunRequest(run_key=_digest(cursor), tags=_changed_tag(changed))
            return dg.SensorResult(run_requests=[run], cursor=cursor)

        # Partitioned: register new keys, then request the partitions whose rows changed.
        keyed = [label for label in labels if column in nodes[label].tag_columns]
        # New keys can only come from sources read this tick (the others did not change).
        present = distinct_keys([nodes[label].source.as_table() for label in keyed if label in read], column)  # type: ignore[attr-defined]
        requests: list[dg.AddDynamicPartitionsRequest] = []
        if isinstance(partitions_def, dg.DynamicPartitionsDefinition):
            order = list(context.instance.get_dynamic_partitions(partitions_def.name))
            registered = set(order)
            new = [key for key in present if key not in registered]
            if new:
                requests.append(partitions_def.build_add_request(new))
            order += new
        else:
            order = list(partitions_def.get_partition_keys(dynamic_partitions_store=context.instance))
            known = set(order)
            unknown = [key for key in present if key not in known]
            if unknown:
                context.log.warning(f"orcapod: {column!r} values {unknown[:10]} are not partitions of {partitions_def}; not requested")
        if any(label not in keyed for label in changed):
            wanted = set(order)  # reference data changed: every partition
        else:
            wanted = set()
            for label in changed:
                before = seen.get(label) if isinstance(seen.get(label), dict) else {}
                wanted |= {key for key in {*now[label], *before} if now[label].get(key) != before.get(key)}  # type: ignore[union-attr]
        blocks = _contiguous(order, wanted)
        if not blocks:
            return dg.SensorResult(skip_reason=f"the rows of {what} are unchanged", cursor=cursor, dynamic_partitions_requests=requests)
        runs = [_partition_run(block, _digest(cursor), changed) for block in blocks]
        return dg.SensorResult(run_requests=runs, cursor=cursor, dynamic_partitions_requests=requests)

    return _sensor


def watched_sources(pipeline: Pipeline, sources: str | Sequence[str] | None) -> list[str]:
    """The labels of the source nodes to watch (default: every source node), validated:
    raises :class:`~orcapod_core.errors.InvalidLabelError` naming an unknown or non-source label."""
    nodes = pipeline.nodes
    all_sources = [label for label, node in nodes.items() if node.kind == "source"]
    if sources is None:
        return all_sources
    labels = [sources] if isinstance(sources, str) else list(sources)
    name = "/".join(pipeline.name)
    for label in labels:
        if label not in nodes:
            raise InvalidLabelError(f"pipeline {name!r} has no source {label!r} to watch (its sources: {all_sources})")
        if nodes[label].kind != "source":
            raise InvalidLabelError(
                f"node {label!r} of pipeline {name!r} is a {nodes[label].kind} node, not a source (its sources: {all_sources})"
            )
    return list(dict.fromkeys(labels))


def row_fingerprints(stream: Stream, partition_by: str | None = None) -> str | dict[str, str]:
    """A hash over the stream's row hashes (all columns, row order ignored); with
    ``partition_by`` (a tag column of the stream), one such hash per partition key.

    >>> row_fingerprints(pipeline.samples) == row_fingerprints(pipeline.samples)   # doctest: +SKIP
    True
    """
    import polars as pl  # imported when used: loading the code location needs no polars
    table = stream.as_table(columns=HIDDEN_COLUMNS)
    rows = pl.Series("row", digests_to_hex(hash_rows(table)) if table.num_rows else pa.array([], pa.large_string()))
    if partition_by is None or partition_by not in stream.tag_columns:
        return _digest(rows.sort().str.join("").item())
    frame = pl.DataFrame({"key": pl.Series(key_strings(table, partition_by)), "row": rows})
    grouped = frame.drop_nulls("key").group_by("key").agg(pl.col("row").sort().str.join(""))
    return {key: _digest(joined) for key, joined in grouped.iter_rows()}


# -- helpers ---------------------------------------------------------------------------------


def _built(build: Callable[[], Pipeline]) -> Pipeline:
    built = build()
    if not isinstance(built, Pipeline):
        raise TypeError(f"the pipeline callable {build!r} returned {type(built).__name__}, not a Pipeline")
    return built


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _read_cursor(context: dg.SensorEvaluationContext) -> Mapping[str, Any]:
    if not context.cursor:
        return {}
    try:
        seen = json.loads(context.cursor)
    except json.JSONDecodeError:
        seen = None
    if not isinstance(seen, dict):
        context.log.warning(f"orcapod: ignoring an unreadable sensor cursor {context.cursor[:80]!r}")
        return {}
    return seen


def _changed_tag(changed: Sequence[str]) -> dict[str, str]:
    text = ",".join(changed)
    return {CHANGED_SOURCES_TAG: text if len(text) <= 200 else text[:197] + "..."}


def _contiguous(order: Sequence[str], wanted: set[str]) -> list[list[str]]:
    """``wanted`` keys split into maximal runs of consecutive keys of ``order``."""
    blocks: list[list[str]] = []
    previous = -2
    for i, key in enumerate(order):
        if key not in wanted:
            continue
        if i == previous + 1:
            blocks[-1].append(key)
        else:
            blocks.append([key])
        previous = i
    return blocks


def _partition_run(block: Sequence[str], cursor_digest: str, changed: Sequence[str]) -> dg.RunRequest:
    run_key = f"{cursor_digest}:{block[0]}" + (f"..{block[-1]}" if len(block) > 1 else "")
    if len(block) == 1:
        return dg.RunRequest(run_key=run_key, partition_key=block[0], tags=_changed_tag(changed))
    return dg.RunRequest(run_key=run_key, tags={**_changed_tag(changed), RANGE_START_TAG: block[0], RANGE_END_TAG: block[-1]})
