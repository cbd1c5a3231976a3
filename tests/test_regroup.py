"""Any grouping's shifts from ``layer_histograms`` (``filterspark shifts --by``, the SQL
function, the README's SQL), ``analyze --incremental`` and ``model_neighbours``, against
the in-memory reference of test_analyze (the published method, sharing no code with the
job) on the run's basis and range."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from filterspark.delta.registry import register_tables
from filterspark.delta.warehouse import table_path
from filterspark.pipelines.analyze import AnalyzeOptions, run_analysis
from filterspark.pipelines.analyze.regroup import ShiftsOptions, shifts_by
from compare import readme_sql
from test_analyze import Reference, load_population

W = [f"w{i}" for i in range(9)]
SHIFT_COLUMNS = ("group_a", "group_b", "shift", "kl_components", "n_a", "n_b", "small")


def read(spark, warehouse: str, table: str, run_id: str) -> pd.DataFrame:
    return spark.read.format("delta").load(table_path(warehouse, "filterdb", table)).where(f"run_id = '{run_id}'").toPandas()


def population(spark, warehouse: str) -> pd.DataFrame:
    """Filters of ok models with their model columns, ``format`` and ``layer_index``."""
    pdf = load_population(spark, warehouse)
    models = spark.read.format("delta").load(table_path(warehouse, "filterdb", "models")).select("model_id", "format").toPandas()
    return pdf.merge(models, on="model_id").sort_values(["model_id", "layer_index", "filter_index"]).reset_index(drop=True)


def frozen_reference(pdf: pd.DataFrame, basis: pd.DataFrame, run: pd.Series, dims: list[str]) -> Reference:
    """The reference method on a run's basis and range (no refit)."""
    ref = Reference.__new__(Reference)
    w = pdf[W].to_numpy(np.float64)
    ref.pdf = pdf.reset_index(drop=True)
    ref.d = ref.n_comp = 9
    peak = np.abs(w).max(axis=1, keepdims=True)
    ref.scaled = np.where(peak > 0, w / np.where(peak > 0, peak, 1.0), w)
    basis = basis.sort_values("component")
    ref.components = basis[[f"v{i}" for i in range(9)]].to_numpy()
    ref.mean = np.asarray(basis["mean"].iloc[0])
    ref.evr = basis["explained_variance_ratio"].to_numpy()
    ref.coeffs = (ref.scaled - ref.mean) @ ref.components.T
    ref.lo, ref.hi, ref.bins = float(run["range_lo"]), float(run["range_hi"]), int(run["bins"])
    ref.labels = {d: ref._labels(d) for d in dims}
    ref.labels["all"] = np.array(["all"] * len(ref.pdf), dtype=object)
    return ref


def expected_shifts(ref: Reference, dim: str, small: int) -> dict[tuple[str, str], tuple]:
    groups = sorted(set(ref.labels[dim]))
    out = {}
    for a in groups:
        for b in groups:
            if a != b:
                total, per = ref.shift(ref.mask(dim, a), ref.mask(dim, b))
                na, nb = int(ref.mask(dim, a).sum()), int(ref.mask(dim, b).sum())
                out[(a, b)] = (total, per, na, nb, na < small or nb < small)
    return out


def assert_rows_match(rows: list[dict], expected: dict, rtol: float = 1e-9) -> None:
    got = {(r["group_a"], r["group_b"]): r for r in rows}
    assert set(got) == set(expected)
    for key, (total, per, na, nb, small) in expected.items():
        r = got[key]
        assert r["shift"] == pytest.approx(total, rel=rtol, abs=1e-12), key
        np.testing.assert_allclose(r["kl_components"], per, rtol=rtol, atol=1e-12)
        assert (r["n_a"], r["n_b"], r["small"]) == (na, nb, small), key


@pytest.fixture(scope="module")
def run(spark, analyzed_warehouse):
    wh = analyzed_warehouse["warehouse"]
    register_tables(spark, wh)
    report = analyzed_warehouse["analysis"]
    runs = read(spark, wh, "analysis_runs", report.run_id)
    return {"warehouse": wh, "report": report, "run": runs.iloc[0],
            "basis": read(spark, wh, "pca_basis", report.run_id)}


DIMENSION_EXPRESSIONS = {"variant": "metadata['variant']"}


def test_shifts_by_each_analysed_dimension_equals_the_runs_shifts(spark, run):
    shifts = read(spark, run["warehouse"], "shifts", run["report"].run_id)
    assert run["report"].dimensions, "the demo run has dimensions"
    for dim in run["report"].dimensions:
        result = shifts_by(spark, ShiftsOptions(warehouse=run["warehouse"], by=DIMENSION_EXPRESSIONS.get(dim, dim)))
        assert result.run.run_id == run["report"].run_id
        mine = {(r["group_a"], r["group_b"]): r for r in result.rows}
        theirs = shifts[shifts["dimension"] == dim]
        assert len(mine) == len(theirs) > 0, dim
        for row in theirs.itertuples():
            r = mine[(row.group_a, row.group_b)]
            assert abs(r["shift"] - row.shift) <= 1e-12, (dim, row.group_a, row.group_b)
            np.testing.assert_allclose(r["kl_components"], row.kl_components, rtol=0, atol=1e-12)
            assert (r["n_a"], r["n_b"], r["small"]) == (row.n_a, row.n_b, row.small)


def test_shifts_by_any_expression_equals_numpy_on_the_runs_basis(spark, run):
    pdf = population(spark, run["warehouse"])
    pdf["variant_key"] = [(m or {}).get("variant") for m in pdf["metadata"]]
    ref = frozen_reference(pdf, run["basis"], run["run"], ["format", "variant_key"])
    small = int(run["run"]["min_group_filters"])
    for by, dim in (("format", "format"), ("metadata['variant']", "variant_key")):
        result = shifts_by(spark, ShiftsOptions(warehouse=run["warehouse"], by=by))
        assert_rows_match(result.rows, expected_shifts(ref, dim, small))
    # a predicate: the same basis and range, only the plaincnn family's layers
    subset = pdf[pdf["family"] == "plaincnn"]
    assert 0 < len(subset) < len(pdf)
    sub = frozen_reference(subset, run["basis"], run["run"], ["task"])
    result = shifts_by(spark, ShiftsOptions(warehouse=run["warehouse"], by="task", where="family = 'plaincnn'"))
    assert_rows_match(result.rows, expected_shifts(sub, "task", small))
    assert "refits the basis" in result.note


def test_the_readme_sql_and_the_table_function_give_the_commands_numbers(spark, run):
    command = shifts_by(spark, ShiftsOptions(warehouse=run["warehouse"], by="family")).rows
    expected = {(r["group_a"], r["group_b"]): (r["shift"], np.asarray(r["kl_components"]), r["n_a"], r["n_b"], r["small"])
                for r in command}
    for marker, rtol in (("any-grouping-shifts-sql", 1e-9), ("any-grouping-shifts-function", 1e-12)):
        rows = [r.asDict() for r in spark.sql(readme_sql(marker)).collect()]
        assert_rows_match(rows, expected, rtol=rtol)


def test_shifts_and_neighbours_commands(spark, run, capsys):
    from filterspark.cli import main

    assert main(["shifts", "--warehouse", run["warehouse"], "--by", "format", "--format", "csv"]) == 0
    out = capsys.readouterr()
    assert "refits the basis" in out.err
    table = pd.read_csv(pd.io.common.StringIO(out.out))
    assert list(table.columns) == list(SHIFT_COLUMNS)
    expected = shifts_by(spark, ShiftsOptions(warehouse=run["warehouse"], by="format")).rows
    assert len(table) == len(expected) > 0
    name = "digits-cnn-pt"
    assert main(["neighbours", "--warehouse", run["warehouse"], "--model", name, "--format", "csv"]) == 0
    near = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))
    assert list(near["rank"]) == list(range(1, len(near) + 1)) and 0 < len(near) <= 10
    assert main(["shifts", "--warehouse", run["warehouse"], "--by", "no_such_column"]) == 2
    assert "bad grouping" in capsys.readouterr().err


def _model_histograms(ref: Reference) -> dict[int, np.ndarray]:
    ids = ref.pdf["model_id"].to_numpy()
    return {int(m): ids == m for m in np.unique(ids)}


def assert_neighbours_match(table: pd.DataFrame, ref: Reference, k: int = 10) -> None:
    masks = _model_histograms(ref)
    models = sorted(masks)
    for m in models:
        dists = sorted((ref.shift(masks[m], masks[o])[0], o) for o in models if o != m)[:k]
        got = table[table["model_id"] == m].sort_values("rank")
        assert list(got["rank"]) == list(range(1, len(dists) + 1))
        np.testing.assert_allclose(got["shift"], [d for d, _ in dists], rtol=1e-9)
        # the same models, up to ties
        for (d, o), row in zip(dists, got.itertuples()):
            assert row.neighbour_id == o or row.shift == pytest.approx(d, rel=1e-9)


def test_model_neighbours_equal_numpys_nearest_models(spark, run):
    pdf = population(spark, run["warehouse"])
    ref = frozen_reference(pdf, run["basis"], run["run"], [])
    table = read(spark, run["warehouse"], "model_neighbours", run["report"].run_id)
    assert table["model_id"].nunique() == pdf["model_id"].nunique()
    assert_neighbours_match(table, ref)


def test_layer_histograms_are_the_layers_counts(spark, run):
    pdf = population(spark, run["warehouse"])
    ref = frozen_reference(pdf, run["basis"], run["run"], [])
    table = read(spark, run["warehouse"], "layer_histograms", run["report"].run_id)
    check_layer_histograms(table, ref)
    assert (table["bin"] >= 0).all() and (table["bin"] < ref.bins).all()  # a full run: nothing outside


def check_layer_histograms(table: pd.DataFrame, ref: Reference) -> None:
    """Every layer's rows equal numpy's counts, below/above counts and sums."""
    keys = ref.pdf[["model_id", "layer_index"]].to_numpy()
    layers = {tuple(k) for k in np.unique(keys, axis=0)}
    assert {tuple(k) for k in table[["model_id", "layer_index"]].drop_duplicates().to_numpy()} == layers
    grouped = {key: part for key, part in table.groupby(["model_id", "layer_index"])}
    for key in layers:
        mask = (keys[:, 0] == key[0]) & (keys[:, 1] == key[1])
        rows = grouped[key]
        for c in range(9):
            values = ref.coeffs[mask, c]
            expected = np.histogram(values, ref.bins, (ref.lo, ref.hi))[0]
            part = rows[rows["component"] == c]
            got = np.zeros(ref.bins + 2, np.int64)
            got[part["bin"].to_numpy() + 1] = part["count"].to_numpy()
            np.testing.assert_array_equal(got[1:-1], expected)
            assert got[0] == (values < ref.lo).sum() and got[-1] == (values > ref.hi).sum()
            assert (part["n_filters"] == mask.sum()).all()
            assert part["coef_sum"].iloc[0] == pytest.approx(values.sum(), rel=1e-9, abs=1e-9)
            assert part["coef_sumsq"].iloc[0] == pytest.approx((values ** 2).sum(), rel=1e-9)


# --- incremental --------------------------------------------------------------------------------


def _write_variant(source: Path, target: Path, change) -> None:
    """A safetensors checkpoint with its first 3x3 conv weight changed by ``change``."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(source))
    name = next(k for k, v in tensors.items() if v.ndim == 4 and v.shape[-2:] == (3, 3))
    tensors[name] = change(tensors[name]).astype(tensors[name].dtype)
    save_file(tensors, str(target))


def test_incremental_run_covers_all_models_on_the_frozen_basis(spark, analyzed_warehouse, tmp_path):
    from filterspark.pipelines.extract import ExtractOptions, run_extraction
    from filterspark.sources.catalog import read_catalog

    wh = str(tmp_path / "warehouse")
    shutil.copytree(analyzed_warehouse["warehouse"], wh)
    register_tables(spark, wh)
    base_id = analyzed_warehouse["analysis"].run_id
    entries = {e.name: e for e in read_catalog(analyzed_warehouse["catalog"])}
    source = next(e for e in entries.values() if e.format == "safetensors")
    replaced_path, added_path = tmp_path / "replaced.safetensors", tmp_path / "added.safetensors"
    rng = np.random.default_rng(7)
    _write_variant(Path(source.path), replaced_path, lambda w: w + rng.normal(0, 0.05, w.shape))
    # every filter of the added model's first layer is constant and negative: its first
    # coefficient falls below the frozen range
    _write_variant(Path(source.path), added_path, lambda w: np.full_like(w, -0.5))
    replaced = replace(source, path=str(replaced_path))
    added = replace(source, name="added-constant-model", path=str(added_path))
    run_extraction(spark, [replaced, added], ExtractOptions(warehouse=wh))

    report = run_analysis(spark, AnalyzeOptions(warehouse=wh, incremental=True, outside_threshold=1e-6))
    assert report.base_run_id == base_id and report.models_rescanned == 2
    assert any("full run" in w for w in report.warnings)
    runs = read(spark, wh, "analysis_runs", report.run_id).iloc[0]
    base = read(spark, wh, "analysis_runs", base_id).iloc[0]
    assert (runs["range_lo"], runs["range_hi"], runs["base_run_id"]) == (base["range_lo"], base["range_hi"], base_id)
    basis = read(spark, wh, "pca_basis", report.run_id)
    np.testing.assert_array_equal(basis.sort_values("component")["v0"], read(spark, wh, "pca_basis", base_id).sort_values("component")["v0"])

    pdf = population(spark, wh)
    assert {replaced.model_id, added.model_id} <= set(pdf["model_id"])
    dims = list(report.dimensions)
    ref = frozen_reference(pdf, basis, runs, [d for d in dims if d != "variant"])
    layers = read(spark, wh, "layer_histograms", report.run_id)
    check_layer_histograms(layers, ref)  # the replaced model's rows are of its new weights
    outside = ((ref.coeffs < ref.lo) | (ref.coeffs > ref.hi)).sum()
    assert outside > 0 and runs["outside_share"] == pytest.approx(outside / ref.coeffs.size, rel=1e-12)
    new_version = spark.read.format("delta").load(table_path(wh, "filterdb", "models")).where(
        f"model_id = {replaced.model_id}").first()["extracted_at"]
    assert set(layers[layers["model_id"] == replaced.model_id]["extracted_at"]) == {pd.Timestamp(new_version)}

    shifts = read(spark, wh, "shifts", report.run_id)
    small = int(runs["min_group_filters"])
    for dim in ("task", "depth_decile"):
        rows = shifts[shifts["dimension"] == dim].to_dict("records")
        assert_rows_match(rows, expected_shifts(ref, dim, small))
    stats = read(spark, wh, "coefficient_stats", report.run_id)
    everything = stats[stats["dimension"] == "all"].sort_values("component")
    np.testing.assert_allclose(everything["mean"], ref.coeffs.mean(axis=0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(everything["std"], ref.coeffs.std(axis=0, ddof=1), rtol=1e-7)
    assert_neighbours_match(read(spark, wh, "model_neighbours", report.run_id), ref)


def test_a_warehouse_of_an_older_version_gets_the_new_columns(spark, demo_warehouse, tmp_path):
    """analysis_runs written by an older version (without the incremental and neighbour
    columns): the run appends through Spark's writer, which adds them."""
    from pyspark.sql.types import StructType

    from filterspark.delta.schemas import ANALYSIS_RUNS
    from filterspark.delta.tables import ensure_table

    wh = str(tmp_path / "warehouse")
    shutil.copytree(demo_warehouse["warehouse"], wh)
    register_tables(spark, wh)
    new = {"base_run_id", "models_rescanned", "outside_share", "neighbours_k"}
    ensure_table(spark, wh, name="analysis_runs", schema=StructType([f for f in ANALYSIS_RUNS.fields if f.name not in new]))
    report = run_analysis(spark, AnalyzeOptions(warehouse=wh, by=("task",)))
    runs = read(spark, wh, "analysis_runs", report.run_id)
    assert new <= set(runs.columns) and len(runs) == 1
    assert runs["neighbours_k"][0] == 10 and runs["outside_share"][0] == 0.0
