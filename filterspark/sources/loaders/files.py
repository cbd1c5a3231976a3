"""One checkpoint file in, its 2-D convolution layers out: the format sniffed from the
content (or the declared one, unless the magic bytes say otherwise) and the loader of
that format. Model folders (:mod:`.folder`) use it for the files they hold."""
from __future__ import annotations

import torch

from .base import LoadedModel, LoadError
from .sniff import check_readable, content_format, sniff_format
from .torch_pickle import first_line

FORMATS = ("pytorch", "torchscript", "safetensors", "onnx", "keras", "tflite", "huggingface")
_ALIASES = {
    "pt": "pytorch", "pth": "pytorch", "torch": "pytorch", "pickle": "pytorch",
    "jit": "torchscript", "script": "torchscript", "ts": "torchscript",
    "st": "safetensors", "safetensor": "safetensors",
    "h5": "keras", "hdf5": "keras", "keras2": "keras", "keras3": "keras", "tf.keras": "keras",
    "lite": "tflite", "tfl": "tflite", "tensorflow-lite": "tflite",
    "hf": "huggingface", "transformers": "huggingface", "diffusers": "huggingface", "folder": "huggingface",
}


def normalize_format(fmt: str | None) -> str | None:
    """Canonical format name for ``fmt`` (aliases, case, leading dot); None means sniff."""
    if fmt is None or not str(fmt).strip():
        return None
    key = str(fmt).strip().lower().lstrip(".")
    key = _ALIASES.get(key, key)
    if key not in FORMATS:
        raise LoadError(f"unsupported file format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return key



def load_file(path: str, declared: str | None, dev: torch.device, allow_pickle: bool = False) -> LoadedModel:
    """Load one checkpoint file (``declared``: a canonical format name, or None to sniff);
    every failure raises a one-line LoadError."""
    check_readable(path)
    if declared is None:
        chosen = sniff_format(path)
    else:
        chosen = content_format(path) or declared
    try:
        if chosen == "pytorch":
            from .torch_pickle import load_pytorch

            return load_pytorch(path, dev, allow_pickle)
        if chosen == "torchscript":
            from .torchscript import load_torchscript

            return load_torchscript(path, dev)
        if chosen == "safetensors":
            from .safetensors_file import load_safetensors

            return load_safetensors(path, dev)
        if chosen == "keras":
            from .keras_file import load_keras

            return load_keras(path, dev)
        if chosen == "tflite":
            from .tflite_file import load_tflite

            return load_tflite(path, dev)
        if chosen == "huggingface":
            raise LoadError("format huggingface needs a model folder, not a file")
        from .onnx_graph import load_onnx

        return load_onnx(path, dev)
    except LoadError:
        raise
    except Exception as e:  # noqa: BLE001 - last-resort net: never leak a raw traceback
        raise LoadError(f"cannot load {chosen} file: {first_line(e)}") from None
