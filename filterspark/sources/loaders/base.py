"""Common types for checkpoint loaders.

Every loader turns one file into a :class:`LoadedModel`: the 4-D convolution weights of
the network, in forward order, each tagged with its *level* (layers that run in
parallel share a level). Loaders never run untrusted code and raise
:class:`LoadError` with a one-line, user-facing reason for anything they refuse.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from filterspark.errors import LoadError

__all__ = ["ConvLayer", "LoadedModel", "LoadError"]


@dataclass
class ConvLayer:
    """One 2-D convolution weight.

    ``weight`` has shape ``(out, in/groups, kh, kw)`` for ``Conv`` and
    ``(in, out/groups, kh, kw)`` for ``ConvTranspose`` (PyTorch/ONNX layout).
    ``level`` orders layers by depth: equal levels run in parallel.
    ``groups`` is ``None`` when the format does not say (plain state_dicts).
    """

    name: str
    weight: torch.Tensor
    op: str = "Conv"  # "Conv" | "ConvTranspose"
    groups: int | None = None
    level: int = 0

    @property
    def kernel_shape(self) -> tuple[int, int]:
        return int(self.weight.shape[2]), int(self.weight.shape[3])

    @property
    def n_kernels(self) -> int:
        return int(self.weight.shape[0] * self.weight.shape[1])


@dataclass
class LoadedModel:
    """All 2-D conv layers of one checkpoint, in forward order."""

    format: str  # "pytorch" | "torchscript" | "safetensors" | "onnx"
    layers: list[ConvLayer] = field(default_factory=list)
    producer: str | None = None
    opset: int | None = None
