"""ONNX models: Conv / ConvTranspose weights, levels = longest path from the graph inputs.

External data is resolved here (never by ``onnx``) so that a model cannot make us read
files outside its own directory.
"""
from __future__ import annotations

import heapq
import os
import re

import numpy as np
import torch

from .base import ConvLayer, LoadedModel, LoadError
from .torch_pickle import first_line

_DEFAULT_DOMAINS = ("", "ai.onnx")
_CONV_OPS = {"Conv": "Conv", "ConvTranspose": "ConvTranspose"}
_PASS_THROUGH = ("Identity", "Cast")
# numpy dtypes from ml_dtypes that torch.from_numpy cannot take directly
_ML_DTYPES = {
    "bfloat16": (np.uint16, torch.bfloat16),
    "float8_e4m3fn": (np.uint8, torch.float8_e4m3fn),
    "float8_e5m2": (np.uint8, torch.float8_e5m2),
    "float8_e4m3fnuz": (np.uint8, torch.float8_e4m3fnuz),
    "float8_e5m2fnuz": (np.uint8, torch.float8_e5m2fnuz),
}


def _producer(model) -> str | None:
    text = model.producer_name + (f" {model.producer_version}" if model.producer_version else "")
    return text.strip() or None


def _opset(model) -> int | None:
    return next((int(o.version) for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), None)


def _topological_order(nodes, producers: dict[str, int]) -> tuple[list[int], list[set[int]]]:
    """Kahn's algorithm, ties broken by file order; also returns each node's predecessors."""
    preds = [{producers[i] for i in n.input if i in producers} - {k} for k, n in enumerate(nodes)]
    succs: list[list[int]] = [[] for _ in nodes]
    for k, ps in enumerate(preds):
        for p in ps:
            succs[p].append(k)
    indeg = [len(ps) for ps in preds]
    ready = [k for k, d in enumerate(indeg) if d == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for s in succs[k]:
            indeg[s] -= 1
            if indeg[s] == 0:
                heapq.heappush(ready, s)
    if len(order) != len(nodes):
        raise LoadError("corrupt onnx model: the graph has a cycle")
    return order, preds


def node_levels(graph) -> tuple[list[int | None], list[int], list[int]]:
    """Per node: longest path (in nodes) from a real graph input, None if unreachable.

    Also returns the longest path from any source (fallback for unreachable nodes) and
    the topological order.
    """
    nodes = graph.node
    producers = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    inits = {t.name for t in graph.initializer}
    real_inputs = {i.name for i in graph.input} - inits
    order, preds = _topological_order(nodes, producers)
    level: list[int | None] = [None] * len(nodes)
    anywhere = [0] * len(nodes)
    for k in order:
        best = None
        for name in nodes[k].input:
            p = producers.get(name)
            if p is not None and p != k:
                cand = None if level[p] is None else level[p] + 1
            elif p is None and name in real_inputs:
                cand = 0
            else:
                cand = None
            if cand is not None and (best is None or cand > best):
                best = cand
        level[k] = best
        anywhere[k] = max((anywhere[p] + 1 for p in preds[k]), default=0)
    return level, anywhere, order


def _attr(node, name: str):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def _weight_proto(name: str, graph, producers: dict[str, int], inits: dict):
    """Follow Identity/Cast chains back to an initializer or Constant; None if computed.

    Returns ``(TensorProto, cast_to)`` where ``cast_to`` is the ONNX dtype the nearest
    Cast converts to (None without a Cast).
    """
    from onnx import TensorProto

    cast_to = None
    seen: set[str] = set()
    while name and name not in seen:
        seen.add(name)
        if name in inits:
            return inits[name], cast_to
        k = producers.get(name)
        if k is None:
            return None
        node = graph.node[k]
        if node.domain not in _DEFAULT_DOMAINS:
            return None
        if node.op_type == "Constant":
            value = _attr(node, "value")
            return (value, cast_to) if isinstance(value, TensorProto) else None
        if node.op_type not in _PASS_THROUGH or not node.input:
            return None
        if node.op_type == "Cast" and cast_to is None:
            cast_to = _attr(node, "to")
        name = node.input[0]
    return None


def _check_location(location: str, base_dir: str) -> str:
    """Absolute path of an external data file, refusing anything outside ``base_dir``."""
    if (
        not location
        or os.path.isabs(location)
        or location.startswith(("/", "\\"))
        or re.match(r"^[A-Za-z]:", location)
    ):
        raise LoadError(f"refused external data location {location!r}: must be a relative path")
    base = os.path.realpath(base_dir)
    full = os.path.realpath(os.path.join(base, location))
    if os.path.commonpath([base, full]) != base:
        raise LoadError(
            f"refused external data location {location!r}: resolves outside the model's directory"
        )
    if not os.path.isfile(full):
        raise LoadError(f"external data file missing: {location}")
    return full


def _inline_external(t, base_dir: str):
    """Copy of an external-data TensorProto with its bytes read into ``raw_data``."""
    from onnx import TensorProto, helper

    info = {e.key: e.value for e in t.external_data}
    full = _check_location(info.get("location", ""), base_dir)
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        expected = int(np.prod(list(t.dims), dtype=np.int64)) * itemsize
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else expected
    except (ValueError, TypeError, KeyError) as e:
        raise LoadError(f"corrupt onnx external data entry for {t.name}: {first_line(e)}") from None
    if offset < 0 or length != expected:
        raise LoadError(
            f"corrupt onnx external data entry for {t.name}: offset {offset}, "
            f"length {length}, tensor needs {expected} bytes"
        )
    if offset + length > os.path.getsize(full):
        raise LoadError(f"external data file {info['location']} is too short for tensor {t.name}")
    with open(full, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    inline = TensorProto()
    inline.CopyFrom(t)
    del inline.external_data[:]
    inline.data_location = TensorProto.DEFAULT
    inline.raw_data = data
    return inline


def _to_torch(t, cast_to, base_dir: str) -> torch.Tensor | None:
    """Tensor of a weight proto with its stored floating dtype (None if not floating)."""
    from onnx import TensorProto, helper, numpy_helper

    if t.data_location == TensorProto.EXTERNAL:
        t = _inline_external(t, base_dir)
    arr = numpy_helper.to_array(t)
    if arr.dtype.name in _ML_DTYPES:
        raw, dtype = _ML_DTYPES[arr.dtype.name]
        tensor = torch.from_numpy(np.ascontiguousarray(arr).view(raw).copy()).view(dtype)
    else:
        tensor = torch.from_numpy(np.array(arr, copy=True))
    if tensor.is_floating_point():
        return tensor
    if cast_to is not None:  # e.g. integer weights Cast to float: apply the graph's Cast
        target = np.dtype(helper.tensor_dtype_to_np_dtype(cast_to))
        if target.kind == "f":
            return torch.from_numpy(np.asarray(arr).astype(target))
    return None


def load_onnx(path: str, device: torch.device) -> LoadedModel:
    """Load an ONNX model's conv weights without running it or trusting external paths."""
    import onnx

    try:
        model = onnx.load_model(path, load_external_data=False)
    except Exception as e:  # noqa: BLE001 - DecodeError, OSError, ...
        raise LoadError(f"corrupt onnx model: {first_line(e)}") from None
    if model.ir_version <= 0 or not model.HasField("graph") or not model.opset_import:
        raise LoadError("corrupt onnx model: no graph or opset_import (truncated file?)")
    graph = model.graph
    level, anywhere, order = node_levels(graph)
    producers = {o: k for k, n in enumerate(graph.node) for o in n.output if o}
    inits = {t.name: t for t in graph.initializer}
    base_dir = os.path.dirname(os.path.abspath(path))
    found: list[tuple[int, int, ConvLayer]] = []
    names: set[str] = set()
    for pos, k in enumerate(order):
        node = graph.node[k]
        if node.op_type not in _CONV_OPS or node.domain not in _DEFAULT_DOMAINS:
            continue
        if len(node.input) < 2:
            continue
        source = _weight_proto(node.input[1], graph, producers, inits)
        if source is None or len(source[0].dims) != 4:
            continue
        try:
            weight = _to_torch(source[0], source[1], base_dir)
        except LoadError:
            raise
        except Exception as e:  # noqa: BLE001
            raise LoadError(f"corrupt onnx weight {node.input[1]}: {first_line(e)}") from None
        if weight is None:
            continue
        name = node.name or node.input[1] or f"{node.op_type}_{k}"
        base, n = name, 1
        while name in names:
            n += 1
            name = f"{base}#{n}"
        names.add(name)
        group = _attr(node, "group")
        lvl = level[k] if level[k] is not None else anywhere[k]
        layer = ConvLayer(name, weight.to(device), _CONV_OPS[node.op_type],
                          int(group) if group is not None else 1, int(lvl))
        found.append((layer.level, pos, layer))
    found.sort(key=lambda item: (item[0], item[1]))
    return LoadedModel("onnx", [layer for _, _, layer in found], _producer(model), _opset(model))
