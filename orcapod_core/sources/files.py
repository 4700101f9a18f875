"""Sources over files and tables that can be rebuilt from their config: CSV and Delta Lake."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from orcapod_core.errors import InputValidationError
from orcapod_core.sources.base import RootSource
from orcapod_core.types import python_to_arrow, type_from_string, type_to_string

__all__ = ["CSVSource", "DeltaTableSource", "file_source_from_config", "in_commit_order", "delta_rows_in_commit_order"]


def in_commit_order(dt: Any, dataset: Any) -> Any:
    """``dataset`` (a ``pyarrow.dataset.FileSystemDataset`` over ``dt``'s current files) with
    its files in the order they were committed: appended rows come after the rows already
    there, so row positions — and ``row_<i>`` record ids — of existing rows never move."""
    import pyarrow.dataset as ds
    from urllib.parse import unquote

    fragments = list(dataset.get_fragments())
    if len(fragments) < 2:
        return dataset
    actions = pa.table(dt.get_add_actions(flatten=False))
    written = dict(zip(map(unquote, actions["path"].to_pylist()), actions["modification_time"].to_pylist()))

    def key(i: int) -> tuple[int, int]:
        path = fragments[i].path
        stamp = written.get(path)
        if stamp is None:  # fragment paths may be absolute, action paths are table-relative
            stamp = next((t for p, t in written.items() if path.endswith("/" + p)), 0)
        return stamp, -i  # deltalake lists the newest file first; break ties the same way

    order = sorted(range(len(fragments)), key=key)
    return ds.FileSystemDataset([fragments[i] for i in order], dataset.schema, dataset.format, dataset.filesystem)


def delta_rows_in_commit_order(dt: Any) -> pa.Table:
    """Every row of the Delta table ``dt`` at its version, files in commit order."""
    return in_commit_order(dt, dt.to_pyarrow_dataset()).to_table()


def _schema_config(schema: Mapping[str, Any] | None) -> dict[str, str] | None:
    return {c: type_to_string(t) for c, t in schema.items()} if schema else None


def file_source_from_config(config: Mapping[str, Any], storage_options: Mapping[str, str] | None = None) -> RootSource:
    """Rebuild a :class:`CSVSource` or :class:`DeltaTableSource` from its ``to_config()``
    (Delta storage options, which may hold secrets, are passed apart)."""
    kind = config.get("type")
    common = {
        "tag_columns": config["tag_columns"],
        "record_id_column": config.get("record_id_column"),
        "source_id": config.get("source_id"),
        "schema": {c: type_from_string(t) for c, t in (config.get("schema") or {}).items()} or None,
        "label": config.get("label"),
    }
    if kind == "CSVSource":
        return CSVSource(config["path"], delimiter=config.get("delimiter", ","), **common)
    if kind == "DeltaTableSource":
        return DeltaTableSource(config["path"], storage_options=storage_options, version=config.get("version"), **common)
    raise InputValidationError(f"unknown file source type {kind!r} (expected 'CSVSource' or 'DeltaTableSource')")


class CSVSource(RootSource):
    """Source over a CSV file (read with Arrow's CSV reader; ``schema=`` fixes column types).

    The default ``source_id`` is the path as given.

    >>> CSVSource("data/subjects.csv", tag_columns=["subject"])  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        tag_columns: Sequence[str] | str,
        record_id_column: str | None = None,
        source_id: str | None = None,
        *,
        schema: Mapping[str, Any] | None = None,
        delimiter: str = ",",
        label: str | None = None,
    ):
        self.path = os.fspath(path)
        if not Path(self.path).is_file():
            raise InputValidationError(f"CSVSource: file not found: {self.path!r}")
        column_types = {c: python_to_arrow(t, f"column {c!r}") for c, t in (schema or {}).items()}
        try:
            table = pacsv.read_csv(
                self.path,
                parse_options=pacsv.ParseOptions(delimiter=delimiter),
                convert_options=pacsv.ConvertOptions(column_types=column_types),
            )
        except pa.ArrowInvalid as exc:
            raise InputValidationError(f"CSVSource: cannot read {self.path!r}: {exc}") from exc
        self._config = {
            "type": "CSVSource",
            "path": self.path,
            "tag_columns": [tag_columns] if isinstance(tag_columns, str) else list(tag_columns),
            "record_id_column": record_id_column,
            "delimiter": delimiter,
            "schema": _schema_config(schema),
        }
        super().__init__(
            table,
            tag_columns,
            record_id_column=record_id_column,
            source_id=source_id if source_id is not None else self.path,
            schema=schema,
            label=label or Path(self.path).stem,
        )
        self._config["source_id"] = self.source_id
        self._config["label"] = self.label

    def to_config(self) -> dict[str, Any]:
        return dict(self._config)


class DeltaTableSource(RootSource):
    """Source over a Delta Lake table (local path or ``s3://`` / ``gs://`` / ``az://`` URI).

    The default ``source_id`` is the path/URI as given. ``version`` pins a table version.

    >>> DeltaTableSource("/data/measurements", tag_columns=["sample"])  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        tag_columns: Sequence[str] | str,
        storage_options: Mapping[str, str] | None = None,
        record_id_column: str | None = None,
        source_id: str | None = None,
        *,
        version: int | None = None,
        schema: Mapping[str, Any] | None = None,
        label: str | None = None,
    ):
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        self.path = os.fspath(path)
        self.storage_options = dict(storage_options or {})
        try:
            dt = DeltaTable(self.path, version=version, storage_options=self.storage_options or None)
        except TableNotFoundError as exc:
            raise InputValidationError(f"DeltaTableSource: no Delta table at {self.path!r}") from exc
        self.version = dt.version()
        table = delta_rows_in_commit_order(dt)
        self._config = {
            "type": "DeltaTableSource",
            "path": self.path,
            "tag_columns": [tag_columns] if isinstance(tag_columns, str) else list(tag_columns),
            "record_id_column": record_id_column,
            "version": version,
            "schema": _schema_config(schema),
        }
        super().__init__(
            table,
            tag_columns,
            record_id_column=record_id_column,
            source_id=source_id if source_id is not None else self.path,
            schema=schema,
            label=label or Path(self.path.rstrip("/")).name,
        )
        self._config["source_id"] = self.source_id
        self._config["label"] = self.label

    def to_config(self) -> dict[str, Any]:
        # storage options may hold credentials: they are passed again on load, never saved
        return dict(self._config)
