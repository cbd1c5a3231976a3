"""Keras checkpoints, read with h5py (no TensorFlow or Keras needed).

* Keras 2 HDF5 (``.h5``/``.hdf5``): a full model keeps its weights under
  ``model_weights/<layer>/<weight name>`` (e.g. ``model_weights/conv2d/conv2d/kernel:0``)
  and its architecture in the root attribute ``model_config``; a weights-only file
  (``save_weights``) has the layer groups at the root. Either way the group's
  ``layer_names`` attribute lists the layers and each layer's ``weight_names`` its weights.
* Keras 3 ``.keras``: a zip holding ``config.json`` (the architecture),
  ``metadata.json`` and ``model.weights.h5``, where a layer's variables are
  ``layers/<name>/vars/0``, ``vars/1``, … in the layer's own order (nested models:
  ``layers/<model>/layers/<name>/vars/…``).

Layer order and class come from the model config when present, else from the file
(then every 4-D kernel counts as a ``Conv2D`` with unknown ``groups``: without the config
a ``Conv2DTranspose`` cannot be told apart, as with PyTorch state_dicts).

Kernel layouts and their conversion to PyTorch's (the ``filter_index`` rule; each
kernel's rows and columns stay as stored: Keras ``k[:, :, i, o]`` is one filter, row-major):

* ``Conv2D``: ``(kh, kw, in/groups, out)`` → ``(out, in/groups, kh, kw)``; filter ``k[:, :, i, o]``
  has ``filter_index = o * (in/groups) + i``.
* ``DepthwiseConv2D`` and the depthwise part of ``SeparableConv2D`` (layer
  ``<name>/depthwise``): ``(kh, kw, in, multiplier)`` → ``(in * multiplier, 1, kh, kw)``,
  ``groups = in``; ``k[:, :, i, m]`` has ``filter_index = i * multiplier + m`` (PyTorch's
  depthwise channel order). The pointwise part is a 1x1 ``Conv`` ``<name>/pointwise``.
* ``Conv2DTranspose``: ``(kh, kw, out, in)`` → ``ConvTranspose`` ``(in, out, kh, kw)``;
  ``k[:, :, o, i]`` has ``filter_index = i * out + o``.

Levels: the longest path from the model input in the config's layer graph (a functional
model's ``inbound_nodes``; Sequential models are chains); without a config, file order.
A Keras 3 ``.weights.h5`` (``save_weights``) is read like the weights of a ``.keras``.
HDF5 datasets stored in external files or virtual datasets are refused: a weight may
only come from the checkpoint itself.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile

import numpy as np
import torch

from .base import ConvLayer, LoadedModel, LoadError
from .torch_pickle import first_line

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
KERAS3_WEIGHTS = "model.weights.h5"
_CONTAINERS = ("layers", "_layer_checkpoint_dependencies")  # Keras 3 / Keras 2.13-2.15 "v3"
_MODEL_CLASSES = ("Sequential", "Functional", "Model")
_DEPTHWISE = ("DepthwiseConv2D",)
_SEPARABLE = ("SeparableConv2D", "SeparableConvolution2D")
_TRANSPOSE = ("Conv2DTranspose", "Convolution2DTranspose", "Deconvolution2D", "Deconv2D")
_CONV = ("Conv2D", "Convolution2D")
_MAX_MEMBER_RATIO = 200  # a zipped model.weights.h5 larger than this x its compressed size is a zip bomb


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _short_class(name: str) -> str:
    """``keras.layers.Conv2D`` / ``Custom>Conv2D`` → ``Conv2D``."""
    return re.split(r"[>.]", name)[-1]


def _inbound_names(entry: dict) -> set[str]:
    """Names of the layers feeding a functional-model layer: Keras 2 ``inbound_nodes``
    ``[[[name, node, tensor, {}], ...]]``, Keras 3 ``{"args": [{... "keras_history":
    [name, node, tensor]}]}``."""
    names: set[str] = set()

    def walk(x, depth: int = 0) -> None:
        if depth > 32:
            return
        if isinstance(x, dict):
            hist = x.get("keras_history")
            if isinstance(hist, list) and hist and isinstance(hist[0], str):
                names.add(hist[0])
            for v in x.values():
                walk(v, depth + 1)
        elif isinstance(x, list):
            if len(x) >= 3 and isinstance(x[0], str) and isinstance(x[1], int) and isinstance(x[2], int):
                names.add(x[0])
            else:
                for v in x:
                    walk(v, depth + 1)

    walk(entry.get("inbound_nodes") or [])
    return names


def config_layers(config) -> list[tuple[str, str, dict, int]]:
    """``(name, class, config, level)`` of every layer of a Keras model config, nested
    models flattened in place, in config order. ``level`` is the longest path (in layers)
    from the model input: a functional model's ``inbound_nodes`` give the graph, a
    Sequential model (or one without them) is a chain."""
    out: list[tuple[str, str, dict, int]] = []

    def model(node: dict, base: int, depth: int) -> int:
        layers = node["config"]["layers"]
        functional = any(isinstance(l, dict) and l.get("inbound_nodes") for l in layers)
        span: dict[str, tuple[int, int]] = {}
        prev_end, end_max = base - 1, base
        for layer in layers:
            if not isinstance(layer, dict):
                continue
            cfg = layer.get("config") if isinstance(layer.get("config"), dict) else {}
            name = str(cfg.get("name") or layer.get("name") or "")
            if functional:
                parents = [span[p][1] for p in _inbound_names(layer) if p in span]
                start = max((e + 1 for e in parents), default=base)
            else:
                start = prev_end + 1
            if isinstance(cfg.get("layers"), list) and depth < 16:
                end = model(layer, start, depth + 1)
            else:
                out.append((name, _short_class(str(layer.get("class_name", ""))), cfg, start))
                end = start
            if name:
                span[name] = (start, end)
            prev_end, end_max = end, max(end_max, end)
        return end_max

    if isinstance(config, dict) and isinstance(config.get("config"), dict) and isinstance(config["config"].get("layers"), list):
        model(config, 0, 0)
    return out


def _parse_config(text) -> list[tuple[str, str, dict, int]] | None:
    if text is None:
        return None
    try:
        config = json.loads(_text(text))
    except (ValueError, TypeError):
        return None
    return config_layers(config) or None


def _array(ds, what: str) -> np.ndarray:
    if ds.external or ds.is_virtual:
        raise LoadError(f"refused Keras weight {what}: stored outside the checkpoint (HDF5 external/virtual dataset)")
    try:
        return np.asarray(ds[()])
    except Exception as e:  # noqa: BLE001 - truncated file, bad filter, ...
        raise LoadError(f"corrupt Keras weight {what}: {first_line(e)}") from None


def _float4d(arr: np.ndarray) -> bool:
    return arr.ndim == 4 and arr.dtype.kind == "f"


class _Builder:
    """Collects conv layers in order, applying the layout rules of the module docstring."""

    def __init__(self, device: torch.device, levels: dict[str, int] | None = None) -> None:
        self.device = device
        self.layers: list[ConvLayer] = []
        self.levels = levels or {}  # config level per layer name; else file order
        self.level = 0
        self.count = 0  # layers seen, for the file-order levels

    def _add(self, name: str, w: np.ndarray, op: str, groups: int | None) -> None:
        tensor = torch.from_numpy(np.ascontiguousarray(w)).to(self.device)
        # levels are doubled: a SeparableConv2D's pointwise part runs one step after its depthwise part
        level = self.level + 1 if name.endswith("/pointwise") else self.level
        self.layers.append(ConvLayer(name, tensor, op, groups, level))

    def conv(self, name: str, k: np.ndarray, groups: int | None) -> None:
        self._add(name, k.transpose(3, 2, 0, 1), "Conv", groups)

    def depthwise(self, name: str, k: np.ndarray) -> None:
        kh, kw, cin, mult = k.shape
        self._add(name, k.transpose(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw), "Conv", int(cin))

    def transpose(self, name: str, k: np.ndarray) -> None:
        self._add(name, k.transpose(3, 2, 0, 1), "ConvTranspose", 1)

    def layer(self, name: str, cls: str | None, cfg: dict, weights: list[tuple[str, np.ndarray]]) -> None:
        """One Keras layer: ``weights`` are ``(kind, array)`` in the layer's order, ``kind``
        the variable name (``kernel``, ``depthwise_kernel``, ...) or ``""`` when unknown."""
        kinds = [k for k, _ in weights]
        arrays = [a for _, a in weights]
        self.level = 2 * (self.levels.get(name, 0) if self.levels else self.count)
        self.count += 1
        if cls in _SEPARABLE:
            dw = arrays[kinds.index("depthwise_kernel")] if "depthwise_kernel" in kinds else arrays[0]
            pw = arrays[kinds.index("pointwise_kernel")] if "pointwise_kernel" in kinds else (
                arrays[1] if len(arrays) > 1 else None)
            if _float4d(dw):
                self.depthwise(f"{name}/depthwise", dw)
            if pw is not None and _float4d(pw):
                self.conv(f"{name}/pointwise", pw, 1)
            return
        if not arrays or cls in _MODEL_CLASSES:
            return
        if "depthwise_kernel" in kinds:
            k = arrays[kinds.index("depthwise_kernel")]
            if _float4d(k):
                self.depthwise(name, k)
            if "pointwise_kernel" in kinds and _float4d(arrays[kinds.index("pointwise_kernel")]):
                self.conv(f"{name}/pointwise", arrays[kinds.index("pointwise_kernel")], 1)
            return
        k = arrays[kinds.index("kernel")] if "kernel" in kinds else arrays[0]
        if not _float4d(k):
            return
        if cls in _DEPTHWISE:
            self.depthwise(name, k)
        elif cls in _TRANSPOSE:
            self.transpose(name, k)
        elif cls is None:  # no model config: a plain conv, groups unknown
            self.conv(name, k, None)
        else:
            groups = cfg.get("groups", 1)
            self.conv(name, k, int(groups) if isinstance(groups, int) and groups > 0 else 1)


def _levels(config, order: list[str]) -> dict[str, int] | None:
    """Config level per layer; layers the config lacks follow after the deepest one."""
    if not config:
        return None
    levels = {n: lvl for n, _, _, lvl in config}
    deepest = max(levels.values(), default=0)
    for name in order:
        if name not in levels:
            deepest += 1
            levels[name] = deepest
    return levels


def _weight_kind(weight_name: str) -> tuple[str, str]:
    """``"block/conv2d/kernel:0"`` → (``"block/conv2d"``, ``"kernel"``)."""
    base = re.sub(r":\d+$", "", weight_name)
    owner, _, kind = base.rpartition("/")
    return owner, kind


def _load_keras2(f, device: torch.device) -> LoadedModel:
    root = f["model_weights"] if "model_weights" in f and hasattr(f["model_weights"], "attrs") else f
    if "layer_names" not in root.attrs:
        if _v3_layer_groups(f):  # a Keras 3 ``.weights.h5`` (save_weights): layers/<name>/vars/<i>
            return _load_keras3(f, None, device, None)
        raise LoadError("HDF5 file holds no Keras weights (no layer_names attribute): not a Keras .h5 checkpoint")
    config = _parse_config(f.attrs.get("model_config"))
    by_name = {n: (cls, cfg) for n, cls, cfg, _ in (config or [])}
    # owner layer name -> list of (kind, array), in file order
    owners: dict[str, list[tuple[str, np.ndarray]]] = {}
    for lname in (_text(n) for n in root.attrs["layer_names"]):
        if lname not in root:
            raise LoadError(f"corrupt Keras file: layer {lname!r} is listed but has no weights group")
        group = root[lname]
        for wname in (_text(n) for n in group.attrs.get("weight_names", [])):
            if wname not in group:
                raise LoadError(f"corrupt Keras file: weight {wname!r} of layer {lname!r} is missing")
            owner, kind = _weight_kind(wname)
            if kind not in ("kernel", "depthwise_kernel", "pointwise_kernel"):
                continue
            owner_name = owner.rsplit("/", 1)[-1] if owner else lname
            if owner_name not in by_name and lname in by_name:
                owner_name = lname
            owners.setdefault(owner_name, []).append((kind, _array(group[wname], f"{lname}/{wname}")))
    order = [n for n, _, _, _ in (config or []) if n in owners] + [n for n in owners if n not in by_name]
    builder = _Builder(device, _levels(config, order))
    for name in order:
        cls, cfg = by_name.get(name, (None, {}))
        builder.layer(name, cls, cfg, owners[name])
    version = f.attrs.get("keras_version") or root.attrs.get("keras_version")
    return LoadedModel("keras", builder.layers, f"keras {_text(version)}" if version is not None else "keras")


def _natural(name: str):
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", name) if p]


def _v3_layer_groups(f) -> list[tuple[str, object]]:
    """``(layer name, group)`` of every group with ``vars`` below a layers container."""
    found: list[tuple[str, object]] = []

    def walk(group, depth: int) -> None:
        if depth > 12:
            return
        for container in _CONTAINERS:
            sub = group.get(container)
            if sub is None or not hasattr(sub, "keys"):
                continue
            for name in sorted(sub.keys(), key=_natural):
                child = sub[name]
                if not hasattr(child, "keys"):
                    continue
                if "vars" in child and hasattr(child["vars"], "keys") and len(child["vars"]):
                    found.append((name, child))
                walk(child, depth + 1)

    walk(f, 0)
    return found


def _load_keras3(h5, config_text, device: torch.device, version: str | None) -> LoadedModel:
    config = _parse_config(config_text)
    groups = _v3_layer_groups(h5)
    if not groups and "layer_names" in h5.attrs:  # a legacy-layout weights file inside the zip
        return _load_keras2(h5, device)
    by_file = {}
    for name, group in groups:
        by_file.setdefault(name, group)
    by_name = {n: (cls, cfg) for n, cls, cfg, _ in (config or [])}
    order = [n for n, _, _, _ in (config or []) if n in by_file] + [n for n, _ in groups if n not in by_name]
    builder = _Builder(device, _levels(config, order))
    seen = set()
    for name in order:
        if name in seen:
            continue
        seen.add(name)
        cls, cfg = by_name.get(name, (None, {}))
        variables = by_file[name]["vars"]
        weights = []
        for key in sorted(variables.keys(), key=_natural):
            ds = variables[key]
            if hasattr(ds, "shape"):
                weights.append(("", _array(ds, f"{name}/vars/{key}")))
        if cls is None and sum(_float4d(a) for _, a in weights) == 2 and weights[1][1].shape[:2] == (1, 1):
            cls = "SeparableConv2D"  # no config: a 3x3-ish kernel then a 1x1 one is only ever a separable conv
        if cls in _SEPARABLE and len(weights) >= 2:
            weights = [("depthwise_kernel", weights[0][1]), ("pointwise_kernel", weights[1][1])] + weights[2:]
        elif weights:
            weights = [("kernel", weights[0][1])] + weights[1:]
        builder.layer(name, cls, cfg, weights)
    return LoadedModel("keras", builder.layers, f"keras {version}" if version else "keras")


def _open_h5(source, what: str):
    import h5py

    try:
        return h5py.File(source, "r")
    except Exception as e:  # noqa: BLE001 - OSError: signature not found, truncated file, ...
        raise LoadError(f"corrupt Keras {what}: {first_line(e)}") from None


def _load_keras_zip(path: str, device: torch.device) -> LoadedModel:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise LoadError(f"corrupt .keras archive: {first_line(e)} (truncated or damaged zip)") from None
    with zf:
        names = zf.namelist()
        if KERAS3_WEIGHTS not in names:
            raise LoadError(f"corrupt .keras archive: no {KERAS3_WEIGHTS} inside")
        info = zf.getinfo(KERAS3_WEIGHTS)
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > _MAX_MEMBER_RATIO * max(info.compress_size, 1):
            raise LoadError(f"refused .keras archive: {KERAS3_WEIGHTS} expands {info.file_size} bytes from {info.compress_size}")
        try:
            config_text = zf.read("config.json") if "config.json" in names else None
            meta = json.loads(zf.read("metadata.json")) if "metadata.json" in names else {}
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise LoadError(f"corrupt .keras archive: {first_line(e)}") from None
        version = meta.get("keras_version") if isinstance(meta, dict) else None
        tmp = tempfile.mkdtemp(prefix="filterspark-keras-")
        try:
            target = os.path.join(tmp, KERAS3_WEIGHTS)
            try:
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
                raise LoadError(f"corrupt .keras archive: {first_line(e)}") from None
            with _open_h5(target, KERAS3_WEIGHTS) as h5:
                return _load_keras3(h5, config_text, device, version)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def load_keras(path: str, device: torch.device) -> LoadedModel:
    """Load the conv kernels of a Keras ``.h5``/``.hdf5`` or ``.keras`` file."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK"):
        return _load_keras_zip(path, device)
    with _open_h5(path, "HDF5 file") as h5:
        return _load_keras2(h5, device)
