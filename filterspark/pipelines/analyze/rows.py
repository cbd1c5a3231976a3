"""The analysis tables' rows, built on the driver from the merged partials."""
from __future__ import annotations

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from filterspark.delta.schemas import arrow_schema
from filterspark.kernels import coefficients as co
from filterspark.kernels.pca import N_WEIGHTS, PCABasis
from filterspark.kernels.shifts import bin_edges, group_shifts, normalised_histogram
from filterspark.pipelines.analyze.options import ALL


# --- driver-side results --------------------------------------------------------------------


#: The columns every row of a run repeats (``kernel``: the last column of each table).
_RUN_COLUMNS = ("run_id", "scope", "run_at", "kernel")


def run_fields(run: dict) -> dict:
    return {k: run[k] for k in _RUN_COLUMNS}


def without_run(schema: StructType) -> StructType:
    return StructType([f for f in schema.fields if f.name not in _RUN_COLUMNS])


def with_run(df: DataFrame, run: dict, schema: StructType) -> DataFrame:
    """``df`` (the non-run columns of ``schema``) with the run's columns, in ``schema`` order."""
    lits = {"run_id": F.lit(run["run_id"]), "scope": F.lit(run["scope"]), "run_at": F.lit(run["run_at"]).cast("timestamp"),
            "kernel": F.lit(run["kernel"])}
    return df.select(*[lits[f.name].alias(f.name) if f.name in lits else F.col(f.name) for f in schema.fields])


def basis_rows(run: dict, basis: PCABasis) -> list[dict]:
    """``pca_basis`` rows: every component as ``vector`` (k² values) and, for 3x3, ``v0..v8``."""
    d = basis.components.shape[1]
    return [
        {
            **run_fields(run), "component": k,
            **({f"v{i}": float(basis.components[k, i]) for i in range(N_WEIGHTS)} if d == N_WEIGHTS else {}),
            "mean": [float(v) for v in basis.mean],
            "explained_variance": float(basis.explained_variance[k]),
            "explained_variance_ratio": float(basis.explained_variance_ratio[k]),
            "n_filters": basis.n_filters,
            "vector": [float(v) for v in basis.components[k]],
        }
        for k in range(basis.components.shape[0])
    ]


def arrow_rows(rows: list[dict], schema: StructType):
    """A pyarrow Table of dict rows in ``schema`` (missing keys become null)."""
    import pyarrow as pa

    target = arrow_schema(schema)
    return pa.Table.from_pylist([{f.name: row.get(f.name) for f in target} for row in rows], schema=target)


def _run_arrays(run: dict, n: int, schema) -> dict:
    """The run's columns for ``n`` rows of an Arrow ``schema``."""
    import pyarrow as pa

    return {"run_id": pa.array([run["run_id"]] * n, pa.string()), "scope": pa.array([run["scope"]] * n, pa.string()),
            "run_at": pa.array([run["run_at"]] * n, schema.field("run_at").type),
            "kernel": pa.array([run["kernel"]] * n, pa.string())}


def _arrow_table(values: dict, schema):
    """A pyarrow Table of ``schema`` from column values (Arrow arrays or numpy arrays)."""
    import pyarrow as pa

    return pa.Table.from_arrays([v if isinstance(v, pa.Array) else pa.array(v, type=f.type)
                                 for f, v in ((f, values[f.name]) for f in schema)], schema=schema)


def histogram_table(run: dict, groups: dict, names: list[str], lo: float, hi: float, bins: int, small: int):
    """Arrow table of coefficient_histograms (one row per dimension, group, component and bin)."""
    from filterspark.delta.schemas import COEFFICIENT_HISTOGRAMS

    edges = bin_edges(lo, hi, bins)
    cols: dict[str, list] = {f.name: [] for f in without_run(COEFFICIENT_HISTOGRAMS).fields}
    for (dim, label), g in sorted(groups.items()):
        c = g.hist.shape[0]  # components
        m = c * bins
        cols["dimension"].append(np.full(m, names[dim], object))
        cols["group_value"].append(np.full(m, label, object))
        cols["component"].append(np.repeat(np.arange(c, dtype=np.int32), bins))
        cols["bin"].append(np.tile(np.arange(bins, dtype=np.int32), c))
        cols["bin_lo"].append(np.tile(edges[:-1], c))
        cols["bin_hi"].append(np.tile(edges[1:], c))
        cols["count"].append(g.hist.reshape(-1))
        cols["probability"].append(normalised_histogram(g.hist, lo, hi).reshape(-1))
        cols["n_filters"].append(np.full(m, g.n, np.int64))
        cols["small_group"].append(np.full(m, g.n < small))
    schema = arrow_schema(COEFFICIENT_HISTOGRAMS)
    n = sum(len(c) for c in cols["count"])
    values = {**{k: np.concatenate(v) if v else np.empty(0) for k, v in cols.items()}, **_run_arrays(run, n, schema)}
    return _arrow_table(values, schema)


def stats_rows(run: dict, groups: dict, names: list[str], basis: PCABasis, lo: float, hi: float, small: int):
    rows = []
    for (dim, label), g in sorted(groups.items()):
        stats = co.group_stats(g, basis, lo, hi)
        for k in range(g.hist.shape[0]):
            row = {**run_fields(run), "dimension": names[dim], "group_value": label, "component": k,
                   "small_group": g.n < small}
            for name, values in stats.items():
                v = values[k]
                row[name] = int(v) if name == "n_filters" else (None if not np.isfinite(v) else float(v))
            rows.append(row)
    return rows


def shift_rows(run: dict, groups: dict, names: list[str], evr: np.ndarray, lo: float, hi: float, small: int):
    rows = []
    for dim, name in enumerate(names):
        members = {label: g for (d, label), g in groups.items() if d == dim}
        counts = {label: g.hist for label, g in members.items()}
        sizes = {label: g.n for label, g in members.items()}
        for a, b, total, per, na, nb, is_small in group_shifts(counts, sizes, evr, lo, hi, small):
            rows.append({**run_fields(run), "dimension": name, "group_a": a, "group_b": b, "shift": float(total),
                         "kl_components": [float(v) for v in per], "n_a": na, "n_b": nb, "small": is_small})
    return rows


def model_shift_rows(run, per_model, groups, model_labels, names, model_dims, evr, lo, hi, small):
    """Each model against the rest of the population (dimension ``all``) and the rest of
    its group in each model-level dimension."""
    rows = []
    everything = groups[(len(names), ALL)]
    for model_id, g in sorted(per_model.items()):
        info = model_labels.get(model_id, {})
        targets = [(ALL, ALL, everything)]
        for d in model_dims:
            label = info.get(names[d])
            if label is not None and (d, label) in groups:
                targets.append((names[d], label, groups[(d, label)]))
        for dim_name, label, whole in targets:
            res = co.rest_shift(g.hist, whole.hist, evr, lo, hi)
            n_rest = whole.n - g.n
            rows.append({
                **run_fields(run), "model_id": model_id, "name": info.get("name"), "dimension": dim_name,
                "group_value": label, "shift": None if res is None else float(res[0]),
                "kl_components": None if res is None else [float(v) for v in res[1]],
                "n_filters": g.n, "n_rest": n_rest, "small": bool(g.n < small or n_rest < small),
            })
    return rows


def extremes(rows: list[dict]) -> dict[str, tuple[tuple, tuple]]:
    out: dict[str, tuple[tuple, tuple]] = {}
    by_dim: dict[str, list[tuple]] = {}
    for r in rows:
        if r["group_a"] < r["group_b"]:
            by_dim.setdefault(r["dimension"], []).append((r["group_a"], r["group_b"], r["shift"]))
    for dim, pairs in by_dim.items():
        pairs.sort(key=lambda p: p[2])
        out[dim] = (pairs[-1], pairs[0])
    return out




def layer_histogram_table(columns: dict[str, np.ndarray], run: dict, extracted_at: dict[int, object], lo: float,
                          hi: float, bins: int, evr: np.ndarray, small: int):
    """Arrow table of ``layer_histograms`` (run columns included) from
    :meth:`LayerAccumulator.columns`."""
    import pyarrow as pa

    from filterspark.delta.schemas import LAYER_HISTOGRAMS

    schema = arrow_schema(LAYER_HISTOGRAMS)
    n = len(columns["count"])
    ids = columns["model_id"]
    uniq, inv = np.unique(ids, return_inverse=True)
    when = [extracted_at.get(int(m)) for m in uniq]
    values = {
        **columns,
        **_run_arrays(run, n, schema),
        "extracted_at": pa.array([when[i] for i in inv], schema.field("extracted_at").type),
        "range_lo": np.full(n, lo), "range_hi": np.full(n, hi), "bins": np.full(n, bins, np.int32),
        "explained_variance_ratio": np.asarray(evr, np.float64)[columns["component"]] if n else np.empty(0),
        "min_group_filters": np.full(n, small, np.int64),
    }
    return _arrow_table(values, schema)


def neighbour_rows(run: dict, found: list[tuple[int, int, int, float]], model_ids: list[int],
                   names: dict[int, str], sizes: dict[int, int]) -> list[dict]:
    """``model_neighbours`` rows from :func:`kernels.neighbours.nearest` results (indices
    into ``model_ids``)."""
    rows = []
    for i, rank, j, value in sorted(found):
        a, b = model_ids[i], model_ids[j]
        rows.append({**run_fields(run), "model_id": a, "name": names.get(a), "rank": rank, "neighbour_id": b,
                     "neighbour_name": names.get(b), "shift": value, "n_filters": sizes.get(a),
                     "neighbour_n_filters": sizes.get(b)})
    return rows
