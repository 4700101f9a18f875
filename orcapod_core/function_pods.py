"""Function pods: a packet function applied packet by packet to streams.

A :class:`FunctionPod` applies a :class:`~orcapod_core.packet_function.PythonPacketFunction`
(or the :class:`~orcapod_core.packet_function_proxy.PacketFunctionProxy` standing in for one)
to a stream and returns a lazy :class:`FunctionPodStream`: tags and system tags pass through,
the packet becomes the function's outputs, and each output value's source info points at the
function and the input packet it came from. :func:`function_pod` is the decorator that puts a
pod on a typed function (``fn.pod``).

A pod reads only its parameters: packet columns that are not parameters are not passed and
not part of the **input packet hash** (the memoization key), so changing one recomputes
nothing. ``passthrough=True`` keeps the input's packet columns (with their source info)
beside the outputs.

>>> from orcapod_core.sources import DictSource
>>> @function_pod(output_keys="total")
... def add(x: int, y: int) -> int:
...     return x + y
>>> add(1, 2)                                     # still a plain function
3
>>> add.pod(DictSource({"id": [1], "x": [1], "y": [2]}, "id")).as_table().to_pylist()
[{'id': 1, 'total': 3}]
>>> add.pod(DictSource({"id": [1], "x": [1], "y": [2], "note": ["a"]}, "id"), passthrough=True).as_table().to_pylist()
[{'id': 1, 'x': 1, 'y': 2, 'note': 'a', 'total': 3}]
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from orcapod_core.columns import source_column
from orcapod_core.errors import InputValidationError, SchemaMismatchError
from orcapod_core.executors import PythonFunctionExecutor
from orcapod_core.hashing import ContentHash, digests_to_hex, hash_object, hash_rows
from orcapod_core.packet_function import PythonPacketFunction
from orcapod_core.packet_function_proxy import PacketFunctionProxy, resolve_packet_function_from_config
from orcapod_core.streams import Stream, StreamLayout
from orcapod_core.tracking import Invocation, record, untracked
from orcapod_core.types import arrow_field

__all__ = [
    "function_pod",
    "FunctionPod",
    "FunctionPodStream",
    "function_pod_from_config",
    "input_packet_hashes",
    "pod_output_table",
]


# --------------------------------------------------------------------------------------
# Pod and its stream
# --------------------------------------------------------------------------------------


class FunctionPod:
    """Applies a packet function to streams: ``pod(stream, label=...)`` → lazy stream.

    ``passthrough=True`` (here, or per application: ``pod(stream, passthrough=True)``) keeps
    the input packet's columns and their source info beside the outputs.

    >>> pod = FunctionPod(PythonPacketFunction(add, output_keys="total"))  # doctest: +SKIP
    >>> pod(source).keys()                                                   # doctest: +SKIP
    (('id',), ('total',))
    >>> pod(source, passthrough=True).keys()                                 # doctest: +SKIP
    (('id',), ('x', 'y', 'total'))
    """

    def __init__(self, packet_function: PythonPacketFunction | PacketFunctionProxy, *, passthrough: bool = False):
        if not isinstance(packet_function, (PythonPacketFunction, PacketFunctionProxy)):
            raise InputValidationError(f"FunctionPod needs a PythonPacketFunction, got {type(packet_function).__name__}")
        self._packet_function = packet_function
        self._passthrough = _check_passthrough(passthrough, packet_function.function_name)

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        fallback_to_proxy: bool = False,
        *,
        allowed_modules: Sequence[str] | None = None,
        require_pod: bool = False,
    ) -> FunctionPod:
        """A pod over :func:`~orcapod_core.packet_function_proxy.resolve_packet_function_from_config`
        (``allowed_modules`` / ``require_pod``: which modules may be imported and what is accepted).

        >>> FunctionPod.from_config(pod.packet_function.to_config()).uri == pod.uri   # doctest: +SKIP
        True
        """
        return cls(
            resolve_packet_function_from_config(
                config, fallback_to_proxy, allowed_modules=allowed_modules, require_pod=require_pod
            )
        )

    @property
    def packet_function(self) -> PythonPacketFunction | PacketFunctionProxy:
        return self._packet_function

    @property
    def passthrough(self) -> bool:
        """Whether the pod's output keeps the input packet's columns beside the outputs."""
        return self._passthrough

    def with_passthrough(self, passthrough: bool) -> FunctionPod:
        """This pod with ``passthrough`` set (itself when it already is); the same function,
        so the same results.

        >>> add.pod.with_passthrough(True).passthrough     # doctest: +SKIP
        True
        """
        flag = _check_passthrough(passthrough, self._packet_function.function_name)
        if flag == self._passthrough:
            return self
        pod = copy.copy(self)
        pod._passthrough = flag
        return pod

    @property
    def computing_function(self) -> Any:
        """What computes packets: the packet function itself (a cached pod puts its cache here)."""
        return self._packet_function

    @property
    def default_label(self) -> str:
        return self._packet_function.function_name

    @property
    def uri(self) -> str:
        return self._packet_function.uri

    def identity_hash(self) -> ContentHash:
        return self._packet_function.identity_hash()

    def identity_structure(self) -> dict[str, Any]:
        structure: dict[str, Any] = {"kind": "function_pod", "function": self.identity_hash().to_string()}
        if self._passthrough:  # (only when set: a plain pod's structure is what it always was)
            structure["passthrough"] = True
        return structure

    def __repr__(self) -> str:
        return f"FunctionPod({self._packet_function!r}{', passthrough=True' if self._passthrough else ''})"

    def __call__(self, *streams: Stream, label: str | None = None, passthrough: bool | None = None) -> FunctionPodStream:
        """Apply to one stream (or several, joined first); bad inputs raise here, rows are lazy.
        ``passthrough``: keep the input packet's columns beside the outputs (``None``: the pod's
        own setting)."""
        if passthrough is not None:
            return self.with_passthrough(passthrough)(*streams, label=label)
        pf = self._packet_function
        if not streams:
            raise InputValidationError(f"function pod {pf.function_name!r} needs at least one input stream")
        for i, s in enumerate(streams):
            if not isinstance(s, Stream):
                raise InputValidationError(
                    f"function pod {pf.function_name!r}: input {i} is a {type(s).__name__}, not a stream"
                )
        if len(streams) == 1:
            stream = streams[0]
        else:
            # Imported here, not at the top: a worker process that unpickles a pod function
            # imports this module, and needs neither the operators nor polars.
            from orcapod_core.operators import Join

            with untracked():  # this pod's own invocation records the inputs
                stream = Join()(*streams)
        out = FunctionPodStream(self, stream, inputs=streams, label=label)
        record(Invocation(pod=self, inputs=tuple(streams), output=out, label=label))
        return out

    process = __call__


class FunctionPodStream(Stream):
    """The lazy output of a function pod: input tags and system tags, function outputs as
    packet columns, source info ``<function uri>::<input packet hash hex>::<output key>``;
    with ``passthrough``, the input packet's columns and their source info too (before the
    outputs).

    Rows are computed on first access; identical input packets are computed once. The input
    packet of a row is its :attr:`read_columns` (the parameters' columns): other packet
    columns are neither passed nor hashed.
    """

    def __init__(self, pod: FunctionPod, stream: Stream, *, inputs: Sequence[Stream] | None = None, label: str | None = None):
        pf = pod.packet_function
        tags, packets = stream.output_schema()
        pf.check_input_schema(packets, tuple(tags))
        clash = [k for k in pf.output_keys if k in tags]
        if clash:
            raise SchemaMismatchError(
                f"function {pf.function_name!r}: output key(s) {clash} collide with tag columns {list(tags)}"
            )
        if pod.passthrough:
            clash = [k for k in pf.output_keys if k in packets]
            if clash:
                raise SchemaMismatchError(
                    f"function {pf.function_name!r} with passthrough=True: output key(s) {clash} are also input packet "
                    f"columns {list(packets)}; rename the input column(s) first (stream.map_packets({{{clash[0]!r}: ...}})) "
                    f"or drop them (stream.drop_packet_columns({clash!r}))"
                )
        self._pod = pod
        self._input = stream
        self._inputs = tuple(inputs) if inputs is not None else (stream,)
        self.read_columns: tuple[str, ...] = pf.read_columns(tuple(packets))
        self.label = label

    @property
    def pod(self) -> FunctionPod:
        return self._pod

    @property
    def producer(self) -> FunctionPod:
        return self._pod

    @property
    def upstreams(self) -> tuple[Stream, ...]:
        return self._inputs

    @property
    def input_stream(self) -> Stream:
        """The stream the function reads (the join of the inputs when there are several)."""
        return self._input

    # -- Stream hooks ----------------------------------------------------------------
    def _identity_hashes(self) -> tuple[ContentHash, ContentHash]:
        identity = self._pod.identity_hash()
        # ``passthrough`` only when set: a plain pod's hashes are what they always were.
        extra = {"passthrough": True} if self._pod.passthrough else {}
        content = hash_object({"function": identity, "input": self._input.content_hash(), **extra})
        pipeline = hash_object({"function": identity, "input": self._input.pipeline_hash(), **extra})
        return content, pipeline

    def _predict_layout(self) -> StreamLayout:
        inp = self._input.layout
        pf = self._pod.packet_function
        kept_packets, kept_sources = _passthrough_columns(inp) if self._pod.passthrough else ([], [])
        return StreamLayout.build(
            inp.fields(inp.tag_columns),
            inp.fields(inp.system_tag_columns),
            [*inp.fields(kept_packets), *(arrow_field(k, t) for k, t in pf.output_schema.items())],
            [*inp.fields(kept_sources), *(pa.field(source_column(k), pa.large_string(), nullable=False) for k in pf.output_keys)],
        )

    def _compute_table(self) -> pa.Table:
        pf = self._pod.packet_function
        inp = self._input
        layout = inp.layout
        table = inp._table()
        n = table.num_rows
        hashes = input_packet_hashes(inp, self.read_columns)

        # Dedupe identical input packets: compute each distinct packet hash once.
        expand = None
        unique_hashes = hashes
        if n > 1:
            encoded = pc.dictionary_encode(hashes)
            if len(encoded.dictionary) < n:
                unique_hashes = encoded.dictionary
                expand = encoded.indices
        packets = table.select(list(self.read_columns))
        first_rows = None
        if expand is not None:
            first_rows = pc.index_in(unique_hashes, value_set=hashes)
            packets = packets.take(first_rows)

        result = self._pod.computing_function.call_batch(packets, fail_fast=True, packet_hashes=unique_hashes)
        if result.errors:
            i, exc = next(iter(result.errors.items()))
            row = i if first_rows is None else first_rows[i].as_py()
            tag = table.slice(row, 1).select(list(layout.tag_columns)).to_pylist()[0]
            exc.add_note(f"orcapod: function {pf.function_name!r} ({pf.uri}) failed on the packet with tag {tag}")
            raise exc

        outputs, record_ids = result.table, digests_to_hex(unique_hashes)
        if expand is not None:
            outputs, record_ids = outputs.take(expand), record_ids.take(expand)
        return pod_output_table(table, layout, outputs, record_ids, pf.uri, pf.output_keys, self._pod.passthrough)


def _check_passthrough(passthrough: Any, function_name: str) -> bool:
    if not isinstance(passthrough, bool):
        raise InputValidationError(f"function pod {function_name!r}: passthrough must be True or False, got {passthrough!r}")
    return passthrough


def _passthrough_columns(layout: StreamLayout) -> tuple[list[str], list[str]]:
    """The input columns a passthrough pod keeps: every packet column and its source info."""
    present = set(layout.source_columns)
    return list(layout.packet_columns), [source_column(c) for c in layout.packet_columns if source_column(c) in present]


def input_packet_hashes(stream: Stream, columns: Sequence[str]) -> pa.FixedSizeBinaryArray:
    """Per-row input packet hash for a function that reads ``columns`` of ``stream``'s packets:
    the row hash of those columns only. When they are all the packet columns this is the
    stream's own (cached) ``packet_hashes()`` — the same bytes, so stores written before
    unread columns were allowed keep their keys.

    >>> input_packet_hashes(stream, pod_stream.read_columns)       # doctest: +SKIP
    """
    if set(columns) == set(stream.layout.packet_columns):
        return stream.packet_hashes()
    return hash_rows(stream._table(), list(columns))


def pod_output_table(
    inputs: pa.Table,
    layout: StreamLayout,
    outputs: pa.Table,
    record_ids: pa.Array,
    uri: str,
    output_keys: Sequence[str],
    passthrough: bool,
    rows: pa.Array | None = None,
) -> pa.Table:
    """A pod's output rows (to be conformed to its layout): the input's tags and system tags —
    and with ``passthrough`` its packet columns and their source info — for ``rows`` of
    ``inputs`` (all when ``None``), the ``outputs`` (one row per output row) and their source
    info ``<uri>::<record id>::<key>``.

    >>> pod_output_table(table, layout, outputs, hexes, pf.uri, pf.output_keys, False)   # doctest: +SKIP
    """
    kept = [*layout.tag_columns, *layout.system_tag_columns]
    if passthrough:
        packets, sources = _passthrough_columns(layout)
        kept += [*packets, *sources]
    out = inputs.select(kept)
    if rows is not None:
        out = out.take(rows)
    for key in output_keys:
        out = out.append_column(outputs.schema.field(key), outputs.column(key))
    uri_scalar, sep = pa.scalar(uri, pa.large_string()), pa.scalar("::", pa.large_string())
    for key in output_keys:
        out = out.append_column(
            pa.field(source_column(key), pa.large_string(), False),
            pc.binary_join_element_wise(uri_scalar, record_ids, pa.scalar(key, pa.large_string()), sep),
        )
    return out


# --------------------------------------------------------------------------------------
# Decorator
# --------------------------------------------------------------------------------------


def function_pod(
    output_keys: str | Sequence[str],
    function_name: str | None = None,
    version: str = "v0",
    identity: str = "source",
    executor: PythonFunctionExecutor | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn a typed function into a pod at ``fn.pod``; the function itself is returned unchanged.

    >>> @function_pod(output_keys=["lo", "hi"])                    # doctest: +SKIP
    ... def bounds(values: list[float]) -> tuple[float, float]:
    ...     return min(values), max(values)
    >>> bounds.pod(stream, label="bounds").keys()                   # doctest: +SKIP
    (('id',), ('lo', 'hi'))
    """

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        packet_function = PythonPacketFunction(function, output_keys, function_name, version, identity, executor)
        function.pod = FunctionPod(packet_function)  # type: ignore[attr-defined]
        return function

    return decorate


def function_pod_from_config(
    config: Mapping[str, Any],
    fallback_to_proxy: bool = False,
    *,
    allowed_modules: Sequence[str] | None = None,
    require_pod: bool = False,
) -> FunctionPod:
    """``FunctionPod.from_config(config, fallback_to_proxy, allowed_modules=..., require_pod=...)``.

    >>> function_pod_from_config(saved, allowed_modules=["my_lab"]).uri == saved["uri"]   # doctest: +SKIP
    True
    """
    return FunctionPod.from_config(config, fallback_to_proxy, allowed_modules=allowed_modules, require_pod=require_pod)
