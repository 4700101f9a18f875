"""Saving a pipeline as JSON and loading it back (orcapod PR #87).

``pipeline.save(path)`` writes one JSON document (``format: "orcapod-pipeline"``,
``format_version: 1``)::

    {"format": "orcapod-pipeline", "format_version": 1, "name": ["demo"],
     "pipeline_database": {"type": "delta", "base_uri": ".orcapod", ...},
     "result_database": null,                      # null: the pipeline database
     "nodes": [{"label": "scores", "kind": "function", "upstream": ["subjects"],
                "content_hash": "orcapod_v1:…", "pipeline_hash": "orcapod_v1:…",
                "record_path": ["demo", "scores", "…"],
                "output_schema": {"tag_columns": [...], "columns": {"score": "double"}, ...},
                "function": {"module": "pkg.mod", "callable": "score", "version": "v1", ...}},
               ...],
     "edges": [["subjects", "scores"], ...]}

Nothing is pickled: functions are saved by module path and qualified name with the identity
that their results are stored under; operators by class path and their JSON config; CSV
and Delta sources by their config; derived sources by the saved description of the pipeline
they come from. Sources that cannot be rebuilt from config (in-memory data) have their rows
written to the pipeline database at save time; on load they are ``UNAVAILABLE`` and serve
those rows, so every node below them still serves its stored results (``CACHE_ONLY``).

Local paths (databases, CSV/Delta sources) inside the JSON file's folder are saved relative
to it (``relative_to_file: true``), so a project folder can be moved or copied to another
machine with its store; paths outside it are saved absolute. On load, a relative path that
climbs out of the file's folder (``../elsewhere``) is refused.

Trust: loading imports the modules the file names (their top-level code runs). By default
a function must be an orcapod function pod (decorated with ``@function_pod``) and an operator
an :class:`~orcapod_core.operators.Operator` subclass; ``allowed_modules=[...]`` (module-name
prefixes, :mod:`orcapod_core.module_policy`) never imports a module outside the list and
accepts any typed function inside it. orcapod_core's own operators are always allowed.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from orcapod_core.databases import RECORD_ID_COLUMN, ArrowDatabase, database_from_config
from orcapod_core.errors import OrcapodError, PipelineLoadError, SourceUnavailableError
from orcapod_core.function_pods import FunctionPod
from orcapod_core.hashing import ContentHash, digests_to_hex, hash_rows
from orcapod_core.module_policy import allowed_module_prefixes, module_allowed
from orcapod_core.operators import Operator
from orcapod_core.packet_function_proxy import resolve_packet_function_from_config
from orcapod_core.pipeline.derived import DerivedSource
from orcapod_core.pipeline.function_node import FunctionNode
from orcapod_core.pipeline.nodes import NODE_CONTENT_COLUMN, CacheMode, Node, OperatorNode, SourceNode
from orcapod_core.sources import CSVSource, DeltaTableSource, Source, file_source_from_config
from orcapod_core.streams import Stream, StreamLayout, conform
from orcapod_core.types import arrow_schema_from_json, arrow_schema_to_json

# The Pipeline class is passed in (``pipeline_class``), so this module never imports the
# graph that uses it: ``Pipeline.save`` / ``Pipeline.load`` call into here.
Pipeline = Any

__all__ = ["FORMAT", "FORMAT_VERSION", "StoredSource", "describe_pipeline", "save_pipeline", "load_pipeline"]

FORMAT = "orcapod-pipeline"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------
# The stand-in for sources that cannot be rebuilt
# --------------------------------------------------------------------------------------


class StoredSource(Source):
    """A source of a loaded pipeline that could not be rebuilt from config: the rows stored
    for it at save time, with its saved identity (hashes, system tags and source info)."""

    rebuilt = False

    def __init__(
        self,
        label: str,
        layout: StreamLayout,
        content_hash: ContentHash,
        pipeline_hash: ContentHash,
        database: ArrowDatabase,
        record_path: tuple[str, ...],
        *,
        saved_info: dict[str, Any],
        reason: str,
    ):
        self.label = label
        self._layout = layout
        self._hashes = (content_hash, pipeline_hash)
        self.database = database
        self.record_path = record_path
        #: The node's saved ``source`` entry (written again as it is when this pipeline is saved).
        self.saved_info = dict(saved_info)
        self.stored_rows: int | None = saved_info.get("stored_rows")
        self.origin = str(saved_info.get("origin", saved_info.get("class", "source")))
        self.reason = reason
        self.source_id = f"stored:{content_hash.to_hex(16)}"

    def _predict_layout(self) -> StreamLayout:
        return self._layout

    def _identity_hashes(self) -> tuple[ContentHash, ContentHash]:
        return self._hashes

    def _compute_table(self) -> pa.Table:
        if self.stored_rows == 0:
            return self._layout.schema.empty_table()
        stored = None
        if self.database.has_table(self.record_path):
            stored = self.database.get_records_where(self.record_path, {NODE_CONTENT_COLUMN: self._hashes[0].to_string()})
        if stored is None or stored.num_rows == 0:
            raise SourceUnavailableError(
                f"source {self.label!r} ({self.origin}) cannot be rebuilt ({self.reason}) and none of its rows are stored "
                f"at {'/'.join(self.record_path)} in {self.database!r}"
            )
        return conform(stored.select(self._layout.schema.names), self._layout)

    def __repr__(self) -> str:
        return f"StoredSource({self.label!r}, of {self.origin})"


def _store_source_rows(node: SourceNode) -> int:
    """Write the node's current rows (system tags and source info included) to its record
    path, tagged with its content hash; returns the row count. Idempotent (record id = row hash)."""
    table = node.stream._table()
    if table.num_rows:
        content = pa.repeat(pa.scalar(node.content_hash().to_string(), pa.large_string()), table.num_rows)
        rows = table.append_column(pa.field(NODE_CONTENT_COLUMN, pa.large_string(), False), content)
        ids = digests_to_hex(hash_rows(rows))
        node.database.add_records(
            node.record_path, rows.append_column(pa.field(RECORD_ID_COLUMN, pa.large_string(), False), ids), digest_columns=(RECORD_ID_COLUMN,)
        )
        node.database.flush_path(node.record_path)
    return table.num_rows


# --------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------


def _class_path(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def _climbs_out(relative: str) -> bool:
    """True when a relative path leaves its base folder (``..``, ``a/../..``)."""
    return Path(os.path.normpath(relative)).parts[:1] == ("..",)


def _saved_path(path: str, base_dir: Path) -> tuple[str, bool]:
    """How a local path is written: ``(path relative to base_dir, True)`` when it lies inside
    ``base_dir`` (as given or with symlinks resolved), else ``(absolute path, False)``."""
    for candidate in (os.path.abspath(path), os.path.realpath(path)):
        try:
            relative = os.path.relpath(candidate, base_dir)
        except ValueError:  # another drive (Windows)
            continue
        if not _climbs_out(relative):
            return relative, True
    return os.path.abspath(path), False


def _with_saved_path(config: dict[str, Any], key: str, base_dir: Path) -> dict[str, Any]:
    config[key], relative = _saved_path(config[key], base_dir)
    if relative:
        config["relative_to_file"] = True
    else:
        config.pop("relative_to_file", None)
    return config


def _database_config(db: ArrowDatabase, base_dir: Path) -> dict[str, Any]:
    config = dict(db.to_config())
    if config.get("type") == "delta" and "://" not in str(config.get("base_uri", "")):
        _with_saved_path(config, "base_uri", base_dir)
    return config


def _source_description(node: SourceNode, base_dir: Path) -> dict[str, Any]:
    stream = node.stream
    info: dict[str, Any] = {"class": _class_path(stream)}
    if isinstance(stream, DerivedSource) and getattr(stream.node, "pipeline", None) is not None:
        upstream = stream.node
        info["derived"] = {"node": upstream.label, "pipeline": describe_pipeline(upstream.pipeline, base_dir)}
        return info
    config = stream.to_config() if isinstance(stream, (CSVSource, DeltaTableSource)) else None
    if config is not None:
        if "://" not in config["path"]:
            _with_saved_path(config, "path", base_dir)
        info["config"] = config
        return info
    if isinstance(stream, StoredSource):  # saving a loaded pipeline again: as it was saved
        return dict(stream.saved_info)
    info.update(stored_rows=_store_source_rows(node), origin=type(stream).__name__)
    return info


def describe_pipeline(pipeline: Pipeline, base_dir: str | os.PathLike[str] = ".") -> dict[str, Any]:
    """The JSON-able description that :func:`save_pipeline` writes (paths relative to ``base_dir``)."""
    base = Path(base_dir).resolve()
    nodes = []
    for node in pipeline.nodes.values():
        entry: dict[str, Any] = {
            "label": node.label,
            "kind": node.kind,
            "upstream": [u.label for u in node.upstream_nodes],
            "content_hash": node.content_hash().to_string(),
            "pipeline_hash": node.pipeline_hash().to_string(),
            "record_path": list(node.record_path),
            "load_status": node.load_status.value,
            "output_schema": {"tag_columns": list(node.layout.tag_columns), **arrow_schema_to_json(node.layout.schema)},
        }
        if isinstance(node, SourceNode):
            entry["source"] = _source_description(node, base)
        elif isinstance(node, FunctionNode):
            entry["function"] = node.packet_function.to_config()
            if node.pod.passthrough:  # (only when set: plain nodes are saved as before)
                entry["passthrough"] = True
        elif isinstance(node, OperatorNode):
            entry["operator"] = {"class": _class_path(node.operator), "config": node.operator.config(), "cache_mode": node.cache_mode.value}
        nodes.append(entry)
    same = pipeline.result_database is pipeline.pipeline_database
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": list(pipeline.name),
        "operator_cache_mode": pipeline.operator_cache_mode.value,
        "pipeline_database": _database_config(pipeline.pipeline_database, base),
        "result_database": None if same else _database_config(pipeline.result_database, base),
        "nodes": nodes,
        "edges": [[u, n["label"]] for n in nodes for u in n["upstream"]],
    }


def save_pipeline(pipeline: Pipeline, path: str | os.PathLike[str]) -> Path:
    """Write ``pipeline``'s description to ``path`` atomically; returns the path."""
    target = Path(path)
    if target.suffix == "":
        target = target.with_suffix(".json")
    target.parent.mkdir(parents=True, exist_ok=True)
    description = describe_pipeline(pipeline, target.parent)
    description["saved_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    pipeline.flush()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(description, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    return target


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


class _Reader:
    """Field access with errors that name the file, the node and the field."""

    def __init__(self, file: str):
        self.file = file

    def error(self, what: str) -> PipelineLoadError:
        return PipelineLoadError(f"{self.file}: {what}")

    def get(self, obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
        if not isinstance(obj, Mapping) or key not in obj:
            raise self.error(f"{where} lacks the field {key!r}")
        value = obj[key]
        if not isinstance(value, kind):
            names = " or ".join(t.__name__ for t in (kind if isinstance(kind, tuple) else (kind,)))
            raise self.error(f"field {key!r} of {where} must be {names}, got {type(value).__name__}")
        return value


def _read_description(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise PipelineLoadError(f"{path}: no such pipeline file") from None
    except OSError as exc:
        raise PipelineLoadError(f"{path}: cannot read the pipeline file: {exc}") from exc
    try:
        description = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PipelineLoadError(f"{path}: not a valid pipeline file (invalid JSON at line {exc.lineno}: {exc.msg})") from exc
    return _check_header(description, str(path))


def _check_header(description: Any, file: str) -> dict[str, Any]:
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise PipelineLoadError(f"{file}: not an orcapod pipeline description (field 'format' is not {FORMAT!r})")
    version = description.get("format_version")
    if version != FORMAT_VERSION:
        raise PipelineLoadError(
            f"{file}: field 'format_version' is {version!r}; this orcapod reads version {FORMAT_VERSION}"
            + (" (the file was written by a newer orcapod)" if isinstance(version, int) and version > FORMAT_VERSION else "")
        )
    return description


@dataclass(frozen=True)
class _LoadOptions:
    """What every part of one load shares (a derived source's saved pipeline included)."""

    base_dir: Path  # the JSON file's folder: relative paths are relative to it
    storage_options: dict[str, str] | None
    allowed_modules: tuple[str, ...] | None  # None: any module, but functions must be pods
    pipeline_class: type  # the Pipeline class (passed in: this module does not import the graph)


def _local_path(path: str, relative_to_file: bool, options: _LoadOptions, reader: _Reader, what: str) -> str:
    """A saved path ready to open. A relative path that climbs out of the file's folder is
    refused: a shared project folder must not reach files beside it unless it says so with an
    absolute path."""
    if "://" in path or os.path.isabs(path):
        return path
    if _climbs_out(path):
        raise reader.error(
            f"{what} is {path!r}, a relative path that climbs out of the pipeline file's folder ({options.base_dir}); "
            "a path outside that folder must be absolute: write it so if that location is intended"
        )
    return str((options.base_dir / path).resolve()) if relative_to_file else path


def _open_database(config: Any, options: _LoadOptions, field: str, reader: _Reader) -> ArrowDatabase:
    if not isinstance(config, Mapping):
        raise reader.error(f"field {field!r} must be a database config object")
    if config.get("type") == "memory":
        raise reader.error(
            f"field {field!r}: the pipeline was saved with an in-memory database, whose data is gone; "
            f"pass {field}= to Pipeline.load"
        )
    config = dict(config)
    if config.get("type") == "delta":
        uri = reader.get(config, "base_uri", str, f"field {field!r}")
        relative = bool(config.pop("relative_to_file", False))
        config["base_uri"] = uri = _local_path(uri, relative, options, reader, f"field {field!r}: the database path")
        if "://" not in uri and not Path(uri).is_dir():
            raise reader.error(f"field {field!r}: the database path {uri!r} does not exist")
    try:
        return database_from_config(config, options.storage_options)
    except OrcapodError as exc:
        raise reader.error(f"field {field!r}: {exc}") from exc


#: Modules whose operators every policy accepts: orcapod_core's own.
_BUILT_IN_MODULES = ("orcapod_core",)


def _import_operator(path: str, reader: _Reader, where: str, allowed: tuple[str, ...] | None) -> type[Operator]:
    """The operator class at ``module:qualname``; with ``allowed``, a module outside it (and
    outside orcapod_core) is refused before it is imported."""
    module, _, qualname = path.partition(":")
    if allowed is not None and not module_allowed(module, _BUILT_IN_MODULES + allowed):
        raise reader.error(
            f"{where}: operator {path!r}: module {module!r} is not in allowed_modules {list(allowed)} "
            "(orcapod_core's own operators are always allowed), so it was not imported"
        )
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except Exception as exc:
        raise reader.error(f"{where}: cannot import {path!r} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, type):
        raise reader.error(f"{where}: {path!r} is not a class")
    if not issubclass(obj, Operator):
        raise reader.error(f"{where}: {path!r} is not an Operator")
    if allowed is not None and not module_allowed(obj.__module__, _BUILT_IN_MODULES + allowed):
        raise reader.error(
            f"{where}: operator {path!r} is defined in module {obj.__module__!r}, which is not in allowed_modules {list(allowed)}"
        )
    return obj


def load_pipeline(
    path: str | os.PathLike[str],
    pipeline_database: ArrowDatabase | None = None,
    result_database: ArrowDatabase | None = None,
    *,
    storage_options: dict[str, str] | None = None,
    allowed_modules: Sequence[str] | None = None,
    pipeline_class: type,
) -> Pipeline:
    """Rebuild a pipeline (an instance of ``pipeline_class``, the ``Pipeline`` class) from
    :func:`save_pipeline` output (see :meth:`Pipeline.load`, which documents ``allowed_modules``).

    Nothing is written to any database while loading.

    >>> p = load_pipeline("pipeline.json", allowed_modules=["my_lab"], pipeline_class=Pipeline)   # doctest: +SKIP
    """
    file = Path(path)
    options = _LoadOptions(file.parent.resolve(), storage_options, allowed_module_prefixes(allowed_modules), pipeline_class)
    description = _read_description(file)
    reader = _Reader(str(file))
    _check_paths(description, options, reader)  # before any module is imported
    return _build(description, options, reader, pipeline_database, result_database)


def _check_paths(description: Mapping[str, Any], options: _LoadOptions, reader: _Reader, where: str = "") -> None:
    """Refuse every data path that climbs out of the file's folder (see :func:`_local_path`) —
    of the databases, the file sources and the pipelines derived sources come from — before
    loading anything."""
    for field in ("pipeline_database", "result_database"):
        config = description.get(field)
        if isinstance(config, Mapping) and isinstance(config.get("base_uri"), str):
            _local_path(config["base_uri"], False, options, reader, f"{where}field {field!r}: the database path")
    for entry in description.get("nodes") or ():
        info = entry.get("source") if isinstance(entry, Mapping) else None
        if not isinstance(info, Mapping):
            continue
        node = f"{where}node {entry.get('label')!r}: "
        config = info.get("config")
        if isinstance(config, Mapping) and isinstance(config.get("path"), str):
            _local_path(config["path"], False, options, reader, f"{node}field 'source.config.path'")
        derived = info.get("derived")
        if isinstance(derived, Mapping) and isinstance(derived.get("pipeline"), Mapping):
            _check_paths(derived["pipeline"], options, reader, f"{node}its upstream pipeline: ")


def _build(
    description: dict[str, Any],
    options: _LoadOptions,
    reader: _Reader,
    pipeline_database: ArrowDatabase | None,
    result_database: ArrowDatabase | None,
) -> Pipeline:
    name = reader.get(description, "name", list, "the pipeline")
    if pipeline_database is None:
        pipeline_database = _open_database(description.get("pipeline_database"), options, "pipeline_database", reader)
    if result_database is None and description.get("result_database") is not None:
        result_database = _open_database(description["result_database"], options, "result_database", reader)
    try:
        cache_mode = CacheMode(description.get("operator_cache_mode", "off"))
    except ValueError:
        raise reader.error(f"field 'operator_cache_mode' is {description.get('operator_cache_mode')!r}") from None
    pipeline = options.pipeline_class(name, pipeline_database, result_database, operator_cache_mode=cache_mode)
    nodes: dict[str, Node] = {}
    for i, entry in enumerate(reader.get(description, "nodes", list, "the pipeline")):
        label = reader.get(entry, "label", str, f"node #{i}")
        where = f"node {label!r}"
        kind = reader.get(entry, "kind", str, where)
        upstream_labels = reader.get(entry, "upstream", list, where)
        unknown = [u for u in upstream_labels if u not in nodes]
        if unknown:
            raise reader.error(f"{where}: upstream node(s) {unknown} are not defined before it")
        upstream = [nodes[u] for u in upstream_labels]
        try:
            node = _build_node(entry, kind, label, where, upstream, pipeline, description, options, reader)
        except PipelineLoadError as exc:
            if str(exc).startswith(reader.file):
                raise
            raise reader.error(f"{where}: {exc}") from exc
        except OrcapodError as exc:
            raise reader.error(f"{where}: {exc}") from exc
        node.saved_description = entry  # type: ignore[attr-defined]
        nodes[label] = node
    pipeline._nodes = nodes
    return pipeline


def _build_node(
    entry: dict[str, Any],
    kind: str,
    label: str,
    where: str,
    upstream: list[Node],
    pipeline: Pipeline,
    description: dict[str, Any],
    options: _LoadOptions,
    reader: _Reader,
) -> Node:
    if kind == "source":
        return pipeline._source_node(_load_source(entry, where, options, reader, pipeline, description), label)
    if kind == "function":
        config = reader.get(entry, "function", dict, where)
        allowed = options.allowed_modules  # no list: any module, but only decorated pods
        pf = resolve_packet_function_from_config(
            config, fallback_to_proxy=True, allowed_modules=allowed, require_pod=allowed is None
        )
        passthrough = entry.get("passthrough", False)
        if not isinstance(passthrough, bool):
            raise reader.error(f"{where}: field 'passthrough' is {passthrough!r}, not true or false")
        return pipeline._function_node(FunctionPod(pf, passthrough=passthrough), upstream, label)
    if kind == "operator":
        op_entry = reader.get(entry, "operator", dict, where)
        cls = _import_operator(reader.get(op_entry, "class", str, f"{where} operator"), reader, where, options.allowed_modules)
        operator = cls.from_config(reader.get(op_entry, "config", dict, f"{where} operator"))
        return pipeline._operator_node(operator, upstream, label, CacheMode(op_entry.get("cache_mode", "off")))
    raise reader.error(f"{where}: unknown node kind {kind!r}")


def _load_source(
    entry: dict[str, Any],
    where: str,
    options: _LoadOptions,
    reader: _Reader,
    pipeline: Pipeline,
    outer: dict[str, Any],
) -> Stream:
    info = reader.get(entry, "source", dict, where)
    reason = "it holds in-memory data"
    if "derived" in info:
        return _load_derived_source(entry, info, where, options, reader, pipeline, outer)
    if "config" in info:
        config = dict(reader.get(info, "config", dict, where))
        path = reader.get(config, "path", str, f"{where} source config")
        relative = bool(config.pop("relative_to_file", False))
        config["path"] = _local_path(path, relative, options, reader, f"{where}: field 'source.config.path'")
        try:
            return file_source_from_config(config, options.storage_options)
        except (OrcapodError, OSError) as exc:
            reason = f"rebuilding it failed: {exc}"
    schema = reader.get(entry, "output_schema", dict, where)
    try:
        layout = StreamLayout(arrow_schema_from_json(schema), tuple(reader.get(schema, "tag_columns", list, f"{where} output_schema")))
    except ValueError as exc:
        raise reader.error(f"{where}: field 'output_schema': {exc}") from exc
    hashes = [ContentHash.from_string(reader.get(entry, k, str, where)) for k in ("content_hash", "pipeline_hash")]
    return StoredSource(
        entry["label"],
        layout,
        hashes[0],
        hashes[1],
        pipeline.pipeline_database,
        tuple(reader.get(entry, "record_path", list, where)),
        saved_info=info,
        reason=reason,
    )


def _load_derived_source(
    entry: dict[str, Any],
    info: dict[str, Any],
    where: str,
    options: _LoadOptions,
    reader: _Reader,
    pipeline: Pipeline,
    outer: dict[str, Any],
) -> DerivedSource:
    """A derived source: its saved upstream pipeline is built with the same options (paths,
    trust policy) as the pipeline that reads it."""
    derived = reader.get(info, "derived", dict, where)
    inner_reader = _Reader(f"{reader.file} ({where}: its upstream pipeline)")  # errors say where they are
    inner = _check_header(reader.get(derived, "pipeline", dict, where), inner_reader.file)
    # The upstream pipeline shares the databases it was saved with (as passed to load).
    same_db = inner.get("pipeline_database") == outer.get("pipeline_database")
    same_results = inner.get("result_database") == outer.get("result_database")
    upstream_pipeline = _build(
        inner,
        options,
        inner_reader,
        pipeline.pipeline_database if same_db else None,
        pipeline.result_database if same_db and same_results else None,
    )
    node_label = reader.get(derived, "node", str, where)
    if node_label not in upstream_pipeline.nodes:
        raise reader.error(f"{where}: derived from node {node_label!r}, which its saved pipeline does not have")
    return DerivedSource(upstream_pipeline.nodes[node_label], label=entry["label"])
