"""Detect a checkpoint's format from its content, falling back to its extension."""
from __future__ import annotations

import os
import re
import struct
import zipfile

from .base import LoadError

_EXTENSIONS = {
    ".pt": "pytorch",
    ".pth": "pytorch",
    ".bin": "pytorch",
    ".ckpt": "pytorch",
    ".tar": "pytorch",
    ".pkl": "pytorch",
    ".jit": "torchscript",
    ".torchscript": "torchscript",
    ".ptl": "torchscript",
    ".safetensors": "safetensors",
    ".onnx": "onnx",
    ".h5": "keras",
    ".hdf5": "keras",
    ".keras": "keras",
    ".tflite": "tflite",
}
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_HDF5_OFFSETS = (0, 512, 1024, 2048)  # an HDF5 signature may follow a user block

#: Checkpoints that are recognised but not read, each with the reason given to the user.
UNSUPPORTED_EXTENSIONS = {
    ".pb": "TensorFlow protobuf graphs (.pb) are not supported: export the model to .keras, .tflite or ONNX",
    ".pbtxt": "TensorFlow protobuf graphs (.pbtxt) are not supported: export the model to .keras, .tflite or ONNX",
    ".index": "TensorFlow checkpoints (.index/.data-*) are not supported: export the model to .keras or ONNX",
    ".gguf": "GGUF files (llama.cpp) are not supported: export the model to ONNX or safetensors",
    ".mlmodel": "Core ML models are not supported: export the model to ONNX",
    ".caffemodel": "Caffe models are not supported: convert the model to ONNX",
    ".msgpack": "Flax msgpack checkpoints are not supported: convert the model to safetensors",
    ".npz": "NumPy archives hold no layer structure: save a state_dict, safetensors or ONNX file",
    ".npy": "NumPy arrays hold no layer structure: save a state_dict, safetensors or ONNX file",
    ".pdparams": "PaddlePaddle checkpoints are not supported: export the model to ONNX",
    ".params": "MXNet parameter files are not supported: export the model to ONNX",
    ".engine": "TensorRT engines are not supported: extract from the ONNX model they were built from",
    ".plan": "TensorRT engines are not supported: extract from the ONNX model they were built from",
}
_UNSUPPORTED_MAGIC = (
    (b"GGUF", "GGUF files (llama.cpp) are not supported: export the model to ONNX or safetensors"),
)
_HEAD_BYTES = 1 << 20  # enough of a truncated zip to find member names


def unsupported_reason(path: str) -> str | None:
    """The one-line reason for a checkpoint format that is recognised but not read."""
    name = os.path.basename(path).lower()
    if re.search(r"\.data-\d+-of-\d+$", name):
        return UNSUPPORTED_EXTENSIONS[".index"]
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        head = b""
    for magic, reason in _UNSUPPORTED_MAGIC:
        if head.startswith(magic):
            return reason
    return UNSUPPORTED_EXTENSIONS.get(os.path.splitext(name)[1])


def is_hdf5(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            for offset in _HDF5_OFFSETS:
                f.seek(offset)
                if f.read(8) == HDF5_MAGIC:
                    return True
    except OSError:
        pass
    return False


def check_readable(path: str) -> int:
    """Return the file size; raise LoadError if it is missing, not a file or empty."""
    if not os.path.exists(path):
        raise LoadError(f"file not found: {path}")
    if not os.path.isfile(path):
        raise LoadError(f"not a regular file: {path}")
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise LoadError(f"cannot read {path}: {e.strerror or e}") from None
    if size == 0:
        raise LoadError("empty file")
    return size


def _zip_members(path: str) -> list[str]:
    """Member names of a zip archive, also from a truncated one (local headers)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        pass
    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
    names, pos = [], 0
    while True:
        pos = head.find(b"PK\x03\x04", pos)
        if pos < 0 or pos + 30 > len(head):
            return names
        n_len = struct.unpack_from("<H", head, pos + 26)[0]
        names.append(head[pos + 30 : pos + 30 + n_len].decode("utf-8", "replace"))
        pos += 4


def _zip_format(members: list[str]) -> str | None:
    has = lambda pred: any(pred(m) for m in members)  # noqa: E731
    if has(lambda m: m == "constants.pkl" or m.endswith("/constants.pkl")) or has(
        lambda m: m.startswith("code/") or "/code/" in m
    ):
        return "torchscript"
    if has(lambda m: m == "data.pkl" or m.endswith("/data.pkl")):
        return "pytorch"
    if has(lambda m: m == "model.weights.h5") or (has(lambda m: m == "config.json") and has(lambda m: m == "metadata.json")):
        return "keras"
    return None


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 10:
        return False
    (n,) = struct.unpack_from("<Q", head, 0)
    return 2 <= n < (1 << 31) and head[8:9] == b"{"


def content_format(path: str) -> str | None:
    """Format told by unambiguous magic bytes (zip, pickle, safetensors, HDF5, TFLite), else None."""
    size = check_readable(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(HDF5_MAGIC) or (head[:8] != HDF5_MAGIC and size > 512 and is_hdf5(path)):
        return "keras"
    if len(head) >= 8 and head[4:8] == b"TFL3":
        return "tflite"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _zip_format(_zip_members(path))
    if _is_safetensors(head, size):
        return "safetensors"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pytorch"
    return None


def _looks_like_onnx(path: str) -> bool:
    import onnx  # local: heavy import, only needed here

    try:
        model = onnx.load_model(path, load_external_data=False)
    except Exception:  # noqa: BLE001 - any parse failure just means "not ONNX"
        return False
    return model.ir_version > 0 and model.HasField("graph") and len(model.opset_import) > 0


def sniff_format(path: str) -> str:
    """Return one of ``FORMATS`` for ``path``; raise LoadError if none fits."""
    if os.path.isdir(path):
        return "huggingface"
    fmt = content_format(path)
    if fmt is not None:
        return fmt
    ext = os.path.splitext(path)[1].lower()
    by_ext = _EXTENSIONS.get(ext)
    if by_ext is None:
        reason = unsupported_reason(path)
        if reason:
            raise LoadError(reason)
    if by_ext == "onnx" or _looks_like_onnx(path):
        return "onnx"
    if by_ext is not None:
        return by_ext
    raise LoadError(f"unsupported file format: {os.path.basename(path)} matches no known checkpoint format")
