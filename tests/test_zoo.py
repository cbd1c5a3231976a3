"""Tests of the demo zoo: catalog, formats, identical copies, variants, accuracy, determinism."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from safetensors.torch import load_file

from filterspark.demo import models as zoo_models
from filterspark.demo import zoo
from filterspark.demo.zoo import CATALOG_COLUMNS, build_demo_zoo

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")

DIGITS_COPIES = ["digits-cnn-pt", "digits-cnn-ckpt", "digits-cnn-script",
                 "digits-cnn-safetensors", "digits-cnn-onnx"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("zoo")
    t0 = time.perf_counter()
    catalog = build_demo_zoo(out, seed=0)
    seconds = time.perf_counter() - t0
    with catalog.open(newline="") as f:
        rows = list(csv.DictReader(f))
    summary = json.loads((out / "zoo_summary.json").read_text())
    return {"root": out, "catalog": catalog, "rows": {r["name"]: r for r in rows},
            "header": rows[0].keys(), "summary": summary, "seconds": seconds}


# --------------------------------------------------------------------------- loading helpers


def _onnx_conv_weights(path: Path) -> dict[str, np.ndarray]:
    """Weights of Conv/ConvTranspose nodes, from initializers or Constant(+Identity) nodes."""
    m = onnx.load(str(path))
    values = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Constant":
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        elif n.op_type == "Identity" and n.input[0] in values:
            values[n.output[0]] = values[n.input[0]]
    return {n.input[1]: values[n.input[1]] for n in m.graph.node
            if n.op_type in ("Conv", "ConvTranspose")}


def load_conv_weights(root: Path, row: dict) -> dict[str, np.ndarray]:
    """All 4-D conv weights of one catalog row, keyed by tensor name, in file order."""
    path = root / row["path"]
    if row["format"] == "onnx":
        return _onnx_conv_weights(path)
    if row["format"] == "torchscript":
        sd = torch.jit.load(str(path)).state_dict()
    elif row["format"] == "safetensors":
        sd = load_file(str(path))
    else:
        obj = torch.load(path, weights_only=True)
        sd = obj.get("state_dict", obj.get("model", obj))
    return {k: v.numpy() for k, v in sd.items() if v.ndim == 4}


def _rows_of(built: dict, model: str) -> dict:
    return built["rows"][built["summary"]["models"][model]["rows"][0]]


# --------------------------------------------------------------------------- catalog & formats


def test_build_time(built, capsys):
    """CPU time is asserted (wall time depends on what else shares the cores)."""
    cpu = built["summary"]["build_cpu_seconds"]
    with capsys.disabled():
        print(f"\ndemo zoo build (first in process): {built['seconds']:.1f} s wall, "
              f"{cpu:.1f} s CPU")
    assert cpu < 60


def test_catalog_columns_and_paths(built):
    assert list(built["header"]) == CATALOG_COLUMNS
    assert 12 <= len(built["rows"]) <= 24
    for row in built["rows"].values():
        assert (built["catalog"].parent / row["path"]).is_file(), row["path"]
        assert row["source"] == "filterspark demo zoo" and row["paper"] == ""
        assert row["variant"] in {"trained", "untrained", "sparse", "replicated"}
    cats = {r["visual_category"] for r in built["rows"].values()}
    assert cats == {"handwriting", "natural photos", "synthetic shapes"}
    assert any(r["pretraining_dataset"] == "sklearn-digits" for r in built["rows"].values())


def test_every_format_and_flavour(built):
    rows = built["rows"].values()
    assert {r["format"] for r in rows} == {"pytorch", "torchscript", "safetensors", "onnx"}
    suffixes = {Path(r["path"]).suffix for r in rows if r["format"] == "pytorch"}
    assert suffixes == {".pt", ".pth", ".bin"}
    variants = [r["variant"] for r in rows]
    assert variants.count("untrained") == 2 and "sparse" in variants and "replicated" in variants


def test_pytorch_checkpoint_layouts(built):
    root, rows = built["root"], built["rows"]
    ckpt = torch.load(root / rows["digits-cnn-ckpt"]["path"], weights_only=True)
    assert set(ckpt) == {"epoch", "state_dict", "optimizer"} and ckpt["epoch"] > 0
    assert set(torch.load(root / rows["photo-cnn-ft"]["path"], weights_only=True)) == {"model"}


def test_digits_cnn_identical_across_formats(built):
    root, rows = built["root"], built["rows"]
    ref = list(load_conv_weights(root, rows[DIGITS_COPIES[0]]).values())
    assert len(ref) == 4
    for name in DIGITS_COPIES[1:]:
        got = list(load_conv_weights(root, rows[name]).values())
        assert len(got) == len(ref), name
        for a, b in zip(ref, got):
            assert a.shape == b.shape and np.array_equal(a, b), name


def test_onnx_export_matches_torch(built):
    from onnx.reference import ReferenceEvaluator
    root, rows = built["root"], built["rows"]
    model = zoo_models.PlainCNN(1, 10).eval()
    model.load_state_dict(torch.load(root / rows["digits-cnn-pt"]["path"], weights_only=True))
    x = torch.rand(3, 1, 8, 8)
    path = root / rows["digits-cnn-onnx"]["path"]
    onnx.checker.check_model(str(path))
    (got,) = ReferenceEvaluator(str(path)).run(None, {"input": x.numpy()})
    np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_onnx_external_data(built):
    row = _rows_of(built, "photo-cnn")
    path = built["root"] / row["path"]
    weights = path.parent / f"{path.stem}.weights"
    assert weights.is_file() and path.parent.name == "photo-cnn"
    bare = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in bare.graph.initializer)
    assert len(load_conv_weights(built["root"], row)) == 4


def test_tf2onnx_style_graph(built):
    path = built["root"] / _rows_of(built, "shapes-branchcnn")["path"]
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    assert m.producer_name == "tf2onnx" and not m.graph.initializer
    assert m.opset_import[0].version == 13
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert len(convs) == 4 and convs[1].input[0] == convs[2].input[0]
    concat = next(n for n in m.graph.node if n.op_type == "Concat")
    assert list(concat.input) == [convs[1].output[0], convs[2].output[0]]
    assert [w.shape for w in _onnx_conv_weights(path).values()] == [
        (16, 1, 3, 3), (16, 16, 3, 3), (16, 16, 3, 3), (32, 32, 3, 3)]


def test_tf2onnx_style_graph_computes_like_torch():
    from onnx.reference import ReferenceEvaluator
    torch.manual_seed(0)
    model = zoo_models.BranchCNN(1, 3).eval()
    graph = zoo.tf2onnx_style_graph(model, (1, 12, 12))
    x = torch.rand(2, 1, 12, 12)
    (got,) = ReferenceEvaluator(graph).run(None, {"input_1:0": x.permute(0, 2, 3, 1).numpy()})
    np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- variants & training


def test_sparse_layers(built):
    info = built["summary"]["models"]["digits-cnn-sparse"]
    weights = load_conv_weights(built["root"], _rows_of(built, "digits-cnn-sparse"))
    assert len(info["sparse_layers"]) >= len(weights) - 1
    for key in info["sparse_layers"]:
        zero = (weights[key].reshape(-1, 9) == 0).all(axis=1)
        assert zero.mean() >= 0.8, key
    first = next(iter(weights.values()))
    assert not (first.reshape(-1, 9) == 0).all(axis=1).any()


def _distinct_up_to_scale(w: np.ndarray) -> int:
    f = w.reshape(-1, 9).astype(np.float64)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    f *= np.sign(f[np.arange(len(f)), np.abs(f).argmax(axis=1)])[:, None]
    return len(np.unique(np.round(f, 4), axis=0))


@pytest.mark.parametrize("model", ["digits-cnn-replicated", "photo-ae-replicated"])
def test_replicated_layers(built, model):
    info = built["summary"]["models"][model]
    weights = load_conv_weights(built["root"], _rows_of(built, model))
    assert len(info["replicated_layers"]) >= len(weights) - 1
    for key in info["replicated_layers"]:
        assert _distinct_up_to_scale(weights[key]) <= 3, key
    assert _distinct_up_to_scale(next(iter(weights.values()))) > 3


def test_models_really_learn(built):
    models = built["summary"]["models"]
    for name, info in models.items():
        m = info["metrics"]
        if _rows_of(built, name)["variant"] != "trained":
            continue
        if "test_accuracy" in m:
            assert m["test_accuracy"] > 0.8, name
        else:
            assert m["test_loss"] < 0.7 * m["initial_test_loss"], name
    print({k: round(v["metrics"].get("test_accuracy", v["metrics"]["test_loss"]), 3)
           for k, v in models.items()})


def _norm_entropy(w: np.ndarray) -> float:
    f = w.reshape(-1, 9).astype(np.float64)
    s = np.linalg.svd(f - f.mean(0), compute_uv=False)
    p = s**2 / (s**2).sum()
    h = -(p[p > 0] * np.log10(p[p > 0])).sum()
    n = len(f)
    return h / (1.2618047 / (1 + np.exp(-0.88767525 * (np.log2(n) - 2.30436435))) - 0.31050834)


def test_trained_filters_are_structured(built):
    trained = list(load_conv_weights(built["root"], built["rows"]["digits-cnn-pt"]).values())
    random = list(load_conv_weights(built["root"],
                                    built["rows"]["untrained-plaincnn"]).values())
    assert _norm_entropy(random[-1]) > 0.95
    assert _norm_entropy(trained[-1]) < 0.85


# --------------------------------------------------------------------------- determinism & CLI


def test_same_seed_same_weights_via_cli(built, tmp_path, capsys):
    assert zoo.main(["--out", str(tmp_path), "--seed", "0"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"demo zoo: {len(built['summary']['models'])} models")
    assert "bytes" in line
    with (tmp_path / "catalog.csv").open(newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert rows == built["rows"]
    for name, row in rows.items():
        a = load_conv_weights(built["root"], row)
        b = load_conv_weights(tmp_path, row)
        assert a.keys() == b.keys(), name
        assert all(np.array_equal(a[k], b[k]) for k in a), name
    with capsys.disabled():
        print(f"\n{line}")
