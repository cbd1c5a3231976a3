"""filterspark: the convolution filters of many CNN checkpoints as Delta Lake tables —
data-free filter quality, the PCA basis of 3x3 filters and the distribution shifts between
groups of models (the CNN Filter DB study at scale), on classic Spark or Spark Connect.

The public API, for notebooks and programs (``spark-submit jobs/*.py`` and the
``filterspark`` command call the same functions)::

    from filterspark import build_session, read_catalog, ExtractOptions, run_extraction

    spark = build_session(warehouse="./warehouse")          # or remote="sc://host:15002"
    run_extraction(spark, read_catalog("models.csv"), ExtractOptions(warehouse="./warehouse"))

Names are imported when first used, so ``import filterspark`` stays cheap.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_API = {
    # sessions and tables
    "build_session": "filterspark.engine.session",
    "configure_builder": "filterspark.engine.session",
    "Warehouse": "filterspark.delta.warehouse",
    "register_tables": "filterspark.delta.registry",
    "ServeOptions": "filterspark.engine.server",
    "serve": "filterspark.engine.server",
    # sources
    "CatalogEntry": "filterspark.sources.catalog",
    "read_catalog": "filterspark.sources.catalog",
    "load_model": "filterspark.sources.loaders",
    "read_filterdb": "filterspark.sources.filterdb_h5",
    # pipelines and their option objects
    "ExtractOptions": "filterspark.pipelines.extract",
    "run_extraction": "filterspark.pipelines.extract",
    "ImportOptions": "filterspark.pipelines.importer",
    "run_import": "filterspark.pipelines.importer",
    "AnalyzeOptions": "filterspark.pipelines.analyze",
    "run_analysis": "filterspark.pipelines.analyze",
    # outputs
    "ReportOptions": "filterspark.outputs.report",
    "build_report": "filterspark.outputs.report",
    # quality (pure torch)
    "QualityThresholds": "filterspark.kernels.quality",
    "layer_quality": "filterspark.kernels.quality",
    # errors
    "FilterSparkError": "filterspark.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'filterspark' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
