"""The numpy functions the scans run per Spark task: moments, coefficient range, the
grouped histogram partials, the coefficients themselves. Group labels never travel per
row: model-level labels come from the (small) ``models`` table by model id,
``depth_decile`` from ``conv_depth_norm`` in numpy."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from filterspark.delta.schemas import WEIGHT_COLUMNS, arrow_schema
from filterspark.engine.scans import FilterScan
from filterspark.errors import AnalyzeError
from filterspark.kernels import coefficients as co
from filterspark.kernels.layer_histograms import LayerAccumulator
from filterspark.kernels.pca import N_WEIGHTS, PCABasis, FilterMoments, moments, project, provisional_reference, scale_filters
from filterspark.pipelines.analyze.options import ALL, DEPTH_DIMENSION
from filterspark.pipelines.analyze.rows import without_run


# --- the scans -----------------------------------------------------------------------------


def _weights(batch) -> np.ndarray:
    """The batch's weights as a (d, n) float32 array (one contiguous row per weight):
    ``w0..w8`` (3x3 filters), or the ``weights`` lists of k x k kernels (one array
    operation, no per-row loop; every list of a batch must hold the same k²)."""
    names = batch.schema.names
    if "weights" not in names:
        return np.stack([batch.column(c).to_numpy(zero_copy_only=False) for c in WEIGHT_COLUMNS])
    lists = batch.column(names.index("weights"))
    n = len(lists)
    values = lists.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    d = values.size // n if n else 0
    if n and (values.size != n * d or lists.value_lengths().to_numpy(zero_copy_only=False).min() != d):
        raise AnalyzeError("kernels rows of one k must all hold k² weights")
    return np.ascontiguousarray(values.reshape(n, d).T)


def _scaled_rows(batch) -> tuple[np.ndarray, np.ndarray]:
    """(scaled kernels (n, d) float64, kept-row mask) of a scan batch: rows with a
    non-finite weight are left out, as :func:`analysis_input` leaves them out.

    The values of :func:`pca.scale_filters`, computed weight-major (the result is the
    transposed view of a (9, n) array: contiguous per weight, which the moments and
    :func:`pca.project` stream fastest). The peak |w| is exact in float32, and a NaN or
    inf weight makes it non-finite, so one test on the peaks finds those rows.
    """
    w32 = _weights(batch)
    peak = np.abs(w32).max(axis=0)
    keep = np.isfinite(peak)
    if not keep.all():
        w32, peak = w32[:, keep], peak[keep]
    w = w32.astype(np.float64)
    np.divide(w, peak, out=w, where=peak > 0)
    return w.T, keep


def moments_task(batches) -> FilterMoments:
    """Scan 1 (per task): moments of the scaled filters about the task's first batch mean."""
    total: FilterMoments | None = None
    for batch in batches:
        x, _ = _scaled_rows(batch)
        if x.shape[0] == 0:
            continue
        if total is None:
            total = FilterMoments.zeros(provisional_reference(x))
        total = total.merge(moments(x, total.ref))
    return total if total is not None else FilterMoments.zeros()


def range_task(basis: PCABasis):
    """Scan 2 (per task): (min, max) of all coefficients."""

    def task(batches) -> tuple[float, float]:
        lo, hi = float("inf"), float("-inf")
        for batch in batches:
            x, _ = _scaled_rows(batch)
            if x.shape[0]:  # finite rows only, so every coefficient is finite
                c = project(x, basis)
                lo, hi = min(lo, float(c.min())), max(hi, float(c.max()))
        return lo, hi

    return task


@dataclass(frozen=True)
class GroupLabels:
    """How a scan row gets its group in each dimension: model-level dimensions from the
    model's row (``models[model_id][j]``), ``depth_decile`` from ``conv_depth_norm``."""

    dims: tuple[str, ...]  # user dimensions, in order
    models: dict[int, tuple[str, ...]]  # model id → labels of the model-level dimensions

    def codes(self, model_ids: np.ndarray, depth: np.ndarray) -> list[tuple[np.ndarray, list[str]]]:
        """Per dimension (the user's, then ``all``, then the model): (codes, code → label)."""
        uniq, inv = np.unique(model_ids, return_inverse=True)
        out, j = [], 0
        for dim in self.dims:
            if dim == DEPTH_DIMENSION:
                codes = np.searchsorted(_DEPTH_EDGES, depth, side="left")
                codes[np.isnan(depth)] = len(co.DEPTH_DECILES)
                out.append((codes, [*co.DEPTH_DECILES, co.NONE_LABEL]))
            else:
                out.append((inv, [self.models[int(m)][j] for m in uniq]))
                j += 1
        out.append((np.zeros(model_ids.size, np.intp), [ALL]))
        out.append((inv, [str(int(m)) for m in uniq]))
        return out


_DEPTH_EDGES = np.asarray(co.DEPTH_EDGES, dtype=np.float64)


def partials_task(basis: PCABasis, lo: float, hi: float, bins: int, ref: np.ndarray, labels: GroupLabels | None):
    """Scan 3 (per task): a :class:`coefficients.PartitionAccumulator` for every dimension
    at once, ``all`` and each model (counts only), and the per-layer histograms.
    ``labels`` None: the per-layer histograms only (an incremental run's new models)."""
    n_dims = len(labels.dims) if labels is not None else -1
    full = frozenset(range(n_dims + 1))  # user dims and "all"; not the per-model one
    known = np.fromiter(labels.models, dtype=np.int64) if labels is not None else None

    def task(batches) -> co.PartitionAccumulator:
        acc = co.PartitionAccumulator(lo, hi, bins, ref, full, layers=LayerAccumulator(bins))
        for batch in batches:
            x, finite = _scaled_rows(batch)
            column = lambda name, dtype: batch.column(name).to_numpy(zero_copy_only=False).astype(dtype)[finite]
            model_ids, layer_index = column("model_id", np.int64), column("layer_index", np.int64)
            depth = column("conv_depth_norm", np.float64)
            if known is not None:
                known_rows = np.isin(model_ids, known)
                if not known_rows.all():
                    x, model_ids, layer_index, depth = x[known_rows], model_ids[known_rows], layer_index[known_rows], depth[known_rows]
            if x.shape[0]:
                codes = labels.codes(model_ids, depth) if labels is not None else []
                acc.add(x, project(x, basis), codes, (model_ids, layer_index))
        return acc

    return task


def coefficient_task(basis: PCABasis):
    """mapInArrow function: filter keys + weights → keys + coefficients ``c0..c8`` (NULL
    beyond the basis' components)."""
    from filterspark.delta.schemas import COEFFICIENTS

    def task(batches):
        import pyarrow as pa

        schema = arrow_schema(without_run(COEFFICIENTS))
        for batch in batches:
            c = project(scale_filters(_weights(batch).T), basis)
            keys = [batch.column(k) for k in ("model_id", "layer_index", "filter_index")]
            comps = [pa.array(c[:, i]) if i < c.shape[1] else pa.nulls(len(c), pa.float64()) for i in range(N_WEIGHTS)]
            yield pa.RecordBatch.from_arrays([*keys, *comps], schema=schema)

    return task


def scan_moments(scan: FilterScan) -> FilterMoments:
    """Scan 1: the scaled filters' moments (a :class:`pca.FilterMoments`), all tasks merged."""
    total = FilterMoments.zeros()
    for m in scan.map(moments_task, "moments"):
        total = total.merge(m)
    if total.n == 0:
        raise AnalyzeError("no filters in scope (no ok models, or the where predicate matches nothing)")
    if total.n < 2:
        raise AnalyzeError(f"PCA needs at least 2 filters in scope, found {total.n}")
    return total




def neighbours_task(hists: np.ndarray, evr: np.ndarray, k: int):
    """Runner task: one block of model indices → their ``k`` nearest models."""
    from filterspark.kernels.neighbours import nearest

    def task(_, rows):
        return [nearest(hists, np.asarray(rows), evr, k)]

    return task
