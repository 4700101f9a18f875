"""Files a function returns, kept in the result store: content-addressed, deduplicated, on a
local directory or an object store (through deltalake's storage handler, with the database's
``storage_options``).

A returned ``pathlib.Path`` (a file or a directory) is copied to
``<store>/_orcapod_files/<hex[:2]>/<hex>/<name>`` — ``hex`` its content digest
(:func:`orcapod_core.files.content_digest`), ``name`` its own file name, so readers that care
about extensions still see ``report.csv`` — and the stored result holds the reference
``orcapod-files:<hex[:2]>/<hex>/<name>``. Reads turn references back into paths that exist on
this machine: inside the store for a local one; for an object store, a copy fetched on first use
into ``$ORCAPOD_FILE_CACHE`` (default ``~/.cache/orcapod/files``).

>>> store = FileStore("/tmp/store/_orcapod_files")            # doctest: +SKIP
>>> ref = store.put("/tmp/work/report.csv")                   # doctest: +SKIP
>>> store.local_path(ref)                                     # doctest: +SKIP
'/tmp/store/_orcapod_files/3f/3f9a.../report.csv'
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from orcapod_core.errors import MissingFileError, StoreAccessError
from orcapod_core.files import content_digest, use_digest_store
from orcapod_core.value_types import has_paths

__all__ = ["FILE_AREA", "REF_PREFIX", "FileStore", "has_paths", "DIGEST_RECORDS", "DatabaseDigestStore", "attach_digest_store"]

#: The folder of a store that holds returned files (never a table: see validate_record_path).
FILE_AREA = "_orcapod_files"
#: How a stored result refers to a file in the store.
REF_PREFIX = "orcapod-files:"


class FileStore:
    """The content-addressed file area of one store (``root``: a local directory or a URI)."""

    def __init__(self, root: str, storage_options: dict[str, str] | None = None):
        self.root = root
        self.storage_options = storage_options
        self._local = None if "://" in root and not root.startswith("file://") else os.path.abspath(root.removeprefix("file://"))
        self._fs: pafs.FileSystem | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FileStore({self.root!r})"

    # -- references ------------------------------------------------------------------------
    def put(self, path: str) -> str:
        """Copy the file or directory at ``path`` into the store (once per content and name) and
        return its reference. A reference, or a path that is already one of this store's files
        (as :meth:`local_path` gives), is returned as its reference without copying."""
        if path.startswith(REF_PREFIX):
            return path
        known = self._ref_of_local(path)
        if known is not None:
            return known
        try:
            digest = content_digest(path).hex()
        except MissingFileError as exc:
            raise MissingFileError(f"the returned file {path!r} does not exist: {exc}", path=path) from None
        name = os.path.basename(os.path.normpath(path)) or "file"
        key = f"{digest[:2]}/{digest}/{name}"
        self._copy_in(os.path.abspath(path), key)
        return REF_PREFIX + key

    def local_path(self, ref: str) -> str:
        """A path on this machine holding the referenced file (fetched from an object store on
        first use). A value that is no reference is returned as it is."""
        if not ref.startswith(REF_PREFIX):
            return ref
        key = ref[len(REF_PREFIX) :]
        if self._local is not None:
            return os.path.join(self._local, *key.split("/"))
        target = os.path.join(self._cache_dir(), *key.split("/"))
        if not os.path.exists(target):
            self._fetch(key, target)
        return target

    def _ref_of_local(self, path: str) -> str | None:
        absolute = os.path.abspath(path)
        for base in (self._local, None if self._local is not None else self._cache_dir()):
            if base is not None and absolute.startswith(base + os.sep):
                parts = os.path.relpath(absolute, base).split(os.sep)
                if len(parts) == 3 and os.path.exists(absolute):
                    return REF_PREFIX + "/".join(parts)
        return None

    # -- tables ------------------------------------------------------------------------------
    def to_refs(self, table: pa.Table) -> pa.Table:
        """``table`` with every ``Path`` value replaced by its store reference (copying files in)."""
        return _map_path_columns(table, self.put)

    def to_local(self, table: pa.Table) -> pa.Table:
        """``table`` with every store reference replaced by a local path."""
        return _map_path_columns(table, self.local_path)

    # -- storage -------------------------------------------------------------------------------
    def _remote(self) -> pafs.FileSystem:
        """The object store (through deltalake's storage handler: the database's storage options)."""
        with self._lock:
            if self._fs is None:
                from deltalake.fs import DeltaStorageHandler

                self._fs = pafs.PyFileSystem(DeltaStorageHandler(self.root, self.storage_options))
            return self._fs

    def _copy_in(self, source: str, key: str) -> None:
        if self._local is not None:
            target = os.path.join(self._local, *key.split("/"))
            if not os.path.exists(target):
                _place(target, functools.partial(_copy_local, source))
            return
        fs = self._remote()
        try:
            if fs.get_file_info(key).type != pafs.FileType.NotFound:
                return
            # A file or a whole tree; objects appear whole (an object-store put is atomic).
            pafs.copy_files(source, key, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs, use_threads=False)
        except OSError as exc:
            raise StoreAccessError(f"cannot copy {source!r} into the file store {self.root!r}: {exc}") from exc

    def _cache_dir(self) -> str:
        base = os.environ.get("ORCAPOD_FILE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "orcapod", "files")
        return os.path.join(base, hashlib.sha256(self.root.encode()).hexdigest()[:16])

    def _fetch(self, key: str, target: str) -> None:
        fs = self._remote()
        try:
            if fs.get_file_info(key).type == pafs.FileType.NotFound:
                raise MissingFileError(f"the stored file {REF_PREFIX + key!r} is not in {self.root!r}", path=REF_PREFIX + key)
            _place(target, functools.partial(pafs.copy_files, key, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem(), use_threads=False))
        except MissingFileError:
            raise
        except OSError as exc:
            raise StoreAccessError(f"cannot fetch {REF_PREFIX + key!r} from the file store {self.root!r}: {exc}") from exc


def _copy_local(source: str, target: str) -> None:
    if os.path.isdir(source):
        shutil.copytree(source, target, symlinks=False)
    else:
        shutil.copyfile(source, target)


def _place(target: str, write: Callable[[str], object]) -> None:
    """``write(path)`` into a folder next to ``target``, then rename it there: a reader never sees
    half a file or tree, and a concurrent writer of the same content is no error."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".incoming-", dir=os.path.dirname(target))
    try:
        staged = os.path.join(tmp, os.path.basename(target))
        write(staged)
        try:
            os.rename(staged, target)
        except OSError:
            if not os.path.exists(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _map_path_columns(table: pa.Table, fn: Callable[[str], str]) -> pa.Table:
    for i, f in enumerate(table.schema):
        if has_paths(f.type):
            column = table.column(i)
            mapped = [_map_paths(chunk, fn) for chunk in column.chunks] if column.num_chunks else []
            table = table.set_column(i, f, pa.chunked_array(mapped, type=f.type))
    return table


def _map_paths(arr: pa.Array, fn: Callable[[str], str]) -> pa.Array:
    dtype = arr.type
    if pa.types.is_struct(dtype):
        paths = pc.struct_field(arr, "path")  # null where the Path is null (.field would show the slot's filler)
        values = ["" if p is None else fn(p) for p in paths.to_pylist()]  # a null Path keeps its mask
        mask = pc.is_null(arr) if arr.null_count else None
        return pa.StructArray.from_arrays([pa.array(values, pa.large_string())], fields=list(dtype), mask=mask)
    if pa.types.is_large_list(dtype) or pa.types.is_list(dtype):
        offsets = arr.offsets
        start, end = offsets[0].as_py(), offsets[-1].as_py()
        items = _map_paths(arr.values.slice(start, end - start), fn)
        if start:
            offsets = pc.subtract(offsets, pa.scalar(start, offsets.type))
        cls = pa.LargeListArray if pa.types.is_large_list(dtype) else pa.ListArray
        return cls.from_arrays(offsets, items, type=dtype, mask=pc.is_null(arr) if arr.null_count else None)
    if pa.types.is_map(dtype):
        items = _map_paths(arr.items, fn)
        return pa.MapArray.from_arrays(arr.offsets, arr.keys, items, type=dtype)
    return arr


#: Where a database keeps the content digests of input files (see :mod:`orcapod_core.files`).
DIGEST_RECORDS = ("_orcapod", "file_digests")


class DatabaseDigestStore:
    """File content digests kept in a database: one record per (path, size, mtime_ns), so the
    next process (another run, a Dagster step) does not read unchanged files again."""

    def __init__(self, database: Any):
        self.database = database

    def load(self) -> list[tuple[str, int, int, bytes]]:
        table = self.database.get_all_records(DIGEST_RECORDS, columns=["path", "size", "mtime_ns", "digest"])
        if table is None or table.num_rows == 0:
            return []
        digests = [bytes.fromhex(h) for h in table.column("digest").to_pylist()]
        return list(zip(table.column("path").to_pylist(), table.column("size").to_pylist(), table.column("mtime_ns").to_pylist(), digests))

    def save(self, rows: list[tuple[str, int, int, bytes]]) -> None:
        paths, sizes, mtimes, digests = zip(*rows)
        ids = [hashlib.sha256(f"{p}\0{s}\0{m}".encode()).hexdigest() for p, s, m in zip(paths, sizes, mtimes)]
        table = pa.table(
            {
                "__record_id": pa.array(ids, pa.large_string()),
                "path": pa.array(paths, pa.large_string()),
                "size": pa.array(sizes, pa.int64()),
                "mtime_ns": pa.array(mtimes, pa.int64()),
                "digest": pa.array([d.hex() for d in digests], pa.large_string()),
            }
        )
        self.database.add_records(DIGEST_RECORDS, table, flush=True, digest_columns=("digest",))


def attach_digest_store(database: Any) -> Any:
    """Let this process's file digest cache load from and save to ``database`` (once per store);
    returns the key to :func:`~orcapod_core.files.save_digests` to. A store that does not outlive
    the process (in memory) is not attached: the process's own cache is all it would hold."""
    uri = getattr(database, "base_uri", None)
    if uri is None:
        return None
    key = (type(database).__name__, uri)
    use_digest_store(key, DatabaseDigestStore(database))
    return key
