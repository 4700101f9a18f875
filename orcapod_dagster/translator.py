"""OrcapodTranslator: every decision about how a compiled orcapod node becomes a Dagster asset.

Like dagster-dbt's ``DagsterDbtTranslator``, one class owns the mapping — key, group,
description, code references, metadata, tags, owners, kinds, code version, automation
condition, partitions, checks, and where a node's packets run (executor, op tags) — and
:meth:`OrcapodTranslator.get_asset_spec` assembles an ``AssetSpec`` from those methods. Deps, column lineage and checks all ask :meth:`~OrcapodTranslator.get_asset_key`, so
keys can never disagree. Customise by overriding one method:

>>> class MyTranslator(OrcapodTranslator):
...     def get_group_name(self, node):
...         return "science"
>>> defs = build_definitions(pipeline, translator=MyTranslator())   # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from orcapod_core.databases import DeltaTableDatabase
from orcapod_core.executors import PythonFunctionExecutor
from orcapod_core.pipeline import Node
from orcapod_core.pipeline import snapshot_path
from orcapod_core.sources import DeltaTableSource
from orcapod_core.types import type_to_string

__all__ = [
    "OrcapodTranslator",
    "OrcapodTranslatorSettings",
    "sanitize_name",
    "partitions_name",
    "node_table_uri",
    "published_asset_key",
]

NO_FAILED_PACKETS = "no_failed_packets"
SCHEMA_MATCHES = "schema_matches"

_INVALID = re.compile(r"[^A-Za-z0-9_]")


def sanitize_name(name: str) -> str:
    """``name`` with every character outside ``[A-Za-z0-9_]`` replaced by ``_``.

    >>> sanitize_name("water-quality.v2")
    'water_quality_v2'
    """
    return _INVALID.sub("_", name) or "_"


def partitions_name(pipeline_name: Sequence[str], column: str) -> str:
    """The name of the dynamic partitions of a pipeline partitioned by tag column ``column``.

    >>> partitions_name(("water_quality",), "station_id")
    'water_quality__station_id'
    """
    return f"{sanitize_name('_'.join(pipeline_name))}__{sanitize_name(column)}"


def node_table_uri(node: Node) -> str | None:
    """Where a node's output lives in a Delta store: a function node's pipeline-record table,
    else its snapshot rows table (``None`` for stores that are not Delta Lake)."""
    database = node.database
    if not isinstance(database, DeltaTableDatabase):
        return None
    path = node.record_path if node.kind == "function" else (*snapshot_path(node), "versions")
    return database.table_uri(tuple(path))


def published_asset_key(node: Node) -> dg.AssetKey | None:
    """The asset key of the table a source node reads when that table lies inside the node's
    own Delta store (e.g. published there by a plain asset through the IO manager)."""
    source = getattr(node, "source", None)
    database = node.database
    if node.kind != "source" or not isinstance(source, DeltaTableSource) or not isinstance(database, DeltaTableDatabase):
        return None
    base, path = database.base_uri, source.path
    if "://" in base or "://" in path:
        prefix = base.rstrip("/") + "/"
        relative = path.rstrip("/")[len(prefix):] if path.startswith(prefix) else None
        parts = relative.split("/") if relative else None
    else:
        relative = os.path.relpath(os.path.abspath(path), os.path.abspath(base))
        parts = None if relative.startswith("..") or os.path.isabs(relative) else relative.split(os.sep)
    return dg.AssetKey(parts) if parts else None


@dataclass(frozen=True)
class OrcapodTranslatorSettings:
    """Switches read by :class:`OrcapodTranslator`.

    ``enable_asset_checks`` adds the ``no_failed_packets`` and ``schema_matches`` checks to
    function nodes; ``blocking_failed_packets`` makes ``no_failed_packets`` a blocking check
    (failed packets then fail the step with ERROR severity and hold back downstream assets).
    ``partition_by`` names a source tag column: the pipeline's assets are then partitioned by
    that column's values (see :meth:`OrcapodTranslator.get_partitions_def`), and
    materializing some partitions runs the pipeline on the source rows of those values only.
    """

    enable_asset_checks: bool = True
    blocking_failed_packets: bool = False
    partition_by: str | None = None


class OrcapodTranslator:
    """Maps compiled pipeline nodes to Dagster asset specs; override any ``get_*`` method.

    >>> translator = OrcapodTranslator()
    >>> spec = translator.get_asset_spec(pipeline.scored)        # doctest: +SKIP
    >>> spec.key.path                                             # doctest: +SKIP
    ['water_quality', 'scored']
    """

    def __init__(self, settings: OrcapodTranslatorSettings | None = None):
        self.settings = settings or OrcapodTranslatorSettings()

    # -- the spec ---------------------------------------------------------------------
    def get_asset_spec(self, node: Node) -> dg.AssetSpec:
        """The full ``AssetSpec`` of ``node``, built from the other ``get_*`` methods."""
        return dg.AssetSpec(
            key=self.get_asset_key(node),
            deps=self.get_deps(node),
            description=self.get_description(node),
            metadata=self.get_metadata(node),
            group_name=self.get_group_name(node),
            code_version=self.get_code_version(node),
            automation_condition=self.get_automation_condition(node),
            owners=self.get_owners(node),
            tags=self.get_tags(node),
            kinds=self.get_kinds(node),
            partitions_def=self.get_partitions_def(node),
        )

    # -- one decision each ----------------------------------------------------------------
    def get_asset_key(self, node: Node) -> dg.AssetKey:
        """``[*pipeline name, label]``, each part sanitised to ``[A-Za-z0-9_]``."""
        return dg.AssetKey([*(sanitize_name(p) for p in node.pipeline_name), sanitize_name(node.label)])

    def get_deps(self, node: Node) -> Sequence[dg.AssetKey]:
        """The keys of the upstream nodes; for a source node over a Delta table that a plain
        Dagster asset published into the store (``OrcapodIOManager.handle_output`` writes
        ``<store>/<key path>``), that asset's key — a Dagster asset → orcapod pipeline edge."""
        deps = [self.get_asset_key(up) for up in node.upstream_nodes]
        published = published_asset_key(node)
        if published is not None:
            deps.append(published)
        return deps

    def get_group_name(self, node: Node) -> str | None:
        """The pipeline name, parts joined by ``_``."""
        return sanitize_name("_".join(node.pipeline_name)) if node.pipeline_name else None

    def get_description(self, node: Node) -> str | None:
        """A function node's docstring; an operator's summary in words (``Join of `a`, `b` on
        tag columns ['id']``); a source's kind, id and file — never a machine-absolute path: a
        file under the working directory (the code location's) is shown relative to it, any
        other by its name (the full path is in the ``orcapod/source_path`` metadata)."""
        ups = [f"`{up.label}`" for up in node.upstream_nodes]
        if node.kind == "function":
            pf = node.packet_function  # type: ignore[attr-defined]
            doc = inspect.getdoc(pf.function) if pf.function is not None else None  # None: code unavailable
            return doc or f"`{pf.function_name}` (version {pf.version}) applied to {', '.join(ups)}."
        if node.kind == "operator":
            return operator_summary(node)
        source = node.source  # type: ignore[attr-defined]
        where = source_location(node)
        source_id = str(getattr(source, "source_id", node.label))
        if where is not None and source_id == str(getattr(source, "path", None)):
            source_id = display_path(source_id)  # the default id of a file source is its path
        text = f"{type(source).__name__} `{source_id}`"
        return f"{text} reading `{display_path(where)}`." if where else f"{text}."

    def get_code_references(self, node: Node) -> dg.CodeReferencesMetadataValue | None:
        """``dagster/code_references``: a function node's function — its file and first line —
        so the asset page links to the code. ``None`` for operators, sources and functions whose
        code is unavailable (a loaded pipeline's proxy, ``python -c``)."""
        if node.kind != "function":
            return None
        function = getattr(node.packet_function, "function", None)  # type: ignore[attr-defined]
        if function is None:
            return None
        try:
            file = inspect.getsourcefile(function)
            line = inspect.getsourcelines(function)[1] if file else None
        except (OSError, TypeError):
            return None
        if not file or not os.path.exists(file):
            return None
        with warnings.catch_warnings():  # Dagster marks code references beta; they are what its UI links
            warnings.simplefilter("ignore", dg.BetaWarning)
            reference = dg.LocalFileCodeReference(file_path=os.path.abspath(file), line_number=line, label=function.__qualname__)
            return dg.CodeReferencesMetadataValue(code_references=[reference])

    def get_metadata(self, node: Node) -> Mapping[str, Any]:
        """Definition metadata: node type, hashes, identity, function and its code references,
        a file source's full path, column schema, table URI and (operators) column lineage."""
        metadata: dict[str, Any] = {
            "orcapod/node_type": node.kind,
            "orcapod/pipeline_hash": node.pipeline_hash().to_string(),
            "orcapod/identity": self.get_code_version(node),
            "dagster/column_schema": column_schema(node),
        }
        if node.kind == "function":
            config = node.packet_function.to_config()  # type: ignore[attr-defined]
            metadata["orcapod/function"] = f"{config['module']}.{config['callable']}"
            executor = self.get_executor(node)
            if executor is not None:
                metadata["orcapod/executor"] = dict(executor.get_executor_data())
        references = self.get_code_references(node)
        if references is not None:
            metadata["dagster/code_references"] = references
        where = source_location(node)
        if where is not None:
            metadata["orcapod/source_path"] = where
        uri = node_table_uri(node)
        if uri is not None:
            metadata["dagster/uri"] = uri
        lineage = self.get_column_lineage(node)
        if lineage is not None:
            metadata["dagster/column_lineage"] = lineage
        return metadata

    def get_column_lineage(self, node: Node) -> dg.TableColumnLineage | None:
        """For operator nodes and passthrough function nodes: each output column's upstream
        columns (renames followed; a passthrough node's kept columns and its tags)."""
        passthrough = node.kind == "function" and getattr(getattr(node, "pod", None), "passthrough", False)
        if node.kind != "operator" and not passthrough:
            return None
        config = node.operator.config() if node.kind == "operator" else {}  # type: ignore[attr-defined]
        renamed = {new: old for old, new in dict(config.get("name_map") or {}).items()}
        deps: dict[str, list[dg.TableColumnDep]] = {}
        tags, packets = node.output_schema()
        for column in [*tags, *packets]:
            origin = renamed.get(column, column)
            found = []
            for up in node.upstream_nodes:
                up_tags, up_packets = up.output_schema()
                if origin in up_tags or origin in up_packets:
                    found.append(dg.TableColumnDep(asset_key=self.get_asset_key(up), column_name=origin))
            if found:
                deps[column] = found
        return dg.TableColumnLineage(deps_by_column=deps) if deps else None

    def get_tags(self, node: Node) -> Mapping[str, str]:
        """Asset tags (none by default)."""
        return {}

    def get_executor(self, node: Node) -> PythonFunctionExecutor | None:
        """Where a function node's packets run when its asset materializes. ``None`` (the
        default) keeps the function's own executor (or the assets' ``function_executor=``).
        Return an executor to fan one heavy asset out while the rest runs locally; results are
        shared whichever executor computed them:

        >>> class HeavyOnRay(OrcapodTranslator):
        ...     def get_executor(self, node):
        ...         return RayExecutor(num_gpus=1) if node.label == "segmented" else None
        """
        return None

    def get_op_tags(self, node: Node) -> Mapping[str, Any]:
        """Op tags of the node's step with ``granularity="node"`` (merged over the assets'
        ``op_tags=``): ``orcapod/executor`` names the executor type when :meth:`get_executor`
        chooses one, so Dagster's tag concurrency limits (or a run launcher) can treat those
        steps apart, e.g. at most two Ray-backed steps at a time."""
        executor = self.get_executor(node) if node.kind == "function" else None
        return {"orcapod/executor": executor.executor_type} if executor is not None else {}

    def get_owners(self, node: Node) -> Sequence[str]:
        """Asset owners (none by default)."""
        return []

    def get_code_version(self, node: Node) -> str:
        """The node's identity: function identity (name, version, schemas, normalized source)
        or operator identity (class + config); a source's content hash (id + schema). It changes
        exactly when orcapod would stop reusing the node's stored results."""
        identity = getattr(node, "identity_hash", None)
        return (identity() if identity is not None else node.content_hash()).to_string()

    def get_kinds(self, node: Node) -> set[str]:
        """``orcapod``, plus ``python`` for function nodes and ``deltalake`` for Delta stores."""
        kinds = {"orcapod"}
        if node.kind == "function":
            kinds.add("python")
        if isinstance(node.database, DeltaTableDatabase):
            kinds.add("deltalake")
        return kinds

    def get_automation_condition(self, node: Node) -> dg.AutomationCondition | None:
        """No automation condition by default (materialize on demand or on a schedule)."""
        return None

    def get_partitions_def(self, node: Node) -> dg.PartitionsDefinition | None:
        """Unpartitioned by default. With ``settings.partition_by``, every node of the pipeline
        shares one ``DynamicPartitionsDefinition`` (named by :func:`partitions_name`) whose keys
        are the values of that source tag column (as strings); register them with
        :func:`~orcapod_dagster.add_partitions` or let
        :func:`~orcapod_dagster.orcapod_source_sensor` add them as they appear."""
        column = self.settings.partition_by
        if column is None:
            return None
        return dg.DynamicPartitionsDefinition(name=partitions_name(node.pipeline_name, column))

    def get_check_specs(self, node: Node) -> Sequence[dg.AssetCheckSpec]:
        """``no_failed_packets`` and ``schema_matches`` for function nodes."""
        if node.kind != "function" or not self.settings.enable_asset_checks:
            return []
        key = self.get_asset_key(node)
        return [
            dg.AssetCheckSpec(
                NO_FAILED_PACKETS,
                asset=key,
                blocking=self.settings.blocking_failed_packets,
                description="Every input packet of this materialization was computed or served from the store.",
            ),
            dg.AssetCheckSpec(
                SCHEMA_MATCHES,
                asset=key,
                description="The stored results have the function's declared output schema.",
            ),
        ]


def column_schema(node: Node) -> dg.TableSchema:
    """The node's visible columns (tags first) as a Dagster ``TableSchema``."""
    tags, packets = node.output_schema()
    columns = []
    for role, schema in (("tag", tags), ("packet", packets)):
        for name, tp in schema.items():
            text = type_to_string(tp)
            columns.append(
                dg.TableColumn(
                    name,
                    type=text,
                    description=f"{role} column",
                    constraints=dg.TableColumnConstraints(nullable=text.endswith("| None")),
                    tags={"orcapod/role": role},
                )
            )
    return dg.TableSchema(columns=columns)


def display_path(path: str) -> str:
    """How a description shows a file: relative to the working directory (where the code
    location runs) when the file is under it, else its name; URIs (``s3://...``) as they are.

    >>> display_path(os.path.join(os.getcwd(), "data", "samples.csv")) == os.path.join("data", "samples.csv")
    True
    >>> display_path("/somewhere/else/samples.csv")
    'samples.csv'
    """
    if "://" in path:
        return path
    absolute = os.path.abspath(os.path.expanduser(path))
    relative = os.path.relpath(absolute, os.getcwd())
    return os.path.basename(absolute) if relative.startswith("..") or os.path.isabs(relative) else relative


def source_location(node: Node) -> str | None:
    """The file or table a source node reads (absolute, or a URI); ``None`` for in-memory sources."""
    if node.kind != "source":
        return None
    path = getattr(node.source, "path", None)  # type: ignore[attr-defined]
    if path is None:
        return None
    path = os.fspath(path)
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def _columns(names: Sequence[str]) -> str:
    return "[" + ", ".join(f"`{n}`" for n in names) + "]"


def _shared_tags(node: Node) -> list[str]:
    ups = node.upstream_nodes
    if not ups:
        return []
    shared = [c for c in ups[0].tag_columns if all(c in up.tag_columns for up in ups[1:])]
    return shared


def operator_summary(node: Node) -> str:
    """An operator node in words, e.g. ``Join of `a`, `b` on tag columns [`id`].`` or
    ``Batches of 3 rows of `x`.`` (what the operator does to which upstream nodes)."""
    operator = node.operator  # type: ignore[attr-defined]
    name = type(operator).__name__
    config = dict(operator.config())
    ups = [f"`{up.label}`" for up in node.upstream_nodes]
    first = ups[0] if ups else "its input"
    if name in ("Join", "MergeJoin"):
        shared = _shared_tags(node)
        on = f"on tag columns {_columns(shared)}" if shared else "(no shared tag columns: every combination of rows)"
        text = f"{'Join' if name == 'Join' else 'Merge join'} of {', '.join(ups)} {on}"
        if name == "MergeJoin" and len(node.upstream_nodes) == 2:
            left, right = (set(up.packet_columns) for up in node.upstream_nodes)
            both = [c for c in node.upstream_nodes[0].packet_columns if c in right and c in left]
            if both:
                text += f"; packet columns in both become sorted lists: {_columns(both)}"
        return text + "."
    if name == "SemiJoin" and len(ups) == 2:
        left, right = node.upstream_nodes
        right_visible = {*right.tag_columns, *right.packet_columns}
        common = [c for c in (*left.tag_columns, *left.packet_columns) if c in right_visible]
        return f"Rows of {ups[0]} whose {_columns(common)} occur in {ups[1]}."
    if name == "Batch":
        size = config.get("batch_size", 0)
        if not size:
            return f"Batch of all rows of {first} in one row (every column becomes a list)."
        partial = ", the last partial batch dropped" if config.get("drop_partial_batch") else ""
        return f"Batches of {size} rows of {first}{partial} (every column becomes a list)."
    if name == "GroupBy":
        return f"Rows of {first} grouped by {_columns(config.get('by', []))}: one row per distinct value, in sorted order (other columns become lists)."
    choices = {
        "SelectTagColumns": "with only the tag columns",
        "SelectPacketColumns": "with only the packet columns",
        "DropTagColumns": "without the tag columns",
        "DropPacketColumns": "without the packet columns",
    }
    if name in choices:
        return f"{first} {choices[name]} {_columns(config.get('columns', []))}."
    if name in ("MapTags", "MapPackets"):
        side = "tag" if name == "MapTags" else "packet"
        renames = ", ".join(f"`{old}` → `{new}`" for old, new in dict(config.get("name_map") or {}).items())
        dropped = f"; other {side} columns dropped" if config.get("drop_unmapped") else ""
        return f"{first} with {side} columns renamed: {renames}{dropped}."
    if name == "PolarsFilter":
        conditions = [f"`{column} == {value!r}`" for column, value in dict(config.get("equals") or {}).items()]
        conditions += [f"`{_short(str(p), 120)}`" for p in getattr(operator, "predicates", ())]
        return f"Rows of {first} where {' and '.join(conditions) or 'every row is kept'}."
    return f"{name} of {', '.join(ups) or 'no input'}."


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
