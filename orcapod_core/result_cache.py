"""ResultCache: function outputs stored by input-packet content hash (orcapod PR #84).

One table per function identity (``record_path``). Each record holds the input packet hash
(its record id, stored once; reads return it as ``__packet_hash`` too), the output columns, the execution context as typed columns
(``__variation_<k>`` and ``__execution_<k>``; ``dict[str, str]`` values as Arrow maps) and
``__stored_at``. When a hash has several records (e.g. racing writers on an object store),
the most recent wins.

:class:`CachedPacketFunction` and :class:`CachedFunctionPod` both delegate to it; the key is
the input packet hash only, so the same packet under different tags is one computation.

>>> cache = ResultCache(InMemoryArrowDatabase(), ("results", "double", "v0", "abc"))  # doctest: +SKIP
>>> cached = CachedPacketFunction(double.pod.packet_function, cache)                  # doctest: +SKIP
>>> cached.call({"x": 2}), cached.call({"x": 2})   # the second call is a lookup     # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from orcapod_core.databases import RECORD_ID_COLUMN, ArrowDatabase
from orcapod_core.databases.protocol import CONTEXT_PREFIXES
from orcapod_core.errors import SchemaMismatchError
from orcapod_core.function_pods import FunctionPod
from orcapod_core.lazy_polars import pl
from orcapod_core.packet_function import BatchResult, PythonPacketFunction
from orcapod_core.hashing import digests_to_hex, hash_rows
from orcapod_core.keysets import all_distinct, index_in, one_array
from orcapod_core.types import Schema, arrow_field
from orcapod_core.value_types import has_paths, rows_to_python, table_from_rows

__all__ = [
    "PACKET_HASH_COLUMN",
    "STORED_AT_COLUMN",
    "ResultCache",
    "CachedPacketFunction",
    "CachedFunctionPod",
    "result_record_path",
]

PACKET_HASH_COLUMN = "__packet_hash"
STORED_AT_COLUMN = "__stored_at"
VARIATION_PREFIX, EXECUTION_PREFIX = CONTEXT_PREFIXES


_UNSAFE_PATH_CHARS = re.compile(r"[^A-Za-z0-9_.:=-]")


def result_record_path(packet_function: Any, prefix: Sequence[str] = ("results",)) -> tuple[str, ...]:
    """Where a function's results live: ``(*prefix, name, version, identity hex[:16])``.

    Name and version may hold characters a record path does not allow (``def größe``,
    ``version="1.0 beta"``); those become ``_``. The identity part keeps tables apart."""
    name, version, identity = packet_function.uri.split("/")
    return (*prefix, _path_component(name), _path_component(version), identity)


def _path_component(text: str) -> str:
    safe = _UNSAFE_PATH_CHARS.sub("_", text)[:200]
    return "_" * len(safe) if safe in (".", "..") else safe


def _as_hex_array(packet_hashes: Any) -> pa.Array:
    if isinstance(packet_hashes, pa.ChunkedArray):
        packet_hashes = one_array(packet_hashes)
    if isinstance(packet_hashes, pa.Array):
        if pa.types.is_fixed_size_binary(packet_hashes.type):
            return digests_to_hex(packet_hashes)
        return packet_hashes.cast(pa.large_string())
    return pa.array(list(packet_hashes), pa.large_string())


def _constant_column(value: Any, field: pa.Field, n: int, made: dict[tuple[Any, ...], pa.Array] | None = None) -> pa.Array:
    """``n`` copies of ``value``. Flat types repeat a scalar; nested ones (maps of execution info)
    copy one value, and ``made`` keeps the longest such column per (field, value) so a run's
    many result batches slice it instead of building it again."""
    if not pa.types.is_nested(field.type):
        return pa.repeat(pa.scalar(value, field.type), n)
    key = (field.name, str(field.type), repr(value))
    known = made.get(key) if made is not None else None
    if known is None or len(known) < n:
        one = pa.array([value], field.type)
        known = one.take(pa.repeat(pa.scalar(0, pa.int64()), n)) if n else one.slice(0, 0)
        if made is not None:
            if len(made) >= _MADE_COLUMNS:
                made.clear()
            made[key] = known
    return known.slice(0, n)


#: Constant nested columns a :class:`ResultCache` keeps for its next batches.
_MADE_COLUMNS = 16


class ResultCache:
    """Stores and looks up function results by input packet hash (hex)."""

    def __init__(self, database: ArrowDatabase, record_path: Sequence[str]):
        self.database = database
        self.record_path = tuple(record_path)
        self._made: dict[tuple[Any, ...], pa.Array] = {}  # see _constant_column

    def __repr__(self) -> str:
        return f"ResultCache({self.record_path!r})"

    # Files a function returns (``Path`` outputs) live in the database's file store; records hold
    # references to them, and every read gives paths that exist on this machine.
    def _refs(self, table: pa.Table) -> pa.Table:
        store = getattr(self.database, "file_store", None)
        if store is None or not any(has_paths(f.type) for f in table.schema):
            return table
        return store.to_refs(table)

    def _local(self, table: pa.Table) -> pa.Table:
        store = getattr(self.database, "file_store", None)
        if store is None or not any(has_paths(f.type) for f in table.schema):
            return table
        return store.to_local(table)

    def keep_files(self, outputs: pa.Table) -> pa.Table:
        """``outputs`` with each returned file copied into the store and its ``Path`` pointing at
        the stored copy (which outlives the directory the function wrote it in)."""
        return self._local(self._refs(outputs))

    def lookup(
        self,
        packet_hashes: Any,
        additional_constraints: Mapping[str, Any] | None = None,
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        """Records for the given input packet hashes (hex strings or 32-byte digests), one per
        hash found (most recent wins), optionally filtered by column equalities. One query.

        ``columns``: return the packet hash and these columns only; without constraints only
        they are read (with the timestamp "most recent" needs), which keeps bulk lookups
        cheap: the execution-context columns are most of a record. ``None``: every column."""
        hexes = _as_hex_array(packet_hashes)
        if not len(hexes):
            return self._empty()
        # A constraint may name a column the table lacks (then nothing matches): read whole records.
        read = None if additional_constraints else _stored_columns(columns)
        found = _with_packet_hash(self.database.get_records_by_ids(self.record_path, hexes, columns=read))
        if found is None or found.num_rows == 0:
            return self._empty()
        if additional_constraints:
            mask = None
            for column, value in additional_constraints.items():
                if column not in found.column_names:
                    return self._empty(found.schema)
                cond = pc.is_null(found.column(column)) if value is None else pc.equal(found.column(column), value)
                mask = cond if mask is None else pc.and_(mask, cond)
            found = found.filter(mask)
        return self._local(_keep_columns(_most_recent(found), columns))

    def _empty(self, schema: pa.Schema | None = None) -> pa.Table:
        if schema is None:
            schema = pa.schema([pa.field(PACKET_HASH_COLUMN, pa.large_string(), False)])
        return schema.empty_table()

    def store(
        self,
        packet_hashes: Any,
        outputs: pa.Table,
        variation_data: Mapping[str, Any] | None = None,
        execution_data: Mapping[str, Any] | None = None,
        *,
        variation_schema: Mapping[str, Any] | None = None,
        execution_schema: Mapping[str, Any] | None = None,
        flush: bool = False,
    ) -> int:
        """Store one record per row of ``outputs`` keyed by its input packet hash, with the
        execution context as typed columns. Returns how many records were new."""
        hexes = _as_hex_array(packet_hashes)
        n = outputs.num_rows
        if len(hexes) != n:
            raise ValueError(f"{len(hexes)} packet hashes for {n} output rows")
        # The packet hash is the record id (stored once; reads give it back as PACKET_HASH_COLUMN).
        table = self._refs(outputs).add_column(0, pa.field(RECORD_ID_COLUMN, pa.large_string(), False), hexes)
        for prefix, data, schema in (
            (VARIATION_PREFIX, variation_data, variation_schema),
            (EXECUTION_PREFIX, execution_data, execution_schema),
        ):
            if not data:
                continue
            types = Schema(schema) if schema is not None else Schema({k: str for k in data})
            for key, tp in types.items():
                field = arrow_field(prefix + key, tp)
                table = table.append_column(field, _constant_column(data.get(key), field, n, self._made))
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        table = table.append_column(
            pa.field(STORED_AT_COLUMN, pa.timestamp("us"), False), _constant_column(now, pa.field("t", pa.timestamp("us")), n)
        )
        try:
            return self.database.add_records(self.record_path, table, flush=flush, digest_columns=(RECORD_ID_COLUMN,))
        except SchemaMismatchError as exc:
            if getattr(exc, "missing_column", None) != PACKET_HASH_COLUMN:
                raise
            # A results table from before packet hashes were kept as record ids only (orcapod
            # stores of the first wave): it requires the column, so it keeps getting it.
            legacy = table.append_column(pa.field(PACKET_HASH_COLUMN, pa.large_string(), False), table[RECORD_ID_COLUMN])
            return self.database.add_records(self.record_path, legacy, flush=flush, digest_columns=(RECORD_ID_COLUMN,))

    def get_all_records(self, columns: Sequence[str] | None = None) -> pa.Table | None:
        """Every stored result (most recent per hash), or ``None`` if nothing was stored;
        ``columns`` as in :meth:`lookup`."""
        table = _with_packet_hash(self.database.get_all_records(self.record_path, columns=_stored_columns(columns)))
        return None if table is None else self._local(_keep_columns(_most_recent(table), columns))

    def flush(self) -> None:
        self.database.flush_path(self.record_path)


def _stored_columns(columns: Sequence[str] | None) -> list[str] | None:
    """What is read to return the packet hash and ``columns`` (``None``: everything): them and
    the storage time ("most recent" needs it). Not the packet hash column: every record has
    its packet hash as its record id (see :meth:`ResultCache.store`), which reads return."""
    if columns is None:
        return None
    return list(dict.fromkeys([*(c for c in columns if c != PACKET_HASH_COLUMN), STORED_AT_COLUMN]))


def _with_packet_hash(table: pa.Table | None) -> pa.Table | None:
    """Records with their packet hash column (the record id's values when it was not read)."""
    if table is None or PACKET_HASH_COLUMN in table.column_names:
        return table
    return table.append_column(pa.field(PACKET_HASH_COLUMN, pa.large_string(), False), table[RECORD_ID_COLUMN])


def _keep_columns(table: pa.Table, columns: Sequence[str] | None) -> pa.Table:
    return table if columns is None else table.select(list(dict.fromkeys([PACKET_HASH_COLUMN, *columns])))


def _most_recent(table: pa.Table) -> pa.Table:
    """Keep the newest record per packet hash (no-op when hashes are unique)."""
    hashes = table.column(PACKET_HASH_COLUMN)
    if all_distinct(hashes):  # the usual case
        return table
    idx = (
        pl.DataFrame({"h": pl.from_arrow(hashes), "t": pl.from_arrow(table.column(STORED_AT_COLUMN))})
        .with_row_index("i")
        .sort(["h", "t", "i"], descending=[False, True, False])
        .unique(subset="h", keep="first", maintain_order=True)
        .sort("i")["i"]
    )
    return table.take(idx.to_arrow())


class CachedPacketFunction:
    """A packet function whose results go through a :class:`ResultCache`: a packet whose hash
    is stored is looked up, never recomputed. Same interface as the function it wraps."""

    def __init__(self, packet_function: PythonPacketFunction, result_cache: ResultCache):
        self._pf = packet_function
        self.result_cache = result_cache

    def __getattr__(self, name: str) -> Any:  # identity, schemas, uri, executor... are the function's
        return getattr(self._pf, name)

    @property
    def packet_function(self) -> PythonPacketFunction:
        return self._pf

    def __repr__(self) -> str:
        return f"CachedPacketFunction({self._pf!r}, {self.result_cache!r})"

    def _store(self, hashes: pa.Array, outputs: pa.Table, executor: Any = None, where: dict[str, str] | None = None) -> pa.Table:
        """Store computed outputs with their execution context: the executor that computed them
        (``executor``, a per-run override, else the function's) and ``where`` it ran (a worker
        process, a Ray node: its host name replaces this machine's). Returns the outputs as
        stored (returned files: their copies in the store)."""
        outputs = self.result_cache.keep_files(outputs)
        execution = self._pf.get_execution_data()
        if executor is not None:  # a per-run override computed these: record it, not the default
            execution["executor_type"] = executor.executor_type
            execution["executor_info"] = executor.get_executor_data()
        if where:
            execution["executor_info"] = {**execution["executor_info"], **{k: v for k, v in where.items() if k != "hostname"}}
            if "hostname" in where:
                execution["extra_info"] = {**execution["extra_info"], "hostname": where["hostname"]}
        self.result_cache.store(
            hashes,
            outputs,
            self._pf.get_function_variation_data(),
            execution,
            variation_schema=self._pf.get_function_variation_data_schema(),
            execution_schema=self._pf.get_execution_data_schema(),
        )
        return outputs

    def _hash(self, table: pa.Table) -> pa.FixedSizeBinaryArray:
        return hash_rows(table, [c for c in self._pf.input_schema if c in table.column_names])

    def call(self, packet: Mapping[str, Any]) -> dict[str, Any]:
        """One packet: a stored result if its hash is known, else computed and stored."""
        packet = self._pf._kwargs(packet)  # same checks as the uncached call: missing/unknown columns
        schema = pa.schema([arrow_field(k, self._pf.input_schema[k]) for k in packet])
        table = table_from_rows([packet], schema)
        result = self.call_batch(table, fail_fast=True)
        if result.errors:
            raise next(iter(result.errors.values()))
        return rows_to_python(result.table)[0]

    def call_batch(
        self,
        table: pa.Table,
        *,
        fail_fast: bool = False,
        packet_hashes: pa.Array | None = None,
        executor: Any = None,
        capture: bool = False,
    ) -> BatchResult:
        """Bulk: one lookup for all rows, compute only the misses, store them, return all."""
        hashes = packet_hashes if packet_hashes is not None else self._hash(table)
        hexes = _as_hex_array(hashes)
        keys = list(self._pf.output_keys)
        found = self.result_cache.lookup(hexes, columns=keys)
        if found.num_rows:
            position = index_in(hexes, found.column(PACKET_HASH_COLUMN))
            hit = pc.is_valid(position)
        else:
            position, hit = None, pa.array([False] * table.num_rows)
        miss_rows = pc.indices_nonzero(pc.invert(hit))
        computed = (
            self._pf.call_batch(table.take(miss_rows), fail_fast=fail_fast, executor=executor, capture=capture)
            if len(miss_rows)
            else None
        )
        errors: dict[int, BaseException] = {}
        captured: dict[int, dict[str, str]] = {}
        parts = []
        if computed is not None:
            miss = miss_rows.to_pylist()
            errors = {miss[i]: e for i, e in computed.errors.items()}
            captured = {miss[i]: c for i, c in computed.captured.items()}
            ok_rows = pa.array([miss[i] for i in computed.rows], pa.int64())
            kept = self._store(hexes.take(ok_rows), computed.table, executor) if computed.table.num_rows else computed.table
            parts.append((ok_rows, kept))
        if found.num_rows:
            hit_rows = pc.indices_nonzero(hit)
            parts.append((hit_rows.cast(pa.int64()), found.select(keys).take(position.filter(hit)).cast(self._pf.output_arrow_schema)))
        if not parts:
            return BatchResult(self._pf.output_arrow_schema.empty_table(), [], errors, captured)
        rows = pa.concat_arrays([p[0].cast(pa.int64()) for p in parts])
        out = pa.concat_tables([p[1].cast(self._pf.output_arrow_schema) for p in parts])
        order = pc.sort_indices(rows)
        return BatchResult(out.take(order), rows.take(order).to_pylist(), errors, captured)


class CachedFunctionPod(FunctionPod):
    """A function pod whose packets go through a :class:`ResultCache` (key: input packet hash)."""

    def __init__(self, pod: FunctionPod | PythonPacketFunction, result_cache: ResultCache):
        pf = pod.packet_function if isinstance(pod, FunctionPod) else pod
        super().__init__(pf, passthrough=pod.passthrough if isinstance(pod, FunctionPod) else False)
        self.result_cache = result_cache
        self._cached = CachedPacketFunction(pf, result_cache)

    @property
    def computing_function(self) -> CachedPacketFunction:
        return self._cached
