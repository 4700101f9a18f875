"""Where materialized outputs are, as recorded by Dagster: the link between a materialization
event and the rows it pinned in the orcapod store.

Every orcapod materialization records ``orcapod/snapshot`` (the record path of the node's
snapshot tables) and ``orcapod/data_version`` (which snapshot); a table published by a plain
Dagster asset through :class:`~orcapod_dagster.OrcapodIOManager` records ``dagster/uri`` and
``orcapod/delta_version``. :func:`latest_output` reads them back from the instance.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pyarrow as pa

from orcapod_core.databases import DeltaTableDatabase
from orcapod_core.errors import NotMaterializedError, SchemaMismatchError
from orcapod_core.pipeline import Snapshot, load_snapshot
from orcapod_core.streams import StreamLayout, TableStream, conform
from orcapod_dagster.partitions import HIDDEN_COLUMNS, restrict

__all__ = [
    "SNAPSHOT_KEY",
    "DATA_VERSION_KEY",
    "DELTA_VERSION_KEY",
    "PARTITION_BY_KEY",
    "MaterializedOutput",
    "latest_output",
    "latest_partition_outputs",
    "read_partitions",
    "open_store",
    "snapshot_metadata",
]

SNAPSHOT_KEY = "orcapod/snapshot"
DATA_VERSION_KEY = "orcapod/data_version"
DELTA_VERSION_KEY = "orcapod/delta_version"
PARTITION_BY_KEY = "orcapod/partition_by"
URI_KEY = "dagster/uri"


@functools.lru_cache(maxsize=32)
def _open(uri: str, options: tuple[tuple[str, str], ...]) -> DeltaTableDatabase:
    return DeltaTableDatabase(uri, storage_options=dict(options) or None)


def open_store(uri: str | os.PathLike[str], storage_options: Mapping[str, str] | None = None) -> DeltaTableDatabase:
    """One shared :class:`DeltaTableDatabase` handle per store and process."""
    return _open(os.fspath(uri), tuple(sorted((storage_options or {}).items())))


def snapshot_metadata(snapshot: Snapshot) -> dict[str, Any]:
    """The materialization metadata that pins ``snapshot``."""
    return {
        SNAPSHOT_KEY: dg.MetadataValue.text("/".join(snapshot.path)),
        DATA_VERSION_KEY: dg.MetadataValue.text(snapshot.data_version),
    }


@dataclass(frozen=True)
class MaterializedOutput:
    """What the latest materialization of an asset recorded about its rows."""

    asset_key: dg.AssetKey
    snapshot_path: tuple[str, ...] | None
    data_version: str | None
    table_uri: str | None
    delta_version: int | None
    partition_by: str | None = None  # the partition column of a partitioned run

    def read_snapshot(self, database: DeltaTableDatabase | Any, layout: StreamLayout | None = None) -> TableStream:
        """The pinned rows of an orcapod node's materialization."""
        if self.snapshot_path is None or self.data_version is None:
            raise NotMaterializedError(
                f"asset {self.asset_key.to_user_string()!r} was not materialized by orcapod (no {SNAPSHOT_KEY} metadata)"
            )
        name = self.asset_key.to_user_string()
        try:
            return load_snapshot(database, self.snapshot_path, self.data_version, layout=layout)
        except NotMaterializedError as exc:
            raise NotMaterializedError(
                f"asset {name!r}: the rows of its latest materialization are not in the store "
                f"({exc}); is the IO manager pointing at the pipeline's store?"
            ) from exc
        except SchemaMismatchError as exc:
            raise SchemaMismatchError(
                f"asset {name!r}: its latest materialization does not fit its current definition; materialize it again "
                f"(include it in the selection): {exc}"
            ) from exc


def latest_output(instance: dg.DagsterInstance, key: dg.AssetKey, *, consumer: str | None = None) -> MaterializedOutput:
    """What the latest materialization of ``key`` recorded; raises
    :class:`~orcapod_core.errors.NotMaterializedError` naming the asset if there is none."""
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        needed = f" (needed by {consumer})" if consumer else ""
        raise NotMaterializedError(
            f"upstream asset {key.to_user_string()!r} was never materialized{needed}: materialize it first, or "
            f"include it in the selection"
        )
    return _output(key, event.asset_materialization)


def latest_partition_outputs(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition_keys: Sequence[str], *, consumer: str | None = None
) -> dict[str, MaterializedOutput]:
    """What the latest materialization of each partition of ``key`` recorded; raises
    :class:`~orcapod_core.errors.NotMaterializedError` naming the asset and the partitions that
    were never materialized."""
    outputs: dict[str, MaterializedOutput] = {}
    missing = []
    for partition in dict.fromkeys(partition_keys):
        records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1).records
        materialization = records[0].asset_materialization if records else None
        if materialization is None:
            missing.append(partition)
        else:
            outputs[partition] = _output(key, materialization)
    if missing:
        needed = f" (needed by {consumer})" if consumer else ""
        raise NotMaterializedError(
            f"upstream asset {key.to_user_string()!r}: partition(s) {missing} were never materialized{needed}: "
            f"materialize them first, or include the asset in the selection"
        )
    return outputs


def read_partitions(outputs: Mapping[str, MaterializedOutput], database: Any, layout: StreamLayout | None = None) -> TableStream:
    """The rows of the given partitions, each from its own latest materialization: a
    materialization that covered several partitions (a range run) is read once, and when the
    node still has the run's partition column, only its rows of the partitions it is the
    latest materialization of."""
    by_snapshot: dict[tuple[Any, ...], list[str]] = {}
    for partition, output in outputs.items():
        by_snapshot.setdefault((output.snapshot_path, output.data_version), []).append(partition)
    tables: list[pa.Table] = []
    read: TableStream | None = None
    for partitions in by_snapshot.values():
        read = outputs[partitions[0]].read_snapshot(database, layout=layout)
        table = conform(read.as_table(columns=HIDDEN_COLUMNS), read.layout)
        column = outputs[partitions[0]].partition_by
        tables.append(restrict(table, column, partitions) if column in read.tag_columns else table)
    if read is None:
        if layout is None:
            raise NotMaterializedError("no partitions to read")
        return TableStream(layout.schema.empty_table(), layout.tag_columns, layout=layout)
    table = pa.concat_tables([conform(t, read.layout) for t in tables])
    return TableStream(table, read.layout.tag_columns, layout=read.layout)


def _output(key: dg.AssetKey, materialization: dg.AssetMaterialization) -> MaterializedOutput:
    metadata = materialization.metadata

    def value(name: str) -> Any:
        entry = metadata.get(name)
        return None if entry is None else entry.value

    path = value(SNAPSHOT_KEY)
    delta_version = value(DELTA_VERSION_KEY)
    return MaterializedOutput(
        asset_key=key,
        snapshot_path=tuple(path.split("/")) if path else None,
        data_version=value(DATA_VERSION_KEY),
        table_uri=value(URI_KEY),
        delta_version=int(delta_version) if isinstance(delta_version, (int, float)) else None,
        partition_by=value(PARTITION_BY_KEY),
    )
