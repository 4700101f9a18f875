"""Files as values: the content digest that identifies a ``pathlib.Path`` value.

A file's digest is the SHA-256 of its bytes. A directory's is the SHA-256 of
``orcapod-tree-v1`` followed by, for every entry below it in sorted relative-path order
(``/``-separated, symlinks followed), ``d`` + 8-byte LE length + relative path for a
directory, ``f`` + length + relative path + the file's 32-byte digest for a file — so
renaming, adding or removing anything inside changes it, and where the tree lives does not.

Digests are cached by ``(absolute path, size, mtime_ns)``: an unchanged file is not read
again in this process, and with :func:`use_digest_store` (a pipeline run attaches its
database) not in the next process either.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"; _ = p.write_text("hi")
>>> content_digest(p) == hashlib.sha256(b"hi").digest()
True
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import threading
from collections.abc import Iterable
from typing import Any, Protocol

from orcapod_core.errors import MissingFileError

__all__ = ["content_digest", "DigestStore", "use_digest_store", "save_digests", "digest_cache_info"]

_TREE_PREFIX = b"orcapod-tree-v1"
StatKey = tuple[str, int, int]  # (absolute path, size, mtime_ns)


class DigestStore(Protocol):
    """Where digests persist between processes (a pipeline database: see
    :class:`orcapod_core.databases.file_store.DatabaseDigestStore`)."""

    def load(self) -> Iterable[tuple[str, int, int, bytes]]: ...

    def save(self, rows: list[tuple[str, int, int, bytes]]) -> None: ...


class _Cache:
    def __init__(self) -> None:
        self.digests: dict[StatKey, bytes] = {}
        self.new: list[tuple[str, int, int, bytes]] = []
        self.stores: dict[Any, DigestStore] = {}  # attached stores, by identity key
        self.unloaded: list[DigestStore] = []  # attached, read on the first digest not known
        self.reads = 0  # files read (hashed from their bytes): what the cache saves
        self.lock = threading.Lock()


_CACHE = _Cache()


def use_digest_store(key: Any, store: DigestStore) -> None:
    """Attach ``store`` (once per ``key``): its digests are loaded into this process's cache when
    a digest is first not known (a pipeline without files never reads it), and digests computed
    from now on are saved by :func:`save_digests` to the store of the run that needed them."""
    with _CACHE.lock:
        if key in _CACHE.stores:
            return
        _CACHE.stores[key] = store
        _CACHE.unloaded.append(store)


def _load_attached() -> bool:
    with _CACHE.lock:
        pending, _CACHE.unloaded = _CACHE.unloaded, []
    for store in pending:
        rows = list(store.load())
        with _CACHE.lock:
            for path, size, mtime_ns, digest in rows:
                _CACHE.digests.setdefault((path, size, mtime_ns), digest)
    return bool(pending)


def save_digests(key: Any) -> None:
    """Write the digests computed since the last save to the store attached as ``key`` (the
    store of the run that needed them; ``None``: nowhere, they stay in this process)."""
    with _CACHE.lock:
        store = _CACHE.stores.get(key)
        if store is None:
            return
        new, _CACHE.new = _CACHE.new, []
    if new:
        store.save(new)


def digest_cache_info() -> dict[str, int]:
    """``{"cached": digests known, "reads": files read so far, "unsaved": digests not saved yet}``."""
    return {"cached": len(_CACHE.digests), "reads": _CACHE.reads, "unsaved": len(_CACHE.new)}


def content_digest(path: os.PathLike[str] | str) -> bytes:
    """The 32-byte content digest of a file or directory (see the module docstring).

    Raises :class:`~orcapod_core.errors.MissingFileError` naming the path when it does not exist
    or cannot be read."""
    text = os.fspath(path)
    absolute = text if os.path.isabs(text) else os.path.abspath(text)
    try:
        st = os.stat(absolute)
    except OSError as exc:
        raise MissingFileError(f"file {text!r} does not exist or cannot be read ({exc.strerror})", path=text) from None
    if stat.S_ISDIR(st.st_mode):
        return _tree_digest(absolute)
    return _file_digest(absolute, st)


def _file_digest(absolute: str, st: os.stat_result) -> bytes:
    key = (absolute, st.st_size, st.st_mtime_ns)
    found = _CACHE.digests.get(key)
    if found is None and _CACHE.unloaded and _load_attached():
        found = _CACHE.digests.get(key)
    if found is not None:
        return found
    try:
        with open(absolute, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").digest()
    except OSError as exc:
        raise MissingFileError(f"file {absolute!r} cannot be read ({exc.strerror})", path=absolute) from None
    with _CACHE.lock:
        _CACHE.reads += 1
        _CACHE.digests[key] = digest
        _CACHE.new.append((*key, digest))
    return digest


def _tree_digest(root: str) -> bytes:
    entries: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        rel = os.path.relpath(dirpath, root)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        entries += [(prefix + d, "d") for d in dirnames]
        entries += [(prefix + f, "f") for f in filenames]
    h = hashlib.sha256(_TREE_PREFIX)
    for rel, kind in sorted(entries):
        name = rel.encode("utf-8")
        h.update(kind.encode() + struct.pack("<Q", len(name)) + name)
        if kind == "f":
            absolute = os.path.join(root, *rel.split("/"))
            try:
                st = os.stat(absolute)
            except OSError as exc:
                raise MissingFileError(f"file {absolute!r} cannot be read ({exc.strerror})", path=absolute) from None
            h.update(_file_digest(absolute, st))
    return h.digest()
