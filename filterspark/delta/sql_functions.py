"""The project's SQL functions, registered in every session it builds (classic and Connect).

``filterspark_shifts(TABLE(...) WITH SINGLE PARTITION)``: the shift matrix of any
grouping, from ``layer_histograms`` rows labelled with a ``group_value``::

    SELECT * FROM filterspark_shifts(TABLE(
        SELECT g.family AS group_value, h.*
        FROM filterdb.layer_histograms_latest h
        JOIN filterdb.layer_groups g USING (model_id, layer_index)
        WHERE h.scope = 'all' AND h.kernel = '3x3') WITH SINGLE PARTITION)

The rows must be of one run (one kernel: ``kernel`` in every analysis table and view).
Input columns used: ``group_value`` (any type; NULL and '' are ``(none)``),
``component``, ``bin``, ``count``, ``range_lo``, ``range_hi``, ``bins``,
``explained_variance_ratio`` and ``min_group_filters`` (all in ``layer_histograms``; the
components are those the rows hold: 9 for 3x3, k² or ``--components`` for k x k);
rows may be pre-summed per (group, component, bin). Output: ``group_a``, ``group_b``,
``shift``, ``kl_components``, ``n_a``, ``n_b``, ``small``, both orders of every pair, as
in ``shifts`` and ``filterspark shifts --by``.
"""
from __future__ import annotations

from pyspark.sql import SparkSession

from filterspark.delta.capabilities import session_key

#: Name of the any-grouping shift table function.
SHIFTS_FUNCTION = "filterspark_shifts"
SHIFTS_RETURN_TYPE = (
    "group_a string, group_b string, shift double, kl_components array<double>, n_a bigint, n_b bigint, small boolean"
)


class GroupShifts:
    """The Arrow table function behind :data:`SHIFTS_FUNCTION`: sums the rows' counts per
    group, component and bin (vectorised per batch), then the shift of every pair."""

    def __init__(self) -> None:
        self.counts: dict[str, object] = {}
        self.sizes: dict[str, int] = {}
        self.settings: tuple | None = None
        self.evr = None

    def eval(self, batch):
        import numpy as np

        from filterspark.kernels.coefficients import NONE_LABEL

        if batch.num_rows == 0:
            return iter(())
        col = lambda name: batch.column(batch.schema.get_field_index(name))
        if self.settings is None:
            self.settings = (float(col("range_lo")[0].as_py()), float(col("range_hi")[0].as_py()),
                             int(col("bins")[0].as_py()), int(col("min_group_filters")[0].as_py()))
            self.evr = np.full(0, np.nan)
        bins = self.settings[2]
        labels = [NONE_LABEL if v is None or str(v) == "" else str(v) for v in col("group_value").to_pylist()]
        comp = col("component").to_numpy(zero_copy_only=False).astype(np.intp)
        b = col("bin").to_numpy(zero_copy_only=False).astype(np.intp)
        c = col("count").to_numpy(zero_copy_only=False).astype(np.int64)
        n_comp = max(self.evr.size, int(comp.max()) + 1)  # components: as many as the rows show
        if n_comp > self.evr.size:
            grow = n_comp - self.evr.size
            self.evr = np.r_[self.evr, np.full(grow, np.nan)]
            self.counts = {k: np.vstack([v, np.zeros((grow, bins), np.int64)]) for k, v in self.counts.items()}
        self.evr[comp] = col("explained_variance_ratio").to_numpy(zero_copy_only=False)
        uniq, inverse = np.unique(np.asarray(labels, dtype=object), return_inverse=True)
        inside = (b >= 0) & (b < bins)
        for j, label in enumerate(uniq):
            rows = inverse == j
            counts = self.counts.get(label)
            if counts is None:
                counts = self.counts[label] = np.zeros((n_comp, bins), np.int64)
                self.sizes[label] = 0
            keep = rows & inside
            np.add.at(counts, (comp[keep], b[keep]), c[keep])
            self.sizes[label] += int(c[rows & (comp == 0)].sum())
        return iter(())

    def terminate(self):
        import pyarrow as pa

        from filterspark.kernels.shifts import group_shifts

        rows = []
        if self.settings is not None:
            lo, hi, _, small = self.settings
            rows = group_shifts(self.counts, self.sizes, self.evr, lo, hi, small)
        yield pa.table({
            "group_a": pa.array([r[0] for r in rows], pa.string()),
            "group_b": pa.array([r[1] for r in rows], pa.string()),
            "shift": pa.array([r[2] for r in rows], pa.float64()),
            "kl_components": pa.array([[float(v) for v in r[3]] for r in rows], pa.list_(pa.float64())),
            "n_a": pa.array([r[4] for r in rows], pa.int64()),
            "n_b": pa.array([r[5] for r in rows], pa.int64()),
            "small": pa.array([r[6] for r in rows], pa.bool_()),
        })


#: Sessions the functions are registered in (application or Connect session, and the
#: Python session object: temporary functions belong to one SparkSession).
_REGISTERED: set[tuple[str, int]] = set()


def register_functions(spark: SparkSession) -> None:
    """Register the project's SQL functions in ``spark`` (temporary: session-scoped), once."""
    from pyspark.sql.functions import arrow_udtf

    key = (session_key(spark), id(spark))
    if key in _REGISTERED:
        return
    spark.udtf.register(SHIFTS_FUNCTION, arrow_udtf(GroupShifts, returnType=SHIFTS_RETURN_TYPE))
    _REGISTERED.add(key)
