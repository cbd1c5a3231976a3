"""Detect a checkpoint's format from its content, falling back to its extension."""
from __future__ import annotations

import os
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
}
_HEAD_BYTES = 1 << 20  # enough of a truncated zip to find member names


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
    return None


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 10:
        return False
    (n,) = struct.unpack_from("<Q", head, 0)
    return 2 <= n < (1 << 31) and head[8:9] == b"{"


def content_format(path: str) -> str | None:
    """Format told by unambiguous magic bytes (zip, pickle, safetensors), else None."""
    size = check_readable(path)
    with open(path, "rb") as f:
        head = f.read(16)
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
    fmt = content_format(path)
    if fmt is not None:
        return fmt
    ext = os.path.splitext(path)[1].lower()
    by_ext = _EXTENSIONS.get(ext)
    if by_ext == "onnx" or _looks_like_onnx(path):
        return "onnx"
    if by_ext is not None:
        return by_ext
    raise LoadError(f"unsupported file format: {os.path.basename(path)} matches no known checkpoint format")
