"""Function pods: a packet function applied packet by packet to streams.

A :class:`FunctionPod` applies a :class:`~orcapod_core.packet_function.PythonPacketFunction`
(or the :class:`~orcapod_core.packet_function_proxy.PacketFunctionProxy` standing in for one)
to a stream and returns a lazy :class:`FunctionPodStream`: tags and system tags pass through,
the packet becomes the function's outputs, and each output value's source info points at the
function and the input packet it came from. :func:`function_pod` is the decorator that puts a
pod on a typed function (``fn.pod``).

>>> from orcapod_core.sources import DictSource
>>> @function_pod(output_keys="total")
... def add(x: int, y: int) -> int:
...     return x + y
>>> add(1, 2)                                     # still a plain function
3
>>> add.pod(DictSource({"id": [1], "x": [1], "y": [2]}, "id")).as_table().to_pylist()
[{'id': 1, 'total': 3}]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from orcapod_core.columns import source_column
from orcapod_core.errors import InputValidationError, SchemaMismatchError
from orcapod_core.executors import PythonFunctionExecutor
from orcapod_core.hashing import ContentHash, digests_to_hex, hash_object
from orcapod_core.packet_function import PythonPacketFunction
from orcapod_core.packet_function_proxy import PacketFunctionProxy, resolve_packet_function_from_config
from orcapod_core.streams import Stream, StreamLayout
from orcapod_core.tracking import Invocation, record, untracked
from orcapod_core.types import arrow_field

__all__ = ["function_pod", "FunctionPod", "FunctionPodStream", "function_pod_from_config"]


# --------------------------------------------------------------------------------------
# Pod and its stream
# --------------------------------------------------------------------------------------


class FunctionPod:
    """Applies a packet function to streams: ``pod(stream, label=...)`` → lazy stream.

    >>> pod = FunctionPod(PythonPacketFunction(add, output_keys="total"))  # doctest: +SKIP
    >>> pod(source).keys()                                                   # doctest: +SKIP
    (('id',), ('total',))
    """

    def __init__(self, packet_function: PythonPacketFunction | PacketFunctionProxy):
        if not isinstance(packet_function, (PythonPacketFunction, PacketFunctionProxy)):
            raise InputValidationError(f"FunctionPod needs a PythonPacketFunction, got {type(packet_function).__name__}")
        self._packet_function = packet_function

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
        return {"kind": "function_pod", "function": self.identity_hash().to_string()}

    def __repr__(self) -> str:
        return f"FunctionPod({self._packet_function!r})"

    def __call__(self, *streams: Stream, label: str | None = None) -> FunctionPodStream:
        """Apply to one stream (or several, joined first); bad inputs raise here, rows are lazy."""
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
    packet columns, source info ``<function uri>::<input packet hash hex>::<output key>``.

    Rows are computed on first access; identical input packets are computed once.
    """

    def __init__(self, pod: FunctionPod, stream: Stream, *, inputs: Sequence[Stream] | None = None, label: str | None = None):
        pf = pod.packet_function
        tags, packets = stream.output_schema()
        pf.check_input_schema(packets)
        clash = [k for k in pf.output_keys if k in tags]
        if clash:
            raise SchemaMismatchError(
                f"function {pf.function_name!r}: output key(s) {clash} collide with tag columns {list(tags)}"
            )
        self._pod = pod
        self._input = stream
        self._inputs = tuple(inputs) if inputs is not None else (stream,)
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
        content = hash_object({"function": identity, "input": self._input.content_hash()})
        pipeline = hash_object({"function": identity, "input": self._input.pipeline_hash()})
        return content, pipeline

    def _predict_layout(self) -> StreamLayout:
        inp = self._input.layout
        pf = self._pod.packet_function
        return StreamLayout.build(
            inp.fields(inp.tag_columns),
            inp.fields(inp.system_tag_columns),
            [arrow_field(k, t) for k, t in pf.output_schema.items()],
            [pa.field(source_column(k), pa.large_string(), nullable=False) for k in pf.output_keys],
        )

    def _compute_table(self) -> pa.Table:
        pf = self._pod.packet_function
        inp = self._input
        layout = inp.layout
        table = inp._table()
        n = table.num_rows
        hashes = inp.packet_hashes()

        # Dedupe identical input packets: compute each distinct packet hash once.
        expand = None
        unique_hashes = hashes
        if n > 1:
            encoded = pc.dictionary_encode(hashes)
            if len(encoded.dictionary) < n:
                unique_hashes = encoded.dictionary
                expand = encoded.indices
        packets = table.select(list(layout.packet_columns))
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

        record_ids = digests_to_hex(unique_hashes)
        uri = pa.scalar(pf.uri, pa.large_string())
        sep = pa.scalar("::", pa.large_string())
        outputs = list(result.table.columns)
        sources = [
            pc.binary_join_element_wise(uri, record_ids, pa.scalar(k, pa.large_string()), sep) for k in pf.output_keys
        ]
        if expand is not None:
            outputs = [c.take(expand) for c in outputs]
            sources = [c.take(expand) for c in sources]

        out = table.select([*layout.tag_columns, *layout.system_tag_columns])
        for f, col in zip(self.layout.fields(self.layout.packet_columns), outputs):
            out = out.append_column(f, col)
        for f, col in zip(self.layout.fields(self.layout.source_columns), sources):
            out = out.append_column(f, col)
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
