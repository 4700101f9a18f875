"""Rebuilding packet functions from their saved config, and the proxy that stands in for
a function whose code is gone.

A saved packet function (:meth:`PythonPacketFunction.to_config`) names its code by module
path and qualified name and carries everything that defines its identity. On load,
:func:`resolve_packet_function_from_config` imports it again; when that is impossible
(import error, missing attribute, unknown function type) it can fall back to a
:class:`PacketFunctionProxy`: same name, version, URI, identity hash and schemas, so its
node finds exactly the results the real function stored — but computing a *new* packet
raises :class:`~orcapod_core.errors.PacketFunctionUnavailableError` naming the function
and its module. ``proxy.bind(real_function)`` attaches code again after checking that it
is the same function; ``unbind()`` reverts.

>>> pf = resolve_packet_function_from_config(saved, fallback_to_proxy=True)   # doctest: +SKIP
>>> pf.uri == saved["uri"], pf.is_bound                                        # doctest: +SKIP
(True, False)
>>> pf.bind(score.pod.packet_function)                                         # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa

from orcapod_core.errors import FunctionBindError, PacketFunctionUnavailableError, PipelineLoadError
from orcapod_core.executors import LocalPythonFunctionExecutor, PythonFunctionExecutor, check_executor
from orcapod_core.packet_function import BatchResult, PacketFunctionDescription, PythonPacketFunction
from orcapod_core.hashing import ContentHash
from orcapod_core.module_policy import allowed_module_prefixes, module_allowed
from orcapod_core.types import Schema, arrow_field, arrow_schema_from_json, type_from_string

__all__ = ["PacketFunctionProxy", "resolve_packet_function_from_config"]

_REQUIRED = (
    "type",
    "module",
    "callable",
    "function_name",
    "version",
    "identity_hash",
    "uri",
    "input_schema",
    "output_schema",
    "output_keys",
)


def _check_config(config: Any) -> Mapping[str, Any]:
    if not isinstance(config, Mapping):
        raise PipelineLoadError(f"a packet function config must be a JSON object, got {type(config).__name__}")
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise PipelineLoadError(f"packet function config {config.get('uri', '?')!r} lacks field(s) {missing}")
    for key in ("input_schema", "output_schema"):
        if not isinstance(config[key], Mapping):
            raise PipelineLoadError(f"packet function config {config['uri']!r}: field {key!r} must be an object")
    keys = config["output_keys"]
    if not isinstance(keys, list) or list(config["output_schema"]) != keys:
        raise PipelineLoadError(
            f"packet function config {config['uri']!r}: field 'output_keys' {keys!r} does not match 'output_schema'"
        )
    return config


class PacketFunctionProxy(PacketFunctionDescription):
    """Stands in for a packet function whose code cannot be loaded.

    It has the saved identity (name, version, URI, identity hash, schemas — type strings it
    does not know become ``object``), so nodes using it serve every stored result. Computing
    a packet raises :class:`PacketFunctionUnavailableError` until :meth:`bind` attaches the
    real function.
    """

    def __init__(self, config: Mapping[str, Any], reason: str = "its code is not available"):
        config = _check_config(config)
        self.config = dict(config)
        self.reason = reason
        self._function_name = str(config["function_name"])
        self._version = str(config["version"])
        self._identity_mode = str(config.get("identity", "source"))
        self._identity_hash = ContentHash.from_string(str(config["identity_hash"]))
        self._uri = str(config["uri"])
        self._module = str(config["module"])
        self._callable = str(config["callable"])
        self._saved_type = str(config["type"])
        self._input_schema = Schema(
            {k: type_from_string(v) for k, v in config["input_schema"].items()},
            optional_fields=config.get("optional_fields", ()),
        )
        self._output_schema = Schema({k: type_from_string(v) for k, v in config["output_schema"].items()})
        self._output_keys = tuple(config["output_keys"])
        self._output_arrow_schema = self._arrow_outputs(config)
        self._is_async = bool(config.get("is_async", False))
        self._executor: PythonFunctionExecutor | None = None  # set explicitly on the proxy
        self._bound: PythonPacketFunction | None = None

    def _arrow_outputs(self, config: Mapping[str, Any]) -> pa.Schema:
        saved = config.get("output_arrow_schema")
        if saved is not None:
            try:
                return arrow_schema_from_json(saved)
            except ValueError as exc:
                raise PipelineLoadError(f"packet function config {self._uri!r}: field 'output_arrow_schema': {exc}") from exc
        try:
            return pa.schema([arrow_field(k, t) for k, t in self._output_schema.items()])
        except Exception as exc:
            raise PipelineLoadError(
                f"packet function config {self._uri!r}: cannot derive the output Arrow schema from 'output_schema' ({exc})"
            ) from exc

    # -- the same description as the real function --------------------------------------
    @property
    def function(self) -> Any:
        """The bound function's Python function, or ``None`` while unbound."""
        return self._bound.function if self._bound is not None else None

    @property
    def module(self) -> str:
        """Module path the function was saved from."""
        return self._module

    @property
    def qualified_name(self) -> str:
        """``module:qualname`` of the saved function."""
        return f"{self._module}:{self._callable}"

    @property
    def uri(self) -> str:
        return self._uri

    def identity_hash(self) -> ContentHash:
        return self._identity_hash

    def identity_structure(self) -> dict[str, Any]:
        return {"kind": "packet_function_proxy", "identity_hash": self._identity_hash.to_string()}

    def to_config(self) -> dict[str, Any]:
        """The saved config (a proxy saves exactly what it was loaded from)."""
        return dict(self.config)

    def __repr__(self) -> str:
        state = "bound" if self._bound is not None else "unbound"
        return f"PacketFunctionProxy({self._function_name!r}, version={self._version!r}, {self.qualified_name}, {state})"

    # -- binding --------------------------------------------------------------------------
    @property
    def is_bound(self) -> bool:
        return self._bound is not None

    @property
    def bound_function(self) -> PythonPacketFunction | None:
        return self._bound

    def bind(self, packet_function: Any) -> PacketFunctionProxy:
        """Attach the real function (e.g. ``fn.pod.packet_function``) after checking it is the
        saved one: name, version, function type, input/output schemas, output keys and
        identity. Every mismatch is listed in one :class:`FunctionBindError`."""
        pf = getattr(packet_function, "packet_function", packet_function)  # a FunctionPod works too
        if not isinstance(pf, PythonPacketFunction):
            raise FunctionBindError(
                f"cannot bind {type(packet_function).__name__} to proxy of {self._function_name!r}: "
                "expected a PythonPacketFunction (e.g. fn.pod.packet_function)"
            )
        problems = []

        def differ(what: str, mine: Any, theirs: Any) -> None:
            if mine != theirs:
                problems.append(f"{what}: saved {mine!r}, given {theirs!r}")

        differ("function name", self._function_name, pf.function_name)
        differ("version", self._version, pf.version)
        differ("function type", self._saved_type, pf.function_type)
        differ("input schema", dict(self._input_schema.to_strings()), dict(pf.input_schema.to_strings()))
        differ("optional parameters", sorted(self._input_schema.optional_fields), sorted(pf.input_schema.optional_fields))
        differ("output schema", dict(self._output_schema.to_strings()), dict(pf.output_schema.to_strings()))
        differ("output keys", list(self._output_keys), list(pf.output_keys))
        differ("identity", self._identity_hash.to_string(), pf.identity_hash().to_string())
        if problems:
            raise FunctionBindError(
                f"cannot bind {pf!r} to the saved function {self._function_name!r} ({self.qualified_name}): "
                + "; ".join(problems)
            )
        self._bound = pf
        return self

    def unbind(self) -> PacketFunctionProxy:
        """Detach the bound function: new packets raise again."""
        self._bound = None
        return self

    # -- execution ------------------------------------------------------------------------
    @property
    def executor(self) -> PythonFunctionExecutor:
        if self._executor is not None:
            return self._executor
        return self._bound.executor if self._bound is not None else LocalPythonFunctionExecutor()

    @executor.setter
    def executor(self, executor: PythonFunctionExecutor | None) -> None:
        if executor is not None:
            check_executor(type(self), self.function_type, executor)
        self._executor = executor

    def unavailable_error(self) -> PacketFunctionUnavailableError:
        return PacketFunctionUnavailableError(
            f"function {self._function_name!r} (version {self._version}, from {self.qualified_name}) is not available: "
            f"{self.reason}; only its stored results can be served. Bind the real function with "
            f"node.packet_function.bind(...) to compute new packets."
        )

    def call(self, packet: Mapping[str, Any]) -> dict[str, Any]:
        if self._bound is None:
            raise self.unavailable_error()
        return self._bound.call(packet)

    async def async_call(self, packet: Mapping[str, Any]) -> dict[str, Any]:
        if self._bound is None:
            raise self.unavailable_error()
        return await self._bound.async_call(packet)

    def call_batch(
        self,
        table: pa.Table,
        *,
        fail_fast: bool = False,
        packet_hashes: pa.Array | None = None,
        executor: PythonFunctionExecutor | None = None,
        capture: bool = False,
    ) -> BatchResult:
        """Delegates to the bound function; unbound, every row fails (only the first with
        ``fail_fast``) with :class:`PacketFunctionUnavailableError`."""
        if self._bound is not None:
            return self._bound.call_batch(
                table, fail_fast=fail_fast, packet_hashes=packet_hashes, executor=executor or self._executor, capture=capture
            )
        rows = range(min(table.num_rows, 1) if fail_fast else table.num_rows)
        return BatchResult(self._output_arrow_schema.empty_table(), [], {i: self.unavailable_error() for i in rows})

    def call_chunks(
        self,
        table: pa.Table,
        plan: Sequence[tuple[int, int]],
        *,
        fail_fast: bool = False,
        executor: PythonFunctionExecutor | None = None,
        capture: bool = False,
    ) -> Iterator[tuple[int, BatchResult, dict[str, str] | None]]:
        """Delegates to the bound function; unbound, every row fails as in :meth:`call_batch`."""
        if self._bound is not None:
            yield from self._bound.call_chunks(table, plan, fail_fast=fail_fast, executor=executor or self._executor, capture=capture)
            return
        for start, size in plan[:1] if fail_fast else plan:
            yield start, self.call_batch(table.slice(start, size), fail_fast=fail_fast), None

    # -- execution context (only ever recorded for results the bound function computed) ---
    def get_function_variation_data(self) -> dict[str, str]:
        if self._bound is None:
            raise self.unavailable_error()
        return self._bound.get_function_variation_data()

    def get_execution_data(self) -> dict[str, Any]:
        if self._bound is None:
            raise self.unavailable_error()
        data = self._bound.get_execution_data()
        if self._executor is not None:
            data.update(executor_type=self._executor.executor_type, executor_info=self._executor.get_executor_data())
        return data

    get_function_variation_data_schema = staticmethod(PythonPacketFunction.get_function_variation_data_schema)
    get_execution_data_schema = staticmethod(PythonPacketFunction.get_execution_data_schema)

    def source_hash(self) -> str:
        return self._bound.source_hash() if self._bound is not None else ""


def _import_callable(module: str, qualname: str) -> Any:
    """Import ``module`` and walk ``qualname``; raises ``LookupError`` with the reason."""
    try:
        obj: Any = importlib.import_module(module)
    except Exception as exc:  # ImportError, but also a module that fails while importing
        raise LookupError(f"importing module {module!r} failed: {type(exc).__name__}: {exc}") from exc
    if "<locals>" in qualname:
        raise LookupError(f"{module}:{qualname} is defined inside a function and cannot be imported")
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise LookupError(f"module {module!r} has no attribute {qualname!r}") from None
    return obj


def _is_decorated_pod(obj: Any, function: Any) -> bool:
    """True when ``obj`` carries the pod ``@function_pod`` put on ``function`` (``fn.pod``).

    Checked by what the decorator leaves, not by class, so this module needs no import of
    :mod:`orcapod_core.function_pods` (which imports it)."""
    packet_function = getattr(getattr(obj, "pod", None), "packet_function", None)
    return isinstance(packet_function, PythonPacketFunction) and packet_function.function in (obj, function)


def _check_may_import(module: str, where: str, allowed_modules: tuple[str, ...] | None) -> None:
    if allowed_modules is not None and not module_allowed(module, allowed_modules):
        raise PipelineLoadError(
            f"function {where}: module {module!r} is not in allowed_modules {list(allowed_modules)}, so it was not imported"
        )


def _check_trusted(obj: Any, function: Any, where: str, allowed_modules: tuple[str, ...] | None, require_pod: bool) -> None:
    """Refuse what the loading policy does not accept (see :func:`resolve_packet_function_from_config`)."""
    if allowed_modules is not None:
        defined_in = getattr(function, "__module__", None) or "?"
        if not module_allowed(defined_in, allowed_modules):
            raise PipelineLoadError(
                f"function {where} is defined in module {defined_in!r}, which is not in allowed_modules {list(allowed_modules)}"
            )
    elif require_pod and not _is_decorated_pod(obj, function):
        raise PipelineLoadError(
            f"packet function config field 'callable' names {where}, a plain function, not an orcapod function pod "
            f"(a function decorated with @function_pod); pass allowed_modules= covering {where.partition(':')[0]!r} "
            "to load plain functions from a module you trust"
        )


def resolve_packet_function_from_config(
    config: Mapping[str, Any],
    fallback_to_proxy: bool = False,
    *,
    allowed_modules: Sequence[str] | None = None,
    require_pod: bool = False,
) -> PythonPacketFunction | PacketFunctionProxy:
    """Rebuild a packet function from :meth:`PythonPacketFunction.to_config` output.

    The function is imported by module path and qualified name and wrapped with the saved
    name, version, output keys and identity mode. When it cannot be imported (or the saved
    type is unknown) this raises :class:`PacketFunctionUnavailableError` — or, with
    ``fallback_to_proxy=True``, returns a :class:`PacketFunctionProxy`. A config naming an
    object that is not a function raises :class:`PipelineLoadError` either way.

    What may be imported (importing runs the module's top-level code) and accepted:

    - ``allowed_modules`` (module-name prefixes, see :mod:`orcapod_core.module_policy`): a
      module outside the list is never imported (:class:`PipelineLoadError`); a function from
      inside it is accepted as it is, decorated or not, and must be defined there.
    - otherwise, with ``require_pod=True`` (what :meth:`Pipeline.load` does by default), the
      named object must be a function decorated with ``@function_pod`` (it has ``fn.pod``).

    >>> pf = resolve_packet_function_from_config(fn.pod.packet_function.to_config())  # doctest: +SKIP
    >>> resolve_packet_function_from_config(config, allowed_modules=["my_lab"])        # doctest: +SKIP
    """
    config = _check_config(config)
    allowed = allowed_module_prefixes(allowed_modules)
    module, where = str(config["module"]), f"{config['module']}:{config['callable']}"
    if config["type"] != PythonPacketFunction.function_type:
        reason = f"unknown function type {config['type']!r}"
    else:
        _check_may_import(module, where, allowed)
        try:
            obj = _import_callable(module, str(config["callable"]))
        except LookupError as exc:
            reason = str(exc)
        else:
            function = getattr(obj, "__wrapped__", obj)
            if not inspect.isfunction(function):
                raise PipelineLoadError(
                    f"packet function config field 'callable' names {where}, which is a {type(function).__name__}, not a function"
                )
            _check_trusted(obj, function, where, allowed, require_pod)
            try:
                return PythonPacketFunction(
                    function,
                    list(config["output_keys"]),
                    function_name=str(config["function_name"]),
                    version=str(config["version"]),
                    identity=str(config.get("identity", "source")),
                )
            except Exception as exc:
                raise PipelineLoadError(
                    f"the function at {where} no longer fits its saved config ({config['uri']}): {exc}"
                ) from exc
    if fallback_to_proxy:
        return PacketFunctionProxy(config, reason=reason)
    raise PacketFunctionUnavailableError(f"function {config['function_name']!r} ({where}) cannot be loaded: {reason}")
