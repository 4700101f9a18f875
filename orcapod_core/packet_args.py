"""The arguments of a batch of function calls, one call per packet, held as columns.

What :meth:`PacketFunction.call_batch` hands an executor: a sequence with one ``{parameter: value}``
mapping per packet, which is all an executor may rely on (iterate it, index it, slice it, pickle
it to a worker). It keeps one Python list per parameter instead of a dict per packet, so a batch
of 100,000 packets does not first allocate 100,000 dicts, and a chunk sent to a worker process
travels as a few lists. When ``positional`` is set, the parameters are the function's leading
positional-or-keyword parameters in signature order, so :meth:`PacketArgs.arguments` tuples can be
passed as ``fn(*args)`` — the local executor's hot path, where building a dict per call cost more
than a cheap function's call.

>>> args = PacketArgs(("x", "y"), ([1, 2], [10, 20]), positional=True)
>>> list(args), args[1], len(args[:1])
([{'x': 1, 'y': 10}, {'x': 2, 'y': 20}], {'x': 2, 'y': 20}, 1)
>>> list(args.arguments())
[(1, 10), (2, 20)]
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, overload

__all__ = ["PacketArgs"]


class PacketArgs(Sequence[Mapping[str, Any]]):
    """One call's keyword arguments per packet, as one list of values per parameter name."""

    __slots__ = ("names", "columns", "length", "positional")

    def __init__(self, names: Sequence[str], columns: Sequence[list[Any]], length: int | None = None, positional: bool = False):
        self.names = tuple(names)
        self.columns = tuple(columns)
        if length is None:
            if not self.columns:
                raise ValueError("PacketArgs without columns needs its length")
            length = len(self.columns[0])
        if len(self.names) != len(self.columns) or any(len(c) != length for c in self.columns):
            raise ValueError(f"PacketArgs: {len(self.names)} names for {len(self.columns)} columns of {length} values")
        self.length = length
        self.positional = positional

    def __len__(self) -> int:
        return self.length

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> PacketArgs: ...
    def __getitem__(self, index: int | slice) -> dict[str, Any] | PacketArgs:
        if isinstance(index, slice):
            rows = range(self.length)[index]
            return PacketArgs(self.names, [c[index] for c in self.columns], len(rows), self.positional)
        if not -self.length <= index < self.length:
            raise IndexError(f"packet {index} of {self.length}")
        return {name: column[index] for name, column in zip(self.names, self.columns)}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        names = self.names
        if len(names) == 1:
            (name,) = names
            return ({name: value} for value in self.columns[0])
        return (dict(zip(names, row)) for row in self.arguments())

    def arguments(self) -> Iterator[tuple[Any, ...]]:
        """Each call's argument values, in :attr:`names` order."""
        return zip(*self.columns) if self.columns else itertools.repeat((), self.length)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(other) == self.length and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PacketArgs({list(self.names)}, {self.length} packets)"

    def __reduce__(self) -> tuple[Any, ...]:
        return (PacketArgs, (self.names, self.columns, self.length, self.positional))
