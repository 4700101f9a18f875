"""The operator base class and the lazy stream an operator call returns.

An operator is a pure, structural transformation of streams (join, rename, filter,
batch...). Calling it on streams validates them immediately — by predicting the
output layout — and returns an :class:`OperatorStream` whose rows are computed on
first access.

>>> from orcapod_core.sources import DictSource
>>> from orcapod_core.operators import MapTags
>>> s = DictSource({"id": [1, 2], "x": [10, 20]}, tag_columns="id", source_id="demo")
>>> MapTags({"id": "subject"})(s).keys()
(('subject',), ('x',))
"""

from __future__ import annotations

from typing import Any, ClassVar

import pyarrow as pa

from orcapod_core.errors import InputValidationError
from orcapod_core.hashing import ContentHash, hash_object
from orcapod_core.streams import Stream, StreamLayout
from orcapod_core.tracking import Invocation, record

__all__ = ["Operator", "OperatorStream"]


class Operator:
    """Base of every operator.

    Subclasses set ``arity`` (``None`` = two or more inputs) and ``commutative``,
    store their options, and implement :meth:`config`, :meth:`output_layout` and
    :meth:`compute`. ``output_layout`` must predict the exact Arrow schema that
    ``compute`` returns, and raise a specific error for unusable inputs.
    """

    arity: ClassVar[int | None] = 1
    commutative: ClassVar[bool] = False

    # -- identity ---------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """JSON-able options; together with the class name they are the operator's identity."""
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Operator:
        """Rebuild an operator from :meth:`config` output."""
        return cls(**config)

    def identity_structure(self) -> dict[str, Any]:
        return {"operator": type(self).__name__, "config": self.config()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    # -- application ------------------------------------------------------------
    def __call__(self, *streams: Stream, label: str | None = None) -> OperatorStream:
        """Apply to ``streams``; bad inputs raise here, rows are computed lazily."""
        self._check_inputs(streams)
        out = OperatorStream(self, streams, label=label)
        out.layout  # noqa: B018 — predicting the layout validates the inputs eagerly
        record(Invocation(pod=self, inputs=streams, output=out, label=label))
        return out

    process = __call__

    def _check_inputs(self, streams: tuple[Stream, ...]) -> None:
        name = type(self).__name__
        for i, s in enumerate(streams):
            if not isinstance(s, Stream):
                raise InputValidationError(f"{name}: input {i} is a {type(s).__name__}, not a stream")
        if self.arity is None and len(streams) < 2:
            raise InputValidationError(f"{name} needs at least 2 input streams, got {len(streams)}")
        if self.arity is not None and len(streams) != self.arity:
            raise InputValidationError(f"{name} takes {self.arity} input stream(s), got {len(streams)}")

    # -- subclass hooks ---------------------------------------------------------
    def output_layout(self, *inputs: Stream) -> StreamLayout:
        """The output's full layout (hidden columns included), without computing rows."""
        raise NotImplementedError

    def compute(self, *inputs: Stream) -> pa.Table:
        """The output rows, from the inputs' full internal tables."""
        raise NotImplementedError


class OperatorStream(Stream):
    """The lazy result of applying an operator to streams."""

    def __init__(self, operator: Operator, inputs: tuple[Stream, ...], *, label: str | None = None):
        self.operator = operator
        self.inputs = tuple(inputs)
        self.label = label

    @property
    def producer(self) -> Operator:
        return self.operator

    @property
    def upstreams(self) -> tuple[Stream, ...]:
        return self.inputs

    def _predict_layout(self) -> StreamLayout:
        return self.operator.output_layout(*self.inputs)

    def _compute_table(self) -> pa.Table:
        return self.operator.compute(*self.inputs)

    def _identity_hashes(self) -> tuple[ContentHash, ContentHash]:
        identity = self.operator.identity_structure()

        def combine(hashes: list[ContentHash]) -> ContentHash:
            items = [h.to_string() for h in hashes]
            if self.operator.commutative:
                items.sort()
            return hash_object({"operator": identity, "inputs": items})

        return (
            combine([s.content_hash() for s in self.inputs]),
            combine([s.pipeline_hash() for s in self.inputs]),
        )
