"""The ``kernels`` table (k x k kernels beyond 3x3) and the ``kernels`` selection, on the demo zoo.

Expected rows are read here from the checkpoint files themselves (``torch.load`` with
``weights_only``, ONNX initializers, safetensors), not through the loaders."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from safetensors.torch import load_file

from filterspark.delta.warehouse import table_path
from filterspark.errors import OptionsError
from filterspark.kernels.quality import layer_quality
from filterspark.kernels.shapes import ALL_KERNEL_SIZES, parse_kernel_sizes, selected_sizes, square_sizes
from filterspark.pipelines.extract import ExtractOptions, run_extraction
from filterspark.sources.catalog import model_id_for, read_catalog

KXK_MODELS = ("digits-largekernel5", "digits-largekernel7", "digits-cnn5x5")


def test_kernel_selection_parses_and_refuses_clearly():
    assert parse_kernel_sizes("all") == ALL_KERNEL_SIZES == (2, 4, 5, 6, 7, 8, 9, 10, 11)
    assert parse_kernel_sizes(None) == ALL_KERNEL_SIZES
    assert parse_kernel_sizes("none") == ()
    assert parse_kernel_sizes(" 7, 5 ,5") == (5, 7)
    assert parse_kernel_sizes([13]) == (13,)  # beyond "all" when named
    with pytest.raises(OptionsError, match="filters table"):
        parse_kernel_sizes("3,5")
    with pytest.raises(OptionsError, match="at least 2"):
        parse_kernel_sizes("1")
    with pytest.raises(OptionsError, match="comma list"):
        parse_kernel_sizes("5x5")
    with pytest.raises(OptionsError, match="filters table"):
        ExtractOptions(warehouse="/tmp/unused", kernels="3")
    from filterspark.pipelines.importer import ImportOptions  # the import parses it the same way

    assert ImportOptions(warehouse="/tmp/unused", kernels="none").kernels == ()
    with pytest.raises(OptionsError, match="comma list"):
        ImportOptions(warehouse="/tmp/unused", kernels="five")
    counts = {"5x5": 8, "3x3": 896, "1x1": 4, "7x1": 2, "7x7": 0}
    assert square_sizes(counts) == (5,) and selected_sizes((5, 7), counts) == (5,) and selected_sizes((7,), counts) == ()


def test_cli_refuses_a_bad_selection_before_any_session(capsys):
    from filterspark.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["extract", "--kernels", "3"])
    assert exc.value.code == 2 and "filters table" in capsys.readouterr().err


def _catalog_rows(catalog: Path) -> dict[str, dict]:
    with open(catalog, newline="") as handle:
        return {r["name"]: r for r in csv.DictReader(handle)}


def _file_conv_weights(path: Path, fmt: str) -> list[np.ndarray]:
    """The 4-D conv weights of a checkpoint, in the network's order, read from the file."""
    if fmt == "onnx":
        model = onnx.load(str(path))
        values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        return [values[n.input[1]] for n in model.graph.node if n.op_type == "Conv"]
    state = load_file(str(path)) if fmt == "safetensors" else torch.load(path, weights_only=True)
    return [v.numpy() for v in state.values() if v.ndim == 4]


def _kernels(spark, warehouse: str, where: str = "true"):
    return spark.read.format("delta").load(table_path(warehouse, "filterdb", "kernels")).where(where)


def test_kernels_rows_equal_the_checkpoints_kernels(spark, demo_warehouse):
    """Per shape (5x5 and 7x7, depthwise layers included, from ONNX, PyTorch and
    safetensors files), the rows are exactly the kernels in the files, and as many as
    ``models.kernel_shape_counts`` counted."""
    root = Path(demo_warehouse["catalog"]).parent
    rows = _catalog_rows(demo_warehouse["catalog"])
    models = spark.read.format("delta").load(table_path(demo_warehouse["warehouse"], "filterdb", "models"))
    counts = {r.name: r.kernel_shape_counts for r in models.collect()}
    depthwise = 0
    for name in KXK_MODELS:
        weights = _file_conv_weights(root / rows[name]["path"], rows[name]["format"])
        got = _kernels(spark, demo_warehouse["warehouse"], f"model_id = {model_id_for(name)}").toPandas()
        for index, w in enumerate(weights):
            k = w.shape[2]
            mine = got[got.layer_index == index].sort_values("filter_index")
            if k in (1, 3):
                assert mine.empty, (name, index)
                continue
            depthwise += w.shape[1] == 1 and index > 0
            assert set(mine.k) == {k} and list(mine.filter_index) == list(range(w.shape[0] * w.shape[1]))
            assert np.array_equal(np.stack(mine.weights.to_numpy()), w.reshape(-1, k * k)), (name, index)
        for k in {w.shape[2] for w in weights} - {1, 3}:
            in_file = sum(w.shape[0] * w.shape[1] for w in weights if w.shape[2] == k)
            assert (got.k == k).sum() == in_file == counts[name][f"{k}x{k}"], (name, k)
        assert set(got.task) == {rows[name]["task"]} and set(got.family) == {rows[name]["family"]}
    assert depthwise == 2  # the depthwise 5x5 and 7x7 layers
    layers = spark.read.format("delta").load(table_path(demo_warehouse["warehouse"], "filterdb", "layers"))
    for name in KXK_MODELS[:2]:  # k x k layers carry their quality, as 3x3 ones do; 1x1 ones none
        weights = _file_conv_weights(root / rows[name]["path"], rows[name]["format"])
        stored = {r.layer_index: r for r in layers.where(f"model_id = {model_id_for(name)}").collect()}
        for index, w in enumerate(weights):
            if w.shape[2] == 1:
                assert stored[index].variance_entropy is None
                continue
            q = layer_quality(torch.tensor(w))
            assert stored[index].variance_entropy_norm == pytest.approx(q.variance_entropy_norm, rel=1e-9)
            assert stored[index].sparsity == q.sparsity and 0 < q.variance_entropy_norm < 0.98  # trained: not random
    total = _kernels(spark, demo_warehouse["warehouse"])
    assert total.count() == demo_warehouse["report"].kernels_written == 272 + 272 + 8
    assert {r.k for r in total.select("k").distinct().collect()} == {5, 7}


def _versions(spark, warehouse: str) -> dict[str, int]:
    from delta.tables import DeltaTable

    return {t: DeltaTable.forPath(spark, table_path(warehouse, "filterdb", t)).history(1).collect()[0].version
            for t in ("models", "layers", "filters", "kernels")}


def _sorted(df, keys=("model_id", "layer_index", "filter_index")):
    return df.toPandas().sort_values(list(keys)).reset_index(drop=True)


def test_changing_the_selection_re_extracts_only_what_it_concerns(spark, demo_warehouse, tmp_path):
    """``kernels=5`` then ``none`` then ``all`` on a copy of the demo warehouse: each run
    re-extracts only the models holding the sizes that changed, leaves ``filters`` as it
    was, and a repeated run commits nothing."""
    warehouse = str(tmp_path / "warehouse")
    shutil.copytree(demo_warehouse["warehouse"], warehouse)
    entries = read_catalog(demo_warehouse["catalog"])
    filters_before = _sorted(spark.read.format("delta").load(table_path(warehouse, "filterdb", "filters")))
    kernels_before = _sorted(_kernels(spark, warehouse))

    only5 = run_extraction(spark, entries, ExtractOptions(warehouse=warehouse, kernels="5"))
    assert only5.extracted == 1 and only5.ok == 1  # the 7x7 net alone changes
    assert dict(only5.devices).keys() == {"digits-largekernel7"}
    assert _sorted(_kernels(spark, warehouse)).equals(kernels_before[kernels_before.k == 5].reset_index(drop=True))
    versions = _versions(spark, warehouse)
    again = run_extraction(spark, entries, ExtractOptions(warehouse=warehouse, kernels="5"))
    assert again.extracted == 0 and _versions(spark, warehouse) == versions, "a re-run committed something"

    none = run_extraction(spark, entries, ExtractOptions(warehouse=warehouse, kernels="none"))
    assert set(none.devices) == {"digits-largekernel5", "digits-cnn5x5"} and none.kernels_written == 0
    assert _kernels(spark, warehouse).count() == 0
    filters = _sorted(spark.read.format("delta").load(table_path(warehouse, "filterdb", "filters")))
    assert filters.equals(filters_before)  # the 3x3 rows are the same whatever the selection

    back = run_extraction(spark, entries, ExtractOptions(warehouse=warehouse))
    assert back.extracted == 3 and back.kernels_written == 552
    assert _sorted(_kernels(spark, warehouse)).equals(kernels_before)
