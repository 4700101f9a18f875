"""Values are stored exactly or not at all.

:func:`strict_array` builds an Arrow array of a table type from Python values and refuses any
value Arrow would change on the way in (``2.5`` for ``int`` — Arrow alone truncates it to
``2`` —, a ``datetime`` for ``date``, a timezone-aware ``datetime``, ``str`` for ``bytes``, a
map with a repeated key, a ``str`` for a ``Path``); values that arrive unchanged — read back,
they compare equal (``==``; NaN equals NaN) and are of the same kind — pass, so ``2.0`` for
``int`` is ``2`` and an ``int`` for ``float`` is widened when the float is exact.
:func:`value_problem` says why one value cannot be stored.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from orcapod_core.errors import InputValidationError
from orcapod_core.types import MAX_NESTING_DEPTH, check_map_keys
from orcapod_core.value_types import has_map, pylist, to_storage

__all__ = ["strict_array", "value_problem"]


def _same(stored: Any, given: Any) -> bool:
    """Whether ``stored`` (read back from Arrow) is exactly the Python value ``given``."""
    if isinstance(stored, float):
        if isinstance(given, (str, bytes)):
            return False
        if stored != stored:  # NaN is stored as NaN
            return bool(given != given)
        return bool(stored == given)
    if isinstance(stored, dict):
        try:
            pairs = list(given.items()) if isinstance(given, Mapping) else [tuple(p) for p in given]
        except TypeError:
            return False
        return len(pairs) == len(stored) and all(len(p) == 2 and p[0] in stored and _same(stored[p[0]], p[1]) for p in pairs)
    if isinstance(stored, list):
        if isinstance(given, (str, bytes, Mapping)):
            return False
        try:
            items = list(given)
        except TypeError:
            return False
        return len(items) == len(stored) and all(_same(s, g) for s, g in zip(stored, items))
    if isinstance(stored, str):
        return isinstance(given, str) and stored == given
    if isinstance(stored, bytes):
        return isinstance(given, (bytes, bytearray, memoryview)) and stored == bytes(given)
    if isinstance(stored, datetime.datetime):
        return isinstance(given, datetime.datetime) and given.tzinfo is None and stored == given
    if isinstance(stored, (datetime.date, datetime.time)):  # a datetime is no date
        return type(given) is type(stored) and stored == given
    try:
        return bool(stored == given)
    except (TypeError, ValueError):
        return False


def strict_array(values: Sequence[Any], field: pa.Field) -> pa.Array:
    """An Arrow array of ``field``'s type holding exactly ``values``, or ``ValueError`` /
    ``TypeError`` naming the first value that would not arrive unchanged (or a null in a
    non-nullable field).

    >>> strict_array([1, 2.0], pa.field("x", pa.int64())).to_pylist()
    [1, 2]
    >>> strict_array([2.5], pa.field("x", pa.int64()))
    Traceback (most recent call last):
    ...
    ValueError: float 2.5 would be stored as 2
    """
    values = values if isinstance(values, list) else list(values)
    values = to_storage(values, field.type)  # Path, arrays, registered types: as their structs
    try:
        arr = pa.array(values, type=field.type)
    except RecursionError:
        raise ValueError(f"a value nests more than {MAX_NESTING_DEPTH} levels deep") from None
    if not field.nullable and arr.null_count:
        row = next(i for i, v in enumerate(values) if v is None)
        raise ValueError(f"row {row} is None (declare the type as T | None to allow nulls)")
    if has_map(field.type):
        try:
            check_map_keys(arr, field.type, "value")
        except InputValidationError as exc:
            raise ValueError(str(exc)) from None
    back = pylist(arr)
    try:
        equal = back == values
    except (TypeError, ValueError):  # e.g. NumPy arrays among the values
        equal = False
    if not equal:
        for stored, given in zip(back, values):
            try:
                same = _same(stored, given)
            except RecursionError:
                raise ValueError(f"a value nests more than {MAX_NESTING_DEPTH} levels deep") from None
            if not same:
                raise ValueError(f"{type(given).__name__} {_short(given)} would be stored as {_short(stored)}")
    return arr


def value_problem(value: Any, field: pa.Field) -> str | None:
    """Why ``value`` cannot be stored exactly in ``field`` (``None``: it can)."""
    if value is None:
        return None if field.nullable else "got None (declare the type as T | None to allow nulls)"
    try:
        strict_array([value], field)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError, ValueError) as exc:
        text = str(exc)
        if "would be stored as" in text:
            return "got " + text.replace(" would be stored as ", ", which would be stored as ", 1)
        if "nests more than" in text:
            return f"got {text}"
        return f"got {type(value).__name__} {_short(value)} ({text})"
    return None


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except RecursionError:
        text = f"<deeply nested {type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."
