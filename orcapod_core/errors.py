"""Every exception orcapod raises on bad input or unusable state.

All derive from :class:`OrcapodError`; the input-validation family also derives
from :class:`ValueError` so generic handlers keep working. Messages always name
the offending column, label, node, path or function.
"""

from __future__ import annotations


class OrcapodError(Exception):
    """Base class of every orcapod error."""


class InputValidationError(OrcapodError, ValueError):
    """Bad input from the user: unknown column, invalid option, malformed data."""


class SchemaMismatchError(InputValidationError):
    """Two schemas that must agree do not (e.g. a function parameter vs a stream column)."""


class OutputTypeError(SchemaMismatchError):
    """A function returned a value that does not fit its declared output type (``2.5`` for
    ``-> int``, ``None`` for a non-optional output, a tuple of the wrong length): that packet
    fails and nothing is stored for it. ``function_name``, ``output_key``, ``expected`` (the
    declared type as a string) and ``value`` say which."""

    def __init__(self, message: str, *, function_name: str = "", output_key: str | None = None, expected: str = "", value: object = None):
        super().__init__(message)
        self.function_name = function_name
        self.output_key = output_key
        self.expected = expected
        self.value = value


class UnsupportedTypeError(InputValidationError, TypeError):
    """A Python or Arrow type outside the documented type table."""


class DuplicateTagError(InputValidationError):
    """Tag (or record-id) values that must be unique are repeated."""


class InvalidLabelError(InputValidationError):
    """A node/stream label that is empty, malformed, or collides with another."""


class FunctionDefinitionError(InputValidationError, TypeError):
    """A Python function that cannot become a function pod (lambda, *args, missing annotations)."""


class ExecutorTypeError(OrcapodError, TypeError):
    """An executor assigned to a function type it cannot run."""


class InvalidPathError(InputValidationError):
    """A database record path with an invalid component (``..``, separators, too deep)."""


class CorruptStoreError(OrcapodError):
    """A stored table exists but cannot be read as what it claims to be."""


class StoreAccessError(OrcapodError, OSError):
    """A store cannot be reached or used as configured: a missing bucket, a wrong endpoint,
    credentials or storage option (e.g. ``AWS_ALLOW_HTTP`` missing for an ``http://``
    endpoint). The message names the store or table URI and the storage layer's reason."""


class StoreMaintenanceError(OrcapodError):
    """Compacting or vacuuming a store table failed (e.g. a concurrent rewrite of it); the
    message names the table. Its rows are unchanged: a failed compaction commits nothing."""


class PacketFunctionUnavailableError(OrcapodError):
    """A packet function's code could not be loaded, so new packets cannot be computed."""


class FunctionBindError(InputValidationError):
    """A packet function bound to a proxy differs from the saved one (every mismatch is listed)."""


class SourceUnavailableError(OrcapodError):
    """A source of a loaded pipeline cannot be rebuilt and has no stored rows to serve."""


class PipelineLoadError(OrcapodError):
    """A saved pipeline description cannot be loaded (corrupt file, wrong version, bad field)."""


class TargetLoadError(InputValidationError):
    """A ``pkg.module:attr`` / ``path/to/file.py:attr`` target (the ``orcapod`` command's) that
    does not give a pipeline: an unknown module or file, a missing attribute, something that is
    not a Pipeline or a zero-argument builder of one, a builder that raised. The message names
    the target and the reason."""


class PacketComputationError(OrcapodError):
    """A user function raised while computing one packet (the original is the ``__cause__``)."""


class NotMaterializedError(OrcapodError, LookupError):
    """A node's output was asked for as of a materialization that does not exist (never
    materialized, or its snapshot is missing from the store); the message names the node/asset."""


class MissingFileError(InputValidationError, FileNotFoundError):
    """A file-valued column (``pathlib.Path``) names a file or directory that does not exist
    or cannot be read; ``column`` and ``row`` say where, ``path`` which file."""

    def __init__(self, message: str, *, path: str = "", column: str | None = None, row: int | None = None):
        super().__init__(message)
        self.path, self.column, self.row = path, column, row
