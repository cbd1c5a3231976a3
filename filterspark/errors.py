"""The errors filterspark raises on purpose: one base class, mixed with the builtin that fits.

Library code raises these with messages that name *parameters* (``write='files'``), not
command-line flags, since notebooks call the library too; the CLI catches
:class:`FilterSparkError` once and prints its message.
"""
from __future__ import annotations


class FilterSparkError(Exception):
    """Base of every error filterspark raises deliberately."""


class OptionsError(FilterSparkError, ValueError):
    """An option object was built with a value outside its allowed modes or range."""


class CatalogError(FilterSparkError, ValueError):
    """The model catalog cannot be used as given (missing column, duplicate name, ...)."""


class LoadError(FilterSparkError):
    """A checkpoint file cannot be read safely; the message is a one-line reason."""


class FilterDBFormatError(FilterSparkError, ValueError):
    """A ``dataset.h5`` file does not have the published CNN Filter DB layout."""


class AnalyzeError(FilterSparkError, ValueError):
    """The analysis cannot run on the given scope or settings."""


class ReportError(FilterSparkError, ValueError):
    """The report cannot be drawn from the tables as they are (no run, unknown model or group)."""


class NotebookError(FilterSparkError, RuntimeError):
    """A notebook cell failed while running a Databricks source notebook locally."""


class SessionError(FilterSparkError, RuntimeError):
    """The Spark session lacks something filterspark needs (Delta, a capability)."""


class ServeError(FilterSparkError, ValueError):
    """``filterspark serve`` cannot start as asked (a host off loopback without a token, a bad port)."""


class TableBeingCreated(FilterSparkError, RuntimeError):
    """A concurrent job is half-way through creating the same table (retryable)."""
