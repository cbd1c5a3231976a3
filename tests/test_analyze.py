"""The analysis job (jobs/analyze.py) against an in-memory numpy/scipy/sklearn reference.

The reference below is written from the published definitions only (docs/definitions.md): scaled
filters, sklearn PCA with the sign rule, ``np.histogram(density=True)`` + float32-eps +
renormalisation, ``scipy.stats.entropy`` for KL. It shares no code with the job.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import gaussian_filter
from scipy.stats import entropy
from sklearn.decomposition import PCA

from filterspark.pipelines.analyze import AnalyzeOptions, run_analysis
from filterspark.delta.registry import register_tables
from filterspark.delta.warehouse import table_path

REPO = Path(__file__).resolve().parents[1]
W = [f"w{i}" for i in range(9)]
EPS32 = np.finfo(np.float32).eps
TOL = 1e-6
NONE = "(none)"
DEPTH_LABELS = ["[0.0,0.1]"] + [f"({k / 10:.1f},{(k + 1) / 10:.1f}]" for k in range(1, 10)]


# --- the reference ----------------------------------------------------------------------------


def group_label(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value) == "":
        return NONE
    return str(value)


def _depth_label(x) -> str:
    if x is None or np.isnan(x):
        return NONE
    return DEPTH_LABELS[int(np.searchsorted(np.arange(1, 10) / 10, x, side="left"))]


def load_population(spark, warehouse: str, where: str | None = None) -> pd.DataFrame:
    """Filter rows of ok models with their model row (the test may collect; the job may not)."""
    filters = spark.read.format("delta").load(table_path(warehouse, "filterdb", "filters"))
    models = spark.read.format("delta").load(table_path(warehouse, "filterdb", "models")).where("status = 'ok'")
    cols = ["model_id", "name", "task", "visual_category", "training_dataset", "family", "metadata"]
    df = filters.select("model_id", "layer_index", "filter_index", *W, "conv_depth_norm").join(models.select(*cols), "model_id")
    if where:
        df = df.where(where)
    return df.toPandas().sort_values(["model_id", "layer_index", "filter_index"]).reset_index(drop=True)


class Reference:
    """The published method, in memory, on the rows of ``pdf``: 3x3 filters (``w0..w8``),
    or k x k kernels (a ``weights`` column of k² values); coefficients, histograms and
    shifts on the first ``components`` components (default all)."""

    def __init__(self, pdf: pd.DataFrame, dims: list[str], bins: int = 70, components: int | None = None):
        w = np.stack(pdf["weights"].to_numpy()).astype(np.float64) if "weights" in pdf else pdf[W].to_numpy(np.float64)
        finite = np.isfinite(w).all(axis=1)
        self.pdf = pdf[finite].reset_index(drop=True)
        w = w[finite]
        self.d = w.shape[1]
        self.n_comp = components or self.d
        peak = np.abs(w).max(axis=1, keepdims=True)
        self.scaled = np.where(peak > 0, w / np.where(peak > 0, peak, 1.0), w)
        pca = PCA(n_components=self.d, svd_solver="full").fit(self.scaled)
        comps = pca.components_.copy()
        for row in comps:  # sign rule: the largest |entry| of each component is positive
            if row[np.argmax(np.abs(row))] < 0:
                row *= -1
        self.components, self.mean = comps, pca.mean_
        self.ev, self.evr = pca.explained_variance_, pca.explained_variance_ratio_
        self.coeffs = (self.scaled - self.mean) @ comps[: self.n_comp].T
        self.lo, self.hi, self.bins = self.coeffs.min(), self.coeffs.max(), bins
        self.labels = {d: self._labels(d) for d in dims}
        self.labels["all"] = np.array(["all"] * len(self.pdf), dtype=object)

    def _labels(self, dim: str) -> np.ndarray:
        if dim == "depth_decile":
            return np.array([_depth_label(x) for x in self.pdf["conv_depth_norm"]], dtype=object)
        if dim in self.pdf.columns:
            return np.array([group_label(v) for v in self.pdf[dim]], dtype=object)
        return np.array([group_label((m or {}).get(dim)) for m in self.pdf["metadata"]], dtype=object)

    def mask(self, dim: str, group: str) -> np.ndarray:
        return self.labels[dim] == group

    def counts(self, mask: np.ndarray) -> np.ndarray:
        return np.stack([np.histogram(self.coeffs[mask, i], self.bins, (self.lo, self.hi))[0] for i in range(self.n_comp)])

    def hist(self, mask: np.ndarray) -> np.ndarray:
        out = []
        for i in range(self.n_comp):
            h = np.histogram(self.coeffs[mask, i], self.bins, (self.lo, self.hi), density=True)[0]
            h[h == 0] = EPS32
            out.append(h / h.sum())
        return np.stack(out)

    def shift(self, a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray]:
        p, q = self.hist(a), self.hist(b)
        per = np.array([self.evr[i] * (entropy(p[i], q[i]) + entropy(q[i], p[i])) for i in range(self.n_comp)])
        return per.sum(), per


# --- comparing a run's tables with the reference ----------------------------------------------


def run_tables(spark, warehouse: str, run_id: str) -> dict[str, pd.DataFrame]:
    names = ["pca_basis", "coefficient_histograms", "coefficient_stats", "shifts", "model_shifts", "analysis_runs"]
    return {
        t: spark.read.format("delta").load(table_path(warehouse, "filterdb", t)).where(f"run_id = '{run_id}'").toPandas()
        for t in names
    }


def check_against_reference(tables: dict[str, pd.DataFrame], ref: Reference, dims: list[str], small: int = 700) -> None:
    n, n_comp = len(ref.pdf), ref.n_comp
    basis = tables["pca_basis"].sort_values("component")
    assert list(basis["component"]) == list(range(ref.d))
    vectors = np.stack(basis["vector"].to_numpy())
    np.testing.assert_allclose(vectors, ref.components, atol=TOL)
    if ref.d == 9:  # v0..v8 are the vector of a 3x3 basis, null for any other
        np.testing.assert_array_equal(basis[[f"v{i}" for i in range(9)]].to_numpy(), vectors)
    else:
        assert basis[[f"v{i}" for i in range(9)]].isna().all().all()
    np.testing.assert_allclose(basis["explained_variance_ratio"], ref.evr, atol=TOL)
    np.testing.assert_allclose(basis["explained_variance"], ref.ev, atol=TOL, rtol=TOL)
    np.testing.assert_allclose(np.stack(basis["mean"].to_numpy())[0], ref.mean, atol=TOL)
    assert set(basis["n_filters"]) == {n}

    runs = tables["analysis_runs"]
    assert len(runs) == 1 and runs["n_filters"][0] == n
    assert runs["range_lo"][0] == pytest.approx(ref.lo, abs=TOL) and runs["range_hi"][0] == pytest.approx(ref.hi, abs=TOL)
    assert list(runs["dimensions"][0]) == dims
    k = int(round(np.sqrt(ref.d)))
    assert runs["kernel"][0] == f"{k}x{k}" and runs["components"][0] == n_comp
    np.testing.assert_allclose(runs["explained_variance_ratio"][0], ref.evr, atol=TOL)  # all k² of them

    hist, stats = tables["coefficient_histograms"], tables["coefficient_stats"]
    expected_groups = {(d, g) for d in [*dims, "all"] for g in set(ref.labels[d])}
    assert set(zip(hist["dimension"], hist["group_value"])) == expected_groups
    assert set(zip(stats["dimension"], stats["group_value"])) == expected_groups
    fine_width = (ref.hi - ref.lo) / 1024
    for (dim, group), rows in hist.groupby(["dimension", "group_value"]):
        mask = ref.mask(dim, group)
        rows = rows.sort_values(["component", "bin"])
        counts = rows["count"].to_numpy().reshape(n_comp, ref.bins)
        np.testing.assert_array_equal(counts, ref.counts(mask), err_msg=f"{dim}={group}")
        np.testing.assert_allclose(rows["probability"].to_numpy().reshape(n_comp, ref.bins), ref.hist(mask), atol=TOL)
        assert set(rows["n_filters"]) == {mask.sum()}
        assert set(rows["small_group"]) == {bool(mask.sum() < small)}
        st = stats[(stats["dimension"] == dim) & (stats["group_value"] == group)].sort_values("component")
        c = ref.coeffs[mask]
        assert list(st["n_filters"]) == [mask.sum()] * n_comp
        np.testing.assert_allclose(st["mean"], c.mean(axis=0), atol=TOL)
        np.testing.assert_allclose(st["min"], c.min(axis=0), atol=TOL)
        np.testing.assert_allclose(st["max"], c.max(axis=0), atol=TOL)
        if mask.sum() > 1:
            np.testing.assert_allclose(st["std"], c.std(axis=0, ddof=1), atol=TOL)
        for col, q in (("q01", 0.01), ("q25", 0.25), ("median", 0.5), ("q75", 0.75), ("q99", 0.99)):
            np.testing.assert_allclose(st[col], np.quantile(c, q, axis=0), rtol=0, atol=fine_width * (1 + 1e-9), err_msg=col)

    shifts = tables["shifts"]
    for dim in dims:
        groups = sorted(set(ref.labels[dim]))
        got = shifts[shifts["dimension"] == dim]
        assert len(got) == len(groups) * (len(groups) - 1)
        for row in got.itertuples():
            a, b = ref.mask(dim, row.group_a), ref.mask(dim, row.group_b)
            total, per = ref.shift(a, b)
            assert row.shift == pytest.approx(total, abs=TOL), (dim, row.group_a, row.group_b)
            np.testing.assert_allclose(row.kl_components, per, atol=TOL)
            assert (row.n_a, row.n_b) == (a.sum(), b.sum())
            assert row.small == bool(min(a.sum(), b.sum()) < small)

    ms = tables["model_shifts"]
    model_dims = [d for d in dims if d != "depth_decile"]
    ids = ref.pdf["model_id"].to_numpy()
    assert set(ms["model_id"]) == set(ids)
    assert len(ms) == len(set(ids)) * (1 + len(model_dims))
    for row in ms.itertuples():
        own = ids == row.model_id
        whole = ref.mask(row.dimension, row.group_value)
        assert row.group_value == ref.labels[row.dimension][own][0]
        rest = whole & ~own
        assert (row.n_filters, row.n_rest) == (own.sum(), rest.sum())
        if rest.sum() == 0:
            assert pd.isna(row.shift)
            continue
        total, per = ref.shift(own, rest)
        assert row.shift == pytest.approx(total, abs=TOL), (row.name, row.dimension)
        np.testing.assert_allclose(row.kl_components, per, atol=TOL)


# --- the demo zoo -------------------------------------------------------------------------------

DEMO_DIMS = ["task", "visual_category", "training_dataset", "family", "depth_decile", "variant"]


@pytest.fixture(scope="module")
def demo_analysis(spark, demo_warehouse, tmp_path_factory):
    """The demo warehouse copied (other tests' view of it stays untouched), then analysed."""
    from filterspark.delta.registry import register_tables

    warehouse = str(tmp_path_factory.mktemp("analysis") / "warehouse")
    shutil.copytree(demo_warehouse["warehouse"], warehouse)
    register_tables(spark, warehouse)
    report = run_analysis(spark, AnalyzeOptions(warehouse=warehouse))
    return warehouse, report


def test_demo_zoo_equals_in_memory_reference(spark, demo_analysis):
    warehouse, report = demo_analysis
    assert report.dimensions == DEMO_DIMS  # the default --by on the demo zoo
    ref = Reference(load_population(spark, warehouse), DEMO_DIMS)
    assert report.n_filters == len(ref.pdf) > 10_000
    check_against_reference(run_tables(spark, warehouse, report.run_id), ref, DEMO_DIMS)
    print("\n".join(report.lines()))


def _readme_sql() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = re.search(r"<!-- section: analysis.*?-->(.*?)<!-- end section: analysis -->", text, re.S).group(1)
    return [q.strip().rstrip(";") for q in re.findall(r"```sql\n(.*?)```", section, re.S)]


def test_readme_sql_examples_run_on_the_written_tables(spark, demo_analysis):
    queries = _readme_sql()
    assert len(queries) >= 5
    for query in queries:
        rows = spark.sql(query).collect()
        assert rows, f"README query returned no rows:\n{query}"


# --- a synthetic population with known structure ------------------------------------------------


def _smooth(rng, n):  # blob-like filters
    x = gaussian_filter(rng.standard_normal((n, 5, 5)), sigma=(0, 1.0, 1.0))[:, 1:4, 1:4].reshape(n, 9)
    return x * rng.lognormal(0, 0.5, (n, 1))


def _noise(rng, n):  # white noise
    return rng.standard_normal((n, 9)) * 0.1


def _edges(rng, n):  # vertical edge detectors
    base = np.array([-1.0, 0, 1, -2, 0, 2, -1, 0, 1])
    return base * rng.choice([-1, 1], (n, 1)) + 0.3 * rng.standard_normal((n, 9))


SYNTH_MODELS = [  # name, task, family, variant, generator
    ("a1", "A", "f1", "x", _smooth), ("a2", "A", "f2", "y", _smooth),
    ("b1", "B", "f1", "x", _smooth), ("b2", "B", "f2", None, _smooth),
    ("c1", "C", "f1", "x", _noise), ("c2", "C", "f2", "y", _noise),
    ("d1", "D", "f1", "x", _edges), ("d2", "D", "f2", "y", _edges),
]
DEPTHS = [0.0, 0.1, 0.3, 1.0]  # decile edges belong to the lower decile
SYNTH_DIMS = ["task", "family", "variant", "depth_decile"]


def write_synthetic(spark, warehouse: str, per_layer: int = 400) -> None:
    """models + filters through the project's schemas: 8 ok models, one failed model whose
    filters must be ignored, one NaN filter, an all-zero filter, a NULL depth."""
    from filterspark.delta.schemas import FILTERS, MODELS, arrow_schema
    from filterspark.delta.registry import register_tables
    from filterspark.delta.tables import ensure_tables, rows_frame

    import pyarrow as pa

    rng = np.random.default_rng(7)
    models, cols = [], {f.name: [] for f in FILTERS.fields}
    specs = SYNTH_MODELS + [("broken", "A", "f1", "x", lambda r, n: np.full((n, 9), 5.0))]
    for k, (name, task, family, variant, make) in enumerate(specs):
        model_id = 1000 + k
        status = "failed" if name == "broken" else "ok"
        models.append({"model_id": model_id, "name": name, "task": task, "family": family, "status": status,
                       "visual_category": "synthetic", "metadata": {"variant": variant} if variant else {}})
        for layer, depth in enumerate(DEPTHS):
            w = make(rng, per_layer).astype(np.float32)
            if name == "a1" and layer == 0:
                w[0, 3] = np.nan
                w[1] = 0.0
            cols["model_id"] += [model_id] * per_layer
            cols["layer_index"] += [layer] * per_layer
            cols["filter_index"] += list(range(per_layer))
            for i in range(9):
                cols[f"w{i}"].append(w[:, i])
            for c in ("task", "visual_category", "training_dataset", "family"):
                cols[c] += [None] * per_layer
            cols["conv_depth"] += [layer] * per_layer
            cols["conv_depth_norm"] += [None if (name == "c2" and layer == 2) else depth] * per_layer
    arrow = pa.Table.from_arrays(
        [pa.array(np.concatenate(v)) if k in W else pa.array(v, type=f.type)
         for (k, v), f in zip(cols.items(), arrow_schema(FILTERS))],
        schema=arrow_schema(FILTERS),
    )
    paths = {n: t.location for n, t in ensure_tables(spark, warehouse, "filterdb", ["models", "layers", "filters"]).items()}
    spark.createDataFrame(arrow, schema=FILTERS).write.format("delta").mode("append").save(paths["filters"])
    rows_frame(spark, models, MODELS).write.format("delta").mode("append").save(paths["models"])
    register_tables(spark, warehouse)


@pytest.fixture(scope="module")
def synthetic(spark, tmp_path_factory):
    warehouse = str(tmp_path_factory.mktemp("synthetic") / "warehouse")
    write_synthetic(spark, warehouse)
    report = run_analysis(spark, AnalyzeOptions(warehouse=warehouse, by=tuple(SYNTH_DIMS)))
    return warehouse, report


def test_synthetic_equals_in_memory_reference(spark, synthetic):
    warehouse, report = synthetic
    ref = Reference(load_population(spark, warehouse), SYNTH_DIMS)
    assert report.n_filters == len(ref.pdf) == 8 * 4 * 400 - 1  # failed model and NaN filter left out
    assert report.n_models == 8
    assert set(ref.labels["depth_decile"]) == {"[0.0,0.1]", "(0.2,0.3]", "(0.9,1.0]", NONE}
    assert set(ref.labels["variant"]) == {"x", "y", NONE}
    check_against_reference(run_tables(spark, warehouse, report.run_id), ref, SYNTH_DIMS)


def test_spark_reader_path_equals_files_path_and_model_level_where(spark, synthetic, tmp_path):
    """The general scan (Spark's reader + mapInArrow) gives the files scan's results; a
    --where over model columns keeps the files scan and scopes it to whole models."""
    warehouse, files_report = synthetic
    assert files_report.scan == "files"
    other = str(tmp_path / "warehouse")  # the same synthetic data (same seed), own run history
    write_synthetic(spark, other)
    report = run_analysis(spark, AnalyzeOptions(warehouse=other, by=tuple(SYNTH_DIMS), scan="spark"))
    assert report.scan.startswith("spark")
    a, b = run_tables(spark, warehouse, files_report.run_id), run_tables(spark, other, report.run_id)
    for name, keys in [("coefficient_histograms", ["dimension", "group_value", "component", "bin"]),
                       ("shifts", ["dimension", "group_a", "group_b"]),
                       ("model_shifts", ["model_id", "dimension"]),
                       ("coefficient_stats", ["dimension", "group_value", "component"])]:
        x, y = (t[name].drop(columns=["run_id", "run_at"]).sort_values(keys).reset_index(drop=True) for t in (a, b))
        assert len(x) == len(y) > 0
        for col in x.columns:
            if x[col].dtype.kind == "f":
                np.testing.assert_allclose(x[col], y[col], rtol=1e-9, atol=1e-12, err_msg=f"{name}.{col}")
            elif not isinstance(x[col].iloc[0], (np.ndarray, list)):
                assert list(x[col]) == list(y[col]), f"{name}.{col}"

    where = "task IN ('A', 'C')"
    scoped = run_analysis(spark, AnalyzeOptions(warehouse=other, by=("task", "depth_decile"), where=where))
    assert scoped.scan == "files" and scoped.n_models == 4
    ref = Reference(load_population(spark, other, where), ["task", "depth_decile"])
    check_against_reference(run_tables(spark, other, scoped.run_id), ref, ["task", "depth_decile"])
    with pytest.raises(ValueError, match="filter-level"):
        run_analysis(spark, AnalyzeOptions(warehouse=other, where="conv_depth_norm < 0.5", scan="files"))
    register_tables(spark, warehouse)  # the filterdb.* names back on the module's warehouse


def test_synthetic_known_structure(spark, synthetic):
    """A and B share a distribution, C and D differ: near-zero vs large shifts."""
    warehouse, report = synthetic
    shifts = spark.sql(
        f"SELECT group_a, group_b, shift FROM filterdb.shifts WHERE run_id = '{report.run_id}' AND dimension = 'task'"
    ).toPandas()
    s = {(r.group_a, r.group_b): r.shift for r in shifts.itertuples()}
    assert s[("A", "B")] == s[("B", "A")]
    different = [s[(a, b)] for a, b in [("A", "C"), ("A", "D"), ("B", "C"), ("B", "D"), ("C", "D")]]
    assert s[("A", "B")] < 0.1
    assert min(different) > 20 * s[("A", "B")]
    assert report.extremes["task"][1][:2] == ("A", "B")  # the smallest shift of the dimension
    # the model view: a1 against the rest of task A (a2, same distribution) vs against everyone
    ms = spark.sql(
        f"SELECT dimension, shift FROM filterdb.model_shifts WHERE run_id = '{report.run_id}' AND name = 'a1'"
    ).toPandas().set_index("dimension")["shift"]
    assert ms["task"] < 0.2 < ms["all"]


def test_where_scope_cli_coefficients_and_latest_views(spark, synthetic):
    """The CLI with --where (scopes the basis), --bins and --write-coefficients; runs keep
    history and ``<table>_latest`` shows the latest complete run of each scope."""
    from filterspark.cli import main
    from filterspark.delta.schemas import ANALYSIS_RUNS
    from filterspark.delta.tables import rows_frame

    warehouse, first = synthetic
    where = "task IN ('A', 'C') AND conv_depth_norm <= 0.3"
    args = ["analyze", "--warehouse", warehouse, "--by", "task,depth_decile", "--where", where, "--bins", "20"]
    assert main([*args, "--write-coefficients"]) == 0
    runs = spark.sql("SELECT run_id, scope FROM filterdb.analysis_runs ORDER BY run_id").collect()
    assert [r.scope for r in runs] == ["all", where] and runs[0].run_id == first.run_id
    scoped = runs[1].run_id
    ref = Reference(load_population(spark, warehouse, where), ["task", "depth_decile"], bins=20)
    tables = run_tables(spark, warehouse, scoped)
    check_against_reference(tables, ref, ["task", "depth_decile"], small=200)
    assert set(tables["pca_basis"]["scope"]) == {where}

    # stored coefficients equal the reference projection, filter by filter
    got = spark.sql("SELECT * FROM filterdb.coefficients_latest").toPandas()
    got = got.sort_values(["model_id", "layer_index", "filter_index"]).reset_index(drop=True)
    assert len(got) == len(ref.pdf) and set(got["run_id"]) == {scoped}
    np.testing.assert_array_equal(got[["model_id", "layer_index", "filter_index"]], ref.pdf[["model_id", "layer_index", "filter_index"]])
    np.testing.assert_allclose(got[[f"c{i}" for i in range(9)]].to_numpy(), ref.coeffs, atol=TOL)

    latest = lambda t: {r[0] for r in spark.sql(f"SELECT DISTINCT run_id FROM filterdb.{t}_latest").collect()}  # noqa: E731
    assert latest("shifts") == latest("pca_basis") == {first.run_id, scoped}
    # a newer complete run of scope 'all' (here: one without rows) hides the older one
    newer = {"run_id": "9" + first.run_id[1:], "scope": "all", "run_at": first_run_at(spark, first.run_id)}
    rows_frame(spark, [newer], ANALYSIS_RUNS).write.format("delta").mode("append").save(
        table_path(warehouse, "filterdb", "analysis_runs")
    )
    assert latest("shifts") == latest("model_shifts") == {scoped}
    assert spark.sql("SELECT count(*) FROM filterdb.shifts").first()[0] > 0  # history kept


def first_run_at(spark, run_id: str):
    return spark.sql(f"SELECT run_at FROM filterdb.analysis_runs WHERE run_id = '{run_id}'").first()[0]


def test_cli_rejects_bad_requests(spark, synthetic, capsys):
    from filterspark.cli import main

    warehouse, _ = synthetic
    assert main(["analyze", "--warehouse", warehouse, "--by", "task,nosuch"]) == 2
    assert "unknown dimension 'nosuch'" in capsys.readouterr().err
    assert main(["analyze", "--warehouse", warehouse, "--where", "nosuch_column > 1"]) == 2
    assert "bad where" in capsys.readouterr().err
    assert main(["analyze", "--warehouse", warehouse, "--where", "task = 'nothing'"]) == 2
    assert "no filters in scope" in capsys.readouterr().err


# --- pure aggregation helpers ---------------------------------------------------------------------


def test_partition_accumulator_is_batch_invariant_and_merges():
    from filterspark.kernels import coefficients as co
    from filterspark.kernels.pca import moments, pca_direct, project, scale_filters

    rng = np.random.default_rng(3)
    scaled = scale_filters(_smooth(rng, 3000))
    basis = pca_direct(scaled)
    coeffs = project(scaled, basis)
    lo, hi = coeffs.min(), coeffs.max()
    codes = rng.integers(0, 3, 3000)
    names = ["g0", "g1", "g2"]
    ref = np.zeros(9)

    def accumulate(splits):
        acc = co.PartitionAccumulator(lo, hi, 70, ref, frozenset({0}))
        for s in splits:
            acc.add(scaled[s], coeffs[s], [(codes[s], names), (np.zeros(len(codes[s]), int), ["all"])])
        return acc

    one = accumulate([slice(0, 3000)]).summaries()
    # three tasks' accumulators merged on the driver, as the analysis merges them
    tasks = [accumulate([slice(0, 7), slice(7, 1000)]), accumulate([slice(1000, 2000)]), accumulate([slice(2000, 3000)])]
    merged = tasks[0].merge(tasks[1]).merge(tasks[2]).summaries()
    assert set(one) == set(merged)
    for key, g in one.items():
        assert merged[key].n == g.n
        np.testing.assert_array_equal(merged[key].hist, g.hist)
    for i, name in enumerate(names):
        m = codes == i
        g = merged[(0, name)]
        assert g.n == m.sum()
        np.testing.assert_array_equal(g.hist, np.stack([np.histogram(coeffs[m, j], 70, (lo, hi))[0] for j in range(9)]))
        np.testing.assert_allclose(g.moments.cross, moments(scaled[m]).cross, rtol=1e-12)
        stats = co.group_stats(g, basis, lo, hi)
        np.testing.assert_allclose(stats["std"], coeffs[m].std(axis=0, ddof=1), rtol=1e-10)
    assert merged[(1, "all")].fine is None and merged[(1, "all")].n == 3000


def test_quantiles_from_counts_within_one_bin():
    from filterspark.kernels.coefficients import quantiles_from_counts

    rng = np.random.default_rng(5)
    v = np.r_[rng.standard_normal(5000), rng.uniform(2, 3, 500)]
    lo, hi, k = v.min(), v.max(), 256
    counts = np.histogram(v, k, (lo, hi))[0][None, :]
    qs = [0.01, 0.25, 0.5, 0.9, 0.99]
    got = quantiles_from_counts(counts, lo, hi, qs)[0]
    np.testing.assert_allclose(got, np.quantile(v, qs), rtol=0, atol=(hi - lo) / k)
    assert np.isnan(quantiles_from_counts(np.zeros((1, 8), np.int64), 0, 1, [0.5])).all()
