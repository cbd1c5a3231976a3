"""TensorFlow Lite flatbuffers (``.tflite``), parsed with the ``tflite`` schema bindings.

Ops read: ``CONV_2D``, ``DEPTHWISE_CONV_2D`` and ``TRANSPOSE_CONV`` (their filter is
input 1). A filter that no buffer holds but a ``DEQUANTIZE`` op produces is read from
that op's input (float16 or int8 weights of "float16"/"dynamic range" quantized models).
Integer weights (``int8``/``uint8``) are dequantized, ``(q - zero_point) * scale`` per
channel along ``quantized_dimension`` (or per tensor); the layer keeps the stored dtype
(``layers.dtype`` reads ``int8 (dequantized)``). float16 weights stay float16.

Filter layouts and their conversion to PyTorch's (the ``filter_index`` rule; each kernel's
rows and columns stay as stored):

* ``CONV_2D``: OHWI ``(out, kh, kw, in/groups)`` → ``(out, in/groups, kh, kw)``;
  ``w[o, :, :, i]`` has ``filter_index = o * (in/groups) + i``; ``groups`` = input
  channels / filter channels (1 when the input shape is unknown).
* ``DEPTHWISE_CONV_2D``: ``(1, kh, kw, out)`` → ``(out, 1, kh, kw)``, ``groups`` = input
  channels; ``w[0, :, :, o]`` has ``filter_index = o`` (``o = i * multiplier + m``, as in
  PyTorch).
* ``TRANSPOSE_CONV``: ``(out, kh, kw, in)`` → ``ConvTranspose`` ``(in, out, kh, kw)``;
  ``w[o, :, :, i]`` has ``filter_index = i * out + o``.

Levels: longest path from the subgraph inputs through non-constant tensors (weight
``DEQUANTIZE`` ops do not count). Nothing is executed: the file is only parsed, every
vector and buffer bounds-checked against the file.
"""
from __future__ import annotations

import struct

import numpy as np
import torch

from .base import ConvLayer, LoadedModel, LoadError
from .torch_pickle import first_line

IDENTIFIER = b"TFL3"
CONV_2D, DEPTHWISE_CONV_2D, DEQUANTIZE, TRANSPOSE_CONV = 3, 4, 6, 67
_CONV_OPS = {CONV_2D: "CONV_2D", DEPTHWISE_CONV_2D: "DEPTHWISE_CONV_2D", TRANSPOSE_CONV: "TRANSPOSE_CONV"}
# TensorType -> (name, numpy dtype)
_TYPES = {
    0: ("float32", np.float32), 1: ("float16", np.float16), 2: ("int32", np.int32),
    3: ("uint8", np.uint8), 4: ("int64", np.int64), 7: ("int16", np.int16),
    9: ("int8", np.int8), 10: ("float64", np.float64),
}
_MAX_SUBGRAPHS = 10_000


def is_tflite(head: bytes) -> bool:
    return len(head) >= 8 and head[4:8] == IDENTIFIER


class _NotReadable(LoadError):
    """A filter this loader cannot turn into floats (sparse, int4, ...): the layer is
    listed without filters and named in the warning, the rest of the model is read."""


class _Reader:
    def __init__(self, buf: bytes, model) -> None:
        self.buf = buf
        self.model = model
        self._codes = [self._code(model.OperatorCodes(i)) for i in range(model.OperatorCodesLength())]

    @staticmethod
    def _code(oc) -> int:
        # deprecated_builtin_code is a byte (127 = "look at builtin_code")
        return max(int(oc.DeprecatedBuiltinCode()), int(oc.BuiltinCode()))

    def opcode(self, op) -> int:
        idx = int(op.OpcodeIndex())
        if idx >= len(self._codes):
            raise LoadError(f"corrupt tflite file: operator code index {idx} of {len(self._codes)}")
        return self._codes[idx]

    def buffer_bytes(self, index: int) -> bytes | None:
        """Bytes of buffer ``index`` (None when empty), bounds-checked against the file."""
        if index <= 0 or index >= self.model.BuffersLength():
            return None
        b = self.model.Buffers(index)
        offset, size = int(b.Offset()), int(b.Size())
        if offset > 1:  # large models keep buffers after the flatbuffer
            if offset + size > len(self.buf):
                raise LoadError(
                    f"corrupt tflite file: buffer {index} claims bytes {offset}..{offset + size} "
                    f"but the file has {len(self.buf)} (truncated?)"
                )
            return bytes(self.buf[offset : offset + size]) or None
        if b.DataIsNone():
            return None
        n = int(b.DataLength())
        start = b._tab.Vector(b._tab.Offset(4))
        if start + n > len(self.buf):
            raise LoadError(
                f"corrupt tflite file: buffer {index} claims {n} bytes at {start} but the file has {len(self.buf)}"
            )
        return bytes(self.buf[start : start + n]) or None

    def array(self, sub, t: int) -> tuple[np.ndarray, str, object] | None:
        """``(array, stored dtype name, quantization)`` of a constant tensor, else None."""
        tensor = sub.Tensors(t)
        data = self.buffer_bytes(int(tensor.Buffer()))
        if data is None:
            return None
        kind = int(tensor.Type())
        if kind not in _TYPES:
            raise _NotReadable(f"tensor type {kind} is not supported")
        if tensor.Sparsity() is not None:
            raise _NotReadable("sparse tensors are not supported")
        dtype_name, dtype = _TYPES[kind]
        shape = [int(d) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
        if any(d < 0 for d in shape):
            raise LoadError(f"corrupt tflite file: tensor {_name(tensor)} has shape {shape}")
        need = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if len(data) != need:
            raise LoadError(
                f"corrupt tflite file: tensor {_name(tensor)} of shape {shape} needs {need} bytes, its buffer has {len(data)}"
            )
        return np.frombuffer(data, dtype=dtype).reshape(shape), dtype_name, tensor.Quantization()


def _name(tensor) -> str:
    raw = tensor.Name()
    return raw.decode("utf-8", "replace") if raw else "?"


def _dequantize(arr: np.ndarray, dtype_name: str, q, what: str) -> tuple[np.ndarray, str | None]:
    """Float weights of a constant tensor and how they were dequantized (None: stored float)."""
    if arr.dtype.kind == "f":
        return arr, None
    if q is None or q.ScaleLength() == 0:
        raise _NotReadable(f"{dtype_name} without quantization scales cannot be dequantized")
    scale = q.ScaleAsNumpy().astype(np.float64)
    zero = q.ZeroPointAsNumpy().astype(np.float64) if q.ZeroPointLength() else np.zeros_like(scale)
    if zero.size == 1 and scale.size > 1:
        zero = np.full_like(scale, zero[0])
    if scale.size == 1:
        out = (arr.astype(np.float64) - zero[0]) * scale[0]
        return out.astype(np.float32), f"per-tensor {dtype_name}"
    axis = int(q.QuantizedDimension())
    if not 0 <= axis < arr.ndim or arr.shape[axis] != scale.size or zero.size != scale.size:
        raise LoadError(
            f"corrupt tflite file: weight {what} has {scale.size} scales for axis {axis} of shape {list(arr.shape)}"
        )
    shape = [1] * arr.ndim
    shape[axis] = scale.size
    out = (arr.astype(np.float64) - zero.reshape(shape)) * scale.reshape(shape)
    return out.astype(np.float32), f"per-channel {dtype_name} (axis {axis})"


def _channels(sub, t: int) -> int | None:
    if t < 0:
        return None
    tensor = sub.Tensors(t)
    if not tensor.ShapeLength():
        return None
    c = int(tensor.ShapeAsNumpy()[-1])
    return c if c > 0 else None


def _to_torch_layout(code: int, w: np.ndarray, in_channels: int | None, options) -> tuple[np.ndarray, str, int]:
    if w.ndim != 4:
        raise LoadError(f"tflite conv filter of rank {w.ndim}, expected 4")
    if code == CONV_2D:
        groups = in_channels // w.shape[3] if in_channels and w.shape[3] and in_channels % w.shape[3] == 0 else 1
        return w.transpose(0, 3, 1, 2), "Conv", max(1, groups)
    if code == DEPTHWISE_CONV_2D:
        out = int(w.shape[3])
        groups = in_channels
        if not groups:
            mult = options.get("depth_multiplier") or 1
            groups = out // mult if out % mult == 0 else out
        return w.transpose(3, 0, 1, 2), "Conv", int(groups)
    return w.transpose(3, 0, 1, 2), "ConvTranspose", 1  # TRANSPOSE_CONV


def _depth_multiplier(op) -> int | None:
    try:
        from tflite.DepthwiseConv2DOptions import DepthwiseConv2DOptions

        table = op.BuiltinOptions()
        if table is None:
            return None
        opts = DepthwiseConv2DOptions()
        opts.Init(table.Bytes, table.Pos)
        return int(opts.DepthMultiplier()) or None
    except Exception:  # noqa: BLE001 - options are only a fallback
        return None


def _subgraph_layers(reader: _Reader, sub, sg: int, base_level: int, device, names: set[str],
                     warnings: list[str]) -> list[ConvLayer]:
    n_tensors = sub.TensorsLength()
    ops = [sub.Operators(k) for k in range(sub.OperatorsLength())]
    producer: dict[int, int] = {}
    for k, op in enumerate(ops):
        for t in op.OutputsAsNumpy() if op.OutputsLength() else []:
            producer[int(t)] = k
    constant: dict[int, bool] = {}

    def is_const(t: int) -> bool:
        if t < 0:
            return True
        if t not in constant:
            constant[t] = False  # cycle guard
            if t in producer:
                op = ops[producer[t]]
                ins = [int(i) for i in (op.InputsAsNumpy() if op.InputsLength() else [])]
                constant[t] = bool(ins) and all(is_const(i) for i in ins)
            else:
                b = int(sub.Tensors(t).Buffer()) if 0 <= t < n_tensors else 0
                constant[t] = reader.buffer_bytes(b) is not None
        return constant[t]

    level: dict[int, int] = {}
    layers: list[ConvLayer] = []
    for k, op in enumerate(ops):
        ins = [int(i) for i in (op.InputsAsNumpy() if op.InputsLength() else [])]
        if any(i >= n_tensors for i in ins):
            raise LoadError(f"corrupt tflite file: operator {k} uses tensor index beyond {n_tensors}")
        lvl = 0
        for i in ins:
            if i >= 0 and not is_const(i) and i in producer:
                lvl = max(lvl, level[producer[i]] + 1)
        level[k] = lvl
        code = reader.opcode(op)
        if code not in _CONV_OPS or len(ins) < 2:
            continue
        data_in = ins[2] if code == TRANSPOSE_CONV and len(ins) > 2 else ins[0]
        t = ins[1]
        source = t
        if reader.buffer_bytes(int(sub.Tensors(t).Buffer())) is None and t in producer \
                and reader.opcode(ops[producer[t]]) == DEQUANTIZE:
            dq = ops[producer[t]]
            if dq.InputsLength():
                source = int(dq.InputsAsNumpy()[0])
        name = _name(sub.Tensors(source)) if 0 <= source < n_tensors else f"{_CONV_OPS[code]}_{k}"
        if name in ("", "?"):
            name = f"{_CONV_OPS[code]}_{k}"
        if sg:
            name = f"subgraph{sg}/{name}"
        unique, n = name, 1
        while unique in names:
            n += 1
            unique = f"{name}#{n}"
        names.add(unique)
        try:
            found = reader.array(sub, source) if 0 <= source < n_tensors else None
            why = f"tflite {_CONV_OPS[code]} {unique}: its filter is computed at run time, not stored in the file"
            if found is not None:
                arr, dtype_name, q = found
                weights, quant = _dequantize(arr, dtype_name, q, unique)
        except _NotReadable as err:
            found, why = None, f"tflite {_CONV_OPS[code]} {unique}: its filter is not read ({err})"
        if found is None:
            warnings.append(why)
            layers.append(ConvLayer(unique, None, "ConvTranspose" if code == TRANSPOSE_CONV else "Conv",
                                    None, base_level + lvl, missing=why))
            continue
        options = {"depth_multiplier": _depth_multiplier(op)} if code == DEPTHWISE_CONV_2D else {}
        torch_w, op_name, groups = _to_torch_layout(code, weights, _channels(sub, data_in), options)
        tensor = torch.from_numpy(np.array(torch_w, dtype=torch_w.dtype, copy=True, order="C")).to(device)
        layers.append(ConvLayer(unique, tensor, op_name, groups, base_level + lvl,
                                stored_dtype=dtype_name, quantization=quant))
    return layers


def load_tflite(path: str, device: torch.device) -> LoadedModel:
    """Load the conv filters of a ``.tflite`` flatbuffer without running it."""
    with open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 8:
        raise LoadError(f"truncated tflite file: {len(buf)} bytes")
    if buf[4:8] != IDENTIFIER:
        raise LoadError(f"not a tflite flatbuffer: file identifier {buf[4:8]!r}, expected {IDENTIFIER!r}")
    root = int.from_bytes(buf[:4], "little")
    if root + 4 > len(buf):
        raise LoadError(f"truncated tflite file: root table at byte {root} of {len(buf)}")
    try:
        from tflite.Model import Model

        model = Model.GetRootAs(buf, 0)
        reader = _Reader(buf, model)
        n_sub = model.SubgraphsLength()
        if n_sub == 0 or n_sub > _MAX_SUBGRAPHS:
            raise LoadError(f"corrupt tflite file: {n_sub} subgraphs")
        layers: list[ConvLayer] = []
        warnings: list[str] = []
        names: set[str] = set()
        base = 0
        for sg in range(n_sub):
            found = _subgraph_layers(reader, model.Subgraphs(sg), sg, base, device, names, warnings)
            layers += found
            base = max([l.level for l in layers], default=-1) + 1
        description = model.Description()
        producer = description.decode("utf-8", "replace").strip() if description else None
        return LoadedModel("tflite", layers, producer or None, None, warnings=warnings)
    except LoadError:
        raise
    except struct.error:
        raise LoadError(f"corrupt tflite file: a table or vector points past the end of the file "
                        f"({len(buf)} bytes; truncated?)") from None
    except Exception as e:  # noqa: BLE001 - IndexError / ValueError on a damaged flatbuffer
        raise LoadError(f"corrupt tflite file: {first_line(e)}") from None
