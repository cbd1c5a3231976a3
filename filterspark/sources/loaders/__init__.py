"""Checkpoint loaders: one file in, its 2-D convolution weights out.

``load_model(path)`` sniffs the format from the content and dispatches to the loader for
PyTorch (``torch.save``), TorchScript, safetensors, ONNX, Keras (``.h5``/``.keras``) or
TFLite files, or for a model folder (Hugging Face layout: ``huggingface``). Nothing is
executed: pickles load weights-only unless the catalog opts in with ``allow_pickle``.
Every loader converts its kernels to PyTorch's layout (see ``base.ConvLayer``).
"""
from __future__ import annotations

import os

import torch

from .base import ConvLayer, LoadedModel, LoadError
from .files import FORMATS, load_file, normalize_format
from .sniff import sniff_format
from .torch_pickle import first_line

__all__ = [
    "FORMATS", "ConvLayer", "LoadedModel", "LoadError",
    "load_model", "normalize_format", "sniff_format",
]

def _resolve_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise LoadError(f"invalid device {device!r}: {first_line(e)}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise LoadError(f"device {dev} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise LoadError(f"device {dev} requested but only {torch.cuda.device_count()} GPU(s)")
    return dev


def load_model(
    path: str | os.PathLike,
    fmt: str | None = None,
    *,
    device: str | torch.device = "cpu",
    allow_pickle: bool = False,
) -> LoadedModel:
    """Load the 2-D conv layers of one checkpoint; every failure raises a one-line LoadError.

    ``fmt`` None/"" sniffs the content. A declared ``fmt`` is honoured unless the file's
    magic bytes unambiguously say otherwise (e.g. a TorchScript archive catalogued as
    ``pytorch``); the returned ``LoadedModel.format`` is the format actually read.
    """
    path = os.fspath(path)
    declared = normalize_format(fmt)
    dev = _resolve_device(device)
    if os.path.isdir(path):  # a model folder, whatever format was declared
        try:
            from .folder import load_folder

            return load_folder(path, dev, allow_pickle)
        except LoadError:
            raise
        except Exception as e:  # noqa: BLE001
            raise LoadError(f"cannot load model folder: {first_line(e)}") from None
    return load_file(path, declared, dev, allow_pickle)
