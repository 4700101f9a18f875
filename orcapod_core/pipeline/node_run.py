"""One run of a function node: the store read once per run, and pipeline records committed in
step with the result batches they link to.

A run may span several ``_assemble`` calls (the async orchestrator assembles a node batch by
batch as its input arrives); its :class:`NodeRun` reads the stored entry ids and results once
and answers later batches in memory, so a batch never costs time proportional to the stored
tables.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from orcapod_core.columns import source_column
from orcapod_core.errors import InputValidationError
from orcapod_core.hashing import digests_to_hex, fixed_as_binary, hash_rows
from orcapod_core.keysets import distinct, is_in, one_array
from orcapod_core.lazy_polars import pl
from orcapod_core.pipeline.key_index import KeyIndex
from orcapod_core.pipeline.nodes import COMPUTED_COLUMN, ENTRY_ID_COLUMN, NODE_CONTENT_COLUMN, RUN_ID_COLUMN
from orcapod_core.result_cache import PACKET_HASH_COLUMN
from orcapod_core.streams import StreamLayout

__all__ = ["NodeRun", "entry_records", "entry_ids_of", "input_source_info", "INPUT_SOURCE_TYPE"]

_ROW = "__orcapod_row"

#: A first-batch lookup of more packet hashes than this reads the node's result columns whole
#: (as the store does for so many keys) and keeps them unfiltered when they are at most twice
#: as many rows as asked for.
BULK_LOOKUP_KEYS = 1000

INPUT_SOURCE_TYPE = pa.map_(pa.field("key", pa.large_string(), False), pa.field("value", pa.large_string(), True))


class NodeRun:
    """One run of a :class:`~orcapod_core.pipeline.function_node.FunctionNode`: a single ``_assemble`` call (sync orchestrator,
    ``execute``) or many (``spans_calls``: the async orchestrator assembles a node batch by
    batch as its input arrives).

    * The store is read once per run: the stored entry-id column, and the result table. The
      first batch looks its packets up directly (a run whose input arrives in one piece does
      exactly one lookup); later batches are answered in memory from the result table read
      once (:class:`~orcapod_core.pipeline.key_index.KeyIndex`), so no batch costs time
      proportional to the stored tables, and packets computed by earlier batches are found
      (computed once per run).
    * Pipeline records wait here until every result they may link to is committed (the
      result database holds no pending rows of the function's table), then are committed as
      one transaction: records reach the store in step with the result batches (the result
      database's size/time-bounded batching), so a killed process loses at most the current
      batch of both and never leaves a pipeline record whose result is missing.
    """

    def __init__(self, node: Any, run_id: str | None, spans_calls: bool = False):  # node: its FunctionNode
        self.node = node
        self.run_id = run_id or uuid.uuid4().hex
        self.spans_calls = spans_calls
        self.batches = 0  # _assemble calls so far
        # Progress events: distinct packets computed so far / found missing so far in the run.
        self.progress_done = 0
        self.progress_total = 0
        self._stored_ids: pa.Array | None = None
        self._stored_index: KeyIndex | None = None
        self._results: KeyIndex | None = None
        self._computed: list[pa.Array] = []
        self._computed_index: KeyIndex | None = None
        self._waiting: list[pa.Table] = []
        #: Packets (hex hashes) whose function raised in this run: later batches do not call them again.
        self.failed_hashes: set[str] = set()

    # -- lookups --------------------------------------------------------------------------
    def recorded(self, entry_ids: pa.Array) -> pa.Array:
        """Per row: is its entry id stored (as of the run's first batch)?"""
        n = len(entry_ids)
        if n == 0:
            return pa.array([], pa.bool_())
        node = self.node
        stored = self._stored_ids
        if stored is None:
            stored = node.database.get_column(node.record_path, ENTRY_ID_COLUMN)
            if stored is None:
                stored = pa.array([], pa.large_string())
            if self.spans_calls:  # later batches look up against it (a one-call run keeps nothing)
                self._stored_ids = stored
        if not len(stored):
            return _falses(n)
        if self.batches <= 1:
            return is_in(entry_ids, stored)
        if self._stored_index is None:
            self._stored_index = KeyIndex(ENTRY_ID_COLUMN, pa.table({ENTRY_ID_COLUMN: stored}))
        return self._stored_index.contains(entry_ids)

    def stored_entries(self, table: pa.Table, layout: StreamLayout, hexes: pa.Array, content: str) -> tuple[pa.Array, pa.Array] | None:
        """The rows' entry ids as the node's pipeline records hold them: per row of ``table``
        (input packet hashes ``hexes``), the entry id of the stored record with the same tags,
        system tags and input packet, recorded for node content ``content`` (null: no such
        record); and every stored entry id. An entry id is the hash of exactly those, so a
        matched row's is the record's, with no hash computed. ``None`` when rows cannot be
        matched exactly by value — a float tag (``-0.0`` and ``0.0`` hash apart but compare
        equal), a file or other value type (hashed by content), records of an older orcapod
        without the node content column: then every row is hashed.

        Matching is positional when the records hold the rows in input order (a warm run of an
        unchanged input; rows appended since are the unmatched tail), else one join."""
        keys = [*layout.tag_columns, *layout.system_tag_columns]
        if not all(_comparable(table.schema.field(k).type) for k in keys):
            return None
        node = self.node
        try:
            stored = node.database.get_all_records(node.record_path, columns=[*keys, PACKET_HASH_COLUMN, NODE_CONTENT_COLUMN])
        except InputValidationError:  # records without the node content column (an older orcapod)
            return None
        n = table.num_rows
        if stored is None or stored.num_rows == 0:
            return pa.nulls(n, pa.large_string()), pa.array([], pa.large_string())
        every = stored.column(ENTRY_ID_COLUMN)
        ours = pc.fill_null(pc.equal(stored.column(NODE_CONTENT_COLUMN), pa.scalar(content, pa.large_string())), False)
        mine = stored if pc.all(ours).as_py() else stored.filter(ours)  # (usually every record is this content's: no copy)
        k = min(n, mine.num_rows)
        if any(mine.schema.field(c).type != table.schema.field(c).type for c in keys):
            return None
        columns = [(table.column(c), mine.column(c)) for c in keys] + [(pa.chunked_array([hexes]), mine.column(PACKET_HASH_COLUMN))]
        if k and all(a.slice(0, k).equals(b.slice(0, k)) for a, b in columns):
            ids = one_array(mine.column(ENTRY_ID_COLUMN).slice(0, k))
            return (ids if k == n else pa.concat_arrays([ids, pa.nulls(n - k, pa.large_string())])), every
        if not all(_flat(table.schema.field(c).type) for c in keys):
            return None
        on = [*keys, PACKET_HASH_COLUMN]
        rows = pl.from_arrow(table.select(keys).append_column(PACKET_HASH_COLUMN, hexes)).with_row_index(_ROW)
        found = rows.join(pl.from_arrow(mine.select([*on, ENTRY_ID_COLUMN])), on=on, how="inner", nulls_equal=True)
        ids = pl.Series(ENTRY_ID_COLUMN, [None] * n, dtype=pl.String).scatter(found[_ROW], found[ENTRY_ID_COLUMN])
        return ids.to_arrow().cast(pa.large_string()), every

    def lookup(self, hashes: pa.Array) -> pa.Table:
        """Stored results of the packet hashes ``hashes`` (packet hash + outputs, in the node's
        result schema), one row per stored hash; it may hold other stored results too (callers
        match rows by packet hash)."""
        node = self.node
        schema = node._result_schema()
        if not len(hashes):
            return schema.empty_table()
        outputs = schema.names[1:]  # only what the node's rows need is read
        if self.batches <= 1:
            if len(hashes) > BULK_LOOKUP_KEYS:
                # The store reads these columns whole for that many keys anyway; when they are
                # most of the table, its rows are kept as they are: the caller's one position
                # lookup matches them, so no separate membership pass over them is needed.
                everything = node.result_cache.get_all_records(columns=outputs)
                if everything is None or everything.num_rows <= 2 * len(hashes):
                    return _project(everything, schema)
            return _project(node.result_cache.lookup(distinct(hashes), columns=outputs), schema)
        if self._results is None:
            self._results = KeyIndex(PACKET_HASH_COLUMN, _project(node.result_cache.get_all_records(columns=outputs), schema))
        found = self._results.take(distinct(hashes))
        return schema.empty_table() if found is None else found

    def note_computed(self, hashes: pa.Array, outputs: pa.Table) -> None:
        """Packets this run computed (and stored), with their outputs."""
        self._computed.append(hashes)
        if self._computed_index is not None:
            self._computed_index.add(pa.table({PACKET_HASH_COLUMN: hashes}))
        if self._results is not None:
            schema = self.node._result_schema()
            self._results.add(outputs.select(schema.names[1:]).add_column(0, schema.field(0), hashes).cast(schema))

    def computed_mask(self, hexes: pa.Array) -> pa.Array:
        """Per row: was its packet computed by this run (this batch or an earlier one)?"""
        n = len(hexes)
        if not self._computed or n == 0:
            return _falses(n)
        if self.batches <= 1:
            return is_in(hexes, pa.concat_arrays(self._computed))
        if self._computed_index is None:
            self._computed_index = KeyIndex(PACKET_HASH_COLUMN, pa.table({PACKET_HASH_COLUMN: pa.concat_arrays(self._computed)}))
        return self._computed_index.contains(hexes)

    # -- writing --------------------------------------------------------------------------
    def stage(self, records: pa.Table) -> None:
        """Pipeline records to commit once the results they link to are committed."""
        if records.num_rows:
            self._waiting.append(records)

    def release(self) -> None:
        """Commit the waiting pipeline records if no result of the function's table is pending
        (they were committed, by this handle or another); else they wait for the next commit."""
        if not self._waiting:
            return
        cache = self.node.result_cache
        pending = getattr(cache.database, "pending_count", None)
        if pending is None or pending(cache.record_path):
            return
        self._commit_records()

    def finish(self) -> None:
        """End of the run (also a failed one): commit the results, then the pipeline records."""
        self.node.result_cache.flush()
        self._commit_records()

    def _commit_records(self) -> None:
        node = self.node
        waiting, self._waiting = self._waiting, []
        for records in waiting:
            node.database.add_records(node.record_path, records, digest_columns=(ENTRY_ID_COLUMN, PACKET_HASH_COLUMN))
        node.database.flush_path(node.record_path)


def _flat(dtype: pa.DataType) -> bool:
    """Values of ``dtype`` are equal exactly when their canonical encodings are (no floats:
    ``-0.0 == 0.0``; no value types: files are hashed by content)."""
    return (
        pa.types.is_integer(dtype) or pa.types.is_boolean(dtype) or pa.types.is_string(dtype) or pa.types.is_large_string(dtype)
        or pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype) or pa.types.is_temporal(dtype)
    )


def _comparable(dtype: pa.DataType) -> bool:
    """:func:`_flat`, or lists of such values (a Batch's tags)."""
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        return _comparable(dtype.value_type)
    return _flat(dtype)


def _falses(n: int) -> pa.Array:
    return pa.repeat(pa.scalar(False, pa.bool_()), n)


def _project(found: pa.Table | None, schema: pa.Schema) -> pa.Table:
    """Result records reduced to packet hash + outputs, in ``schema``."""
    if found is None or found.num_rows == 0:
        return schema.empty_table()
    return found.select(schema.names).cast(schema)


def input_source_info(table: pa.Table, layout: StreamLayout, columns: Sequence[str] | None = None) -> pa.Array:
    """Input source info per row as a map ``{packet column: source info}`` over the input
    packet's ``columns`` (default: every packet column; a function node passes the columns its
    function reads). List-valued source info, e.g. after a Batch, is stored as its JSON text."""
    n = table.num_rows
    wanted = layout.packet_columns if columns is None else [c for c in layout.packet_columns if c in columns]
    cols = [c for c in wanted if source_column(c) in table.column_names]
    if not cols or n == 0:
        return pa.array([[] for _ in range(n)], INPUT_SOURCE_TYPE)
    k = len(cols)
    texts = []
    for c in cols:
        col = table.column(source_column(c)).combine_chunks()
        if not pa.types.is_large_string(col.type):
            col = pa.array([None if v is None else json.dumps(v) for v in col.to_pylist()], pa.large_string())
        texts.append(col)
    keys = pa.concat_arrays([pa.repeat(pa.scalar(c, pa.large_string()), n) for c in cols])
    values = pa.concat_arrays(texts)
    if k > 1:  # interleave row-major: row 0 col 0, row 0 col 1, ..., row 1 col 0, ...
        i = pa.array(range(n * k), pa.int64())
        col_of = pc.subtract(i, pc.multiply(pc.divide(i, pa.scalar(k, pa.int64())), pa.scalar(k, pa.int64())))
        row_of = pc.divide(i, pa.scalar(k, pa.int64()))
        order = pc.add(pc.multiply(col_of, pa.scalar(n, pa.int64())), row_of)
        keys, values = keys.take(order), values.take(order)
    offsets = pa.array(range(0, n * k + 1, k), pa.int32())
    return pa.MapArray.from_arrays(offsets, keys, values, type=INPUT_SOURCE_TYPE)


def entry_records(
        table: pa.Table,
        layout: StreamLayout,
        entry_ids: pa.Array,
        hexes: pa.Array,
        rows: pa.Array,
        computed: bool | pa.Array,
        run_id: str,
        content: str,
    ) -> pa.Table:
        """Pipeline records for ``rows`` of ``table`` (tags, system tags, entry id, packet hash
        link, computed flag: one for all, or one per row of ``rows``; the run, and the node
        content ``content`` they were recorded for: see :meth:`NodeRun.stored_entries`). The input packets' source
        info is not stored: it follows from the system tags and the graph, and
        :meth:`~orcapod_core.pipeline.function_node.FunctionNode.get_pipeline_records` derives it
        (:func:`input_source_info`)."""
        records = table.select([*layout.tag_columns, *layout.system_tag_columns]).take(rows)
        records = records.append_column(pa.field(ENTRY_ID_COLUMN, pa.large_string(), False), entry_ids.take(rows))
        records = records.append_column(pa.field(PACKET_HASH_COLUMN, pa.large_string(), False), hexes.take(rows))
        if isinstance(computed, bool):
            computed = pa.repeat(pa.scalar(computed, pa.bool_()), len(rows))
        records = records.append_column(pa.field(COMPUTED_COLUMN, pa.bool_(), False), computed)
        run = pa.scalar(run_id, pa.large_string())
        records = records.append_column(pa.field(RUN_ID_COLUMN, pa.large_string(), False), pa.repeat(run, len(rows)))
        node = pa.scalar(content, pa.large_string())
        return records.append_column(pa.field(NODE_CONTENT_COLUMN, pa.large_string(), False), pa.repeat(node, len(rows)))


#: Bytes of an entry id: the first 128 bits of its SHA-256. An entry id only tells one node's
#: records apart (never identifies content across stores, as packet hashes do), and 2^64 rows
#: would be needed for even odds of one collision; a third of a records row at 100,000 rows.
ENTRY_ID_BYTES = 16


def entry_ids_of(table: pa.Table, layout: StreamLayout, packet_digests: pa.Array, node_content: bytes) -> pa.Array:
    """Entry id per row (32 hex digits) = the first :data:`ENTRY_ID_BYTES` bytes of the row hash of
    (tag + system tags + input packet hash + node content hash).

    >>> entry_ids_of(rows, rows_layout, digests, node.content_hash().digest)     # doctest: +SKIP
    """
    parts = table.select([*layout.tag_columns, *layout.system_tag_columns])
    parts = parts.append_column("__packet_hash", fixed_as_binary(packet_digests))  # (a view: no copy)
    # The node's content hash is the same on every row: encoded once, not per row.
    digests = hash_rows(parts, constants={"__node_hash": (node_content, pa.large_binary())})
    # Only the first ENTRY_ID_BYTES of each digest are turned into hex: the digests viewed as
    # twice as many halves, every other one taken.
    n, k = len(digests), 32 // ENTRY_ID_BYTES
    halves = pa.FixedSizeBinaryArray.from_buffers(pa.binary(ENTRY_ID_BYTES), n * k, [None, digests.buffers()[1]], offset=digests.offset * k)
    firsts = halves.take(pc.multiply(pl.int_range(0, n, dtype=pl.Int64, eager=True).to_arrow(), pa.scalar(k, pa.int64())))
    return digests_to_hex(firsts)
