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


def _lookup(name: str, scopes):
    """What defines ``name``, innermost scope first: ``("init", TensorProto)``,
    ``("node", NodeProto)``, ``("input", ValueInfoProto)`` or None (undefined)."""
    for inits, producers, graph in scopes:
        if name in inits:
            return "init", inits[name]
        k = producers.get(name)
        if k is not None:
            return "node", graph.node[k]
        for vi in graph.input:
            if vi.name == name:
                return "input", vi
    return None


def _weight_proto(name: str, scopes):
    """Follow Identity/Cast chains back to an initializer or Constant; None if computed.

    Returns ``(TensorProto, cast_to)`` where ``cast_to`` is the ONNX dtype the nearest
    Cast converts to (None without a Cast).
    """
    from onnx import TensorProto

    cast_to = None
    seen: set[str] = set()
    while name and name not in seen:
        seen.add(name)
        hit = _lookup(name, scopes)
        if hit is None or hit[0] == "input":
            return None
        if hit[0] == "init":
            return hit[1], cast_to
        node = hit[1]
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


_MAX_FOLD_NODES = 256


def _has_subgraph(node) -> bool:
    from onnx import AttributeProto

    return any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute)


def _fold(name: str, scopes, model, base_dir: str):
    """Evaluate the constant subgraph computing ``name`` with onnx's ReferenceEvaluator.

    Returns ``("value", ndarray, stored dtype | None)`` (stored dtype: the input of a
    ``DequantizeLinear``), ``("input", [graph inputs it depends on])`` or
    ``("unfoldable", reason)``.
    """
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    nodes: dict[int, object] = {}
    inits: dict[str, object] = {}
    inputs: list[str] = []
    stack, seen = [name], set()
    while stack:
        n = stack.pop()
        if not n or n in seen:
            continue
        seen.add(n)
        hit = _lookup(n, scopes)
        if hit is None or hit[0] == "input":
            inputs.append(n)
        elif hit[0] == "init":
            inits[n] = hit[1]
        else:
            node = hit[1]
            if node.domain not in _DEFAULT_DOMAINS or _has_subgraph(node):
                return "unfoldable", f"uses {node.op_type} (domain {node.domain or 'ai.onnx'}), which is not folded"
            nodes[id(node)] = node
            if len(nodes) > _MAX_FOLD_NODES:
                return "unfoldable", f"needs more than {_MAX_FOLD_NODES} nodes, which is not folded"
            stack.extend(node.input)
    if inputs:
        return "input", sorted(set(inputs))
    # topological order of the collected nodes
    pending = list(nodes.values())
    ordered, ready = [], set(inits)
    while pending:
        progress = [nd for nd in pending if all((not i) or i in ready for i in nd.input)]
        if not progress:
            return "unfoldable", "its constant subgraph has a cycle"
        for nd in progress:
            ordered.append(nd)
            ready.update(o for o in nd.output if o)
        pending = [nd for nd in pending if nd not in progress]
    stored = None
    for nd in ordered:
        if nd.op_type == "DequantizeLinear" and nd.input and nd.input[0] in inits:
            stored = helper.tensor_dtype_to_np_dtype(inits[nd.input[0]].data_type).name
    initializers = [
        _inline_external(t, base_dir) if t.data_location == 1 else t for t in inits.values()
    ]
    graph = helper.make_graph(ordered, "fold", [], [helper.make_empty_tensor_value_info(name)],
                              initializer=initializers)
    from onnx.defs import onnx_opset_version

    opsets = list(model.opset_import)
    # The reference runtime lacks some old op versions (e.g. DequantizeLinear before 19):
    # retry at the newest opset, whose semantics include the old ones for constants.
    newest = [helper.make_opsetid("", onnx_opset_version())] + [o for o in opsets if o.domain not in _DEFAULT_DOMAINS]
    error = None
    for imports in (opsets, newest):
        folded = helper.make_model(graph, opset_imports=imports, ir_version=max(model.ir_version, 3))
        try:
            return "value", np.asarray(ReferenceEvaluator(folded).run(None, {})[0]), stored
        except MemoryError:
            return "unfoldable", "folding it needs too much memory"
        except Exception as e:  # noqa: BLE001 - an op the reference runtime cannot evaluate, bad attributes, ...
            error = error or e
    return "unfoldable", f"not foldable ({first_line(error)})"


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


def _static_shape(vi) -> tuple[int, ...] | None:
    try:
        dims = vi.type.tensor_type.shape.dim
    except AttributeError:
        return None
    shape = tuple(int(d.dim_value) for d in dims)
    return shape if shape and all(d > 0 for d in shape) and len(dims) == len(shape) else None


class _Walk:
    """State of one model's walk over its graph and subgraphs."""

    def __init__(self, model, base_dir: str, device: torch.device) -> None:
        self.model = model
        self.base_dir = base_dir
        self.device = device
        self.names: set[str] = set()
        self.found: list[tuple[int, tuple, ConvLayer]] = []
        self.warnings: list[str] = []

    def unique(self, name: str) -> str:
        base, n = name, 1
        while name in self.names:
            n += 1
            name = f"{base}#{n}"
        self.names.add(name)
        return name

    def graph(self, graph, outer, base_level: int, prefix: str, pos_prefix: tuple) -> None:
        from onnx import AttributeProto

        level, anywhere, order = node_levels(graph)
        producers = {o: k for k, n in enumerate(graph.node) for o in n.output if o}
        inits = {t.name: t for t in graph.initializer}
        scopes = [(inits, producers, graph)] + outer
        for pos, k in enumerate(order):
            node = graph.node[k]
            lvl = base_level + int(level[k] if level[k] is not None else anywhere[k])
            for a in node.attribute:  # If / Loop / Scan bodies: convs inside are found too
                subs = [a.g] if a.type == AttributeProto.GRAPH else list(a.graphs) if a.type == AttributeProto.GRAPHS else []
                for j, sub in enumerate(subs):
                    label = f"{prefix}{node.name or node.op_type + '_' + str(k)}/{a.name}" + (f"{j}" if len(subs) > 1 else "")
                    self.graph(sub, scopes, lvl + 1, label + "/", pos_prefix + (pos, j))
            if node.op_type not in _CONV_OPS or node.domain not in _DEFAULT_DOMAINS or len(node.input) < 2:
                continue
            self.conv(node, k, scopes, lvl, prefix, pos_prefix + (pos,))

    def conv(self, node, k: int, scopes, lvl: int, prefix: str, pos: tuple) -> None:
        wname = node.input[1]
        group = _attr(node, "group")
        groups = int(group) if group is not None else 1
        op = _CONV_OPS[node.op_type]
        stored = quant = None
        source = _weight_proto(wname, scopes)
        if source is not None:
            if len(source[0].dims) != 4:
                return
            try:
                weight = _to_torch(source[0], source[1], self.base_dir)
            except LoadError:
                raise
            except Exception as e:  # noqa: BLE001
                raise LoadError(f"corrupt onnx weight {wname}: {first_line(e)}") from None
            if weight is None:
                return
        else:
            folded = _fold(wname, scopes, self.model, self.base_dir)
            name = self.unique(prefix + (node.name or wname or f"{node.op_type}_{k}"))
            if folded[0] != "value":
                shape = None
                if folded[0] == "input":
                    hits = [_lookup(i, scopes) for i in folded[1]]
                    shape = next((_static_shape(h[1]) for h in hits if h and h[0] == "input"
                                  and len(hits) == 1), None)
                kernel = _attr(node, "kernel_shape")
                rank = len(kernel) if kernel is not None else (len(shape) - 2 if shape else None)
                if rank is not None and rank != 2:
                    self.names.discard(name)
                    return  # a 1-D or 3-D conv: not ours, with or without its weight
                if folded[0] == "input":
                    why = (f"conv {name} takes its weight from graph input "
                           f"{', '.join(repr(i) for i in folded[1])}: not in the file, no filters extracted")
                else:
                    why = f"conv {name}: weight {wname!r} is computed and {folded[1]}; no filters extracted"
                self.warnings.append(why)
                layer = ConvLayer(name, None, op, groups, lvl, shape=shape, missing=why)
                self.found.append((lvl, pos, layer))
                return
            arr = folded[1]
            if arr.ndim != 4 or arr.dtype.kind != "f":
                return
            weight = torch.from_numpy(np.array(arr, copy=True))
            if folded[2]:
                stored, quant = folded[2], "onnx DequantizeLinear"
            layer = ConvLayer(name, weight.to(self.device), op, groups, lvl, stored_dtype=stored, quantization=quant)
            self.found.append((lvl, pos, layer))
            return
        name = self.unique(prefix + (node.name or wname or f"{node.op_type}_{k}"))
        self.found.append((lvl, pos, ConvLayer(name, weight.to(self.device), op, groups, lvl)))


def load_onnx(path: str, device: torch.device) -> LoadedModel:
    """Load an ONNX model's conv weights without running it or trusting external paths.

    Weights are initializers or ``Constant`` nodes (through ``Identity``/``Cast``), or
    computed from constants only (e.g. ``DequantizeLinear``, ``Mul``, ``Reshape``): then
    that constant subgraph is folded with onnx's ``ReferenceEvaluator``. Convs inside
    ``If``/``Loop``/``Scan`` bodies are found too (level: the node's + 1 + inside). A conv
    whose weight comes from a graph input is listed without weights (NULL ``n_filters``)
    and named in the model's warning.
    """
    import onnx

    try:
        model = onnx.load_model(path, load_external_data=False)
    except Exception as e:  # noqa: BLE001 - DecodeError, OSError, ...
        raise LoadError(f"corrupt onnx model: {first_line(e)}") from None
    if model.ir_version <= 0 or not model.HasField("graph") or not model.opset_import:
        raise LoadError("corrupt onnx model: no graph or opset_import (truncated file?)")
    walk = _Walk(model, os.path.dirname(os.path.abspath(path)), device)
    walk.graph(model.graph, [], 0, "", ())
    walk.found.sort(key=lambda item: (item[0], item[1]))
    return LoadedModel("onnx", [layer for _, _, layer in walk.found], _producer(model), _opset(model),
                       warnings=walk.warnings)
