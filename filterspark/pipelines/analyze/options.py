"""What an analysis run is asked to do (:class:`AnalyzeOptions`) and what it found (:class:`AnalyzeReport`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from filterspark.delta.warehouse import WarehouseOptions
from filterspark.engine.scans import SCAN_MODES
from filterspark.errors import OptionsError
from filterspark.kernels import coefficients as co
from filterspark.kernels.pca import PCABasis
from filterspark.kernels.shapes import DEFAULT_KERNEL, kernel_name, parse_kernel
from filterspark.kernels.shifts import N_BINS


#: ``--by`` default: those of these that exist (``variant`` is a metadata key of the demo zoo).
DEFAULT_BY = ("task", "visual_category", "training_dataset", "family", "depth_decile", "variant")
DEPTH_DIMENSION = "depth_decile"
ALL = "all"  # the dimension (and group) of the whole scope
MODEL_DIMENSION = "__model__"  # internal dimension: one group per model (for model_shifts)
#: ``--incremental``: share of coefficients outside the frozen range above which the job
#: says a full run is due.
DEFAULT_OUTSIDE_THRESHOLD = 0.001
#: ``model_neighbours``: nearest models kept per model.
DEFAULT_NEIGHBOURS = 10


@dataclass
class AnalyzeOptions(WarehouseOptions):
    """Settings of one analysis run."""

    by: tuple[str, ...] | None = None  # None: the DEFAULT_BY dimensions that exist
    bins: int = N_BINS
    where: str | None = None  # SQL predicate over filter + model columns
    write_coefficients: bool = False
    scan: str = "auto"  # auto | files | spark (see filter_scan)
    min_group_filters: int | None = None  # None: 10 per bin (700 for 70 bins)
    incremental: bool = False  # reuse the latest complete run's basis and range; scan only new models
    outside_threshold: float = DEFAULT_OUTSIDE_THRESHOLD  # share outside the frozen range that calls for a full run
    neighbours: int = DEFAULT_NEIGHBOURS  # k of model_neighbours
    kernel: str = DEFAULT_KERNEL  # KxK: 3x3 reads filters, any other square shape kernels
    components: int | None = None  # components with coefficients (histograms, shifts); None: all k²

    def __post_init__(self) -> None:
        self.kernel = kernel_name(parse_kernel(self.kernel))
        if self.components is not None and not 1 <= self.components <= self.k * self.k:
            raise OptionsError(f"components must be between 1 and {self.k * self.k} for {self.kernel}, not {self.components}")
        if self.write_coefficients and self.kernel != DEFAULT_KERNEL:
            raise OptionsError("--write-coefficients writes c0..c8: 3x3 runs only")
        if self.neighbours < 0:
            raise OptionsError(f"neighbours must be >= 0, not {self.neighbours}")
        if self.incremental and self.write_coefficients:
            raise OptionsError("--write-coefficients needs a full run (an incremental run scans only new models)")
        if self.scan not in SCAN_MODES:
            raise OptionsError(f"scan must be one of {', '.join(SCAN_MODES)}, not {self.scan!r}")
        if self.bins < 1:
            raise OptionsError(f"bins must be at least 1, not {self.bins}")
        if self.min_group_filters is not None and self.min_group_filters < 0:
            raise OptionsError(f"min_group_filters must be >= 0, not {self.min_group_filters}")
        if isinstance(self.by, str):
            self.by = tuple(d.strip() for d in self.by.split(",") if d.strip())
        super().__post_init__()

    @property
    def k(self) -> int:
        return parse_kernel(self.kernel)

    @property
    def n_components(self) -> int:
        """Components with coefficients: ``components``, default all k²."""
        return self.components if self.components is not None else self.k * self.k

    @property
    def scope(self) -> str:
        return self.where.strip() if self.where and self.where.strip() else ALL

    @property
    def min_filters(self) -> int:
        if self.min_group_filters is not None:
            return int(self.min_group_filters)
        return co.default_min_group_filters(self.bins)


@dataclass
class AnalyzeReport:
    """What one run found, for the console summary, the closing note and tests."""

    run_id: str = ""
    scope: str = ALL
    kernel: str = DEFAULT_KERNEL
    components: int = 9
    n_filters: int = 0
    n_models: int = 0
    basis: PCABasis | None = None
    range: tuple[float, float] = (0.0, 0.0)
    dimensions: list[str] = field(default_factory=list)
    groups: dict[str, dict[str, int]] = field(default_factory=dict)
    extremes: dict[str, tuple[tuple, tuple]] = field(default_factory=dict)  # (a, b, shift) largest, smallest
    min_group_filters: int = 0
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)
    scan: str = ""  # how the filters were read: files, or spark (why)
    base_run_id: str | None = None  # incremental: the run whose basis and range were reused
    models_rescanned: int = 0  # models whose filters were read
    outside_share: float = 0.0  # coefficients outside the range, left out of the bins
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        evr = ", ".join(f"{v:.4f}" for v in self.basis.explained_variance_ratio) if self.basis else ""
        out = [
            f"run {self.run_id}  scope: {self.scope}" + (f"  kernel: {self.kernel}" if self.kernel != DEFAULT_KERNEL else ""),
            f"{'filters' if self.kernel == DEFAULT_KERNEL else self.kernel + ' kernels'}: {self.n_filters:,} from {self.n_models} models"
            + (f" ({self.components} components in the histograms)" if self.basis is not None
               and self.components < len(self.basis.explained_variance_ratio) else ""),
            f"explained-variance ratios: {evr}",
            f"coefficient range: [{self.range[0]:.6g}, {self.range[1]:.6g}]",
            f"filters read: {self.scan}",
        ]
        if self.base_run_id:
            out.append(f"incremental on run {self.base_run_id}: {self.models_rescanned} models scanned, "
                       f"{self.outside_share:.4%} of the coefficients outside the frozen range")
        for dim in self.dimensions:
            groups = self.groups.get(dim, {})
            n_small = sum(1 for n in groups.values() if n < self.min_group_filters)
            line = f"  {dim}: {len(groups)} groups ({n_small} small)"
            if dim in self.extremes:
                (a1, b1, s1), (a2, b2, s2) = self.extremes[dim]
                line += f"; largest shift {s1:.4f} ({a1} vs {b1}); smallest {s2:.4f} ({a2} vs {b2})"
            out.append(line)
        phases = ", ".join(f"{k} {v:.1f}" for k, v in self.phases.items())
        out.append(f"wall time: {self.seconds:.1f} s ({phases})")
        out += [f"warning: {w}" for w in self.warnings]
        return out


