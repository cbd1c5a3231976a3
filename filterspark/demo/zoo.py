"""The demo zoo: tiny but really trained CNNs in every supported checkpoint format.

:func:`build_demo_zoo` trains a few small networks on data shipped with scikit-learn
(digits, the two sample photos) and on procedural shapes, derives untrained, sparse
and replicated variants, saves them as PyTorch / TorchScript / safetensors / ONNX files
and writes ``catalog.csv`` (plus ``zoo_summary.json`` with training metrics).
One trained model, ``digits-cnn``, is saved in every format with identical weights.
Builds are deterministic for a given seed and take seconds on two CPU cores.
"""
from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from filterspark.demo import models as zm

CATALOG_COLUMNS = ["name", "path", "format", "task", "visual_category", "training_dataset",
                   "pretraining_dataset", "architecture", "family", "paper", "source",
                   "variant", "seed"]
SOURCE = "filterspark demo zoo"
ONNX_OPSET = 17

# save kind -> (catalog format, sub-folder, file suffix)
SAVE_KINDS: dict[str, tuple[str, str, str]] = {
    "pt": ("pytorch", "pytorch", ".pt"),
    "ckpt": ("pytorch", "pytorch", ".pth"),
    "bin": ("pytorch", "pytorch", ".bin"),
    "script": ("torchscript", "torchscript", ".ts"),
    "script-pt": ("torchscript", "torchscript", ".pt"),
    "safetensors": ("safetensors", "safetensors", ".safetensors"),
    "onnx": ("onnx", "onnx", ".onnx"),
    "onnx-ext": ("onnx", "onnx", ".onnx"),
    "onnx-tf2onnx": ("onnx", "onnx", ".onnx"),
}

DIGITS, PHOTOS, SHAPES = "handwriting", "natural photos", "synthetic shapes"
DS_DIGITS, DS_PHOTOS, DS_SHAPES = "sklearn-digits", "sklearn-sample-images", "synthetic-shapes"


@dataclass
class Spec:
    """One network of the zoo and how to make it."""

    name: str
    family: str
    architecture: str
    make: Callable[[], nn.Module]
    data: str  # dataset key of _Datasets (also gives the example input shape)
    task: str
    category: str
    training_dataset: str
    saves: tuple[str, ...]
    epochs: int = 0  # 0: untrained
    lr: float = 5e-3
    variant: str = "trained"
    base: str | None = None  # derived from this (trained) spec
    derive: str | None = None  # "sparse" | "replicated" | "finetune"
    pretraining_dataset: str = ""


def _plain(in_ch: int, n_out: int, k: int = 3) -> Callable[[], nn.Module]:
    return lambda: zm.PlainCNN(in_ch, n_out, (8, 16, 16, 32), first_kernel=k)


def _specs() -> list[Spec]:
    """The zoo, in build order (a derived spec follows its base)."""
    plain = "PlainCNN(8-16-16-32,k3)"
    sep = "SepCNN(16,dw3x3+pw1x1 x2)"
    return [
        Spec("digits-cnn", "plaincnn", plain, _plain(1, 10), "digits", "classification",
             DIGITS, DS_DIGITS, ("pt", "ckpt", "script", "safetensors", "onnx"),
             epochs=8, lr=1e-2),
        Spec("digits-cnn5x5", "plaincnn", "PlainCNN(8-16-16-32,k5)", _plain(1, 10, 5),
             "digits", "classification", DIGITS, DS_DIGITS, ("safetensors",),
             epochs=8, lr=1e-2),
        Spec("digits-sepcnn", "sepcnn", sep, lambda: zm.SepCNN(1, 10), "digits",
             "classification", DIGITS, DS_DIGITS, ("script-pt",), epochs=10, lr=2e-2),
        Spec("digits-ae", "convae", "ConvAE(16-32,convT3x3)", lambda: zm.ConvAE(1), "digits-ae",
             "autoencoding", DIGITS, DS_DIGITS, ("ckpt",), epochs=8, lr=1e-2),
        Spec("photo-cnn", "plaincnn", "PlainCNN(8-16-16-32,k3,rgb)", _plain(3, 2), "photo-cls",
             "classification", PHOTOS, DS_PHOTOS, ("onnx-ext",), epochs=4, lr=1e-2),
        Spec("photo-ae", "convae", "ConvAE(16-32,convT3x3,rgb)", lambda: zm.ConvAE(3),
             "photo-ae", "autoencoding", PHOTOS, DS_PHOTOS, ("safetensors",), epochs=5,
             lr=1e-2),
        Spec("photo-denoise", "dncnn", "ResidualCNN(16x4)", lambda: zm.ResidualCNN(1),
             "photo-denoise", "denoising", PHOTOS, DS_PHOTOS, ("script",), epochs=12),
        Spec("photo-cnn-ft", "plaincnn", plain, _plain(1, 2), "photo-gray-cls",
             "classification", PHOTOS, DS_PHOTOS, ("bin",), epochs=4, lr=3e-3,
             base="digits-cnn", derive="finetune", pretraining_dataset=DS_DIGITS),
        Spec("shapes-cnn", "plaincnn", plain, _plain(1, 3), "shapes-cls", "classification",
             SHAPES, DS_SHAPES, ("pt",), epochs=4, lr=1e-2),
        Spec("shapes-branchcnn", "branchcnn", "BranchCNN(16,2x3x3 concat)",
             lambda: zm.BranchCNN(1, 3), "shapes-cls", "classification", SHAPES, DS_SHAPES,
             ("onnx-tf2onnx",), epochs=4, lr=1e-2),
        Spec("shapes-inpaint", "dncnn", "ResidualCNN(16x4)", lambda: zm.ResidualCNN(1),
             "shapes-inpaint", "inpainting", SHAPES, DS_SHAPES, ("onnx",), epochs=12),
        Spec("untrained-plaincnn", "plaincnn", plain, _plain(1, 10), "digits", "classification",
             DIGITS, "", ("pt",), variant="untrained"),
        Spec("untrained-convae", "convae", "ConvAE(16-32,convT3x3,rgb)", lambda: zm.ConvAE(3),
             "photo-ae", "autoencoding", PHOTOS, "", ("script",), variant="untrained"),
        Spec("digits-cnn-sparse", "plaincnn", plain, _plain(1, 10), "digits", "classification",
             DIGITS, DS_DIGITS, ("safetensors",), variant="sparse", base="digits-cnn",
             derive="sparse"),
        Spec("digits-cnn-replicated", "plaincnn", plain, _plain(1, 10), "digits",
             "classification", DIGITS, DS_DIGITS, ("ckpt",), variant="replicated",
             base="digits-cnn", derive="replicated"),
        Spec("photo-ae-replicated", "convae", "ConvAE(16-32,convT3x3,rgb)",
             lambda: zm.ConvAE(3), "photo-ae", "autoencoding", PHOTOS, DS_PHOTOS, ("onnx",),
             variant="replicated", base="photo-ae", derive="replicated"),
        # k x k nets (kernels table); no 3x3 layer, so the filters table stays as it was
        Spec("digits-largekernel5", "largekernel", "LargeKernelCNN(8-16,k5,dw5x5)",
             lambda: zm.LargeKernelCNN(1, 10, 5), "digits", "classification", DIGITS, DS_DIGITS,
             ("onnx",), epochs=10, lr=1e-2),
        Spec("digits-largekernel7", "largekernel", "LargeKernelCNN(8-16,k7,dw7x7)",
             lambda: zm.LargeKernelCNN(1, 10, 7), "digits", "classification", DIGITS, DS_DIGITS,
             ("pt",), epochs=12, lr=5e-3),
    ]


# --------------------------------------------------------------------------- datasets


PATCH, N_IMAGES = 12, 1250  # side of photo/shape images; images per generated dataset


def _make_dataset(key: str, rng: np.random.Generator) -> zm.Dataset:
    if key in ("digits", "digits-ae"):
        x, y = zm.digits_images()
        return zm.classification_data(x, y, rng) if key == "digits" else \
            zm.reconstruction_data(x, rng)
    if key in ("photo-cls", "photo-gray-cls", "photo-ae", "photo-denoise"):
        gray = key in ("photo-gray-cls", "photo-denoise")
        x, y = zm.photo_patches(N_IMAGES, PATCH, gray, rng)
        if key.endswith("cls"):
            return zm.classification_data(x, y, rng)
        return zm.reconstruction_data(x, rng, "noise" if key == "photo-denoise" else "none")
    if key in ("shapes-cls", "shapes-inpaint"):
        x, y = zm.shape_images(N_IMAGES, PATCH, rng)
        return zm.classification_data(x, y, rng) if key == "shapes-cls" else \
            zm.reconstruction_data(x, rng, "mask")
    raise KeyError(key)


class _Datasets:
    """Lazily built, cached datasets, each from its own seeded generator."""

    KEYS = ("digits", "digits-ae", "photo-cls", "photo-gray-cls", "photo-ae",
            "photo-denoise", "shapes-cls", "shapes-inpaint")

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._cache: dict[str, zm.Dataset] = {}

    def __getitem__(self, key: str) -> zm.Dataset:
        if key not in self._cache:
            rng = np.random.default_rng([self.seed, self.KEYS.index(key)])
            self._cache[key] = _make_dataset(key, rng)
        return self._cache[key]


# --------------------------------------------------------------------------- variants


def conv3x3_keys(sd: dict[str, torch.Tensor]) -> list[str]:
    """State-dict keys of 3x3 conv (and conv-transpose) weights, in order."""
    return [k for k, v in sd.items() if v.ndim == 4 and tuple(v.shape[2:]) == (3, 3)]


def n_3x3_filters(sd: dict[str, torch.Tensor]) -> int:
    return sum(int(sd[k].shape[0] * sd[k].shape[1]) for k in conv3x3_keys(sd))


@torch.no_grad()
def sparsify_(model: nn.Module, rng: np.random.Generator, share: float = 0.9) -> list[str]:
    """Zero exactly ``share`` of the 3x3 filters of every 3x3 layer but the first."""
    sd = model.state_dict()
    keys = conv3x3_keys(sd)[1:]
    for k in keys:
        w = sd[k].view(-1, 9)
        idx = rng.choice(len(w), int(round(share * len(w))), replace=False)
        w[torch.from_numpy(idx)] = 0.0
    return keys


@torch.no_grad()
def replicate_(model: nn.Module, rng: np.random.Generator, n_protos: int = 2) -> list[str]:
    """In every 3x3 layer but the first, replace each filter by a positively scaled copy
    of one of the layer's ``n_protos`` largest-norm filters."""
    sd = model.state_dict()
    keys = conv3x3_keys(sd)[1:]
    for k in keys:
        w = sd[k].view(-1, 9)
        protos = w[w.norm(dim=1).argsort(descending=True)[:n_protos]].clone()
        pick = torch.from_numpy(rng.integers(0, n_protos, len(w)))
        scale = torch.from_numpy(rng.uniform(0.5, 1.5, len(w)).astype(np.float32))
        w.copy_(protos[pick] * scale[:, None])
    return keys


# --------------------------------------------------------------------------- saving


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _export_onnx(model: nn.Module, example: torch.Tensor) -> tuple["onnx.ModelProto", str]:
    """torch.onnx export: the legacy TorchScript exporter (opset 17) where this torch still
    has it, else the dynamo exporter (opset 18, needs onnxscript); weights stay
    initializers named like the state-dict keys."""
    import onnx
    try:
        buf = io.BytesIO()
        torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=ONNX_OPSET,
                          do_constant_folding=True, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch"},
                                                                 "output": {0: "batch"}})
        return onnx.load_from_string(buf.getvalue()), "torchscript (dynamo=False)"
    except Exception:  # legacy exporter missing or broken in this torch: use dynamo
        prog = torch.onnx.export(model, (example,), dynamo=True, opset_version=18,
                                 do_constant_folding=True, optimize=True)
        return prog.model_proto, "dynamo"


def _save(kind: str, model: nn.Module, path: Path, example: torch.Tensor,
          epochs: int, opt: torch.optim.Optimizer | None) -> str | None:
    """Write one checkpoint file; returns the ONNX exporter used, if any."""
    import onnx
    from safetensors.torch import save_file
    sd = _state_dict(model)
    model.eval()
    if kind == "pt":
        torch.save(sd, path)
    elif kind == "ckpt":
        ckpt: dict = {"epoch": epochs, "state_dict": sd}
        if opt is not None:
            ckpt["optimizer"] = opt.state_dict()
        torch.save(ckpt, path)
    elif kind == "bin":
        torch.save({"model": sd}, path)
    elif kind in ("script", "script-pt"):
        torch.jit.script(model).save(str(path))
    elif kind == "safetensors":
        save_file(sd, str(path), metadata={"format": "pt"})
    elif kind == "onnx":
        proto, exporter = _export_onnx(model, example)
        onnx.save_model(proto, str(path))
        return exporter
    elif kind == "onnx-ext":
        proto, exporter = _export_onnx(model, example)
        onnx.save_model(proto, str(path), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=f"{path.stem}.weights",
                        size_threshold=0)
        return exporter
    elif kind == "onnx-tf2onnx":
        onnx.save_model(tf2onnx_style_graph(model, tuple(example.shape[1:])), str(path))
    else:
        raise ValueError(kind)
    return None


def _file_path(out: Path, name: str, kind: str) -> Path:
    _, folder, suffix = SAVE_KINDS[kind]
    parent = out / folder / name if kind == "onnx-ext" else out / folder
    parent.mkdir(parents=True, exist_ok=True)
    return parent / f"{name}{suffix}"


# --------------------------------------------------------------------------- hand-built ONNX


def tf2onnx_style_graph(model: zm.BranchCNN, chw: tuple[int, int, int]) -> "onnx.ModelProto":
    """Imitate a tf2onnx export of a trained :class:`BranchCNN`: NHWC input transposed to
    NCHW, OIHW weights in ``Constant`` nodes read through ``Identity``, two parallel convs
    concatenated, opset 13, no initializers."""
    from onnx import TensorProto, helper, numpy_helper
    nodes: list = []
    c, h, w = chw
    pre = "StatefulPartitionedCall/model"

    def const(name: str, arr: np.ndarray) -> str:
        out = f"{pre}/{name}/ReadVariableOp:0"
        nodes.append(helper.make_node("Constant", [], [out], name=f"{pre}/{name}/ReadVariableOp",
                                      value=numpy_helper.from_array(arr, out)))
        nodes.append(helper.make_node("Identity", [out], [out[:-2] + "/Identity:0"],
                                      name=f"{pre}/{name}/Identity"))
        return out[:-2] + "/Identity:0"

    def conv(x: str, mod: nn.Conv2d, name: str) -> str:
        wt = const(f"{name}/Conv2D", mod.weight.detach().numpy().astype(np.float32))
        b = const(f"{name}/BiasAdd", mod.bias.detach().numpy().astype(np.float32))
        (kh, kw), (ph, pw) = mod.kernel_size, mod.padding
        out = f"{pre}/{name}/BiasAdd:0"
        nodes.append(helper.make_node(
            "Conv", [x, wt, b], [out], name=f"{pre}/{name}/Conv2D", kernel_shape=[kh, kw],
            pads=[ph, pw, ph, pw], strides=list(mod.stride), dilations=list(mod.dilation),
            group=mod.groups))
        return out

    def op(kind: str, inputs: list[str], name: str, **attrs) -> str:
        out = f"{pre}/{name}:0"
        nodes.append(helper.make_node(kind, inputs, [out], name=f"{pre}/{name}", **attrs))
        return out

    x = op("Transpose", ["input_1:0"], "input_1__nchw", perm=[0, 3, 1, 2])
    x = op("Relu", [conv(x, model.stem, "conv2d")], "conv2d/Relu")
    a, b = conv(x, model.branch_a, "conv2d_1"), conv(x, model.branch_b, "conv2d_2")
    x = op("Relu", [op("Concat", [a, b], "concatenate/concat", axis=1)], "concatenate/Relu")
    x = op("Relu", [conv(x, model.mix, "conv2d_3")], "conv2d_3/Relu")
    x = op("Flatten", [op("GlobalAveragePool", [x], "gap/Mean")], "gap/Flatten", axis=1)
    wd = const("dense/MatMul", model.head.weight.detach().numpy().T.copy())
    bd = const("dense/BiasAdd", model.head.bias.detach().numpy().copy())
    x = op("Add", [op("MatMul", [x, wd], "dense/MatMul"), bd], "dense/BiasAdd")
    nodes.append(helper.make_node("Identity", [x], ["Identity:0"], name="Identity"))
    graph = helper.make_graph(
        nodes, "tf2onnx",
        [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["unk__0", h, w, c])],
        [helper.make_tensor_value_info("Identity:0", TensorProto.FLOAT,
                                       ["unk__0", model.head.out_features])])
    m = helper.make_model(graph, producer_name="tf2onnx", producer_version="1.16.1 15c810",
                          opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    return m


# --------------------------------------------------------------------------- build


def _make_model(spec: Spec, built: dict[str, nn.Module], ds: _Datasets,
                seed: int) -> tuple[nn.Module, dict, torch.optim.Optimizer | None]:
    """Create (and train or derive) one network; returns it, its summary and optimizer."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    info: dict = {}
    if spec.base is None:
        model = spec.make()
    else:
        model = copy.deepcopy(built[spec.base])
    if spec.derive == "finetune":
        n_out = spec.make().head.out_features
        model.head = nn.Linear(model.head.in_features, n_out)
    elif spec.derive == "sparse":
        info["sparse_layers"] = sparsify_(model, rng)
    elif spec.derive == "replicated":
        info["replicated_layers"] = replicate_(model, rng)
    opt = None
    if spec.epochs:
        metrics, opt = zm.train(model, ds[spec.data], spec.epochs, spec.lr, seed=seed)
    else:
        metrics = zm.evaluate(model, ds[spec.data])
    info["metrics"] = metrics
    return model.eval(), info, opt


def build_demo_zoo(out_dir: str | Path, seed: int = 0, threads: int | None = 1) -> Path:
    """Train and save the demo zoo under ``out_dir``; returns ``out_dir/catalog.csv``.

    Also writes ``zoo_summary.json``: per network its rows, training metrics, number of
    3x3 filters and the layers made sparse/replicated; plus build time and ONNX exporter.
    ``threads``: torch intra-op threads during the build (restored afterwards; ``None``
    keeps the current setting). One thread is the default: these nets are far too small
    to gain from more (on 2 cores, 2 OpenMP threads measured ~5x slower idle and ~25x
    slower next to other busy processes), and it keeps the weights independent of the
    machine's core count.
    """
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _build(Path(out_dir), seed)
    finally:
        torch.set_num_threads(saved_threads)


def _build(out: Path, seed: int) -> Path:
    t0, cpu0 = time.perf_counter(), time.process_time()
    out.mkdir(parents=True, exist_ok=True)
    ds = _Datasets(seed)
    built: dict[str, nn.Module] = {}
    rows: list[dict[str, str]] = []
    summary: dict = {"seed": seed, "torch": torch.__version__,
                     "torch_threads": torch.get_num_threads(), "models": {}}
    exporters: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, spec in enumerate(_specs()):
            mseed = seed * 1000 + i
            t1 = time.perf_counter()
            model, info, opt = _make_model(spec, built, ds, mseed)
            built[spec.name] = model
            info["n_3x3_filters"] = n_3x3_filters(model.state_dict())
            info["rows"] = []
            example = ds[spec.data].x[:1]
            for kind in spec.saves:
                name = spec.name if len(spec.saves) == 1 else f"{spec.name}-{kind}"
                path = _file_path(out, name, kind)
                exp = _save(kind, model, path, example, spec.epochs, opt)
                exporters.update([exp] if exp else [])
                rows.append(_row(spec, name, path.relative_to(out).as_posix(), kind, mseed))
                info["rows"].append(name)
            info["seconds"] = round(time.perf_counter() - t1, 3)
            summary["models"][spec.name] = info
    summary["onnx_exporter"] = ", ".join(sorted(exporters))
    catalog = _write_catalog(out, rows)
    summary["n_rows"] = len(rows)
    summary["build_seconds"] = round(time.perf_counter() - t0, 3)
    summary["build_cpu_seconds"] = round(time.process_time() - cpu0, 3)
    (out / "zoo_summary.json").write_text(json.dumps(summary, indent=2))
    return catalog


def _row(spec: Spec, name: str, rel: str, kind: str, seed: int) -> dict[str, str]:
    return {"name": name, "path": rel, "format": SAVE_KINDS[kind][0], "task": spec.task,
            "visual_category": spec.category, "training_dataset": spec.training_dataset,
            "pretraining_dataset": spec.pretraining_dataset,
            "architecture": spec.architecture, "family": spec.family, "paper": "",
            "source": SOURCE, "variant": spec.variant, "seed": str(seed)}


def _write_catalog(out: Path, rows: list[dict[str, str]]) -> Path:
    path = out / "catalog.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CATALOG_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``filterspark demo-zoo``."""
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def run(args: argparse.Namespace) -> int:
    """Build the zoo and print a one-line summary."""
    catalog = build_demo_zoo(args.out, args.seed)
    out = catalog.parent
    summary = json.loads((out / "zoo_summary.json").read_text())
    files = [p for p in out.rglob("*") if p.is_file()]
    print(f"demo zoo: {len(summary['models'])} models, {summary['n_rows']} catalog rows, "
          f"{len(files)} files, {sum(p.stat().st_size for p in files)} bytes, "
          f"{summary['build_seconds']:.1f} s ({summary['build_cpu_seconds']:.1f} s CPU) "
          f"-> {catalog}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="filterspark demo-zoo", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
