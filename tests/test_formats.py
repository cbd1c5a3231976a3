"""Keras, TFLite, model folders and the new ONNX cases, from files the tests write
themselves (tests/format_writers.py) and count independently of the loaders."""
from __future__ import annotations

import io
import json
import os
import shutil
import zipfile

import h5py
import numpy as np
import onnx
import pyarrow as pa
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors.torch import save_file

from filterspark.sources.catalog import CatalogEntry
from filterspark.engine.resources import too_large_reason
from filterspark.pipelines.extract_task import checksum_or_error, extract_model
from filterspark.sources.loaders import LoadError, load_model, sniff_format
from format_writers import (
    SMALL_CONVS,
    TFLiteWriter,
    CONV_2D,
    FLOAT32,
    h5_kernels_3x3,
    small_state_dict,
    tflite_kernels_3x3,
    write_keras3,
    write_keras_h5,
    write_small_tflite,
)

N_SMALL_3X3 = 4 * 3 + 8 * 1 + 6 * 3 + 6 * 5  # stem, depthwise, grouped, transpose (pw is 1x1)


def extract(path, fmt=None):
    """``(extraction, (layer_index, filter_index) int array, weights (n, 9) float32)``."""
    res = extract_model(CatalogEntry(name="m", path=str(path), format=fmt))
    assert res.summary["status"] == "ok", res.summary["error"]
    batches = list(res.filter_batches())
    table = pa.Table.from_batches(batches)
    idx = np.stack([table.column("layer_index").to_numpy(), table.column("filter_index").to_numpy()], 1)
    w = np.stack([table.column(f"w{i}").to_numpy() for i in range(9)], 1)
    return res, idx, w


def as_multiset(kernels) -> np.ndarray:
    arr = np.asarray(kernels, dtype=np.float32).reshape(-1, 9)
    return arr[np.lexsort(arr.T[::-1])]


def assert_one_line(err) -> None:
    msg = str(err.value)
    assert msg and "\n" not in msg and "Traceback" not in msg


@pytest.fixture(scope="module")
def sd():
    return small_state_dict()


def expected_rows(sd) -> np.ndarray:
    """SmallNet's 3x3 filter rows in torch layout: filter_index = row of W.reshape(-1, 9)."""
    return np.concatenate([sd[k].numpy().reshape(-1, 9) for k, _, _ in SMALL_CONVS if sd[k].shape[-1] == 3])


def small_onnx(sd, path) -> None:
    """SmallNet as a hand-built ONNX graph (torch layout initializers)."""
    inits, nodes, prev = [], [], "x"
    for i, (key, kind, groups) in enumerate(SMALL_CONVS):
        w = sd[key].numpy()
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        op = "ConvTranspose" if kind == "transpose" else "Conv"
        nodes.append(helper.make_node(op, [prev, f"w{i}"], [f"y{i}"], name=f"conv{i}", group=groups))
        prev = f"y{i}"
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)], initializer=inits)
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


# ------------------------------------------------------------------------------------- Keras


@pytest.mark.parametrize("kind", ["full", "weights_only", "separable"])
def test_keras_h5_rows_equal_file_kernels(sd, tmp_path, kind: str) -> None:
    path = tmp_path / "model.h5"
    write_keras_h5(path, sd, weights_only=kind == "weights_only", separable=kind == "separable")
    assert sniff_format(str(path)) == "keras"
    res, idx, w = extract(path)
    with h5py.File(path, "r") as f:
        kernels = h5_kernels_3x3(f)
    assert len(kernels) == N_SMALL_3X3 == len(w)
    np.testing.assert_array_equal(as_multiset(w), as_multiset(kernels))
    names = [l["layer_name"] for l in res.layers]
    # layer order from the config / layer_names, not the file's alphabetical group order
    if kind == "separable":
        assert names == ["stem", "sep/depthwise", "sep/pointwise", "grouped", "up"]
    else:
        assert names == ["stem", "dw", "pw", "grouped", "up"]
    assert res.summary["producer"] == "keras 2.15.0" and res.summary["format"] == "keras"
    if kind == "weights_only":  # no config: a transposed conv cannot be told apart, groups unknown
        assert [l["op"] for l in res.layers] == ["Conv"] * 5
        assert [l["groups"] for l in res.layers] == [None, 4, None, None, None]
    else:
        assert [l["op"] for l in res.layers] == ["Conv"] * 4 + ["ConvTranspose"]
        assert [l["groups"] for l in res.layers] == [1, 4, 1, 2, 1]
        np.testing.assert_array_equal(w, expected_rows(sd))


def test_keras3_rows_equal_file_kernels(sd, tmp_path) -> None:
    path = tmp_path / "model.keras"
    write_keras3(path, sd)
    assert sniff_format(str(path)) == "keras"
    res, idx, w = extract(path)
    with zipfile.ZipFile(path) as zf, h5py.File(io.BytesIO(zf.read("model.weights.h5")), "r") as f:
        kernels = h5_kernels_3x3(f["layers"])
    assert len(kernels) == N_SMALL_3X3 == len(w)
    np.testing.assert_array_equal(as_multiset(w), as_multiset(kernels))
    np.testing.assert_array_equal(w, expected_rows(sd))
    assert [l["layer_name"] for l in res.layers] == ["stem", "sep/depthwise", "sep/pointwise", "grouped", "up"]
    assert res.summary["producer"] == "keras 3.6.0"
    # the same weights saved alone (save_weights → .weights.h5): no config, file order
    alone = tmp_path / "model.weights.h5"
    with zipfile.ZipFile(path) as zf:
        alone.write_bytes(zf.read("model.weights.h5"))
    res, _, w_alone = extract(alone)
    np.testing.assert_array_equal(as_multiset(w_alone), as_multiset(kernels))
    assert [l["layer_name"] for l in res.layers] == ["sep/depthwise", "sep/pointwise", "grouped", "stem", "up"]
    assert [l["groups"] for l in res.layers] == [4, 1, None, None, None]


def test_keras_kernel_layout_rule(tmp_path) -> None:
    """A Keras kernel k[:, :, i, o] is one filter, rows and columns as stored."""
    k = np.arange(3 * 3 * 2 * 3, dtype=np.float32).reshape(3, 3, 2, 3)
    sd = {"body.0.weight": torch.from_numpy(k.transpose(3, 2, 0, 1).copy())}
    path = tmp_path / "one.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"c"])
        f.create_group("c").attrs["weight_names"] = np.array([b"c/kernel:0"])
        f["c"].create_dataset("c/kernel:0", data=k)
    _, idx, w = extract(path)
    for o in range(3):
        for i in range(2):
            np.testing.assert_array_equal(w[o * 2 + i], k[:, :, i, o].reshape(9))
    assert sd  # the torch layout the rule targets: (out, in, kh, kw)


# ------------------------------------------------------------------------------------ TFLite


@pytest.mark.parametrize("mode", ["float32", "int8", "dequantize"])
def test_tflite_rows(sd, tmp_path, mode: str) -> None:
    data, expected = write_small_tflite(sd, mode)
    path = tmp_path / f"{mode}.tflite"
    path.write_bytes(data)
    assert sniff_format(str(path)) == "tflite"
    res, idx, w = extract(path)
    kernels = tflite_kernels_3x3(data)
    assert len(kernels) == N_SMALL_3X3 == len(w)
    np.testing.assert_array_equal(as_multiset(w), as_multiset(kernels))
    rows = np.concatenate([e.reshape(-1, 9).astype(np.float32) for e in expected if e.shape[-1] == 3])
    np.testing.assert_array_equal(w, rows)
    assert [l["op"] for l in res.layers] == ["Conv"] * 4 + ["ConvTranspose"]
    assert [l["groups"] for l in res.layers] == [1, 4, 1, 2, 1]
    dtypes = [l["dtype"] for l in res.layers]
    if mode == "float32":
        assert dtypes == ["float32"] * 5
        np.testing.assert_array_equal(w, expected_rows(sd))  # exact
    elif mode == "int8":
        assert dtypes == ["int8 (dequantized)"] * 4 + ["uint8 (dequantized)"]
    else:
        assert dtypes == ["float16"] * 3 + ["int8 (dequantized)", "float16"]


def test_tflite_computed_filter_is_named(tmp_path) -> None:
    wr = TFLiteWriter()
    x = wr.tensor("x", [1, 8, 8, 3], FLOAT32)
    f = wr.tensor("runtime_filter", [4, 3, 3, 3], FLOAT32)  # no buffer, no producer: a graph input
    y = wr.tensor("y", [1, 8, 8, 4], FLOAT32)
    wr.op(CONV_2D, [x, f, -1], [y])
    path = tmp_path / "input_filter.tflite"
    path.write_bytes(wr.finish([x, f], [y]))
    res = extract_model(CatalogEntry(name="m", path=str(path)))
    assert res.summary["status"] == "ok" and res.summary["conv_layers"] == 1
    assert res.layers[0]["n_filters"] is None
    assert "runtime_filter" in res.summary["error"]


# --------------------------------------------------------------- one network, every format


def test_same_network_same_rows_in_every_format(sd, tmp_path) -> None:
    pt = tmp_path / "small.pt"
    torch.save(sd, pt)
    write_keras_h5(tmp_path / "small.h5", sd)
    write_keras3(tmp_path / "small.keras", sd)
    (tmp_path / "small.tflite").write_bytes(write_small_tflite(sd, "float32")[0])
    small_onnx(sd, tmp_path / "small.onnx")
    single = tmp_path / "hf_single"
    single.mkdir()
    save_file(sd, str(single / "model.safetensors"))
    (single / "config.json").write_text(json.dumps({"architectures": ["SmallNet"], "model_type": "small",
                                                     "transformers_version": "4.46.0"}))
    sharded = tmp_path / "hf_sharded"
    sharded.mkdir()
    keys = list(sd)
    parts = {"model-00001-of-00002.safetensors": keys[:4], "model-00002-of-00002.safetensors": keys[4:]}
    for fname, ks in parts.items():
        save_file({k: sd[k] for k in ks}, str(sharded / fname))
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 0}, "weight_map": {k: f for f, ks in parts.items() for k in ks}}))
    (sharded / "config.json").write_text(json.dumps({"architectures": ["SmallNet"], "model_type": "small"}))
    binned = tmp_path / "hf_bin"
    binned.mkdir()
    bparts = {"pytorch_model-00001-of-00002.bin": keys[:6], "pytorch_model-00002-of-00002.bin": keys[6:]}
    for fname, ks in bparts.items():
        torch.save({k: sd[k] for k in ks}, binned / fname)
    (binned / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"weight_map": {k: f for f, ks in bparts.items() for k in ks}}))

    _, ref_idx, ref_w = extract(pt)
    assert len(ref_w) == N_SMALL_3X3
    ops = {}
    for name in ["small.h5", "small.keras", "small.tflite", "small.onnx", "hf_single", "hf_sharded", "hf_bin"]:
        res, idx, w = extract(tmp_path / name)
        np.testing.assert_array_equal(idx, ref_idx, err_msg=name)
        np.testing.assert_array_equal(w, ref_w, err_msg=name)
        ops[name] = [(l["op"], l["groups"], l["out_channels"], l["in_channels"]) for l in res.layers]
        if name.startswith("hf_"):
            assert res.summary["format"] == "huggingface"
            if name != "hf_bin":
                assert res.summary["metadata"]["architectures"] == "SmallNet"
                assert res.summary["metadata"]["model_type"] == "small"
    assert ops["small.h5"] == ops["small.keras"] == ops["small.tflite"] == ops["small.onnx"]
    assert ops["small.onnx"][-1] == ("ConvTranspose", 1, 5, 6)


def test_folder_checksum_and_size_cover_every_file(sd, tmp_path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    save_file(sd, str(folder / "model.safetensors"))
    (folder / "config.json").write_text("{}")
    total = sum(p.stat().st_size for p in folder.iterdir())
    first = checksum_or_error(str(folder))
    assert first["error"] is None and first["file_size"] == total
    (folder / "config.json").write_text('{"model_type": "x"}')
    assert checksum_or_error(str(folder))["checksum"] != first["checksum"]
    (folder / "config.json").write_text("{}")
    assert checksum_or_error(str(folder))["checksum"] == first["checksum"]
    (folder / "extra.txt").write_text("x")
    grown = checksum_or_error(str(folder))
    assert grown["checksum"] != first["checksum"] and grown["file_size"] == total + 1
    # --max-model-bytes counts the whole folder
    assert too_large_reason(grown["file_size"], total, "--max-model-bytes") is not None
    assert too_large_reason(grown["file_size"], total + 1, "--max-model-bytes") is None


def test_diffusers_pipeline_is_one_model_per_component(sd, tmp_path) -> None:
    pipe = tmp_path / "pipe"
    for comp in ("unet", "vae"):
        (pipe / comp).mkdir(parents=True)
        save_file(sd, str(pipe / comp / "diffusion_pytorch_model.safetensors"))
        (pipe / comp / "config.json").write_text(json.dumps({"_class_name": f"{comp}Model", "_diffusers_version": "0.31.0"}))
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "Pipeline"}))
    with pytest.raises(LoadError, match="diffusers pipeline") as err:
        load_model(str(pipe))
    assert_one_line(err)
    m = load_model(str(pipe / "unet"))
    assert m.format == "huggingface" and m.producer == "diffusers 0.31.0"
    assert m.metadata["class_name"] == "unetModel"
    assert sum(l.n_kernels for l in m.layers if l.kernel_shape == (3, 3)) == N_SMALL_3X3


# --------------------------------------------------------------------------------- ONNX cases


def _conv_model(nodes, inits, inputs=None, opset=17):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_onnx_constant_folded_weights(tmp_path) -> None:
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    q = rng.integers(-127, 128, size=(3, 4, 3, 3)).astype(np.int8)
    scale, zp = np.float32(0.0625), np.int8(3)
    nodes = [
        helper.make_node("Reshape", ["w_flat", "w_shape"], ["w"], name="reshape"),
        helper.make_node("Conv", ["x", "w"], ["a"], name="reshaped_conv", pads=[1, 1, 1, 1]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w2"], name="dq"),
        helper.make_node("Conv", ["a", "w2"], ["y"], name="qdq_conv"),
    ]
    inits = [numpy_helper.from_array(w.reshape(-1), "w_flat"),
             numpy_helper.from_array(np.array(w.shape, np.int64), "w_shape"),
             numpy_helper.from_array(q, "w_q"), numpy_helper.from_array(np.array(scale), "w_scale"),
             numpy_helper.from_array(np.array(zp), "w_zp")]
    path = tmp_path / "folded.onnx"
    onnx.save_model(_conv_model(nodes, inits), str(path))
    res, idx, rows = extract(path)
    assert [l["layer_name"] for l in res.layers] == ["reshaped_conv", "qdq_conv"]
    assert [l["dtype"] for l in res.layers] == ["float32", "int8 (dequantized)"]
    deq = ((q.astype(np.float32) - np.float32(zp)) * scale).astype(np.float32)  # exact: power-of-two scale
    np.testing.assert_array_equal(rows, np.concatenate([w.reshape(-1, 9), deq.reshape(-1, 9)]))
    assert res.summary["error"] is None


def test_onnx_convs_inside_if_and_loop(tmp_path) -> None:
    rng = np.random.default_rng(4)
    w_then = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    w_else = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    w_loop = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    out = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, None)  # noqa: E731
    then_g = helper.make_graph([helper.make_node("Conv", ["x", "wt"], ["t"], name="then_conv", pads=[1, 1, 1, 1])],
                               "then", [], [out("t")], initializer=[numpy_helper.from_array(w_then, "wt")])
    else_g = helper.make_graph([helper.make_node("Conv", ["x", "w_outer"], ["e"], name="else_conv", pads=[1, 1, 1, 1])],
                               "else", [], [out("e")])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Conv", ["v_in", "wl"], ["v_out"], name="loop_conv", pads=[1, 1, 1, 1])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []), out("v_in")],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), out("v_out")],
        initializer=[numpy_helper.from_array(w_loop, "wl")])
    nodes = [
        helper.make_node("If", ["cond"], ["z"], name="branch", then_branch=then_g, else_branch=else_g),
        helper.make_node("Loop", ["trips", "cond"], ["y"], name="repeat", body=body),
    ]
    nodes[1].input[:] = ["trips", "cond", "z"]
    inits = [numpy_helper.from_array(w_else, "w_outer"), numpy_helper.from_array(np.array(2, np.int64), "trips"),
             numpy_helper.from_array(np.array(True), "cond")]
    path = tmp_path / "control.onnx"
    onnx.save_model(_conv_model(nodes, inits), str(path))
    res, idx, rows = extract(path)
    by_name = {l["layer_name"]: l for l in res.layers}
    assert set(by_name) == {"branch/then_branch/then_conv", "branch/else_branch/else_conv", "repeat/body/loop_conv"}
    sources = {"branch/then_branch/then_conv": w_then, "branch/else_branch/else_conv": w_else,
               "repeat/body/loop_conv": w_loop}
    for name, weights in sources.items():
        np.testing.assert_array_equal(rows[idx[:, 0] == by_name[name]["layer_index"]], weights.reshape(-1, 9))
    assert len(rows) == 12
    depth = {n: l["conv_depth"] for n, l in by_name.items()}
    # both branches run in parallel, the loop body after them
    assert depth["branch/then_branch/then_conv"] == depth["branch/else_branch/else_conv"] < depth["repeat/body/loop_conv"]


def test_onnx_graph_input_weight_is_counted_and_named(tmp_path) -> None:
    w = np.ones((4, 2, 3, 3), np.float32)
    nodes = [helper.make_node("Conv", ["x", "w_fixed"], ["a"], name="fixed", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w_runtime"], ["y"], name="dynamic")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6]),
              helper.make_tensor_value_info("w_runtime", TensorProto.FLOAT, [3, 4, 3, 3])]
    path = tmp_path / "input_weight.onnx"
    onnx.save_model(_conv_model(nodes, [numpy_helper.from_array(w, "w_fixed")], inputs), str(path))
    res, idx, rows = extract(path)
    assert res.summary["conv_layers"] == 2 and res.summary["filters_3x3"] == 8
    dyn = res.layers[1]
    assert dyn["layer_name"] == "dynamic" and dyn["n_filters"] is None
    assert (dyn["out_channels"], dyn["in_channels"], dyn["kernel_h"]) == (3, 4, 3)  # from the declared input shape
    assert "'w_runtime'" in res.summary["error"] and "graph input" in res.summary["error"]
    assert "no 2-D convolution layers" not in res.summary["error"]
    assert len(rows) == 8


# ------------------------------------------------------------------------------- bad files


def _tflite_bytes(sd) -> bytes:
    return write_small_tflite(sd, "float32")[0]


def _bad_files(sd, d) -> dict[str, tuple[str, str | None]]:
    """name -> (path, declared format) of damaged files of every new format."""
    d.mkdir(exist_ok=True)
    out = {}
    write_keras_h5(d / "good.h5", sd)
    data = (d / "good.h5").read_bytes()
    (d / "truncated.h5").write_bytes(data[: len(data) // 2])
    out["h5 truncated"] = (d / "truncated.h5", None)
    (d / "magic.h5").write_bytes(b"\x89HDX\r\n\x1a\n" + data[8:])
    out["h5 wrong magic"] = (d / "magic.h5", "keras")
    with h5py.File(d / "data.h5", "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    out["h5 not keras"] = (d / "data.h5", None)
    write_keras3(d / "good.keras", sd)
    kdata = (d / "good.keras").read_bytes()
    (d / "truncated.keras").write_bytes(kdata[: len(kdata) // 2])
    out["keras truncated"] = (d / "truncated.keras", None)
    with zipfile.ZipFile(d / "garbage.keras", "w") as zf:
        zf.writestr("config.json", "{}")
        zf.writestr("metadata.json", "{}")
        zf.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n" + b"\xff" * 200)
    out["keras garbage weights"] = (d / "garbage.keras", None)
    tdata = _tflite_bytes(sd)
    (d / "truncated.tflite").write_bytes(tdata[: len(tdata) // 2])
    out["tflite truncated"] = (d / "truncated.tflite", None)
    (d / "magic.tflite").write_bytes(tdata[:4] + b"TFL2" + tdata[8:])
    out["tflite wrong identifier"] = (d / "magic.tflite", "tflite")
    (d / "tiny.tflite").write_bytes(b"\x10\x00\x00\x00TFL3")
    out["tflite header only"] = (d / "tiny.tflite", None)
    wr = TFLiteWriter()
    x = wr.tensor("x", [1, 8, 8, 3], FLOAT32)
    filt = wr.tensor("big_filter", [4, 3, 3, 3], FLOAT32, np.zeros((4, 3, 3, 3), np.float32))
    y = wr.tensor("y", [1, 8, 8, 4], FLOAT32)
    wr.op(CONV_2D, [x, filt, -1], [y])
    wr.buffers[1] = None
    wr.big[1] = (10_000_000, 432)  # a buffer claiming bytes far past the end of the file
    (d / "claims.tflite").write_bytes(wr.finish([x], [y]))
    out["tflite buffer past end"] = (d / "claims.tflite", None)
    wr.big.clear()
    wr.buffers[1] = np.zeros(10, np.float32).tobytes()  # shape needs 108 floats
    (d / "short.tflite").write_bytes(wr.finish([x], [y]))
    out["tflite buffer too short for shape"] = (d / "short.tflite", None)
    for name, index, shards in [
        ("missing", {"w": "model-00002.safetensors"}, {}),
        ("escape", {"w": "../outside.safetensors"}, {}),
        ("corrupt", {"w": "model-00001.safetensors"}, {"model-00001.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{bad"}),
    ]:
        folder = d / f"hf_{name}"
        folder.mkdir()
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
        for fname, blob in shards.items():
            (folder / fname).write_bytes(blob)
        out[f"folder shard {name}"] = (folder, None)
    save_file({"w": torch.zeros(1)}, str(d / "outside.safetensors"))
    (d / "hf_badindex").mkdir()
    (d / "hf_badindex" / "model.safetensors.index.json").write_text("{not json")
    out["folder index not json"] = (d / "hf_badindex", None)
    (d / "saved_model").mkdir()
    (d / "saved_model" / "saved_model.pb").write_bytes(b"\x08\x01")
    out["savedmodel folder"] = (d / "saved_model", None)
    (d / "frozen.pb").write_bytes(b"\x0a\x05hello")
    out["pb file"] = (d / "frozen.pb", None)
    (d / "llm.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    out["gguf file"] = (d / "llm.gguf", None)
    return out


EXPECTED_REASON = {
    "h5 truncated": "corrupt Keras", "h5 wrong magic": "corrupt Keras", "h5 not keras": "no Keras weights",
    "keras truncated": ".keras archive", "keras garbage weights": "corrupt Keras",
    "tflite truncated": "tflite", "tflite wrong identifier": "not a tflite flatbuffer",
    "tflite header only": "truncated tflite", "tflite buffer past end": "claims bytes",
    "tflite buffer too short for shape": "needs 432 bytes",
    "folder shard missing": "is missing", "folder shard escape": "refused shard",
    "folder shard corrupt": "shard model-00001.safetensors", "folder index not json": "corrupt shard index",
    "savedmodel folder": "SavedModel folders are not supported: export to .keras",
    "pb file": "TensorFlow protobuf graphs", "gguf file": "GGUF",
}


def test_bad_files_fail_alone_with_a_reason(sd, tmp_path) -> None:
    bad = _bad_files(sd, tmp_path / "bad")
    assert set(bad) == set(EXPECTED_REASON)
    for name, (path, declared) in bad.items():
        with pytest.raises(LoadError) as err:
            load_model(str(path), declared)
        assert_one_line(err)
        assert EXPECTED_REASON[name] in str(err.value), (name, str(err.value))
        res = extract_model(CatalogEntry(name=name, path=str(path), format=declared))
        assert res.summary["status"] == "failed" and EXPECTED_REASON[name] in res.summary["error"], name


@pytest.mark.parametrize("style", ["keras2", "keras3"])
def test_keras_functional_branches_share_a_level(tmp_path, style: str) -> None:
    """input → {a, b} → add → c: a and b run in parallel (levels from inbound_nodes)."""
    def inbound(*names):
        if style == "keras2":
            return [[[n, 0, 0, {}] for n in names]]
        return [{"args": [[{"class_name": "__keras_tensor__", "config": {"keras_history": [n, 0, 0]}} for n in names]],
                 "kwargs": {}}]

    layers = [
        {"class_name": "InputLayer", "name": "x", "config": {"name": "x"}, "inbound_nodes": []},
        {"class_name": "Conv2D", "name": "c", "config": {"name": "c", "groups": 1}, "inbound_nodes": inbound("add")},
        {"class_name": "Conv2D", "name": "a", "config": {"name": "a", "groups": 1}, "inbound_nodes": inbound("x")},
        {"class_name": "Conv2D", "name": "b", "config": {"name": "b", "groups": 1}, "inbound_nodes": inbound("x")},
        {"class_name": "Add", "name": "add", "config": {"name": "add"}, "inbound_nodes": inbound("a", "b")},
    ]
    layers = [layers[0], layers[2], layers[3], layers[4], layers[1]]  # config order is topological
    config = {"class_name": "Functional", "config": {"name": "model", "layers": layers}}
    rng = np.random.default_rng(5)
    kernels = {n: rng.standard_normal((3, 3, 2, 2)).astype(np.float32) for n in "abc"}
    path = tmp_path / "branches.h5"
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = np.array([b"x", b"a", b"b", b"add", b"c"])
        for n in ("x", "a", "b", "add", "c"):
            g = mw.create_group(n)
            g.attrs["weight_names"] = np.array([f"{n}/kernel:0".encode()] if n in kernels else [], dtype="S10")
            if n in kernels:
                g.create_dataset(f"{n}/kernel:0", data=kernels[n])
    res, idx, rows = extract(path)
    depth = {l["layer_name"]: l["conv_depth"] for l in res.layers}
    assert list(depth) == ["a", "b", "c"]
    assert depth["a"] == depth["b"] == 0 and depth["c"] == 1
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(as_multiset(rows), as_multiset(h5_kernels_3x3(f)))


def test_tflite_int8_filter_without_scales_is_named_not_fatal(tmp_path) -> None:
    from format_writers import INT8

    wr = TFLiteWriter()
    x = wr.tensor("x", [1, 8, 8, 3], FLOAT32)
    good = wr.tensor("good_filter", [2, 3, 3, 3], FLOAT32, np.arange(54, dtype=np.float32).reshape(2, 3, 3, 3))
    bad = wr.tensor("unscaled_filter", [2, 3, 3, 2], INT8, np.ones((2, 3, 3, 2), np.int8))
    a, y = wr.tensor("a", [1, 8, 8, 2], FLOAT32), wr.tensor("y", [1, 8, 8, 2], FLOAT32)
    wr.op(CONV_2D, [x, good, -1], [a])
    wr.op(CONV_2D, [a, bad, -1], [y])
    path = tmp_path / "unscaled.tflite"
    path.write_bytes(wr.finish([x], [y]))
    res, idx, rows = extract(path)
    assert [l["n_filters"] for l in res.layers] == [6, None]
    assert "unscaled_filter" in res.summary["error"] and "without quantization scales" in res.summary["error"]
    np.testing.assert_array_equal(rows, np.arange(54, dtype=np.float32).reshape(2, 3, 3, 3).transpose(0, 3, 1, 2).reshape(-1, 9))


def test_folder_weights_are_picked_like_from_pretrained(sd, tmp_path) -> None:
    from filterspark.sources.loaders.folder import is_model_folder, weights_of_folder

    d = tmp_path / "f"
    d.mkdir()
    (d / "config.json").write_text("{}")
    save_file(sd, str(d / "epoch1.safetensors"))
    save_file(sd, str(d / "epoch2.safetensors"))
    assert weights_of_folder(str(d)) is None and not is_model_folder(str(d))  # two unrelated files: no one model
    torch.save(sd, d / "pytorch_model.bin")
    assert weights_of_folder(str(d)) == ("pytorch", ["pytorch_model.bin"])
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"body.0.weight": "epoch1.safetensors"}}))
    assert weights_of_folder(str(d)) == ("safetensors-index", ["model.safetensors.index.json"])
    save_file(sd, str(d / "model.safetensors"))
    assert weights_of_folder(str(d)) == ("safetensors", ["model.safetensors"])


class _Marker:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("sharded", [False, True])
def test_pickle_in_a_model_folder_never_runs(tmp_path, sharded: bool) -> None:
    import pickle

    marker = tmp_path / "pwned"
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    payload = pickle.dumps({"w": _Marker(str(marker))}, protocol=2)
    if sharded:
        (folder / "pytorch_model-00001-of-00001.bin").write_bytes(payload)
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"w": "pytorch_model-00001-of-00001.bin"}}))
    else:
        (folder / "pytorch_model.bin").write_bytes(payload)
    with pytest.raises(LoadError, match="refused to unpickle") as err:
        load_model(str(folder))
    assert_one_line(err)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["h5", "keras", "tflite"])
def test_sniff_ignores_extension(sd, tmp_path, kind: str) -> None:
    src = tmp_path / f"model.{kind}"
    if kind == "h5":
        write_keras_h5(src, sd)
    elif kind == "keras":
        write_keras3(src, sd)
    else:
        src.write_bytes(write_small_tflite(sd)[0])
    renamed = tmp_path / "checkpoint.dat"
    shutil.copyfile(src, renamed)
    expected = "tflite" if kind == "tflite" else "keras"
    assert sniff_format(str(renamed)) == load_model(str(renamed)).format == expected
    assert sum(l.n_kernels for l in load_model(str(renamed)).layers if l.kernel_shape == (3, 3)) == N_SMALL_3X3


def test_onnx_graph_input_weight_of_a_1d_conv_is_ignored(tmp_path) -> None:
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv1d", kernel_shape=[3])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6]),
              helper.make_tensor_value_info("w", TensorProto.FLOAT, None)]
    path = tmp_path / "conv1d.onnx"
    onnx.save_model(_conv_model(nodes, [], inputs), str(path))
    m = load_model(str(path))
    assert m.layers == [] and m.warnings == []
