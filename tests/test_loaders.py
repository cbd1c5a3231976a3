"""Checkpoint loaders on real tiny models saved in every supported format."""
from __future__ import annotations

import os
import pickle
import random
import shutil
import time
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors.torch import save_file
from torch import nn

from filterspark.sources.loaders import FORMATS, LoadError, load_model, normalize_format, sniff_format
from filterspark.sources.loaders.onnx_graph import node_levels

N_3X3 = 8 * 1 + 16 * 4 + 16 * 4  # conv1 + conv2 (groups=2) + deconv; conv3 is 1x1


class TinyNet(nn.Module):
    """Conv -> grouped Conv -> 1x1 Conv -> ConvTranspose."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.conv2 = nn.Conv2d(8, 16, 3, groups=2)
        self.conv3 = nn.Conv2d(16, 16, 1)
        self.deconv = nn.ConvTranspose2d(16, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.deconv(self.conv3(x))


CONV_NAMES = ["conv1", "conv2", "conv3", "deconv"]
GROUPS = [1, 2, 1, 1]
OPS = ["Conv", "Conv", "Conv", "ConvTranspose"]


def export_onnx(model: nn.Module, x: torch.Tensor, path: str) -> str:
    """Export with the TorchScript-based exporter if this torch still has it, else dynamo."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"])
            return "torchscript"
        except TypeError:  # torch without the dynamo= switch / legacy exporter removed
            pass
        torch.onnx.export(model, (x,), path, dynamo=True, verbose=False, external_data=False)
        return "dynamo"


def _const(name: str, arr: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(arr, name + "_t"))


def tf2onnx_like(rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Hand-built graph imitating tf2onnx: Constant weights, Identity/Cast before W, a branch.

    x -> A -> Relu -> {B, C} -> Add -> D(ConvTranspose) -> E (computed weight, skipped).
    Levels: A 0, B 2, C 2, D 4.
    """
    w = {
        "A": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "B": rng.standard_normal((8, 8, 3, 3)).astype(np.float32),
        "C": rng.standard_normal((8, 4, 3, 3)).astype(np.float16),  # stored fp16, Cast to fp32
        "D": rng.standard_normal((8, 2, 3, 3)).astype(np.float32),
        "E": rng.standard_normal((2, 2, 3, 3)).astype(np.float32),
    }
    nodes = [
        _const("wA", w["A"]),
        helper.make_node("Conv", ["x", "wA"], ["a"], name="A", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Identity", ["wB_init"], ["wB"], name="idB"),
        helper.make_node("Conv", ["r", "wB"], ["b"], name="B", pads=[1, 1, 1, 1]),
        _const("wC16", w["C"]),
        helper.make_node("Cast", ["wC16"], ["wC32"], to=TensorProto.FLOAT, name="castC"),
        helper.make_node("Identity", ["wC32"], ["wC"], name="idC"),
        helper.make_node("Conv", ["r", "wC"], ["c"], name="C", group=2, pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["b", "c"], ["s"], name="add"),
        helper.make_node("ConvTranspose", ["s", "wD_init"], ["d"], name="D", group=4),
        _const("scale", np.array(0.5, dtype=np.float32)),
        helper.make_node("Mul", ["wE_init", "scale"], ["wE"], name="mulE"),
        helper.make_node("Conv", ["d", "wE"], ["y"], name="E"),
    ]
    nodes.reverse()  # graph node order is not guaranteed to be topological
    graph = helper.make_graph(
        nodes,
        "tf_graph",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[
            numpy_helper.from_array(w["B"], "wB_init"),
            numpy_helper.from_array(w["D"], "wD_init"),
            numpy_helper.from_array(w["E"], "wE_init"),
        ],
    )
    model = helper.make_model(graph, producer_name="tf2onnx", producer_version="1.16.1",
                              opset_imports=[helper.make_opsetid("", 13)])
    return model, w


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A trained-free TinyNet saved in every format, plus the source weights."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("zoo")
    model = TinyNet().eval()
    sd = model.state_dict()
    x = torch.randn(1, 1, 12, 12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(x).sum().backward()
    opt.step()  # optimizer state with tensors, but keep the weights we compare against
    model.load_state_dict(sd)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    files = {
        "state_dict": d / "sd.pt",
        "checkpoint": d / "ckpt.pth",
        "model_opt": d / "model_opt.pt",
        "legacy": d / "legacy.pt",
        "dataparallel": d / "dp.pt",
        "scripted": d / "scripted.pt",
        "traced": d / "traced.pt",
        "safetensors": d / "model.safetensors",
        "onnx": d / "torch.onnx",
        "tf2onnx": d / "tf.onnx",
    }
    torch.save(sd, files["state_dict"])
    torch.save({"epoch": 1, "state_dict": sd}, files["checkpoint"])
    torch.save({"model": sd, "optimizer": opt.state_dict()}, files["model_opt"])
    torch.save(sd, files["legacy"], _use_new_zipfile_serialization=False)
    torch.save({f"module.{k}": v for k, v in sd.items()}, files["dataparallel"])
    torch.jit.script(model).save(str(files["scripted"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(model, x).save(str(files["traced"]))
    save_file(sd, str(files["safetensors"]))
    exporter = export_onnx(model, x, str(files["onnx"]))
    tf_model, tf_weights = tf2onnx_like(np.random.default_rng(0))
    onnx.save_model(tf_model, str(files["tf2onnx"]))
    ext_dir = d / "ext"
    ext_dir.mkdir()
    onnx.save_model(onnx.load(str(files["onnx"])), str(ext_dir / "model.onnx"),
                    save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    files["external"] = ext_dir / "model.onnx"
    return {"dir": d, "files": {k: str(v) for k, v in files.items()}, "sd": sd,
            "model": model, "exporter": exporter, "tf_weights": tf_weights}


def n_3x3(layers) -> int:
    return sum(layer.n_kernels for layer in layers if layer.kernel_shape == (3, 3))


def assert_one_line(err: pytest.ExceptionInfo) -> None:
    msg = str(err.value)
    assert msg and "\n" not in msg and "Traceback" not in msg


# ---------------------------------------------------------------------------- formats

STATE_DICT_KINDS = ["state_dict", "checkpoint", "model_opt", "legacy", "dataparallel", "safetensors"]
EXPECTED_FORMAT = {
    "state_dict": "pytorch", "checkpoint": "pytorch", "model_opt": "pytorch",
    "legacy": "pytorch", "dataparallel": "pytorch", "scripted": "torchscript",
    "traced": "torchscript", "safetensors": "safetensors", "onnx": "onnx",
    "tf2onnx": "onnx", "external": "onnx",
}


@pytest.mark.parametrize("kind", STATE_DICT_KINDS)
def test_state_dict_formats(zoo: dict, kind: str) -> None:
    m = load_model(zoo["files"][kind])
    assert m.format == EXPECTED_FORMAT[kind]
    assert [layer.name for layer in m.layers] == CONV_NAMES
    assert [layer.level for layer in m.layers] == [0, 1, 2, 3]
    assert all(layer.op == "Conv" and layer.groups is None for layer in m.layers)
    assert n_3x3(m.layers) == N_3X3
    for layer in m.layers:
        src = zoo["sd"][f"{layer.name}.weight"]
        assert torch.equal(layer.weight, src) and layer.weight.dtype == src.dtype
        assert layer.weight.device.type == "cpu"


@pytest.mark.parametrize("kind", ["scripted", "traced"])
def test_torchscript(zoo: dict, kind: str) -> None:
    m = load_model(zoo["files"][kind])
    assert m.format == "torchscript"
    assert [layer.name for layer in m.layers] == CONV_NAMES
    assert [layer.op for layer in m.layers] == OPS
    assert [layer.groups for layer in m.layers] == GROUPS
    assert [layer.level for layer in m.layers] == [0, 1, 2, 3]
    assert n_3x3(m.layers) == N_3X3
    for layer in m.layers:
        assert torch.equal(layer.weight, zoo["sd"][f"{layer.name}.weight"])


@pytest.mark.parametrize("kind", ["onnx", "external"])
def test_onnx_from_torch(zoo: dict, kind: str) -> None:
    m = load_model(zoo["files"][kind])
    assert m.format == "onnx"
    assert m.producer is not None and m.producer.startswith("pytorch")
    assert isinstance(m.opset, int) and m.opset >= 11
    assert [layer.op for layer in m.layers] == OPS
    assert [layer.groups for layer in m.layers] == GROUPS
    levels = [layer.level for layer in m.layers]
    assert levels == sorted(set(levels)) and levels[0] == 0
    assert n_3x3(m.layers) == N_3X3
    sources = [zoo["sd"][f"{n}.weight"] for n in CONV_NAMES]
    for layer, src in zip(m.layers, sources):
        assert torch.equal(layer.weight, src)


def test_onnx_exporter_used(zoo: dict) -> None:
    assert zoo["exporter"] in ("torchscript", "dynamo")
    print(f"torch {torch.__version__}: ONNX exported with the {zoo['exporter']} exporter")


def test_onnx_dynamo_exporter(tmp_path) -> None:
    """The dynamo exporter's graph (different node names, constant folding) loads too."""
    pytest.importorskip("onnxscript")
    torch.manual_seed(1)
    model = TinyNet().eval()
    path = str(tmp_path / "dyn.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 1, 12, 12),), path, dynamo=True,
                          verbose=False, external_data=False)
    m = load_model(path)
    assert [layer.op for layer in m.layers] == OPS
    assert [layer.groups for layer in m.layers] == GROUPS
    for layer, name in zip(m.layers, CONV_NAMES):
        assert torch.equal(layer.weight, model.state_dict()[f"{name}.weight"])


def test_onnx_tf2onnx_like(zoo: dict) -> None:
    m = load_model(zoo["files"]["tf2onnx"])
    w = zoo["tf_weights"]
    assert m.format == "onnx" and m.producer == "tf2onnx 1.16.1" and m.opset == 13
    # E's weight is computed from constants (Mul): folded; B and C run in parallel (file order: C first)
    assert [layer.name for layer in m.layers] == ["A", "C", "B", "D", "E"]
    by_name = {layer.name: layer for layer in m.layers}
    assert {n: by_name[n].level for n in "ABCDE"} == {"A": 0, "B": 2, "C": 2, "D": 4, "E": 5}
    assert {n: by_name[n].op for n in "ABCD"} == {"A": "Conv", "B": "Conv", "C": "Conv", "D": "ConvTranspose"}
    assert {n: by_name[n].groups for n in "ABCD"} == {"A": 1, "B": 1, "C": 2, "D": 4}
    for layer in m.layers:
        expected = w[layer.name] * np.float32(0.5) if layer.name == "E" else w[layer.name]
        assert torch.equal(layer.weight, torch.from_numpy(expected))
    assert by_name["C"].weight.dtype == torch.float16  # stored dtype kept despite the Cast
    assert n_3x3(m.layers) == sum(a.shape[0] * a.shape[1] for a in w.values())
    assert m.warnings == []


def test_onnx_levels_wide_deep_graph() -> None:
    """300 diamonds (2**300 paths) must be levelled in linear time, in any node order."""
    nodes, prev = [], "x"
    for i in range(300):
        nodes += [
            helper.make_node("Relu", [prev], [f"l{i}"]),
            helper.make_node("Neg", [prev], [f"r{i}"]),
            helper.make_node("Sigmoid", [f"r{i}"], [f"rr{i}"]),
            helper.make_node("Add", [f"l{i}", f"rr{i}"], [f"s{i}"]),
        ]
        prev = f"s{i}"
    random.Random(0).shuffle(nodes)
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1])])
    start = time.perf_counter()
    level, _, _ = node_levels(graph)
    assert time.perf_counter() - start < 2.0
    by_output = {n.output[0]: level[k] for k, n in enumerate(graph.node)}
    assert by_output["s0"] == 2 and by_output["l1"] == 3
    assert by_output[prev] == 3 * 300 - 1


def test_checkpoint_key_priority(tmp_path, zoo: dict) -> None:
    sd = zoo["sd"]
    doubled = {k: v * 2 for k, v in sd.items()}
    p = tmp_path / "ema.pt"
    torch.save({"ema": doubled, "model": sd, "step": 3}, p)
    m = load_model(str(p))
    assert torch.equal(m.layers[0].weight, sd["conv1.weight"])  # "model" outranks "ema"
    torch.save({"meta": {"note": "x"}, "stash": {"inner": sd}}, p)
    m = load_model(str(p))
    assert [layer.name for layer in m.layers] == CONV_NAMES  # richest nested dict
    torch.save({"epoch": 1, "lr": 0.1}, p)
    assert load_model(str(p)).layers == []  # no conv layers is not an error


@pytest.mark.parametrize("kind", sorted(EXPECTED_FORMAT))
def test_sniff_ignores_extension(zoo: dict, tmp_path, kind: str) -> None:
    src = zoo["files"][kind]
    assert sniff_format(src) == EXPECTED_FORMAT[kind]
    if kind == "external":
        return  # its weights.bin must stay next to it
    for name in ("noext", "wrong.onnx", "wrong.pt", "wrong.safetensors", "wrong.txt"):
        dst = tmp_path / name
        shutil.copyfile(src, dst)
        assert sniff_format(str(dst)) == EXPECTED_FORMAT[kind], name
        assert load_model(str(dst)).format == EXPECTED_FORMAT[kind]


def test_format_aliases(zoo: dict) -> None:
    assert normalize_format(None) is None and normalize_format("") is None
    assert normalize_format("pth") == normalize_format(".PT") == normalize_format("torch") == "pytorch"
    assert normalize_format("jit") == normalize_format("script") == "torchscript"
    assert normalize_format("st") == "safetensors"
    assert normalize_format("h5") == normalize_format(".keras") == "keras"
    assert normalize_format("lite") == "tflite" and normalize_format("hf") == "huggingface"
    assert set(FORMATS) == {"pytorch", "torchscript", "safetensors", "onnx", "keras", "tflite", "huggingface"}
    assert load_model(zoo["files"]["safetensors"], "st").format == "safetensors"
    assert load_model(zoo["files"]["scripted"], "jit").format == "torchscript"
    # a TorchScript archive catalogued as plain pytorch is read as what it is
    assert load_model(zoo["files"]["scripted"], "pytorch").format == "torchscript"
    with pytest.raises(LoadError, match="unsupported file format") as err:
        load_model(zoo["files"]["state_dict"], "caffe")
    assert_one_line(err)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("kind", ["state_dict", "scripted", "safetensors", "onnx", "external"])
def test_load_to_gpu(zoo: dict, kind: str) -> None:
    m = load_model(zoo["files"][kind], device="cuda")
    assert m.layers and all(layer.weight.is_cuda for layer in m.layers)
    for layer, name in zip(m.layers, CONV_NAMES):
        assert torch.equal(layer.weight.cpu(), zoo["sd"][f"{name}.weight"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_gpu_requested_without_cuda(zoo: dict) -> None:
    with pytest.raises(LoadError, match="CUDA is not available"):
        load_model(zoo["files"]["state_dict"], device="cuda")


# ---------------------------------------------------------------------------- bad inputs


def test_missing_file(tmp_path) -> None:
    with pytest.raises(LoadError, match="not found") as err:
        load_model(str(tmp_path / "nope.pt"))
    assert_one_line(err)


def test_empty_file(tmp_path) -> None:
    p = tmp_path / "empty.pt"
    p.write_bytes(b"")
    for call in (lambda: sniff_format(str(p)), lambda: load_model(str(p)), lambda: load_model(str(p), "onnx")):
        with pytest.raises(LoadError, match="empty file") as err:
            call()
        assert_one_line(err)


@pytest.mark.parametrize("kind", sorted(EXPECTED_FORMAT))
@pytest.mark.parametrize("declared", [False, True])
def test_truncated(zoo: dict, tmp_path, kind: str, declared: bool) -> None:
    src = zoo["files"][kind]
    if kind == "external":  # truncate the external weights, keep the graph
        ext = tmp_path / "ext"
        shutil.copytree(os.path.dirname(src), ext)
        data = (ext / "weights.bin").read_bytes()
        (ext / "weights.bin").write_bytes(data[: len(data) // 2])
        path = str(ext / "model.onnx")
    else:
        data = open(src, "rb").read()
        path = str(tmp_path / os.path.basename(src))
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
    with pytest.raises(LoadError) as err:
        load_model(path, EXPECTED_FORMAT[kind] if declared else None)
    assert_one_line(err)


@pytest.mark.parametrize("name", ["random.bin", "random.onnx", "random.pt", "random.dat"])
def test_random_bytes(tmp_path, name: str) -> None:
    p = tmp_path / name
    p.write_bytes(random.Random(7).randbytes(4096))
    with pytest.raises(LoadError) as err:
        load_model(str(p))
    assert_one_line(err)
    if name == "random.dat":
        assert "unsupported file format" in str(err.value)


def test_full_module_pickle(zoo: dict, tmp_path) -> None:
    p = tmp_path / "full.pt"
    torch.save({"model": zoo["model"], "epoch": 2}, p)
    with pytest.raises(LoadError, match="refused to unpickle code") as err:
        load_model(str(p))
    assert "allow_pickle=true" in str(err.value)
    assert_one_line(err)
    m = load_model(str(p), allow_pickle=True)
    assert [layer.name for layer in m.layers] == CONV_NAMES
    assert [layer.op for layer in m.layers] == OPS
    assert [layer.groups for layer in m.layers] == GROUPS
    assert [layer.level for layer in m.layers] == [0, 1, 2, 3]
    assert n_3x3(m.layers) == N_3X3
    torch.save(zoo["model"], p)  # bare module, top level
    assert [layer.op for layer in load_model(str(p), allow_pickle=True).layers] == OPS


class _SystemCall:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _OpenCall:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("payload", [_SystemCall, _OpenCall])
@pytest.mark.parametrize("writer", ["torch_zip", "pickle_p2", "pickle_default"])
@pytest.mark.parametrize("declared", [None, "pytorch", "safetensors"])
def test_malicious_pickle_never_runs(tmp_path, payload, writer: str, declared) -> None:
    marker = tmp_path / "pwned"
    evil = payload(str(marker))
    p = tmp_path / "evil.pt"
    if writer == "torch_zip":
        torch.save({"state_dict": {"w": torch.zeros(1)}, "x": evil}, p)
    else:
        with open(p, "wb") as f:
            pickle.dump(evil, f, protocol=2 if writer == "pickle_p2" else None)
    with pytest.raises(LoadError) as err:
        load_model(str(p), declared)
    assert_one_line(err)
    assert not marker.exists()


def _external_variant(zoo: dict, tmp_path, location: str) -> str:
    """Copy of the external-data model whose tensors point at ``location``."""
    model = onnx.load(zoo["files"]["external"], load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    d = tmp_path / "models"
    d.mkdir(exist_ok=True)
    shutil.copyfile(os.path.join(os.path.dirname(zoo["files"]["external"]), "weights.bin"),
                    d / "weights.bin")
    path = d / "model.onnx"
    onnx.save_model(model, str(path))
    return str(path)


def test_onnx_external_data_outside_refused(zoo: dict, tmp_path) -> None:
    weights = os.path.join(os.path.dirname(zoo["files"]["external"]), "weights.bin")
    shutil.copyfile(weights, tmp_path / "outside.bin")  # it exists: refusal is by location
    absolute = str(tmp_path / "outside.bin")
    for location in ("../outside.bin", absolute, "sub/../../outside.bin"):
        with pytest.raises(LoadError, match="refused external data location") as err:
            load_model(_external_variant(zoo, tmp_path, location))
        assert_one_line(err)
    link = tmp_path / "models" / "link.bin"
    link.symlink_to(tmp_path / "outside.bin")
    with pytest.raises(LoadError, match="outside the model's directory"):
        load_model(_external_variant(zoo, tmp_path, "link.bin"))


def test_onnx_external_data_missing_or_short(zoo: dict, tmp_path) -> None:
    with pytest.raises(LoadError, match="missing") as err:
        load_model(_external_variant(zoo, tmp_path, "absent.bin"))
    assert_one_line(err)
    path = _external_variant(zoo, tmp_path, "weights.bin")
    assert n_3x3(load_model(path).layers) == N_3X3  # the copy itself is fine
    (tmp_path / "models" / "weights.bin").write_bytes(b"\0" * 64)
    with pytest.raises(LoadError, match="too short") as err:
        load_model(path)
    assert_one_line(err)
