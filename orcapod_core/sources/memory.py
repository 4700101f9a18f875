"""Sources over in-memory data: dicts, lists, Arrow tables, DataFrames."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from orcapod_core.errors import InputValidationError, UnsupportedTypeError
from orcapod_core.lazy_polars import pl
from orcapod_core.sources.base import RootSource
from orcapod_core.types import arrow_field, type_to_string
from orcapod_core.values import strict_array
from orcapod_core.value_types import value_type_of

__all__ = ["DictSource", "ListSource", "ArrowTableSource", "DataFrameSource"]


def _table_from_python(data: Any, schema: Mapping[str, Any] | None, name: str) -> pa.Table:
    """Arrow table from columns (``{col: [values]}``) or rows (``[{col: value}]``).

    Columns are converted one at a time so a bad value's error names its column.
    """
    if isinstance(data, Mapping):
        columns = {k: list(v) for k, v in data.items()}
    else:
        rows = list(data)
        if not all(isinstance(r, Mapping) for r in rows):
            raise InputValidationError(f"{name}: data must be a mapping of columns or a sequence of row dicts")
        keys = list(rows[0]) if rows else []
        for i, row in enumerate(rows):
            if set(row) != set(keys):
                raise InputValidationError(f"{name}: row {i} has columns {sorted(row)}, expected {sorted(keys)}")
        columns = {k: [r[k] for r in rows] for k in keys}
    schema = dict(schema or {})
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise InputValidationError(f"{name}: columns have different lengths {dict((k, len(v)) for k, v in columns.items())}")
    if not columns and not schema:
        raise InputValidationError(f"{name}: empty data needs a schema= to know its columns")
    missing = [c for c in schema if c not in columns]
    if missing and any(columns.values()):
        raise InputValidationError(f"{name}: schema column(s) {missing} are not in the data")
    arrays, fields = [], []
    for col in [*columns, *missing]:
        values = columns.get(col, [])
        try:
            if col in schema:
                field = arrow_field(col, schema[col])
                arrays.append(strict_array(values, field))
                fields.append(field)
            elif (vt := value_type_of(type(next((v for v in values if v is not None), None)))) is not None:
                field = pa.field(col, vt.arrow_type, nullable=any(v is None for v in values))  # Path, arrays...
                arrays.append(strict_array(values, field))
                fields.append(field)
            else:
                arrays.append(pa.array(values))
                fields.append(pa.field(col, arrays[-1].type))
        except UnsupportedTypeError as exc:
            raise UnsupportedTypeError(f"{name}: {exc}") from exc
        except RecursionError:
            raise UnsupportedTypeError(f"{name}: column {col!r} holds values nested too deeply for the orcapod type table") from None
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError, ValueError) as exc:
            declared = f" (declared {type_to_string(schema[col])})" if col in schema else ""
            raise InputValidationError(f"{name}: cannot convert column {col!r}{declared} to Arrow: {exc}") from exc
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


class DictSource(RootSource):
    """Source over Python data: a mapping of columns or a sequence of row dicts.

    >>> DictSource({"id": [1, 2], "x": ["a", "b"]}, tag_columns="id").keys()
    (('id',), ('x',))
    """

    def __init__(
        self,
        data: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]],
        tag_columns: Sequence[str] | str,
        source_id: str | None = None,
        schema: Mapping[str, Any] | None = None,
        *,
        record_id_column: str | None = None,
        label: str | None = None,
    ):
        table = _table_from_python(data, schema, "DictSource")
        super().__init__(table, tag_columns, record_id_column=record_id_column, source_id=source_id, schema=schema, label=label)


class ListSource(RootSource):
    """Source over a list of values: packet ``{name: value}``, tag ``{"element_index": i}``
    (or whatever ``tag_function(value, index)`` returns).

    >>> ListSource("path", ["a.txt", "b.txt"]).as_table().to_pylist()[1]
    {'element_index': 1, 'path': 'b.txt'}
    """

    def __init__(
        self,
        name: str,
        data: Sequence[Any],
        tag_function: Callable[[Any, int], Mapping[str, Any]] | None = None,
        *,
        source_id: str | None = None,
        schema: Mapping[str, Any] | None = None,
        label: str | None = None,
    ):
        rows = []
        for i, value in enumerate(data):
            tag = dict(tag_function(value, i)) if tag_function else {"element_index": i}
            if name in tag:
                raise InputValidationError(f"ListSource: tag_function returned the packet column name {name!r}")
            rows.append({**tag, name: value})
        tag_columns = list(rows[0])[:-1] if rows else ["element_index"]
        if not rows and not schema:
            schema = {"element_index": int, name: str}
        table = _table_from_python(rows, schema, "ListSource")
        super().__init__(table, tag_columns, source_id=source_id, schema=schema, label=label or name)


class ArrowTableSource(RootSource):
    """Source over a pyarrow Table.

    >>> import pyarrow as pa
    >>> ArrowTableSource(pa.table({"id": [1], "x": [1.0]}), ["id"], source_id="t").source_id
    't'
    """

    def __init__(
        self,
        table: pa.Table,
        tag_columns: Sequence[str] | str,
        record_id_column: str | None = None,
        source_id: str | None = None,
        *,
        schema: Mapping[str, Any] | None = None,
        label: str | None = None,
    ):
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if not isinstance(table, pa.Table):
            raise InputValidationError(f"ArrowTableSource needs a pyarrow.Table, got {type(table).__name__}")
        super().__init__(table, tag_columns, record_id_column=record_id_column, source_id=source_id, schema=schema, label=label)


class DataFrameSource(RootSource):
    """Source over a polars DataFrame (or anything ``polars.DataFrame(...)`` accepts, e.g. pandas).

    >>> import polars as pl
    >>> DataFrameSource(pl.DataFrame({"id": [1], "x": [2]}), ["id"]).keys()
    (('id',), ('x',))
    """

    def __init__(
        self,
        df: Any,
        tag_columns: Sequence[str] | str,
        record_id_column: str | None = None,
        source_id: str | None = None,
        *,
        schema: Mapping[str, Any] | None = None,
        label: str | None = None,
    ):
        if isinstance(df, pl.LazyFrame):
            df = df.collect()
        if not isinstance(df, pl.DataFrame):
            try:
                df = pl.DataFrame(df)
            except Exception as exc:  # polars raises many types for unconvertible input
                raise InputValidationError(f"DataFrameSource cannot convert {type(df).__name__} to a DataFrame: {exc}") from exc
        super().__init__(df.to_arrow(), tag_columns, record_id_column=record_id_column, source_id=source_id, schema=schema, label=label)
