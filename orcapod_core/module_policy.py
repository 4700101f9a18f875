"""Which modules a saved pipeline file may make us import (``allowed_modules=``).

Loading a pipeline imports the modules its file names, and importing a module runs its
module-level code. ``Pipeline.load(path, allowed_modules=[...])`` limits that to a list of
module-name prefixes: a prefix covers the module itself and its submodules (``"my_lab"``
covers ``my_lab`` and ``my_lab.steps``, not ``my_labs``; a trailing dot, ``"my_lab."``, means
the same). A module outside the list is never imported.

>>> prefixes = allowed_module_prefixes(["my_lab.", "pkg.mod"])
>>> prefixes
('my_lab', 'pkg.mod')
>>> [module_allowed(m, prefixes) for m in ("my_lab", "my_lab.steps", "my_labs", "pkg")]
[True, True, False, False]
"""

from __future__ import annotations

from collections.abc import Iterable

from orcapod_core.errors import InputValidationError

__all__ = ["allowed_module_prefixes", "module_allowed"]


def allowed_module_prefixes(allowed_modules: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """``allowed_modules`` as a tuple of prefixes without trailing dots (``None`` stays ``None``:
    no list given). A single string is one prefix; an empty prefix (it would cover every
    module) raises :class:`~orcapod_core.errors.InputValidationError`.

    >>> allowed_module_prefixes("my_lab")
    ('my_lab',)
    """
    if allowed_modules is None:
        return None
    items = [allowed_modules] if isinstance(allowed_modules, str) else list(allowed_modules)
    prefixes = []
    for item in items:
        if not isinstance(item, str):
            raise InputValidationError(f"allowed_modules: {item!r} is a {type(item).__name__}, not a module name")
        prefix = item.strip().rstrip(".")
        if not prefix:
            raise InputValidationError(f"allowed_modules: {item!r} is not a module name (it would allow every module)")
        prefixes.append(prefix)
    return tuple(prefixes)


def module_allowed(module: str, prefixes: Iterable[str]) -> bool:
    """True when ``module`` is one of ``prefixes`` or a submodule of one.

    >>> module_allowed("my_lab.steps", ("my_lab",)), module_allowed("my_labs", ("my_lab",))
    (True, False)
    """
    return any(module == p or module.startswith(p + ".") for p in prefixes)
