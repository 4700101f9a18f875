"""What a notebook shows for a stream: a small table preview.

A caption (the stream's kind and label, rows × columns, which columns are tags) and the visible
columns only — hidden provenance columns stay hidden, as in ``stream.as_table()`` — rendered by
polars' own HTML table (it escapes every value and shows the first and last few rows of a long
stream). The stream's rows are computed to show them, once, as on any first access.

>>> from orcapod_core import DictSource
>>> html = stream_html(DictSource({"id": [1, 2], "x": ["<b>", "y"]}, tag_columns="id", label="demo"))
>>> "2 rows × 2 columns" in html, "&lt;b&gt;" in html, "_tag_" in html
(True, True, False)
"""

from __future__ import annotations

import html
from typing import Any

__all__ = ["PREVIEW_ROWS", "stream_html"]

#: Rows a preview shows at most (polars shows the first and last ones of a longer stream).
PREVIEW_ROWS = 6


def stream_html(stream: Any, max_rows: int = PREVIEW_ROWS) -> str:
    """The HTML preview of ``stream`` (any orcapod stream: source, pod output, operator output,
    pipeline node), at most ``max_rows`` rows. A stream whose rows cannot be computed shows the
    error instead of raising (a notebook display should not hide the object behind a traceback).

    >>> stream_html(source, max_rows=3)              # doctest: +SKIP
    """
    name = type(stream).__name__ + (f" {stream.label!r}" if getattr(stream, "label", None) else "")
    try:
        table = stream.as_table()  # hidden columns off, as everywhere by default
    except Exception as exc:  # noqa: BLE001 - shown, not swallowed: the caption says what failed
        reason = f"{type(exc).__name__}: {exc}"
        return f"<div><p><b>{html.escape(name)}</b>: rows could not be computed</p><pre>{html.escape(reason)}</pre></div>"
    tags = [c for c in stream.tag_columns if c in table.column_names]
    caption = (
        f"<b>{html.escape(name)}</b>: {table.num_rows} row{'' if table.num_rows == 1 else 's'} × "
        f"{table.num_columns} column{'' if table.num_columns == 1 else 's'}"
        + (f"; tags: {html.escape(', '.join(tags))}" if tags else "")
    )
    return f"<div><p>{caption}</p>{_table_html(table, max_rows)}</div>"


def _table_html(table: Any, max_rows: int) -> str:
    import polars as pl

    try:
        frame = pl.from_arrow(table)
        with pl.Config(tbl_rows=max(max_rows, 1), tbl_hide_dataframe_shape=True):
            return frame._repr_html_()  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 - a type polars cannot show: Arrow's own text, escaped
        return f"<pre>{html.escape(table.slice(0, max(max_rows, 1)).to_string(preview_cols=20))}</pre>"
