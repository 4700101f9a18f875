"""What a typed function's signature declares: its input schema (parameters, those with defaults
optional) and output schema (return annotation + output keys), and the checks that a stream's
packets fit them.

>>> def bounds(values: list[float], pad: float = 0.0) -> tuple[float, float]: ...
>>> inputs, outputs = signature_schemas(bounds, ("lo", "hi"))
>>> inputs, inputs.optional_fields, outputs
(Schema({'values': list[float], 'pad': float}), frozenset({'pad'}), Schema({'lo': float, 'hi': float}))
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from orcapod_core.columns import check_user_column
from orcapod_core.errors import FunctionDefinitionError, InputValidationError, SchemaMismatchError
from orcapod_core.types import Schema, is_assignable, python_to_arrow, type_to_string

__all__ = ["signature_schemas", "check_output_keys", "check_name_part", "check_packet_schema", "read_columns"]


def read_columns(input_schema: Schema, packet_columns: Sequence[str]) -> tuple[str, ...]:
    """The packet columns a function reads: those named like one of its parameters, in the
    stream's order. The others are ignored — not passed, and not part of the input packet hash.

    >>> read_columns(Schema({"x": int, "k": int}, {"k"}), ["note", "x"])
    ('x',)
    """
    return tuple(c for c in packet_columns if c in input_schema)


def check_packet_schema(
    function_name: str, input_schema: Schema, packet_schema: Mapping[str, Any], tag_columns: Sequence[str] = ()
) -> None:
    """Raise :class:`SchemaMismatchError` listing every required parameter without a column in
    ``packet_schema`` (with the fix: which operator renames a column to it) and every column
    whose type does not fit its parameter. Columns that are not parameters are fine: the
    function does not read them.

    >>> check_packet_schema("f", Schema({"x": int}), {"x": int, "note": str})   # extra column: fine
    >>> check_packet_schema("f", Schema({"x": int}), {"n": int})
    Traceback (most recent call last):
    ...
    orcapod_core.errors.SchemaMismatchError: function 'f': ... rename a column to it with `stream.map_packets({'n': 'x'})` ...
    """
    problems = []
    optional = input_schema.optional_fields
    unread = [c for c in packet_schema if c not in input_schema]
    for param, tp in input_schema.items():
        if param not in packet_schema:
            if param not in optional:
                problems.append(_missing_parameter(param, tp, packet_schema, unread, tag_columns))
        elif not is_assignable(packet_schema[param], tp):
            problems.append(
                f"column {param!r} is {type_to_string(packet_schema[param])} but parameter {param!r} expects {type_to_string(tp)}"
            )
    if problems:
        raise SchemaMismatchError(
            f"function {function_name!r}: the input packet schema {dict(Schema(packet_schema).to_strings())} "
            f"does not match its parameters {dict(input_schema.to_strings())}: " + "; ".join(problems)
        )


def _missing_parameter(
    param: str, tp: Any, packet_schema: Mapping[str, Any], unread: Sequence[str], tag_columns: Sequence[str]
) -> str:
    """The problem of a required parameter without a column, with the fix spelled out: rename a
    column that fits (one of the right type if there is one) with ``map_packets``."""
    text = f"parameter {param!r} ({type_to_string(tp)}) has no column in the stream"
    if param in tag_columns:
        text += f" ({param!r} is a tag column, and tags are not passed to functions)"
    fitting = [c for c in unread if is_assignable(packet_schema[c], tp)]
    candidate = fitting[0] if fitting else (unread[0] if unread else None)
    columns = list(packet_schema)
    if candidate is None:
        if not columns:
            return f"{text}; the stream has no packet columns"
        return f"{text}; the stream's packet columns {columns} are all read by other parameters"
    return (
        f"{text}; the stream has packet columns {columns} — rename a column to it with "
        f"`stream.map_packets({{{candidate!r}: {param!r}}})` (MapPackets)"
    )


def check_name_part(value: Any, what: str, py_name: str) -> None:
    if not isinstance(value, str) or not value or "::" in value or "/" in value or value != value.strip():
        raise InputValidationError(
            f"function {py_name!r}: {what} must be a non-empty string without '::' or '/', got {value!r}"
        )


def check_output_keys(output_keys: str | Sequence[str], py_name: str) -> tuple[str, ...]:
    keys = (output_keys,) if isinstance(output_keys, str) else tuple(output_keys)
    if not keys:
        raise FunctionDefinitionError(f"function {py_name!r}: output_keys must name at least one output column")
    for k in keys:
        try:
            check_user_column(k, f"function {py_name!r} output key")
        except InputValidationError as exc:
            raise FunctionDefinitionError(str(exc)) from exc
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise FunctionDefinitionError(f"function {py_name!r}: output keys {dupes} are repeated")
    return keys


def signature_schemas(function: Callable[..., Any], output_keys: tuple[str, ...]) -> tuple[Schema, Schema]:
    py_name = function.__qualname__
    try:
        hints = typing.get_type_hints(function)
    except Exception as exc:  # unresolvable forward references raise NameError, TypeError, ...
        raise FunctionDefinitionError(f"function {py_name!r}: cannot resolve its type annotations: {exc}") from exc
    signature = inspect.signature(function)
    inputs: dict[str, Any] = {}
    optional = []
    for param in signature.parameters.values():
        if param.kind is param.VAR_POSITIONAL:
            raise FunctionDefinitionError(f"function {py_name!r}: *{param.name} is not allowed; declare each input as a named parameter")
        if param.kind is param.VAR_KEYWORD:
            raise FunctionDefinitionError(f"function {py_name!r}: **{param.name} is not allowed; declare each input as a named parameter")
        if param.kind is param.POSITIONAL_ONLY:
            raise FunctionDefinitionError(f"function {py_name!r}: positional-only parameter {param.name!r} cannot receive a packet column")
        if param.name not in hints:
            raise FunctionDefinitionError(f"function {py_name!r}: parameter {param.name!r} has no type annotation")
        try:
            check_user_column(param.name, f"function {py_name!r} parameter")
        except InputValidationError as exc:
            raise FunctionDefinitionError(str(exc)) from exc
        tp = hints[param.name]
        python_to_arrow(tp, f"function {py_name!r} parameter {param.name!r}")  # UnsupportedTypeError naming it
        inputs[param.name] = tp
        if param.default is not param.empty:
            optional.append(param.name)

    if "return" not in hints:
        raise FunctionDefinitionError(f"function {py_name!r}: missing return type annotation (outputs {list(output_keys)})")
    ret = hints["return"]
    if len(output_keys) == 1:
        types = [ret]
    else:
        args = typing.get_args(ret)
        if typing.get_origin(ret) is not tuple or len(args) != len(output_keys) or Ellipsis in args:
            raise FunctionDefinitionError(
                f"function {py_name!r}: {len(output_keys)} output keys {list(output_keys)} need a return annotation "
                f"tuple[...] of {len(output_keys)} types, got {type_to_string(ret)}"
            )
        types = list(args)
    for key, tp in zip(output_keys, types):
        python_to_arrow(tp, f"function {py_name!r} output {key!r}")
    return Schema(inputs, optional), Schema(dict(zip(output_keys, types)))

