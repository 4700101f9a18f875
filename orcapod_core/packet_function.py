"""Packet functions: a typed Python function seen as packet → packet.

A :class:`PythonPacketFunction` wraps a typed function: its parameters are the input packet
columns, its return value the output packet (``output_keys`` names the columns). Pods
(:mod:`orcapod_core.function_pods`) apply it to streams; result caches store what it computes.

>>> def scale(x: float, factor: float = 2.0) -> float:
...     return x * factor
>>> pf = PythonPacketFunction(scale, output_keys="y")
>>> pf.call({"x": 1.5})
{'y': 3.0}

**Identity.** A function's identity is its name, version, input/output schemas and output
keys, plus (``identity="source"``, the default) its code identity
(:mod:`orcapod_core.function_identity`): a hash of its *normalized* source — the ``def``
without decorators or docstrings, re-rendered by ``ast.unparse``, so comments, docstrings and
formatting do not matter but any change to what it computes does — or, for a function whose
source cannot be read (``python -c``, ``exec``, a plain REPL), a canonical hash of its code
object. ``identity="declared"`` drops the code: bump ``version`` to invalidate stored results.
Executors are never part of identity.

**Outputs are stored exactly or not at all.** A returned value that does not fit its output's
declared type — ``2.5`` for ``-> int``, ``[1.5]`` for ``list[int]``, ``None`` for a
non-optional output, a string for ``bytes``, a map with a repeated key — makes that packet fail
with :class:`~orcapod_core.errors.OutputTypeError` naming the function, the output key, the
declared type and the value; nothing is stored for it. A value is accepted when Arrow holds it
unchanged: ``2.0`` for ``int`` is stored as ``2``, an ``int`` for ``float`` is widened when the
float is exact (``|n| ≤ 2**53``).
"""

from __future__ import annotations

import inspect
import itertools
import os
import platform
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa

from orcapod_core.capture import captured_of, capturing
from orcapod_core.errors import (
    FunctionDefinitionError,
    InputValidationError,
    OutputTypeError,
    SchemaMismatchError,
)
from orcapod_core.executors import LocalPythonFunctionExecutor, PythonFunctionExecutor, check_executor
from orcapod_core.function_identity import code_identity, git_hash, host_info
from orcapod_core.function_signature import (
    check_name_part,
    check_output_keys,
    check_packet_schema,
    read_columns,
    signature_schemas,
)
from orcapod_core.hashing import ContentHash, hash_object
from orcapod_core.packet_args import PacketArgs
from orcapod_core.types import (
    Schema,
    arrow_field,
    arrow_schema_to_json,
    python_to_arrow,
    type_to_string,
)
from orcapod_core.values import strict_array, value_problem
from orcapod_core.value_types import has_paths, missing_path, to_python

_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError, ValueError, KeyError)

__all__ = [
    "PacketFunctionDescription",
    "PythonPacketFunction",
    "BatchResult",
    "check_packet_schema",
]

# --------------------------------------------------------------------------------------
# Packet function
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchResult:
    """Outputs of :meth:`PythonPacketFunction.call_batch`.

    ``table`` has one row per successful input row (output-key columns), and ``rows`` the
    input row index of each; ``errors`` maps failed input rows to their exception. With
    ``fail_fast``, rows after the first failure may be neither.
    """

    table: pa.Table
    rows: Sequence[int]
    errors: dict[int, BaseException]
    captured: dict[int, dict[str, str]] = field(default_factory=dict)


class PacketFunctionDescription:
    """What describes a packet function, shared by :class:`PythonPacketFunction` and the
    :class:`~orcapod_core.packet_function_proxy.PacketFunctionProxy` that stands in for one."""

    function_type: ClassVar[str] = "python"
    _function_name: str
    _version: str
    _identity_mode: str
    _input_schema: Schema
    _output_schema: Schema
    _output_keys: tuple[str, ...]
    _output_arrow_schema: pa.Schema
    _is_async: bool

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def version(self) -> str:
        return self._version

    @property
    def identity_mode(self) -> str:
        """``"source"`` or ``"declared"``."""
        return self._identity_mode

    @property
    def input_schema(self) -> Schema:
        """Parameter name → type; parameters with defaults are ``optional_fields``."""
        return self._input_schema

    @property
    def output_schema(self) -> Schema:
        """Output key → type."""
        return self._output_schema

    @property
    def output_keys(self) -> tuple[str, ...]:
        return self._output_keys

    @property
    def output_arrow_schema(self) -> pa.Schema:
        """Arrow schema of the output columns."""
        return self._output_arrow_schema

    @property
    def is_async(self) -> bool:
        return self._is_async

    def check_input_schema(self, packet_schema: Mapping[str, Any], tag_columns: Sequence[str] = ()) -> None:
        """Raise :class:`SchemaMismatchError` listing every required parameter without a column
        and every column whose type does not fit its parameter (other columns are not read)."""
        check_packet_schema(self._function_name, self._input_schema, packet_schema, tag_columns)

    def read_columns(self, packet_columns: Sequence[str]) -> tuple[str, ...]:
        """Which of ``packet_columns`` the function reads (its parameters'); the input packet
        hash covers exactly these.

        >>> pf.read_columns(["x", "note"])          # doctest: +SKIP
        ('x',)
        """
        return read_columns(self._input_schema, packet_columns)


class PythonPacketFunction(PacketFunctionDescription):
    """A typed Python function seen as packet → packet.

    >>> def scale(x: float, factor: float = 2.0) -> float:      # doctest: +SKIP
    ...     return x * factor
    >>> pf = PythonPacketFunction(scale, output_keys="y")       # doctest: +SKIP
    >>> pf.input_schema, pf.input_schema.optional_fields, pf.call({"x": 1.5})  # doctest: +SKIP
    (Schema({'x': float, 'factor': float}), frozenset({'factor'}), {'y': 3.0})
    """

    def __init__(
        self,
        function: Callable[..., Any],
        output_keys: str | Sequence[str],
        function_name: str | None = None,
        version: str = "v0",
        identity: str = "source",
        executor: PythonFunctionExecutor | None = None,
    ):
        if not inspect.isfunction(function):
            raise FunctionDefinitionError(
                f"a packet function must be a plain Python function (def / async def), got {type(function).__name__} {function!r}"
            )
        py_name = function.__qualname__
        if function.__name__ == "<lambda>":
            raise FunctionDefinitionError(
                f"lambda functions cannot be packet functions ({py_name}): define a named, typed function with def"
            )
        if identity not in ("source", "declared"):
            raise InputValidationError(f"function {py_name!r}: identity must be 'source' or 'declared', got {identity!r}")
        name = function.__name__ if function_name is None else function_name
        check_name_part(name, "function_name", py_name)
        check_name_part(version, "version", py_name)

        self._function = function
        self._function_name = name
        self._version = version
        self._identity_mode = identity
        self._is_async = inspect.iscoroutinefunction(function)
        self._output_keys = check_output_keys(output_keys, py_name)
        self._input_schema, self._output_schema = signature_schemas(function, self._output_keys)
        self._param_arrow = {p: python_to_arrow(t) for p, t in self._input_schema.items()}
        #: The parameters a call may pass by position: those before the first keyword-only one,
        #: of the callable itself (a decorator's ``wrapper(**kwargs)`` takes keywords only).
        params = inspect.signature(function, follow_wrapped=False).parameters.values()
        self._positional = tuple(p.name for p in itertools.takewhile(lambda p: p.kind is p.POSITIONAL_OR_KEYWORD, params))
        self._output_fields = [arrow_field(k, t) for k, t in self._output_schema.items()]
        self._output_arrow_schema = pa.schema(self._output_fields)
        # Read the code now: the code that runs is the code that is imported now.
        self._code_identity = code_identity(function) if identity == "source" else None
        self._executor: PythonFunctionExecutor = LocalPythonFunctionExecutor()
        if executor is not None:
            self.executor = executor

    # -- description --------------------------------------------------------------
    @property
    def function(self) -> Callable[..., Any]:
        """The wrapped Python function."""
        return self._function

    def __repr__(self) -> str:
        return f"PythonPacketFunction({self._function_name!r}, version={self._version!r}, output_keys={list(self._output_keys)})"

    # -- identity -----------------------------------------------------------------
    def identity_structure(self) -> dict[str, Any]:
        """What the identity hash covers (executors excluded)."""
        structure: dict[str, Any] = {
            "kind": "python_function",
            "function_name": self._function_name,
            "version": self._version,
            "input_schema": self._input_schema.to_strings(),
            "optional_fields": sorted(self._input_schema.optional_fields),
            "output_schema": self._output_schema.to_strings(),
            "output_keys": list(self._output_keys),
        }
        if self._code_identity is not None:
            kind, digest = self._code_identity  # "source_hash", or "code_hash" without a source file
            structure[kind] = digest
        return structure

    def source_hash(self) -> str:
        """Hash of the function's code: its normalized source, or its code object when the source
        cannot be read (see :mod:`orcapod_core.function_identity`). Computed for declared
        identity too: it is recorded with each result, though not part of the identity."""
        if self._code_identity is not None:
            return self._code_identity[1]
        cached = self.__dict__.get("_declared_code")
        if cached is None:
            cached = self.__dict__["_declared_code"] = code_identity(self._function)[1]
        return cached

    def identity_hash(self) -> ContentHash:
        """The function's identity (also the Dagster ``code_version``)."""
        cached = self.__dict__.get("_identity_hash")
        if cached is None:
            cached = hash_object(self.identity_structure())
            self.__dict__["_identity_hash"] = cached
        return cached

    @property
    def uri(self) -> str:
        """``<name>/<version>/<identity hex[:16]>`` — the function part of output source info."""
        return f"{self._function_name}/{self._version}/{self.identity_hash().to_hex(16)}"

    def to_config(self) -> dict[str, Any]:
        """JSON description that :func:`~orcapod_core.packet_function_proxy.resolve_packet_function_from_config`
        rebuilds: where the code lives (module + qualified name) and everything that defines
        the function's identity, so a :class:`~orcapod_core.packet_function_proxy.PacketFunctionProxy`
        can stand in for it when the code is gone.

        >>> pf.to_config()["uri"] == pf.uri                    # doctest: +SKIP
        True
        """
        return {
            "type": self.function_type,
            "module": self._function.__module__,
            "callable": self._function.__qualname__,
            "function_name": self._function_name,
            "version": self._version,
            "identity": self._identity_mode,
            "identity_hash": self.identity_hash().to_string(),
            "uri": self.uri,
            "input_schema": dict(self._input_schema.to_strings()),
            "optional_fields": sorted(self._input_schema.optional_fields),
            "output_schema": dict(self._output_schema.to_strings()),
            "output_keys": list(self._output_keys),
            "output_arrow_schema": arrow_schema_to_json(self._output_arrow_schema),
            "is_async": self._is_async,
        }

    # -- execution context ------------------------------------------------------------
    def get_function_variation_data(self) -> dict[str, str]:
        """What varies with the function's code: name, signature hash, content hash, git commit."""
        cached = self.__dict__.get("_variation")
        if cached is None:
            signature = hash_object(
                {
                    "input_schema": self._input_schema.to_strings(),
                    "output_schema": self._output_schema.to_strings(),
                    "output_keys": list(self._output_keys),
                }
            )
            try:
                path = inspect.getsourcefile(self._function)
            except TypeError:
                path = None
            cached = {
                "function_name": self._function_name,
                "function_signature_hash": signature.to_string(),
                "function_content_hash": self.source_hash(),
                "git_hash": git_hash(os.path.dirname(os.path.abspath(path))) if path else "",
            }
            self.__dict__["_variation"] = cached
        return dict(cached)

    @staticmethod
    def get_function_variation_data_schema() -> Schema:
        return Schema(
            {"function_name": str, "function_signature_hash": str, "function_content_hash": str, "git_hash": str}
        )

    def get_execution_data(self) -> dict[str, Any]:
        """Where and how results are computed now: executor, its options, Python version, host."""
        return {
            "executor_type": self._executor.executor_type,
            "executor_info": self._executor.get_executor_data(),
            "python_version": platform.python_version(),
            "extra_info": dict(host_info()),
        }

    @staticmethod
    def get_execution_data_schema() -> Schema:
        return Schema(
            {"executor_type": str, "executor_info": dict[str, str], "python_version": str, "extra_info": dict[str, str]}
        )

    # -- executor ---------------------------------------------------------------------
    @property
    def executor(self) -> PythonFunctionExecutor:
        """Where the function runs; assigning one that cannot run Python functions raises
        :class:`~orcapod_core.errors.ExecutorTypeError` right here."""
        return self._executor

    @executor.setter
    def executor(self, executor: PythonFunctionExecutor | None) -> None:
        if executor is None:
            executor = LocalPythonFunctionExecutor()
        check_executor(type(self), self.function_type, executor, self._function)
        self._executor = executor

    # -- input checks -------------------------------------------------------------------
    def _kwargs(self, packet: Mapping[str, Any]) -> dict[str, Any]:
        """The call's keyword arguments: the packet's values of the parameters (other columns
        are not read, as in a stream)."""
        schema = self._input_schema
        missing = [p for p in schema if p not in packet and p not in schema.optional_fields]
        if missing:
            raise SchemaMismatchError(
                f"function {self._function_name!r}: packet columns {list(packet)} have no value for parameter(s) "
                f"{missing} (parameters: {list(schema)})"
            )
        return {k: packet[k] for k in schema if k in packet}

    # -- single packet --------------------------------------------------------------------
    def call(self, packet: Mapping[str, Any]) -> dict[str, Any]:
        """Compute one packet: ``{parameter: value}`` → ``{output key: value}`` (keys that are
        not parameters are ignored).

        User exceptions propagate unchanged; a return value that does not fit the output
        schema raises :class:`~orcapod_core.errors.OutputTypeError` naming the output key.
        """
        result = self._executor.execute_callable(self._function, self._kwargs(packet))
        return self._checked_outputs(result)

    async def async_call(self, packet: Mapping[str, Any]) -> dict[str, Any]:
        """Awaitable :meth:`call` (through the executor's ``async_execute_callable``)."""
        result = await self._executor.async_execute_callable(self._function, self._kwargs(packet))
        return self._checked_outputs(result)

    def _checked_outputs(self, result: Any) -> dict[str, Any]:
        values = self._unpack_one(result)
        if isinstance(values, Exception):
            raise values
        for f, v in zip(self._output_fields, values):
            problem = value_problem(v, f)
            if problem:
                raise self._output_error(f.name, problem, v)
        return dict(zip(self._output_keys, values))

    def _unpack_one(self, result: Any) -> tuple[Any, ...] | Exception:
        n = len(self._output_keys)
        if n == 1:
            return (result,)
        if isinstance(result, (tuple, list)) and len(result) == n:
            return tuple(result)
        expected = f"tuple[{', '.join(type_to_string(t) for t in self._output_schema.values())}]"
        return OutputTypeError(
            f"function {self._function_name!r} must return a tuple of {n} values for output keys "
            f"{list(self._output_keys)}, got {type(result).__name__} {_short(result)}",
            function_name=self._function_name,
            expected=expected,
            value=result,
        )

    def _output_error(self, key: str, problem: str, value: Any) -> OutputTypeError:
        expected = type_to_string(self._output_schema[key])
        return OutputTypeError(
            f"function {self._function_name!r} returned a wrong value for output key {key!r} "
            f"(declared {expected}): {problem}",
            function_name=self._function_name,
            output_key=key,
            expected=expected,
            value=value,
        )

    # -- many packets (the hot path) --------------------------------------------------------
    def call_batch(
        self,
        table: pa.Table,
        *,
        fail_fast: bool = False,
        packet_hashes: pa.Array | None = None,
        executor: PythonFunctionExecutor | None = None,
        capture: bool = False,
    ) -> BatchResult:
        """Compute every row of ``table`` (its columns named like the parameters; other
        columns are ignored) in one pass: each input column is converted to Python once,
        the executor runs the whole batch, and each output column is built with one
        ``pa.array`` call. Failed rows (user exceptions, wrong output values) are reported
        in ``errors`` instead of raising. ``packet_hashes`` (the rows' input packet hashes)
        is accepted for interface parity with cached functions and not needed here.
        ``executor`` overrides the function's executor for this call; ``capture`` records
        each call's stdout/stderr (and a failed call's traceback) in ``captured``.
        """
        kwargs_list = self._kwargs_list(table, positional=not capture)
        executor = self._checked_executor(executor)
        function = capturing(self._function) if capture else self._function
        return self._batch_result(executor.execute_batch(function, kwargs_list, fail_fast=fail_fast), capture, fail_fast)

    def call_chunks(
        self,
        table: pa.Table,
        plan: Sequence[tuple[int, int]],
        *,
        fail_fast: bool = False,
        executor: PythonFunctionExecutor | None = None,
        capture: bool = False,
    ) -> Iterator[tuple[int, BatchResult, dict[str, str] | None]]:
        """Compute ``table``'s rows in the chunks of ``plan`` (``(start, length)`` pairs) on the
        executor — concurrently on a process pool or a Ray cluster — and yield, **as each chunk
        completes**, ``(start, its BatchResult with rows counted from start, where it ran)``.
        With ``fail_fast`` nothing new starts after a failure; closing the iterator cancels what
        has not started.

        >>> plan = plan_chunks(table.num_rows, 2)                                  # doctest: +SKIP
        >>> for start, result, where in pf.call_chunks(table, plan, executor=LocalProcessExecutor(2)):  # doctest: +SKIP
        ...     store(start, result)
        """
        executor = self._checked_executor(executor)
        chunks = (self._kwargs_list(table.slice(start, size)) for start, size in plan)
        for done in executor.map_chunks(self._function, chunks, fail_fast=fail_fast, capture=capture):
            yield plan[done.index][0], self._batch_result(done.results, capture, fail_fast), done.info

    def _checked_executor(self, executor: PythonFunctionExecutor | None) -> PythonFunctionExecutor:
        """``executor`` (a per-call override, checked like an assignment), or the function's own."""
        if executor is None:
            return self._executor
        check_executor(type(self), self.function_type, executor, self._function)
        return executor

    def _kwargs_list(self, table: pa.Table, positional: bool = True) -> PacketArgs:
        """One ``{parameter: value}`` per row (see :class:`PacketArgs`); each input column is
        converted to Python once. ``positional``: the function is called as it is (not through a
        wrapper taking keywords only), so it may be called with positional arguments."""
        names = [p for p in self._input_schema if p in table.column_names]
        missing = [p for p in self._input_schema if p not in names and p not in self._input_schema.optional_fields]
        if missing:
            raise SchemaMismatchError(f"function {self._function_name!r}: input has no column for parameter(s) {missing}")
        columns = []
        for p in names:
            col = table.column(p)
            if col.type != self._param_arrow[p]:  # e.g. an int column feeding a float parameter
                col = col.cast(self._param_arrow[p])
            columns.append(to_python(col))
        leading = positional and tuple(names) == self._positional[: len(names)]
        return PacketArgs(names, columns, table.num_rows, positional=leading)

    def _batch_result(self, raw: list[Any], capture: bool, fail_fast: bool) -> BatchResult:
        """Calls' results (or exceptions; with ``capture``, ``(value, captured output)``) as one
        :class:`BatchResult`: outputs that fit their types as Arrow columns, the rest as errors."""
        captured: dict[int, dict[str, str]] = {}
        if capture:
            for i, r in enumerate(raw):
                if isinstance(r, BaseException):
                    captured[i] = captured_of(r)
                else:
                    raw[i], captured[i] = r
        errors: dict[int, BaseException] = {i: r for i, r in enumerate(raw) if isinstance(r, BaseException)}
        if errors and fail_fast:
            # Keep what was computed before the first failure (a pipeline stores it, so a
            # rerun does not compute it again); rows after it are neither result nor error.
            first = min(errors)
            raw, errors = raw[:first], {first: errors[first]}
        rows: Sequence[int] = range(len(raw))
        results = raw
        if errors:
            rows = [i for i in rows if i not in errors]
            results = [raw[i] for i in rows]

        arrays, bad = self._output_arrays(results)
        if bad:
            for j, exc in bad.items():
                errors[rows[j]] = exc
                if rows[j] in captured:  # the call itself succeeded: the failure is its output
                    captured[rows[j]]["traceback"] = captured_of(exc)["traceback"]
            if fail_fast:  # report the first failing row only; keep the rows before it
                first = min(bad)
                arrays, _ = self._output_arrays(results[:first])
                table = pa.Table.from_arrays(arrays, schema=self._output_arrow_schema)
                return BatchResult(table, list(rows[:first]), {rows[first]: bad[first]}, captured)
            keep = [j for j in range(len(results)) if j not in bad]
            rows = [rows[j] for j in keep]
            arrays, bad = self._output_arrays([results[j] for j in keep])
            assert not bad
        errors = dict(sorted(errors.items()))
        return BatchResult(pa.Table.from_arrays(arrays, schema=self._output_arrow_schema), rows, errors, captured)

    def _output_arrays(self, results: list[Any]) -> tuple[list[pa.Array], dict[int, Exception]]:
        """One Arrow array per output key; or the rows whose values do not fit."""
        n = len(self._output_keys)
        if n == 1:
            per_key: list[Sequence[Any]] = [results]
        else:
            bad_shape = [j for j, r in enumerate(results) if not (isinstance(r, (tuple, list)) and len(r) == n)]
            if bad_shape:
                return [], {j: self._unpack_one(results[j]) for j in bad_shape}  # type: ignore[misc]
            per_key = list(zip(*results)) if results else [() for _ in range(n)]
        arrays, bad = [], {}
        for f, values in zip(self._output_fields, per_key):
            try:
                arr = strict_array(values, f)
            except _ARROW_ERRORS:
                # Slow path, only on failure: find exactly which rows do not fit.
                for j, v in enumerate(values):
                    problem = value_problem(v, f)
                    if problem and j not in bad:
                        bad[j] = self._output_error(f.name, problem, v)
                if not bad:
                    raise
                continue
            if has_paths(f.type):  # a returned file must exist (it is copied into the result store)
                for j, v in enumerate(values):
                    gone = missing_path(v)
                    if gone is not None and j not in bad:
                        bad[j] = self._output_error(f.name, f"the returned file {gone!r} does not exist", v)
            arrays.append(arr)
        return arrays, bad


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
