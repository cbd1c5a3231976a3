"""The analysis of k x k kernels (``analyze --kernel 5x5``, ``7x7``) against the in-memory
numpy/sklearn/scipy reference of test_analyze (written from docs/definitions.md, no
package code), on a warehouse an older version analysed (its 3x3 run must stay readable).

The population: the demo zoo's own 5x5 and 7x7 nets (their ``kernels`` rows, as the
extraction wrote them) and, so that there are models, families and tasks to compare,
synthetic 5x5 and 7x7 kernels the fixture appends with Spark (``KERNELS`` schema) for
real layers of every other ok demo model.
"""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import gaussian_filter

from compare import readme_sql
from filterspark.delta.registry import register_tables
from filterspark.delta.warehouse import table_path
from filterspark.pipelines.analyze import AnalyzeOptions, run_analysis
from filterspark.pipelines.analyze.regroup import ShiftsOptions, find_run, shifts_by
from test_analyze import Reference, check_against_reference, run_tables

DIMS = ["task", "family", "depth_decile"]
#: Columns a warehouse analysed before k x k kernels lacks.
NEW_COLUMNS = {"kernel", "vector", "components"}


def path(warehouse: str, table: str) -> str:
    return table_path(warehouse, "filterdb", table)


def as_older_version(spark, warehouse: str) -> None:
    """Rewrite every analysis table without the columns added for k x k kernels."""
    from filterspark.delta.schemas import ANALYSIS_TABLES

    for name in ANALYSIS_TABLES:
        try:
            df = spark.read.format("delta").load(path(warehouse, name))
        except Exception:  # noqa: BLE001 - a table the run did not write (coefficients)
            continue
        old = df.drop(*NEW_COLUMNS).localCheckpoint()
        old.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(path(warehouse, name))


def write_kernels(spark, warehouse: str, per_layer: int = 120) -> None:
    """Append k x k kernels (5x5 on two layers, 7x7 on one, of every ok demo model that has
    no kernels of that k) with model-dependent structure, one NaN kernel and one all-zero
    kernel."""
    from filterspark.delta.schemas import KERNELS, KERNELS_PARTITION_COLUMNS

    models = spark.read.format("delta").load(path(warehouse, "models")).where("status = 'ok'").toPandas()
    layers = spark.read.format("delta").load(path(warehouse, "layers")).toPandas()
    real = {(r.model_id, r.k) for r in real_kernels(spark, warehouse).itertuples()}
    rng = np.random.default_rng(18)
    rows = []
    for m in models.sort_values("model_id").itertuples():
        mine = layers[layers["model_id"] == m.model_id].sort_values("layer_index")
        sigma = 0.6 + 0.4 * (sum(map(ord, m.family)) % 3)  # smoothness differs by family
        for (k, layer) in ((5, mine.iloc[0]), (5, mine.iloc[-1]), (7, mine.iloc[len(mine) // 2])):
            if (m.model_id, k) in real:
                continue
            x = gaussian_filter(rng.standard_normal((per_layer, k + 2, k + 2)), sigma=(0, sigma, sigma))[:, 1:-1, 1:-1]
            x = x.reshape(per_layer, k * k) * rng.lognormal(0, 0.5, (per_layer, 1))
            x += (0.05 if m.task == "classification" else 0.2) * rng.standard_normal(x.shape)
            x = x.astype(np.float32)
            if k == 5 and not rows:
                x[0, 3], x[1] = np.nan, 0.0
            for i in range(per_layer):
                rows.append((int(m.model_id), int(layer.layer_index), i, k, x[i].tolist(), m.task, m.visual_category,
                             m.training_dataset, m.family, int(layer.conv_depth), float(layer.conv_depth_norm)))
    spark.createDataFrame(rows, schema=KERNELS).write.format("delta").mode("append").partitionBy(
        *KERNELS_PARTITION_COLUMNS).save(path(warehouse, "kernels"))


def real_kernels(spark, warehouse: str) -> pd.DataFrame:
    """``(model_id, name, k, n)``: the kernels the extraction wrote (none before it writes them)."""
    import os

    if not os.path.isdir(f"{path(warehouse, 'kernels')}/_delta_log"):
        return pd.DataFrame(columns=["model_id", "name", "k", "n"])
    kernels = spark.read.format("delta").load(path(warehouse, "kernels"))
    models = spark.read.format("delta").load(path(warehouse, "models")).select("model_id", "name")
    return kernels.groupBy("model_id", "k").count().withColumnRenamed("count", "n").join(models, "model_id").toPandas()


def load_kernels(spark, warehouse: str, k: int) -> pd.DataFrame:
    """The k x k kernels of ok models with their model row (the test may collect)."""
    kernels = spark.read.format("delta").load(path(warehouse, "kernels")).where(f"k = {k}")
    models = spark.read.format("delta").load(path(warehouse, "models")).where("status = 'ok'")
    cols = ["model_id", "name", "task", "visual_category", "training_dataset", "family", "metadata"]
    df = kernels.select("model_id", "layer_index", "filter_index", "weights", "conv_depth_norm").join(
        models.select(*cols), "model_id")
    return df.toPandas().sort_values(["model_id", "layer_index", "filter_index"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def kernel_runs(spark, analyzed_warehouse, tmp_path_factory):
    """The analysed demo warehouse as an older version left it, with k x k kernels; then a
    5x5 run (files scan), a 5x5 run read by Spark's reader and a 7x7 run on 4 components (CLI)."""
    from filterspark.cli import main

    warehouse = str(tmp_path_factory.mktemp("kernels") / "warehouse")
    shutil.copytree(analyzed_warehouse["warehouse"], warehouse)
    as_older_version(spark, warehouse)
    real = real_kernels(spark, warehouse)
    write_kernels(spark, warehouse)
    register_tables(spark, warehouse)
    old_3x3 = find_run(spark, warehouse_of(warehouse))
    five = run_analysis(spark, AnalyzeOptions(warehouse=warehouse, kernel="5x5", by=tuple(DIMS)))
    five_spark = run_analysis(spark, AnalyzeOptions(warehouse=warehouse, kernel="5x5", by=("task",), scan="spark"))
    assert main(["analyze", "--warehouse", warehouse, "--kernel", "7x7", "--components", "4", "--by", "task,family"]) == 0
    seven = find_run(spark, warehouse_of(warehouse), kernel="7x7")
    return {"warehouse": warehouse, "old": old_3x3, "five": five, "five_spark": five_spark, "seven": seven,
            "real": real}


def warehouse_of(warehouse: str):
    from filterspark.delta.warehouse import WarehouseOptions

    return WarehouseOptions(warehouse=warehouse).tables


def test_5x5_run_equals_the_numpy_reference(spark, kernel_runs):
    warehouse, report = kernel_runs["warehouse"], kernel_runs["five"]
    assert report.scan == "files" and report.kernel == "5x5"
    ref = Reference(load_kernels(spark, warehouse, 5), DIMS)
    assert ref.d == 25 and report.n_filters == len(ref.pdf) > 1000
    real = kernel_runs["real"]  # the demo zoo's own 5x5 net is in the population
    assert "digits-largekernel5" in set(real[real["k"] == 5]["name"]) & set(ref.pdf["name"])
    tables = run_tables(spark, warehouse, report.run_id)
    check_against_reference(tables, ref, DIMS)
    for name, table in tables.items():
        assert set(table["kernel"]) == {"5x5"}, name
    print(f"\n5x5 explained-variance ratios: {np.round(ref.evr, 4).tolist()}")


def test_5x5_layer_histograms_and_neighbours_equal_numpy(spark, kernel_runs):
    warehouse, report = kernel_runs["warehouse"], kernel_runs["five"]
    ref = Reference(load_kernels(spark, warehouse, 5), DIMS)
    rows = spark.read.format("delta").load(path(warehouse, "layer_histograms")).where(
        f"run_id = '{report.run_id}'").toPandas()
    keys = ref.pdf[["model_id", "layer_index"]].to_numpy()
    for (model_id, layer), got in rows.groupby(["model_id", "layer_index"]):
        mine = (keys[:, 0] == model_id) & (keys[:, 1] == layer)
        counts = np.zeros((25, ref.bins), np.int64)
        np.add.at(counts, (got["component"].to_numpy(), got["bin"].to_numpy()), got["count"].to_numpy())
        np.testing.assert_array_equal(counts, ref.counts(mine), err_msg=f"{model_id}/{layer}")
        assert set(got["n_filters"]) == {mine.sum()}
    assert len(rows.groupby(["model_id", "layer_index"])) == len({tuple(k) for k in keys})

    near = spark.read.format("delta").load(path(warehouse, "model_neighbours")).where(
        f"run_id = '{report.run_id}' AND rank = 1").toPandas()
    ids = sorted(set(ref.pdf["model_id"]))
    for row in near.itertuples():
        own = ref.pdf["model_id"].to_numpy() == row.model_id
        shifts = {j: ref.shift(own, ref.pdf["model_id"].to_numpy() == j)[0] for j in ids if j != row.model_id}
        best = min(shifts, key=lambda j: (shifts[j], j))
        assert row.neighbour_id == best and row.shift == pytest.approx(shifts[best], rel=1e-9)


def test_spark_reader_fallback_equals_the_files_scan(spark, kernel_runs):
    warehouse, files, frame = kernel_runs["warehouse"], kernel_runs["five"], kernel_runs["five_spark"]
    assert frame.scan.startswith("spark") and frame.n_filters == files.n_filters
    np.testing.assert_allclose(frame.basis.components, files.basis.components, atol=1e-12)
    assert frame.range == pytest.approx(files.range, abs=1e-12)
    read = lambda run_id: spark.read.format("delta").load(path(warehouse, "shifts")).where(  # noqa: E731
        f"run_id = '{run_id}' AND dimension = 'task'").toPandas().sort_values(["group_a", "group_b"])
    np.testing.assert_allclose(read(frame.run_id)["shift"], read(files.run_id)["shift"], rtol=1e-9)


def test_7x7_on_4_components_end_to_end(spark, kernel_runs, capsys):
    from filterspark.cli import main

    warehouse, seven = kernel_runs["warehouse"], kernel_runs["seven"]
    assert seven.kernel == "7x7" and seven.components == 4 and len(seven.evr) == 49
    ref = Reference(load_kernels(spark, warehouse, 7), ["task", "family"], components=4)
    real = kernel_runs["real"]  # the demo zoo's own 7x7 net is in the population
    assert "digits-largekernel7" in set(real[real["k"] == 7]["name"]) & set(ref.pdf["name"])
    check_against_reference(run_tables(spark, warehouse, seven.run_id), ref, ["task", "family"])
    print(f"\n7x7 explained-variance ratios: {np.round(ref.evr, 4).tolist()}")

    # any grouping, per kernel: the command, the README's table function and its plain SQL
    result = shifts_by(spark, ShiftsOptions(warehouse=warehouse, by="family", kernel="7x7"))
    assert result.run.run_id == seven.run_id
    stored = spark.read.format("delta").load(path(warehouse, "shifts")).where(
        f"run_id = '{seven.run_id}' AND dimension = 'family'").toPandas()
    expected = {(r.group_a, r.group_b): r.shift for r in stored.itertuples()}
    assert {(r["group_a"], r["group_b"]): pytest.approx(r["shift"], abs=1e-12) for r in result.rows} == expected
    for marker in ("any-grouping-shifts-function", "any-grouping-shifts-sql"):
        query = readme_sql(marker).replace("'3x3'", "'7x7'")
        got = {(r["group_a"], r["group_b"]): r["shift"] for r in spark.sql(query).collect()}
        assert got.keys() == expected.keys(), marker
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-9), (marker, key)

    capsys.readouterr()  # what was printed so far
    assert main(["shifts", "--warehouse", warehouse, "--by", "family", "--kernel", "7x7", "--format", "csv"]) == 0
    out = capsys.readouterr()
    assert "kernel 7x7" in out.err and len(pd.read_csv(pd.io.common.StringIO(out.out))) == len(expected)
    name = ref.pdf["name"].iloc[0]
    assert main(["neighbours", "--warehouse", warehouse, "--model", name, "--kernel", "7x7", "--format", "csv"]) == 0
    assert f"run {seven.run_id}" in capsys.readouterr().err

    # an incremental 7x7 run: no new model, the same tables from the carried layer histograms
    again = run_analysis(spark, AnalyzeOptions(warehouse=warehouse, kernel="7x7", incremental=True))
    assert again.base_run_id == seven.run_id and again.models_rescanned == 0 and again.outside_share == 0.0
    redo = spark.read.format("delta").load(path(warehouse, "shifts")).where(
        f"run_id = '{again.run_id}' AND dimension = 'family'").toPandas()
    assert {(r.group_a, r.group_b): pytest.approx(r.shift, abs=1e-12) for r in redo.itertuples()} == expected


def test_the_older_versions_3x3_run_stays_the_latest_3x3_run(spark, kernel_runs):
    """The warehouse's 3x3 run (written without ``kernel``) reads as 3x3: the views show
    the latest run of each kernel, the commands' default is still that run."""
    warehouse, old = kernel_runs["warehouse"], kernel_runs["old"]
    assert old.kernel == "3x3" and old.components == 9
    register_tables(spark, warehouse)
    latest = spark.sql("SELECT kernel, collect_set(run_id) AS runs, count(*) AS n FROM filterdb.pca_basis_latest "
                       "GROUP BY kernel").toPandas().set_index("kernel")
    assert set(latest.index) == {"3x3", "5x5", "7x7"}
    assert list(latest.loc["3x3", "runs"]) == [old.run_id] and latest.loc["3x3", "n"] == 9
    assert latest.loc["5x5", "n"] == 25 and latest.loc["7x7", "n"] == 49
    assert find_run(spark, warehouse_of(warehouse)).run_id == old.run_id
    shifts = spark.sql("SELECT * FROM filterdb.shifts_latest WHERE kernel = '3x3'").toPandas()
    assert set(shifts["run_id"]) == {old.run_id} and len(shifts) > 0
    rows = shifts_by(spark, ShiftsOptions(warehouse=warehouse, by="family")).rows
    assert rows and {r["run_id"] for r in rows} == {old.run_id}
    basis = spark.sql(f"SELECT * FROM filterdb.pca_basis WHERE run_id = '{old.run_id}'").toPandas()
    assert basis["vector"].isna().all() and basis["kernel"].isna().all()  # NULL: written before the columns


def test_basis_figures_of_each_kernel(spark, kernel_runs):
    from filterspark.outputs import plots
    from filterspark.outputs import report_data as rd

    register_tables(spark, kernel_runs["warehouse"])
    runs = rd.kernel_runs(spark, "filterdb")
    assert [r["kernel"] for r in runs] == ["5x5", "7x7"]
    assert runs[0]["run_id"] == kernel_runs["five_spark"].run_id  # the latest 5x5 run of scope all
    assert [r["kernel"] for r in rd.kernel_runs(spark, "filterdb", kernels=("7x7",))] == ["7x7"]
    assert rd.analysis_run(spark, "filterdb")["run_id"] == kernel_runs["old"].run_id  # the report's 3x3 run
    for run in runs:
        k = int(run["kernel"].split("x")[0])
        basis = rd.run_frame(spark, "filterdb", "pca_basis", run["run_id"]).sort_values("component").reset_index(drop=True)
        fig = plots.pca_basis_figure(basis)
        images = [ax for ax in fig.axes if (ax.get_gid() or "").startswith("component-")]
        assert len(images) == k * k
        for c, ax in enumerate(images):
            np.testing.assert_array_equal(np.ma.filled(ax.images[0].get_array().astype(float), np.nan),
                                          np.asarray(basis.loc[c, "vector"]).reshape(k, k))
        line = next(li for li in plots.explained_variance_figure(basis).axes[0].lines if li.get_gid() == "cumulative")
        np.testing.assert_allclose(line.get_ydata(), np.cumsum(run["explained_variance_ratio"]), rtol=1e-12)
        assert plots.to_png(fig)[:4] == b"\x89PNG"

    # the report draws them after the 3x3 run's figures (here without one: they come first)
    from filterspark.outputs.report import ReportOptions, build_figures

    def kernel_figures(**options) -> list[str]:
        names = []
        for entry, _ in build_figures(spark, ReportOptions(warehouse=kernel_runs["warehouse"], **options), None):
            if not entry.name.startswith(("pca_basis_", "explained_variance_")):
                break  # the quality figures follow
            names.append(entry.name)
        return names

    assert kernel_figures() == ["pca_basis_5x5", "explained_variance_5x5", "pca_basis_7x7", "explained_variance_7x7"]
    assert kernel_figures(kernels=("7x7",)) == ["pca_basis_7x7", "explained_variance_7x7"]
