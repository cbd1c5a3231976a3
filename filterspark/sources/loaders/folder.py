"""Model folders (Hugging Face layout): one folder = one model.

The weights file is picked the way ``from_pretrained`` prefers them: a sharded
safetensors index (``*.safetensors.index.json``), a single ``*.safetensors``
(``model.safetensors``, ``diffusion_pytorch_model.safetensors``), a sharded pickle index
(``*.bin.index.json``), a single ``pytorch_model.bin``; then ``model.onnx``,
``tf_model.h5`` (Keras) or a single ``*.tflite``. Shards are read one at a time (only
their 4-D weights are kept, so memory is bounded by the largest shard plus the conv
weights); pickles go through the weights-only pickle loader. ``config.json``'s
``architectures``, ``model_type`` and ``_class_name`` (diffusers) go to
``models.metadata``; its ``transformers_version``/``_diffusers_version`` is the producer.

A diffusers pipeline folder (``model_index.json``; ``unet/``, ``vae/``, … each with its
own config and weights) is one model per component: catalog the component folders
(``filterspark catalog`` does). SavedModel folders are refused with a reason.
"""
from __future__ import annotations

import json
import os
import re

import torch

from .base import LoadedModel, LoadError
from .torch_pickle import first_line

SKIP_DIRS = (".git", ".cache", "__pycache__")
_SINGLE_PREFERRED = ("model.safetensors", "diffusion_pytorch_model.safetensors")
_BIN_PREFERRED = ("pytorch_model.bin", "diffusion_pytorch_model.bin")
_OTHER = ("model.onnx", os.path.join("onnx", "model.onnx"), "tf_model.h5")


def folder_files(path: str) -> list[tuple[str, str]]:
    """``(relative path, full path)`` of every file of a model folder (``.git`` and caches
    left out), sorted; symlinked files (the Hugging Face cache) count as files."""
    out: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in filenames:
            full = os.path.join(dirpath, name)
            if os.path.isfile(full):
                out.append((os.path.relpath(full, path).replace(os.sep, "/"), full))
    return sorted(out)


def _natural(name: str):
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", name) if p]


def _inside(folder: str, rel: str) -> str:
    """Path of ``rel`` inside ``folder``, refusing absolute paths and ``..``. Checked
    lexically: the Hugging Face cache links every file to a blob outside the folder."""
    parts = rel.replace("\\", "/").split("/") if isinstance(rel, str) else []
    if not rel or os.path.isabs(rel) or rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel) or ".." in parts:
        raise LoadError(f"refused shard {rel!r}: must be a relative path inside the model folder")
    return os.path.join(folder, *parts)


def _shards(folder: str, index_name: str) -> list[str]:
    try:
        with open(os.path.join(folder, index_name), encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        raise LoadError(f"corrupt shard index {index_name}: {first_line(e)}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise LoadError(f"corrupt shard index {index_name}: no weight_map")
    files = []
    for value in weight_map.values():
        if not isinstance(value, str):
            raise LoadError(f"corrupt shard index {index_name}: a weight_map entry is not a file name")
        if value not in files:
            files.append(value)
    for rel in files:
        if not os.path.isfile(_inside(folder, rel)):
            raise LoadError(f"shard {rel} listed in {index_name} is missing")
    return sorted(files, key=_natural)


def _index(files: list[str], suffix: str) -> str | None:
    indexes = [n for n in files if n.endswith(suffix)]
    preferred = [n for n in indexes if n.split(".")[0] in ("model", "pytorch_model", "diffusion_pytorch_model")]
    return (preferred or indexes or [None])[0]


def weights_of_folder(folder: str) -> tuple[str, list[str]] | None:
    """``(kind, files)`` of a model folder's weights, None if it holds none. ``kind``:
    ``safetensors-index``/``pytorch-index`` (the index file), ``safetensors``/``pytorch``
    (one file), ``file`` (one file of another format, sniffed)."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return None
    files = [n for n in names if os.path.isfile(os.path.join(folder, n))]
    # from_pretrained's order: single safetensors, sharded safetensors, single bin, sharded bin
    singles = [n for n in files if n.endswith(".safetensors")]
    preferred = [n for n in _SINGLE_PREFERRED if n in singles]
    if preferred:
        return "safetensors", preferred[:1]
    index = _index(files, ".safetensors.index.json")
    if index:
        return "safetensors-index", [index]
    if len(singles) == 1:  # several unrelated .safetensors files are no one model
        return "safetensors", singles
    bins = [n for n in _BIN_PREFERRED if n in files]
    if bins:
        return "pytorch", [bins[0]]
    index = _index(files, ".bin.index.json")
    if index:
        return "pytorch-index", [index]
    for rel in _OTHER:
        if os.path.isfile(os.path.join(folder, rel)):
            return "file", [rel]
    tflites = [n for n in files if n.endswith(".tflite")]
    if len(tflites) == 1:
        return "file", tflites
    return None


def folder_refusal(folder: str) -> str | None:
    """The one-line reason a folder is no loadable model (None when it is one)."""
    if os.path.isfile(os.path.join(folder, "saved_model.pb")) or os.path.isfile(os.path.join(folder, "saved_model.pbtxt")):
        return "TensorFlow/Keras SavedModel folders are not supported: export to .keras, .tflite or ONNX"
    if os.path.isfile(os.path.join(folder, "model_index.json")):
        return (
            "a diffusers pipeline folder holds one model per component (unet/, vae/, ...): "
            "catalog each component folder (filterspark catalog does)"
        )
    if weights_of_folder(folder) is None:
        if os.path.isfile(os.path.join(folder, "flax_model.msgpack")):
            return "Flax msgpack weights are not supported: convert the model to safetensors"
        return (
            "folder holds no model weights (looked for *.safetensors, pytorch_model.bin, "
            "sharded *.index.json, model.onnx, tf_model.h5, *.tflite)"
        )
    return None


def folder_config(folder: str) -> tuple[dict[str, str], str | None]:
    """``models.metadata`` entries and producer from a folder's ``config.json``."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        return {}, None
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return {}, None
    if not isinstance(config, dict):
        return {}, None
    meta: dict[str, str] = {}
    archs = config.get("architectures")
    if isinstance(archs, list) and archs:
        meta["architectures"] = ",".join(str(a) for a in archs)
    elif isinstance(archs, str):
        meta["architectures"] = archs
    for key, column in (("model_type", "model_type"), ("_class_name", "class_name")):
        if isinstance(config.get(key), str):
            meta[column] = config[key]
    producer = None
    for key, tool in (("transformers_version", "transformers"), ("_diffusers_version", "diffusers")):
        if isinstance(config.get(key), str):
            producer = f"{tool} {config[key]}"
            break
    return meta, producer


def _sharded_layers(folder: str, shards: list[str], kind: str, device: torch.device, allow_pickle: bool) -> list:
    """Conv layers of all shards, one shard in memory at a time (its other tensors are
    dropped before the next is read); safetensors keys in natural order across shards,
    pickled shards in their own order (sharding keeps the state_dict's)."""
    from .safetensors_file import load_safetensors, natural_key
    from .torch_pickle import load_pytorch

    layers = []
    for rel in shards:
        full = _inside(folder, rel)
        try:
            part = load_safetensors(full, device) if kind == "safetensors" else load_pytorch(full, device, allow_pickle)
        except LoadError as err:
            raise LoadError(f"shard {rel}: {err}") from None
        layers += part.layers
        del part
    if kind == "safetensors":
        layers.sort(key=lambda layer: natural_key(layer.name))
    for level, layer in enumerate(layers):
        layer.level = level
    return layers


def load_folder(path: str, device: torch.device, allow_pickle: bool = False) -> LoadedModel:
    """Load the conv weights of one model folder (see the module docstring)."""
    reason = folder_refusal(path)
    if reason:
        raise LoadError(reason)
    kind, files = weights_of_folder(path)
    meta, producer = folder_config(path)
    if kind in ("safetensors-index", "pytorch-index"):
        shards = _shards(path, files[0])
        base = kind.split("-")[0]
        layers = _sharded_layers(path, shards, base, device, allow_pickle)
        meta["weights"] = f"{files[0]} ({len(shards)} shards)"
        meta["weights_format"] = base
        return LoadedModel("huggingface", layers, producer, metadata=meta)
    from .files import load_file, normalize_format

    inner = load_file(os.path.join(path, files[0]), None if kind == "file" else normalize_format(kind),
                      device, allow_pickle)
    meta["weights"] = files[0]
    meta["weights_format"] = inner.format
    return LoadedModel("huggingface", inner.layers, producer or inner.producer, inner.opset,
                       metadata={**inner.metadata, **meta}, warnings=inner.warnings)


HF_WEIGHT_NAMES = (
    "model.safetensors", "pytorch_model.bin",
    "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
)


def is_model_folder(folder: str) -> bool:
    """Whether ``folder`` is one model in the Hugging Face layout: a shard index, a
    well-known weights file name, or a ``config.json`` next to loadable weights."""
    try:
        names = set(os.listdir(folder))
    except OSError:
        return False
    if any(n.endswith((".safetensors.index.json", ".bin.index.json")) for n in names):
        return True
    if names & set(HF_WEIGHT_NAMES):
        return True
    return "config.json" in names and weights_of_folder(folder) is not None
