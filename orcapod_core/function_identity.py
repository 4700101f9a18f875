"""What a function's ``identity="source"`` covers: its normalized source, or — when the source
cannot be read — a canonical hash of its code object.

**Normalized source** (the usual case): ``inspect.getsource`` → ``textwrap.dedent`` →
``ast.parse`` → drop decorators and every docstring (the function's and nested ones) →
``ast.unparse``. Comments, docstrings and formatting do not matter; any change to what the
function computes does.

**Code-object hash** (functions defined with ``python -c``, ``exec`` or in a plain REPL, whose
source is not on disk): SHA-256 of the canonical JSON (see :mod:`orcapod_core.hashing`) of

* the Python version (``"3.11"``: bytecode is specific to it),
* the code object, recursively: ``co_code`` (the de-specialized bytecode), ``co_consts``
  (nested code objects as their own structure, frozensets sorted by their canonical encoding,
  the function's docstring left out), ``co_names``, ``co_varnames``, ``co_freevars``,
  ``co_cellvars``, the argument counts, ``co_flags`` and ``co_exceptiontable``,
* the default values (``__defaults__``, ``__kwdefaults__``).

Line numbers, file names and the function's name are not part of it (the name is part of the
identity separately). It is the same in every process for one Python version and changes
whenever the body does.

>>> code_hash(lambda x: x + 1) == code_hash(lambda x: x + 1)
True
>>> code_hash(lambda x: x + 1) == code_hash(lambda x: x + 2)
False
"""

from __future__ import annotations

import ast
import functools
import inspect
import platform
import socket
import subprocess
import sys
import textwrap
import types
from collections.abc import Callable
from typing import Any

from orcapod_core.errors import FunctionDefinitionError
from orcapod_core.hashing import canonical_json, hash_object

__all__ = ["normalized_source", "code_hash", "code_identity", "git_hash", "host_info"]


def normalized_source(function: Callable[..., Any]) -> str:
    """The function's ``def`` without decorators, docstrings, comments or formatting.

    Raises :class:`~orcapod_core.errors.FunctionDefinitionError` when the source cannot be
    read (see :func:`code_identity` for the fallback).
    """
    name = getattr(function, "__qualname__", repr(function))
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError) as exc:
        raise FunctionDefinitionError(f"cannot read the source of function {name!r} ({exc})") from exc
    try:
        tree = ast.parse(textwrap.dedent(source))
    except SyntaxError as exc:  # e.g. source lines that linecache holds for another version of the file
        raise FunctionDefinitionError(f"the source found for function {name!r} does not parse ({exc})") from exc
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if not defs:
        raise FunctionDefinitionError(f"cannot find the definition of function {name!r} in its source")
    node = defs[0]
    node.decorator_list = []
    for inner in ast.walk(node):
        if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = inner.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                inner.body = body[1:] or [ast.Pass()]
    return ast.unparse(node)


def _const(value: Any) -> Any:
    """A code constant as canonical-JSON-able data (stable across processes)."""
    if isinstance(value, types.CodeType):
        return {"$code": _code(value)}
    if isinstance(value, (frozenset, set)):  # iteration order follows string hashing: sort
        return {"$frozenset": sorted(canonical_json(_const(v)).decode() for v in value)}
    if isinstance(value, tuple):
        return {"$tuple": [_const(v) for v in value]}
    if isinstance(value, complex):
        return {"$complex": [_const(value.real), _const(value.imag)]}
    if value is Ellipsis:
        return {"$ellipsis": True}
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    return {"$repr": f"{type(value).__module__}.{type(value).__qualname__}"}


def _code(code: types.CodeType, drop_docstring: str | None = None) -> dict[str, Any]:
    consts = list(code.co_consts)
    if drop_docstring is not None and consts and consts[0] == drop_docstring:
        consts[0] = None
    return {
        "code": code.co_code,
        "consts": [_const(c) for c in consts],
        "names": list(code.co_names),
        "varnames": list(code.co_varnames),
        "freevars": list(code.co_freevars),
        "cellvars": list(code.co_cellvars),
        "argcount": code.co_argcount,
        "posonlyargcount": code.co_posonlyargcount,
        "kwonlyargcount": code.co_kwonlyargcount,
        "flags": code.co_flags,
        "exceptiontable": getattr(code, "co_exceptiontable", b""),
    }


def _default(value: Any) -> Any:
    try:
        canonical_json(value)
    except (TypeError, ValueError):
        return _const(value)
    return value


def code_hash(function: Callable[..., Any]) -> str:
    """The canonical hash of ``function``'s code object and defaults (see the module notes)."""
    code = getattr(function, "__code__", None)
    if code is None:
        raise FunctionDefinitionError(f"{function!r} has no Python code object")
    kwdefaults = getattr(function, "__kwdefaults__", None) or {}
    structure = {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "code": _code(code, drop_docstring=getattr(function, "__doc__", None)),
        "defaults": [_default(v) for v in (getattr(function, "__defaults__", None) or ())],
        "kwdefaults": {k: _default(v) for k, v in sorted(kwdefaults.items())},
    }
    return hash_object({"python_code": structure}).to_string()


def code_identity(function: Callable[..., Any]) -> tuple[str, str]:
    """``("source_hash", <hash of the normalized source>)``, or ``("code_hash", <code-object
    hash>)`` when the source cannot be read. Never raises for a plain Python function."""
    try:
        source = normalized_source(function)
    except FunctionDefinitionError:
        return "code_hash", code_hash(function)
    return "source_hash", hash_object({"python_source": source}).to_string()


@functools.cache
def git_hash(directory: str) -> str:
    """The git commit checked out in ``directory`` (``""`` outside a repository)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


@functools.cache
def host_info() -> dict[str, str]:
    """Host name and platform, recorded with every computed result."""
    return {"hostname": socket.gethostname(), "platform": platform.platform()}
