"""The root-source machinery shared by every concrete source.

A root source turns a plain Arrow table into a stream with provenance:

* system tags ``_tag_source_id::<h>`` (the ``source_id``) and ``_tag_record_id::<h>``
  (``row_<i>``, or ``<col>=<value>`` with a ``record_id_column``), where ``<h>`` is
  the first 12 hex of the source's pipeline hash (the hash of its tag and packet schemas);
* source info ``_source_<col>`` = ``<source_id>::<record_id>::<col>`` per packet column.

Its content hash covers ``source_id`` + schemas; its pipeline hash the schemas only.

In-memory sources hold their table; a :class:`LiveSource` (CSV, Delta Lake) knows its layout
without reading rows, reads them when first needed, and reads again after ``refresh()`` — what a
pipeline does for its sources at the start of every run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from orcapod_core.columns import RECORD_ID_TAG, SOURCE_ID_TAG, check_user_column, source_column
from orcapod_core.errors import DuplicateTagError, InputValidationError
from orcapod_core.hashing import ContentHash, hash_object, hash_table
from orcapod_core.lazy_polars import pl
from orcapod_core.streams import Stream, StreamLayout, shape_identity
from orcapod_core.types import arrow_field, arrow_to_python, canonicalize_table, check_map_keys, type_to_string
from orcapod_core.value_types import PATH_TYPE, value_type_for_arrow

__all__ = ["Source", "RootSource", "LiveSource", "fit_layout"]

_SEP = pa.scalar("::", pa.large_string())
_EMPTY = pa.scalar("", pa.large_string())


class Source(Stream):
    """Base of every source: a stream with no upstream."""

    source_id: str

    @property
    def producer(self) -> Any:
        return self

    def to_config(self) -> dict[str, Any] | None:
        """JSON config that rebuilds this source, or ``None`` for in-memory data."""
        return None


class RootSource(Source):
    """A source over an Arrow table of user columns; adds system tags and source info.

    The table is given (in-memory sources) or read when the rows are first needed
    (:class:`LiveSource`: files and tables that may change). Either way the layout — column
    names, types, nullability, which columns are tags — is fixed when the source is built.

    >>> import pyarrow as pa
    >>> s = RootSource(pa.table({"id": [1, 2], "x": [3, 4]}), tag_columns=["id"], source_id="demo")
    >>> s.as_table(columns={"source": True}).column("_source_x").to_pylist()
    ['demo::row_0::x', 'demo::row_1::x']
    """

    default_label = "source"

    def __init__(
        self,
        table: pa.Table,
        tag_columns: Sequence[str] | str,
        *,
        record_id_column: str | None = None,
        source_id: str | None = None,
        schema: Mapping[str, Any] | None = None,
        label: str | None = None,
    ):
        name = type(self).__name__
        for col in table.column_names:  # before anything else: a reserved name is a naming error
            check_user_column(col, f"{name} column")
        try:
            table = _apply_schema(canonicalize_table(table), schema, name)
        except InputValidationError as exc:
            raise type(exc)(str(exc) if str(exc).startswith(name) else f"{name}: {exc}") from exc
        self._setup(
            table.schema,
            tag_columns,
            record_id_column=record_id_column,
            source_id=source_id if source_id is not None else hash_table(_by_path(table)).to_hex(16),
            label=label,
        )
        self._user_table = table.select(list(self._user_layout.schema.names))
        self._record_ids = _record_ids(self._user_table, record_id_column, name)

    def _setup(
        self,
        user_schema: pa.Schema,
        tag_columns: Sequence[str] | str,
        *,
        record_id_column: str | None,
        source_id: str,
        label: str | None,
    ) -> None:
        """Check the columns and fix the layout and identity (no rows needed)."""
        tag_columns = [tag_columns] if isinstance(tag_columns, str) else list(tag_columns)
        name = type(self).__name__
        names = user_schema.names
        for col in names:
            check_user_column(col, f"{name} column")
        missing = [c for c in tag_columns if c not in names]
        if missing:
            raise InputValidationError(f"{name}: tag column(s) {missing} not found in the data (columns: {names})")
        if len(set(tag_columns)) != len(tag_columns):
            raise InputValidationError(f"{name}: tag columns {tag_columns} contain duplicates")
        if record_id_column is not None and record_id_column not in names:
            raise InputValidationError(f"{name}: record_id_column {record_id_column!r} not found in the data (columns: {names})")
        packet_columns = [c for c in names if c not in tag_columns]
        self._user_layout = StreamLayout(
            pa.schema([user_schema.field(c) for c in [*tag_columns, *packet_columns]]), tuple(tag_columns)
        )
        self._shape = shape_identity(self._user_layout)
        self.source_id = source_id
        if not isinstance(self.source_id, str) or not self.source_id or "::" in self.source_id:
            raise InputValidationError(f"{name}: source_id must be a non-empty string without '::', got {self.source_id!r}")
        self.record_id_column = record_id_column
        self.label = label

    def _user_rows(self) -> tuple[pa.Table, pa.Array]:
        """The user columns in layout order, and each row's record id."""
        return self._user_table, self._record_ids

    # -- Stream hooks ---------------------------------------------------------------
    def _identity_hashes(self) -> tuple[ContentHash, ContentHash]:
        pipeline = hash_object({"kind": "source", **self._shape})
        content = hash_object({"kind": "source", "source_id": self.source_id, **self._shape})
        return content, pipeline

    @property
    def system_tag_hash(self) -> str:
        """The 12-hex suffix of this source's system-tag column names."""
        return self.pipeline_hash().to_hex(12)

    def _predict_layout(self) -> StreamLayout:
        user = self._user_layout
        h = self.system_tag_hash
        str_field = lambda n: pa.field(n, pa.large_string(), nullable=False)  # noqa: E731
        return StreamLayout.build(
            user.fields(user.tag_columns),
            [str_field(f"{SOURCE_ID_TAG}::{h}"), str_field(f"{RECORD_ID_TAG}::{h}")],
            user.fields(user.packet_columns),
            [str_field(source_column(c)) for c in user.packet_columns],
        )

    def _compute_table(self) -> pa.Table:
        table, record_ids = self._user_rows()
        n = table.num_rows
        h = self.system_tag_hash
        sid = pa.scalar(self.source_id, pa.large_string())
        table = table.append_column(f"{SOURCE_ID_TAG}::{h}", pa.repeat(sid, n)).append_column(
            f"{RECORD_ID_TAG}::{h}", record_ids
        )
        for col in self._user_layout.packet_columns:
            info = pc.binary_join_element_wise(sid, record_ids, pa.scalar(col, pa.large_string()), _SEP)
            table = table.append_column(source_column(col), info)
        return table

    def identity_structure(self) -> dict[str, Any]:
        return {"kind": "source", "source_id": self.source_id, **self._shape}


class LiveSource(RootSource):
    """A source over data that can change (a file, a table): its layout is known without reading
    rows, its rows are read when first needed, and :meth:`refresh` makes the next read see the
    data's current content. A pipeline refreshes its sources when a run starts, so every run
    reads the current data, once, pinned for the whole run.

    Subclasses implement :meth:`_read` (the user columns, as stored) and :meth:`fingerprint`.
    """

    def _read(self) -> pa.Table:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A cheap token that changes whenever the data may have changed (no rows are read)."""
        raise NotImplementedError

    def refresh(self) -> None:
        """Forget the rows read so far: the next read sees the data's current content."""
        for key in ("_cached_table", "_cached_packet_hashes", "_read_fingerprint"):
            self.__dict__.pop(key, None)

    def read_fingerprint(self) -> str | None:
        """The :meth:`fingerprint` of the data the current rows were read from: equal ones mean
        equal rows (a snapshot of them is found by it, without hashing them again). ``None``
        before a read, or when the data changed while it was being read."""
        return self.__dict__.get("_read_fingerprint")

    def _user_rows(self) -> tuple[pa.Table, pa.Array]:
        name = f"{type(self).__name__} {getattr(self, 'path', self.source_id)!r}"
        before = self.fingerprint()
        table = fit_layout(self._read(), self._user_layout.schema, name)
        self.__dict__["_read_fingerprint"] = before if self.fingerprint() == before else None
        return table, _record_ids(table, self.record_id_column, name)


def fit_layout(table: pa.Table, schema: pa.Schema, name: str) -> pa.Table:
    """``table``'s columns of ``schema``, cast to it exactly (Arrow's safe casts: no value is
    truncated) — or :class:`~orcapod_core.errors.InputValidationError` naming the column (and,
    for a null in a column declared without ``| None``, the row)."""
    missing = [c for c in schema.names if c not in table.column_names]
    if missing:
        raise InputValidationError(f"{name}: column(s) {missing} are no longer in the data (columns: {table.column_names})")
    columns = []
    for f in schema:
        col = table.column(f.name)
        if not f.nullable and col.null_count:
            row = pc.index(pc.is_null(col), True).as_py()
            raise InputValidationError(
                f"{name}: column {f.name!r} ({type_to_string(arrow_to_python(f.type))}) has no value in row {row}; "
                f"declare it with schema={{{f.name!r}: {type_to_string(arrow_to_python(f.type))} | None}} to allow missing values"
            )
        if col.type != f.type:
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                raise InputValidationError(
                    f"{name}: column {f.name!r} no longer fits its type {type_to_string(arrow_to_python(f.type, f.nullable))}: {exc}"
                ) from exc
        check_map_keys(col, f.type, f"{name}: column {f.name!r}")
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)


def _apply_schema(table: pa.Table, schema: Mapping[str, Any] | None, name: str) -> pa.Table:
    if not schema:
        return table
    unknown = [c for c in schema if c not in table.column_names]
    if unknown and table.num_rows:
        raise InputValidationError(f"{name}: schema names column(s) {unknown} that are not in the data")
    for col in unknown:  # empty data: the schema defines the columns
        table = table.append_column(arrow_field(col, schema[col]), pa.nulls(0, arrow_field(col, schema[col]).type))
    fields = [arrow_field(f.name, schema[f.name]) if f.name in schema else f for f in table.schema]
    try:
        return table.cast(pa.schema(fields))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        bad = [f.name for f in fields if f.name in schema]
        raise InputValidationError(f"{name}: data does not fit the declared schema for columns {bad}: {exc}") from exc


def _by_path(table: pa.Table) -> pa.Table:
    """``table`` with its file columns as their path strings: a source's default id names which
    files it lists (editing one changes that row's packet, not the source), and building it
    reads no file."""
    for i, f in enumerate(table.schema):
        if value_type_for_arrow(f.type) is PATH_TYPE:
            table = table.set_column(i, pa.field(f.name, pa.large_string(), f.nullable), pc.struct_field(table.column(i), "path"))
    return table


def _record_ids(table: pa.Table, record_id_column: str | None, name: str) -> pa.Array:
    n = table.num_rows
    if record_id_column is None:  # row_0, row_1, ...
        index = pl.int_range(0, n, dtype=pl.Int64, eager=True).to_arrow().cast(pa.large_string())
        return pc.binary_join_element_wise(pa.scalar("row_", pa.large_string()), index, _EMPTY)
    col = table.column(record_id_column).combine_chunks()
    if col.null_count:
        raise InputValidationError(f"{name}: record_id_column {record_id_column!r} contains nulls")
    if pc.count_distinct(col).as_py() != n:
        counts = pc.value_counts(col)
        dupes = [v["values"] for v in counts.to_pylist() if v["counts"] > 1][:5]
        raise DuplicateTagError(f"{name}: record_id_column {record_id_column!r} has duplicate values, e.g. {dupes}")
    try:
        text = col.cast(pa.large_string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InputValidationError(f"{name}: record_id_column {record_id_column!r} must be a scalar column") from exc
    return pc.binary_join_element_wise(pa.scalar(f"{record_id_column}=", pa.large_string()), text, _EMPTY)
