"""Sources over files and tables that can change and can be rebuilt from their config: CSV
and Delta Lake.

Both are live sources (:class:`~orcapod_core.sources.base.LiveSource`). Building one reads no rows: the
columns and their types come from the file's header and first block (CSV) or the table's
metadata (Delta). Rows are read when first needed and again after ``refresh()`` — a pipeline
refreshes its sources when a run starts, so every run sees the current content, pinned for the
whole run (a Delta table at the version current when the run started).

* **CSV** — types are inferred from the first block of the file (1 MiB, as Arrow's reader does),
  unless ``schema=`` declares them; a column is ``T | None`` when that block has an empty field
  in it. An empty field is null (as polars reads it) — in a column typed ``str`` it is the empty
  string ``""``; a quoted empty field ``""`` is always the empty string. A later row that does
  not fit (text in an int column, an empty field in a non-optional column) fails the run naming
  the column and the row.
* **Delta** — types come from the table's schema; a column is ``T | None`` when the log's
  statistics count nulls in it. For a column the log has no null counts for (lists and maps,
  and columns beyond the first 32) that one column is read to find out — or declare it with
  ``schema=``.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs

from orcapod_core.errors import InputValidationError, StoreAccessError
from orcapod_core.sources.base import LiveSource, _apply_schema
from orcapod_core.types import arrow_field, canonical_arrow_type, canonicalize_table, python_to_arrow, type_from_string, type_to_string

__all__ = ["CSVSource", "DeltaTableSource", "file_source_from_config", "in_commit_order", "fetched", "local_table_dir", "read_delta", "storage_error_reason"]


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


def local_table_dir(table_uri: str) -> str | None:
    """The local directory of a Delta table URI (a plain path or ``file://``), ``None`` for
    object stores (``s3://``, ``gs://``, ``az://``, ...)."""
    if "://" not in table_uri:
        return os.path.abspath(os.path.expanduser(table_uri))
    parsed = urlparse(table_uri)
    return url2pathname(parsed.path) if parsed.scheme == "file" else None


def read_delta(dt: Any, columns: Sequence[str] | None = None, filter: Any = None, schema: pa.Schema | None = None) -> pa.Table:
    """The rows of ``dt``'s current snapshot (files in commit order, see :func:`in_commit_order`)
    as one Arrow table; ``columns``/``filter``/``schema`` as for ``pyarrow.dataset``.

    A local table is read through pyarrow's native local filesystem; an object-store table's
    files are fetched through deltalake's storage handler (see :func:`fetched`)."""
    local = local_table_dir(dt.table_uri)
    if local is not None:
        dataset = dt.to_pyarrow_dataset(schema=schema, filesystem=pafs.SubTreeFileSystem(local, pafs.LocalFileSystem()))
        return in_commit_order(dt, dataset).to_table(columns=columns, filter=filter)
    return fetched(in_commit_order(dt, dt.to_pyarrow_dataset(schema=schema))).to_table(columns=columns, filter=filter)


def fetched(dataset: Any) -> Any:
    """``dataset`` (files on a Python filesystem, such as deltalake's storage handler for object
    stores) with every file fetched into memory on the calling thread, then scanned natively.

    Scanning a Python filesystem with Arrow lets Arrow's I/O threads hold the last reference to
    it; released while the interpreter finalizes, that thread waits for the GIL and the process
    aborts at exit ("terminate called without an active exception": a few percent of the
    processes that read a table on S3, ``use_threads=False`` included). Fetched here into
    Arrow-owned memory, no Arrow thread ever holds a Python object."""
    import pyarrow.dataset as ds

    fs, fmt = dataset.filesystem, dataset.format
    fragments = []
    for fragment in dataset.get_fragments():
        native = pa.BufferOutputStream()  # memory owned by Arrow, not by a Python object
        with fs.open_input_file(fragment.path) as source:
            native.write(source.read_buffer())
        fragments.append(fmt.make_fragment(native.getvalue(), partition_expression=fragment.partition_expression))
    return ds.FileSystemDataset(fragments, dataset.schema, fmt, None)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_XML_FIELD = re.compile(r"<(Code|Message)>([^<]*)</\1>")


def storage_error_reason(exc: BaseException) -> str:
    """deltalake's multi-line storage error (colour codes, an S3 XML error body) as one line:
    ``"Generic S3 error; ...; 404 Not Found; NoSuchBucket: The specified bucket does not exist"``."""
    parts: list[str] = []
    for line in _ANSI.sub("", str(exc)).splitlines():
        line = line.strip().lstrip("↳").strip()
        if line.startswith("<"):  # an S3 error document: keep its code and message
            fields = dict(_XML_FIELD.findall(line))
            line = ": ".join(v for v in (fields.get("Code"), fields.get("Message")) if v)
        if line and line not in parts:
            parts.append(line)
    text = "; ".join(parts) or type(exc).__name__
    return text if len(text) <= 600 else text[:597] + "..."


def _schema_config(schema: Mapping[str, Any] | None) -> dict[str, str] | None:
    return {c: type_to_string(t) for c, t in schema.items()} if schema else None


def file_source_from_config(config: Mapping[str, Any], storage_options: Mapping[str, str] | None = None) -> LiveSource:
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


#: How much of a CSV file its types are inferred from (Arrow's first block).
CSV_SAMPLE_BYTES = 1 << 20


def _tag_list(tag_columns: Sequence[str] | str) -> list[str]:
    return [tag_columns] if isinstance(tag_columns, str) else list(tag_columns)


class CSVSource(LiveSource):
    """Source over a CSV file, read with Arrow's CSV reader (``schema=`` fixes column types).

    The default ``source_id`` is the path as given. Building it reads the header and the first
    block only; every pipeline run reads the file's current content (see the module notes).

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
        self.delimiter = delimiter
        self._declared = dict(schema or {})
        sample = self._csv(self._declared_types(), sample=True)
        try:
            user = _apply_schema(canonicalize_table(sample), self._declared, "CSVSource")
        except InputValidationError as exc:
            raise type(exc)(f"CSVSource {self.path!r}: {exc}") from exc
        self._setup(
            user.schema,
            tag_columns,
            record_id_column=record_id_column,
            source_id=source_id if source_id is not None else self.path,
            label=label or Path(self.path).stem,
        )
        self._config = {
            "type": "CSVSource",
            "path": self.path,
            "tag_columns": _tag_list(tag_columns),
            "record_id_column": record_id_column,
            "delimiter": delimiter,
            "schema": _schema_config(schema),
            "source_id": self.source_id,
            "label": self.label,
        }

    def _declared_types(self) -> dict[str, pa.DataType]:
        return {c: python_to_arrow(t, f"CSVSource {self.path!r} column {c!r}") for c, t in self._declared.items()}

    def _csv(self, column_types: Mapping[str, pa.DataType], *, sample: bool = False) -> pa.Table:
        """The file (or its first block) as Arrow; an empty field is null, but ``""`` in a
        non-optional ``str`` column (declared, or inferred from the first block)."""
        if not Path(self.path).is_file():
            raise InputValidationError(f"CSVSource: file not found: {self.path!r}")
        parse = pacsv.ParseOptions(delimiter=self.delimiter)
        convert = pacsv.ConvertOptions(column_types=dict(column_types), strings_can_be_null=True, quoted_strings_can_be_null=False)
        try:
            if sample:
                read = pacsv.ReadOptions(block_size=CSV_SAMPLE_BYTES)
                with pacsv.open_csv(self.path, read_options=read, parse_options=parse, convert_options=convert) as reader:
                    batches = []
                    try:
                        batches.append(reader.read_next_batch())
                    except StopIteration:
                        pass
                    table = pa.Table.from_batches(batches, schema=reader.schema)
            else:
                table = pacsv.read_csv(self.path, parse_options=parse, convert_options=convert)
        except pa.ArrowInvalid as exc:
            raise InputValidationError(f"CSVSource {self.path!r}: cannot read the file: {_name_csv_column(str(exc), self.path, self.delimiter)}") from exc
        strings = [f.name for f in self._string_columns(table.schema)]
        for name in strings:
            i = table.schema.get_field_index(name)
            table = table.set_column(i, table.schema.field(i).with_nullable(False), table.column(i).fill_null(""))
        return table

    def _string_columns(self, schema: pa.Schema) -> list[pa.Field]:
        """Columns whose empty fields mean ``""``: strings declared (or, after building, laid out) as ``str``."""
        declared = {c for c, t in self._declared.items() if t is str}
        layout = getattr(self, "_user_layout", None)
        if layout is not None:
            declared |= {f.name for f in layout.schema if f.type == pa.large_string() and not f.nullable}
        return [f for f in schema if f.name in declared]

    def _read(self) -> pa.Table:
        return self._csv({f.name: f.type for f in self._user_layout.schema})

    def fingerprint(self) -> str:
        """``csv:<size>:<mtime_ns>:<ctime_ns>:<inode>`` of the file (``csv:missing`` when it is
        gone): appends change the size, edits the times, a replaced file the inode."""
        try:
            st = os.stat(self.path)
        except OSError:
            return "csv:missing"
        return f"csv:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"

    def to_config(self) -> dict[str, Any]:
        return dict(self._config)


def _name_csv_column(message: str, path: str, delimiter: str) -> str:
    """Arrow says "In CSV column #2: ..."; say which column that is (from the header line)."""
    found = re.search(r"CSV column #(\d+)", message)
    if not found:
        return message
    try:
        with open(path, "rb") as fh:
            header = fh.readline()
        names = pacsv.read_csv(io.BytesIO(header), parse_options=pacsv.ParseOptions(delimiter=delimiter)).column_names
    except (OSError, pa.ArrowInvalid):
        return message
    index = int(found.group(1))
    return message.replace(found.group(0), f"CSV column #{index} ({names[index]!r})") if index < len(names) else message


class DeltaTableSource(LiveSource):
    """Source over a Delta Lake table (local path or ``s3://`` / ``gs://`` / ``az://`` URI).

    The default ``source_id`` is the path/URI as given. ``version`` pins a table version;
    without it every pipeline run reads the version current when the run starts (``version``
    is then the version the source reads now). Building it reads the table's metadata only.

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
        self.path = os.fspath(path)
        self.storage_options = dict(storage_options or {})
        self.pinned_version = version
        dt = self._open(version)
        self.version: int = dt.version()
        self._setup(
            self._layout_schema(dt, dict(schema or {})),
            tag_columns,
            record_id_column=record_id_column,
            source_id=source_id if source_id is not None else self.path,
            label=label or Path(self.path.rstrip("/")).name,
        )
        self._config = {
            "type": "DeltaTableSource",
            "path": self.path,
            "tag_columns": _tag_list(tag_columns),
            "record_id_column": record_id_column,
            "version": version,
            "schema": _schema_config(schema),
            "source_id": self.source_id,
            "label": self.label,
        }

    def _open(self, version: int | None = None) -> Any:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            return DeltaTable(self.path, version=version, storage_options=self.storage_options or None)
        except TableNotFoundError as exc:
            raise InputValidationError(f"DeltaTableSource: no Delta table at {self.path!r}") from exc
        except OSError as exc:  # the store itself: bucket, endpoint, credentials, options
            options = sorted(self.storage_options)  # names only: values may be secrets
            raise StoreAccessError(
                f"DeltaTableSource: cannot reach the table at {self.path!r} (storage options given: "
                f"{options or 'none'}): {storage_error_reason(exc)}"
            ) from exc

    def _layout_schema(self, dt: Any, declared: Mapping[str, Any]) -> pa.Schema:
        """Types from the table's schema, nullability from the log's null counts; a column
        without null counts (lists, maps, columns past the statistics limit) is read."""
        stored = pa.schema(dt.schema().to_arrow())
        unknown = [c for c in declared if c not in stored.names]
        if unknown:
            raise InputValidationError(f"DeltaTableSource {self.path!r}: schema names column(s) {unknown} that are not in the table")
        actions = pa.table(dt.get_add_actions(flatten=True))
        fields: dict[str, pa.Field] = {}
        to_read = []
        for f in stored:
            if f.name in declared:
                fields[f.name] = arrow_field(f.name, declared[f.name], f"DeltaTableSource {self.path!r} column {f.name!r}")
                continue
            dtype = canonical_arrow_type(f.type, f"DeltaTableSource {self.path!r} column {f.name!r}")
            counts = f"null_count.{f.name}"
            if pa.types.is_nested(dtype) or (actions.num_rows and (counts not in actions.column_names or actions[counts].null_count)):
                to_read.append(f.name)
                continue
            nulls = (actions[counts].to_pylist() if actions.num_rows else [])
            fields[f.name] = pa.field(f.name, dtype, nullable=f.nullable and sum(nulls) > 0)
        if to_read:
            sample = canonicalize_table(read_delta(dt, columns=to_read))
            fields.update({f.name: f for f in sample.schema})
        return pa.schema([fields[name] for name in stored.names])

    def _read(self) -> pa.Table:
        dt = self._open(self.version)
        return read_delta(dt, columns=list(self._user_layout.schema.names))

    def refresh(self) -> None:
        """Forget the rows read so far and move to the table's current version (a source built
        with ``version=`` stays there)."""
        super().refresh()
        if self.pinned_version is None:
            self.version = self._open().version()

    def fingerprint(self) -> str:
        """``delta:<version>`` of the table's current version (metadata only)."""
        return f"delta:{self.pinned_version if self.pinned_version is not None else self._open().version()}"

    def to_config(self) -> dict[str, Any]:
        # storage options may hold credentials: they are passed again on load, never saved
        return dict(self._config)
