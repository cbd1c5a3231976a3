"""The analysis job: ``filters`` → PCA basis, grouped coefficient histograms, shift matrices
(see :mod:`.job`). Modules: :mod:`.options` (what a run is asked, what it found),
:mod:`.inputs` (the filters in scope, dimensions, how the scans read), :mod:`.tasks` (the
numpy functions per Spark task), :mod:`.rows` (the tables' rows), :mod:`.job` (the run)."""
from filterspark.pipelines.analyze.inputs import analysis_input, depth_decile, group_label_sql, plan_scan, resolve_dimensions
from filterspark.pipelines.analyze.job import new_run, run_analysis
from filterspark.pipelines.analyze.options import ALL, DEFAULT_BY, DEPTH_DIMENSION, AnalyzeOptions, AnalyzeReport
from filterspark.pipelines.analyze.tasks import scan_moments

__all__ = [
    "ALL", "DEFAULT_BY", "DEPTH_DIMENSION", "AnalyzeOptions", "AnalyzeReport", "analysis_input", "depth_decile",
    "group_label_sql", "new_run", "plan_scan", "resolve_dimensions", "run_analysis", "scan_moments",
]
