"""OrcapodIOManager: the orcapod Delta Lake store as a Dagster IO manager.

It opens the same store as the pipeline's ResultCache and pipeline database, and moves node
outputs between Dagster steps and into Dagster-native assets:

* ``load_input`` returns an upstream asset's rows **as of its latest materialization** — the
  snapshot pinned by that materialization, never the union of everything the shared tables
  hold — typed by the consumer's annotation: ``pyarrow.Table``, ``polars.DataFrame``,
  ``polars.LazyFrame`` or an orcapod stream (hidden provenance columns included);
* ``handle_output`` publishes a table returned by a plain Dagster asset (Arrow, Polars or an
  orcapod stream) as the Delta table ``<store_uri>/<asset key path>``, which an orcapod
  ``DeltaTableSource`` can read; loading it back reads the version that materialization wrote
  (as an orcapod stream: tag columns from the input's ``tag_columns`` metadata).

>>> @dg.asset(ins={"scored": dg.AssetIn(key=["water_quality", "scored"])})   # doctest: +SKIP
... def report(scored: pl.DataFrame) -> pl.DataFrame:
...     return scored.group_by("category").len()
>>> dg.Definitions(assets=[report], resources={"io_manager": OrcapodIOManager(store_uri=".orcapod")})  # doctest: +SKIP
"""

from __future__ import annotations

import typing
from typing import Any

import dagster as dg
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from orcapod_core.errors import NotMaterializedError, StoreAccessError, UnsupportedTypeError
from orcapod_core.sources.files import read_delta, storage_error_reason
from orcapod_core.streams import Stream, TableStream
from orcapod_dagster.store import DELTA_VERSION_KEY, URI_KEY, latest_output, latest_partition_outputs, open_store, read_partitions

__all__ = ["OrcapodIOManager"]


class OrcapodIOManager(dg.ConfigurableIOManager):
    """Reads and writes the orcapod Delta Lake store at ``store_uri`` (a local path or an
    ``s3://`` / ``gs://`` / ``az://`` URI; ``storage_options`` go to deltalake)."""

    store_uri: str
    storage_options: dict[str, str] = {}

    # -- locations ---------------------------------------------------------------------
    def table_uri(self, asset_key: dg.AssetKey) -> str:
        """Where ``handle_output`` publishes the table of a plain asset: ``<store_uri>/<key path>``."""
        return open_store(self.store_uri, self.storage_options).table_uri(tuple(asset_key.path))

    # -- writing -----------------------------------------------------------------------
    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        """Publish a table (``pyarrow.Table``, polars ``DataFrame``/``LazyFrame``, orcapod stream)
        as the Delta table of the asset, replacing its previous contents (a new Delta version)."""
        if obj is None:
            return
        name = context.asset_key.to_user_string()
        table = _to_arrow(obj, f"asset {name!r}")
        uri = self.table_uri(context.asset_key)
        options = self.storage_options or None
        try:
            write_deltalake(uri, table, mode="overwrite", schema_mode="overwrite", storage_options=options)
            version = DeltaTable(uri, storage_options=options).version()
        except OSError as exc:  # the store itself: bucket, endpoint, credentials, options
            raise StoreAccessError(
                f"asset {name!r}: cannot publish its table at {uri} (storage options given: "
                f"{sorted(self.storage_options) or 'none'}): {storage_error_reason(exc)}"
            ) from exc
        context.add_output_metadata(
            {
                URI_KEY: dg.MetadataValue.text(uri),
                DELTA_VERSION_KEY: dg.MetadataValue.int(version),
                "dagster/row_count": dg.MetadataValue.int(table.num_rows),
                "dagster/column_schema": _arrow_column_schema(table.schema),
            }
        )

    # -- reading -----------------------------------------------------------------------
    def load_input(self, context: dg.InputContext) -> Any:
        """The upstream asset's rows as of its latest materialization, typed by the consumer
        (for a partitioned orcapod asset: the rows of the input's partitions, each as of that
        partition's latest materialization)."""
        key = context.asset_key
        consumer = f"input {context.name!r}" if context.has_input_name else None
        tag_columns = tuple((context.definition_metadata or {}).get("tag_columns") or ())
        if context.has_asset_partitions:
            outputs = latest_partition_outputs(context.instance, key, context.asset_partition_keys, consumer=consumer)
            if outputs and all(o.snapshot_path is not None for o in outputs.values()):
                rows = read_partitions(outputs, open_store(self.store_uri, self.storage_options))
                return _convert(rows, context.dagster_type.typing_type, tag_columns)
        output = latest_output(context.instance, key, consumer=consumer)
        if output.snapshot_path is not None:
            stream: Stream | pa.Table = output.read_snapshot(open_store(self.store_uri, self.storage_options))
        elif output.table_uri is not None and output.delta_version is not None:
            pinned = DeltaTable(output.table_uri, version=output.delta_version, storage_options=self.storage_options or None)
            stream = read_delta(pinned)
        else:
            raise NotMaterializedError(
                f"asset {key.to_user_string()!r} has no table in the orcapod store (its materialization recorded "
                f"neither orcapod/snapshot nor dagster/uri + {DELTA_VERSION_KEY})"
            )
        return _convert(stream, context.dagster_type.typing_type, tag_columns)


def _convert(rows: Stream | pa.Table, wants: Any, tag_columns: tuple[str, ...]) -> Any:
    import polars as pl  # imported when used: loading the code location needs no polars
    if isinstance(wants, type) and issubclass(wants, Stream):
        if isinstance(rows, Stream):
            return rows
        return TableStream(rows, tag_columns)
    table = rows.as_table() if isinstance(rows, Stream) else rows
    origin = typing.get_origin(wants) or wants
    if origin is pl.LazyFrame:
        return pl.from_arrow(table).lazy()  # type: ignore[union-attr]
    if origin is pl.DataFrame:
        return pl.from_arrow(table)
    return table  # pyarrow.Table, and the default for unannotated inputs


def _to_arrow(obj: Any, where: str) -> pa.Table:
    import polars as pl  # imported when used: loading the code location needs no polars
    if isinstance(obj, pa.Table):
        return obj
    if isinstance(obj, pl.LazyFrame):
        obj = obj.collect()
    if isinstance(obj, pl.DataFrame):
        return obj.to_arrow(compat_level=pl.CompatLevel.oldest())
    if isinstance(obj, Stream):
        return obj.as_table()
    raise UnsupportedTypeError(
        f"{where}: OrcapodIOManager stores pyarrow Tables, polars DataFrames/LazyFrames and orcapod streams, "
        f"got {type(obj).__name__}"
    )


def _arrow_column_schema(schema: pa.Schema) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(f.name, type=str(f.type), constraints=dg.TableColumnConstraints(nullable=f.nullable)) for f in schema]
    )
