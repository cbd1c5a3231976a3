"""Writers (and independent readers) for the checkpoint formats no installable framework
writes here: Keras HDF5 / .keras files with h5py in Keras' own layout, and TFLite
flatbuffers with the plain ``flatbuffers`` builder following the official schema
(``tensorflow/lite/schema/schema.fbs``: field ids below). Nothing here uses the product's
loaders, so the tests compare two independent implementations.

Every writer starts from one small torch network (:class:`SmallNet`) and converts its
weights into the format's own layout; the readers here count and list the 3x3 kernels
straight from the files.
"""
from __future__ import annotations

import io
import json
import zipfile

import flatbuffers
import h5py
import numpy as np
import torch
from flatbuffers import number_types as N
from flatbuffers.table import Table
from torch import nn


class SmallNet(nn.Module):
    """conv (3→4) → depthwise (4→8, multiplier 2) → pointwise 1x1 (8→6) → grouped conv
    (6→6, groups 2) → transposed conv (6→5). ``nn.Sequential`` keys sort naturally in
    module order, so safetensors files keep the order."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 8, 3, padding=1, groups=4),
            nn.Conv2d(8, 6, 1),
            nn.Conv2d(6, 6, 3, padding=1, groups=2),
            nn.ConvTranspose2d(6, 5, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


#: (state_dict key, kind, groups) of SmallNet's convs, in forward order
SMALL_CONVS = [
    ("body.0.weight", "conv", 1),
    ("body.2.weight", "depthwise", 4),
    ("body.3.weight", "conv", 1),
    ("body.4.weight", "conv", 2),
    ("body.5.weight", "transpose", 1),
]
KERAS_NAMES = ["stem", "dw", "pw", "grouped", "up"]  # alphabetical order differs from forward order


def small_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in SmallNet().eval().state_dict().items()}


# ------------------------------------------------------------------------------ Keras layouts


def keras_kernel(w: np.ndarray, kind: str) -> np.ndarray:
    """A torch weight in Keras' kernel layout: Conv2D ``(kh, kw, in/groups, out)``,
    Conv2DTranspose ``(kh, kw, out, in)`` (depthwise: :func:`keras_depthwise`)."""
    if kind == "transpose":  # torch (in, out, kh, kw)
        return np.ascontiguousarray(w.transpose(2, 3, 1, 0))
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))  # torch (out, in/g, kh, kw)


def keras_depthwise(w: np.ndarray, groups: int) -> np.ndarray:
    out, _, kh, kw = w.shape
    mult = out // groups
    return np.ascontiguousarray(w[:, 0].reshape(groups, mult, kh, kw).transpose(2, 3, 0, 1))


def _keras_layers(sd, separable: bool) -> list[tuple[str, str, dict, list[tuple[str, np.ndarray]]]]:
    """(name, class, config, [(weight kind, array)]) of SmallNet as Keras layers."""
    arrays = {k: v.numpy() for k, v in sd.items()}
    bias = lambda key: arrays[key.replace("weight", "bias")]  # noqa: E731
    w = [arrays[k] for k, _, _ in SMALL_CONVS]
    layers = [("stem", "Conv2D", {"groups": 1, "filters": 4}, [("kernel", keras_kernel(w[0], "conv")), ("bias", bias("body.0.weight"))])]
    dw = keras_depthwise(w[1], 4)
    pw = keras_kernel(w[2], "conv")
    if separable:
        layers.append(("sep", "SeparableConv2D", {"depth_multiplier": 2},
                       [("depthwise_kernel", dw), ("pointwise_kernel", pw), ("bias", bias("body.3.weight"))]))
    else:
        layers.append(("dw", "DepthwiseConv2D", {"depth_multiplier": 2}, [("depthwise_kernel", dw), ("bias", bias("body.2.weight"))]))
        layers.append(("pw", "Conv2D", {"groups": 1}, [("kernel", pw), ("bias", bias("body.3.weight"))]))
    layers.append(("grouped", "Conv2D", {"groups": 2}, [("kernel", keras_kernel(w[3], "conv")), ("bias", bias("body.4.weight"))]))
    layers.append(("up", "Conv2DTranspose", {}, [("kernel", keras_kernel(w[4], "transpose")), ("bias", bias("body.5.weight"))]))
    layers.append(("head", "Dense", {}, [("kernel", np.ones((5, 2), np.float32)), ("bias", np.zeros(2, np.float32))]))
    return layers


def _layer_config(name: str, cls: str, cfg: dict, module: bool = False) -> dict:
    entry = {"class_name": cls, "config": {"name": name, "trainable": True, **cfg}}
    if module:
        entry["module"] = "keras.layers"
    return entry


def write_keras_h5(path, sd, weights_only: bool = False, separable: bool = False) -> None:
    """Keras 2 HDF5: ``model.save`` (``model_weights/<layer>/<layer>/kernel:0`` + the
    ``model_config`` attribute) or ``save_weights`` (layer groups at the root)."""
    layers = _keras_layers(sd, separable)
    config = {"class_name": "Sequential", "config": {"name": "sequential", "layers": [
        {"class_name": "InputLayer", "config": {"name": "input_1", "batch_input_shape": [None, 8, 8, 3]}},
        *[_layer_config(n, c, cfg) for n, c, cfg, _ in layers[:1]],
        {"class_name": "ReLU", "config": {"name": "re_lu"}},
        *[_layer_config(n, c, cfg) for n, c, cfg, _ in layers[1:]],
    ]}}
    names = ["input_1", layers[0][0], "re_lu"] + [n for n, _, _, _ in layers[1:]]
    weights = {n: ws for n, _, _, ws in layers}
    with h5py.File(path, "w") as f:
        root = f if weights_only else f.create_group("model_weights")
        if not weights_only:
            f.attrs["keras_version"] = "2.15.0"
            f.attrs["backend"] = "tensorflow"
            f.attrs["model_config"] = json.dumps(config)
            f.create_group("optimizer_weights").create_dataset(
                "Adam/stem/kernel/m:0", data=np.zeros((3, 3, 3, 4), np.float32))
        root.attrs["layer_names"] = np.array([n.encode() for n in names])
        root.attrs["backend"] = "tensorflow"
        root.attrs["keras_version"] = "2.15.0"
        for name in names:
            g = root.create_group(name)
            wnames = [f"{name}/{kind}:0" for kind, _ in weights.get(name, [])]
            g.attrs["weight_names"] = np.array([w.encode() for w in wnames])
            for wname, (_, arr) in zip(wnames, weights.get(name, [])):
                g.create_dataset(wname, data=arr)


def write_keras3(path, sd, separable: bool = True) -> None:
    """Keras 3 ``.keras``: a zip of ``config.json``, ``metadata.json`` and
    ``model.weights.h5`` (``layers/<name>/vars/<i>``); the depthwise/pointwise pair sits
    inside a nested Sequential ``block``."""
    layers = _keras_layers(sd, separable)
    top, block = [layers[0]], layers[1:-3] if separable else layers[1:3]
    rest = layers[len(top) + len(block):]
    config = {"module": "keras", "class_name": "Functional", "config": {"name": "functional", "layers": [
        {"module": "keras.layers", "class_name": "InputLayer", "config": {"name": "input_layer"}, "name": "input_layer"},
        *[_layer_config(n, c, cfg, True) for n, c, cfg, _ in top],
        {"module": "keras", "class_name": "Sequential", "config": {"name": "block", "layers": [
            _layer_config(n, c, cfg, True) for n, c, cfg, _ in block]}},
        *[_layer_config(n, c, cfg, True) for n, c, cfg, _ in rest],
    ]}}
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        lg = f.create_group("layers")
        for n, _, _, ws in top + rest:
            v = lg.create_group(n).create_group("vars")
            for i, (_, arr) in enumerate(ws):
                v.create_dataset(str(i), data=arr)
        bg = lg.create_group("block")
        bg.create_group("vars")
        inner = bg.create_group("layers")
        for n, _, _, ws in block:
            v = inner.create_group(n).create_group("vars")
            for i, (_, arr) in enumerate(ws):
                v.create_dataset(str(i), data=arr)
        opt = f.create_group("optimizer").create_group("vars")  # Adam moments have kernel shapes
        opt.create_dataset("0", data=np.zeros((3, 3, 3, 4), np.float32))
        f.create_group("vars")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.6.0", "date_saved": "2026-11-30@10:00:00"}))
        zf.writestr("config.json", json.dumps(config))
        zf.writestr("model.weights.h5", buf.getvalue())


def h5_kernels_3x3(f) -> list[np.ndarray]:
    """Every 3x3 kernel of every 4-D weight dataset of a Keras HDF5 file or group (kernel
    datasets of layers only: optimizer slots are left out), read directly: ``k[:, :, a, b]``."""
    out: list[np.ndarray] = []

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset) or name.startswith(("optimizer", "optimizer_weights")):
            return
        if obj.ndim == 4 and obj.shape[:2] == (3, 3):
            k = obj[()]
            out.extend(k[:, :, a, b].reshape(9) for a in range(k.shape[2]) for b in range(k.shape[3]))

    f.visititems(visit)
    return out


# ------------------------------------------------------------------------------ TFLite writer

FLOAT32, FLOAT16, INT32, UINT8, INT8 = 0, 1, 2, 3, 9
CONV_2D, DEPTHWISE_CONV_2D, DEQUANTIZE, TRANSPOSE_CONV = 3, 4, 6, 67
_NP = {FLOAT32: np.float32, FLOAT16: np.float16, INT32: np.int32, UINT8: np.uint8, INT8: np.int8}


def tflite_filter(w: np.ndarray, kind: str) -> np.ndarray:
    """A torch weight in TFLite's layout: conv OHWI ``(out, kh, kw, in/groups)``,
    depthwise ``(1, kh, kw, out)``, transpose conv ``(out, kh, kw, in)``."""
    if kind == "depthwise":
        return np.ascontiguousarray(w[:, 0].transpose(1, 2, 0)[None])
    if kind == "transpose":  # torch (in, out, kh, kw)
        return np.ascontiguousarray(w.transpose(1, 2, 3, 0))
    return np.ascontiguousarray(w.transpose(0, 2, 3, 1))


class TFLiteWriter:
    """Builds a one-subgraph TFLite model: tensors, ops, then :meth:`finish` → bytes."""

    def __init__(self) -> None:
        self.tensors: list[dict] = []
        self.ops: list[tuple[int, list[int], list[int]]] = []
        self.buffers: list[bytes | None] = [None]  # buffer 0: the empty sentinel
        self.opcodes: list[int] = []
        self.big: dict[int, tuple[int, int]] = {}  # buffer -> (offset, size) claims

    def tensor(self, name: str, shape, ttype: int, data: np.ndarray | None = None,
               scale=None, zero_point=None, axis: int = 0) -> int:
        buf = 0
        if data is not None:
            self.buffers.append(np.ascontiguousarray(data, dtype=_NP[ttype]).tobytes())
            buf = len(self.buffers) - 1
        self.tensors.append({"name": name, "shape": list(shape), "type": ttype, "buffer": buf,
                             "scale": scale, "zero_point": zero_point, "axis": axis})
        return len(self.tensors) - 1

    def op(self, code: int, inputs: list[int], outputs: list[int]) -> None:
        if code not in self.opcodes:
            self.opcodes.append(code)
        self.ops.append((self.opcodes.index(code), inputs, outputs))

    def finish(self, inputs: list[int], outputs: list[int], description: str = "test writer") -> bytes:
        b = flatbuffers.Builder(4096)

        def int_vec(values, prepend, size=4):
            b.StartVector(size, len(values), size)
            for v in reversed(values):
                prepend(v)
            return b.EndVector()

        def table_vec(offsets):
            b.StartVector(4, len(offsets), 4)
            for off in reversed(offsets):
                b.PrependUOffsetTRelative(off)
            return b.EndVector()

        # Buffer { data:[ubyte] (0); offset:ulong (1); size:ulong (2) }
        buffer_offs = []
        for i, data in enumerate(self.buffers):
            vec = b.CreateByteVector(data) if data else None
            b.StartObject(3)
            if vec is not None:
                b.PrependUOffsetTRelativeSlot(0, vec, 0)
            if i in self.big:
                b.PrependUint64Slot(1, self.big[i][0], 0)
                b.PrependUint64Slot(2, self.big[i][1], 0)
            buffer_offs.append(b.EndObject())
        # QuantizationParameters { min 0; max 1; scale:[float] 2; zero_point:[long] 3; ...; quantized_dimension:int 6 }
        # Tensor { shape:[int] 0; type:byte 1; buffer:uint 2; name:string 3; quantization 4 }
        tensor_offs = []
        for t in self.tensors:
            q = None
            if t["scale"] is not None:
                scale = int_vec([float(s) for s in t["scale"]], b.PrependFloat32)
                zp = int_vec([int(z) for z in t["zero_point"]], b.PrependInt64, 8)
                b.StartObject(7)
                b.PrependUOffsetTRelativeSlot(2, scale, 0)
                b.PrependUOffsetTRelativeSlot(3, zp, 0)
                b.PrependInt32Slot(6, t["axis"], 0)
                q = b.EndObject()
            name = b.CreateString(t["name"])
            shape = int_vec(t["shape"], b.PrependInt32)
            b.StartObject(10)
            b.PrependUOffsetTRelativeSlot(0, shape, 0)
            b.PrependInt8Slot(1, t["type"], 0)
            b.PrependUint32Slot(2, t["buffer"], 0)
            b.PrependUOffsetTRelativeSlot(3, name, 0)
            if q is not None:
                b.PrependUOffsetTRelativeSlot(4, q, 0)
            tensor_offs.append(b.EndObject())
        # Operator { opcode_index:uint 0; inputs:[int] 1; outputs:[int] 2 }
        op_offs = []
        for idx, ins, outs in self.ops:
            iv = int_vec(ins, b.PrependInt32)
            ov = int_vec(outs, b.PrependInt32)
            b.StartObject(9)
            b.PrependUint32Slot(0, idx, 0)
            b.PrependUOffsetTRelativeSlot(1, iv, 0)
            b.PrependUOffsetTRelativeSlot(2, ov, 0)
            op_offs.append(b.EndObject())
        # SubGraph { tensors 0; inputs 1; outputs 2; operators 3; name 4 }
        tv, opv = table_vec(tensor_offs), table_vec(op_offs)
        iv, ov = int_vec(inputs, b.PrependInt32), int_vec(outputs, b.PrependInt32)
        sg_name = b.CreateString("main")
        b.StartObject(5)
        b.PrependUOffsetTRelativeSlot(0, tv, 0)
        b.PrependUOffsetTRelativeSlot(1, iv, 0)
        b.PrependUOffsetTRelativeSlot(2, ov, 0)
        b.PrependUOffsetTRelativeSlot(3, opv, 0)
        b.PrependUOffsetTRelativeSlot(4, sg_name, 0)
        subgraph = b.EndObject()
        # OperatorCode { deprecated_builtin_code:byte 0; custom_code 1; version:int 2; builtin_code:int 3 }
        code_offs = []
        for code in self.opcodes:
            b.StartObject(4)
            b.PrependInt8Slot(0, min(code, 127), 0)
            b.PrependInt32Slot(2, 1, 1)
            b.PrependInt32Slot(3, code, 0)
            code_offs.append(b.EndObject())
        codes, subs, bufs = table_vec(code_offs), table_vec([subgraph]), table_vec(buffer_offs)
        desc = b.CreateString(description)
        # Model { version:uint 0; operator_codes 1; subgraphs 2; description 3; buffers 4 }
        b.StartObject(8)
        b.PrependUint32Slot(0, 3, 0)
        b.PrependUOffsetTRelativeSlot(1, codes, 0)
        b.PrependUOffsetTRelativeSlot(2, subs, 0)
        b.PrependUOffsetTRelativeSlot(3, desc, 0)
        b.PrependUOffsetTRelativeSlot(4, bufs, 0)
        b.Finish(b.EndObject(), file_identifier=b"TFL3")
        return bytes(b.Output())


def quantize_per_channel(w: np.ndarray, axis: int, dtype=np.int8):
    """Symmetric per-channel quantization with power-of-two scales (exact to dequantize)."""
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    peak = np.abs(moved).max(axis=1)
    scale = 2.0 ** np.ceil(np.log2(np.maximum(peak, 1e-8) / 127))
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(dtype)
    return q, scale.astype(np.float32), np.zeros(len(scale), np.int64)


def write_small_tflite(sd, mode: str = "float32") -> tuple[bytes, list[np.ndarray]]:
    """SmallNet as TFLite (NHWC activations, input 8x8x3). ``mode``: ``float32``;
    ``int8`` (per-channel int8 filters, the transpose conv uint8 per-tensor with zero
    point 128); ``dequantize`` (float16 filters behind DEQUANTIZE ops, the grouped conv's
    int8 behind one too). Returns the file and the float filters the loader must give
    (torch layout), dequantized as TFLite defines it."""
    wr = TFLiteWriter()
    x = wr.tensor("serving_default_x:0", [1, 8, 8, 3], FLOAT32)
    expected = []
    channels = {0: 4, 1: 8, 2: 6, 3: 6, 4: 5}
    prev = x
    for i, (key, kind, groups) in enumerate(SMALL_CONVS):
        w = sd[key].numpy()
        f = tflite_filter(w, kind)
        name = f"sequential/conv_{i}/Conv2D"
        if mode == "float32":
            filt = wr.tensor(name, f.shape, FLOAT32, f)
            expected.append(w)
        elif mode == "int8":
            if kind == "transpose":
                scale = float(2.0 ** np.ceil(np.log2(np.abs(f).max() / 127)))
                q = np.clip(np.round(f / scale) + 128, 0, 255).astype(np.uint8)
                filt = wr.tensor(name, f.shape, UINT8, q, [scale], [128])
                deq = ((q.astype(np.float64) - 128) * scale).astype(np.float32)
            else:
                axis = 3 if kind == "depthwise" else 0
                q, scale, zp = quantize_per_channel(f, axis)
                filt = wr.tensor(name, f.shape, INT8, q, scale, zp, axis)
                shape = [1, 1, 1, 1]
                shape[axis] = -1
                deq = ((q.astype(np.float64) - zp.reshape(shape)) * scale.reshape(shape)).astype(np.float32)
            expected.append(_back_to_torch(deq, kind))
        else:  # dequantize
            if i == 3:
                q, scale, zp = quantize_per_channel(f, 0)
                src = wr.tensor(name + "_int8", f.shape, INT8, q, scale, zp, 0)
                deq = ((q.astype(np.float64) - zp.reshape(-1, 1, 1, 1)) * scale.reshape(-1, 1, 1, 1)).astype(np.float32)
                expected.append(_back_to_torch(deq, kind))
            else:
                f16 = f.astype(np.float16)
                src = wr.tensor(name + "_fp16", f.shape, FLOAT16, f16)
                expected.append(_back_to_torch(f16, kind))
            filt = wr.tensor(name + "_dequantized", f.shape, FLOAT32)
            wr.op(DEQUANTIZE, [src], [filt])
        bias = wr.tensor(f"sequential/conv_{i}/bias", [channels[i]], FLOAT32, np.zeros(channels[i], np.float32))
        out = wr.tensor(f"sequential/conv_{i}/out", [1, 8, 8, channels[i]], FLOAT32)
        if kind == "depthwise":
            wr.op(DEPTHWISE_CONV_2D, [prev, filt, bias], [out])
        elif kind == "transpose":
            shape_t = wr.tensor("output_shape", [4], INT32, np.array([1, 10, 10, 5], np.int32))
            wr.op(TRANSPOSE_CONV, [shape_t, filt, prev, bias], [out])
        else:
            wr.op(CONV_2D, [prev, filt, bias], [out])
        prev = out
    return wr.finish([x], [prev]), expected


def _back_to_torch(f: np.ndarray, kind: str) -> np.ndarray:
    if kind == "depthwise":
        return np.ascontiguousarray(f[0].transpose(2, 0, 1)[:, None])
    if kind == "transpose":
        return np.ascontiguousarray(f.transpose(3, 0, 1, 2))
    return np.ascontiguousarray(f.transpose(0, 3, 1, 2))


# ------------------------------------------------------------------------------ TFLite reader


def _vec_tables(t: Table, slot: int) -> list[Table]:
    o = t.Offset(4 + 2 * slot)
    if not o:
        return []
    start, n = t.Vector(o), t.VectorLen(o)
    return [Table(t.Bytes, t.Indirect(start + 4 * i)) for i in range(n)]


def _vec_np(t: Table, slot: int, flags) -> np.ndarray:
    o = t.Offset(4 + 2 * slot)
    return t.GetVectorAsNumpy(flags, o) if o else np.array([])


def _scalar(t: Table, slot: int, flags, default=0):
    o = t.Offset(4 + 2 * slot)
    return t.Get(flags, o + t.Pos) if o else default


def tflite_kernels_3x3(data: bytes) -> list[np.ndarray]:
    """Every 3x3 kernel of every constant 4-D tensor with kh=kw=3 at dims 1, 2 (TFLite
    filter layouts), dequantized, read with the bare flatbuffers table API."""
    model = Table(data, N.UOffsetTFlags.py_type(int.from_bytes(data[:4], "little")))
    buffers = _vec_tables(model, 4)
    out = []
    for sub in _vec_tables(model, 2):
        for t in _vec_tables(sub, 0):
            shape = [int(d) for d in _vec_np(t, 0, N.Int32Flags)]
            ttype = _scalar(t, 1, N.Int8Flags)
            buf = _scalar(t, 2, N.Uint32Flags)
            if len(shape) != 4 or shape[1:3] != [3, 3] or buf == 0 or ttype not in _NP:
                continue
            raw = _vec_np(buffers[buf], 0, N.Uint8Flags)
            if raw.size == 0:
                continue
            arr = np.frombuffer(raw.tobytes(), _NP[ttype]).reshape(shape)
            qo = t.Offset(4 + 2 * 4)
            if arr.dtype.kind != "f":
                q = Table(data, t.Indirect(qo + t.Pos))
                scale = _vec_np(q, 2, N.Float32Flags).astype(np.float64)
                zp = _vec_np(q, 3, N.Int64Flags).astype(np.float64)
                axis = _scalar(q, 6, N.Int32Flags)
                bshape = [1] * 4
                bshape[axis] = -1 if scale.size > 1 else 1
                arr = ((arr.astype(np.float64) - zp.reshape(bshape)) * scale.reshape(bshape)).astype(np.float32)
            out.extend(arr[a, :, :, b].reshape(9).astype(np.float32) for a in range(shape[0]) for b in range(shape[3]))
    return out
