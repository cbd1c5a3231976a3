"""Common types for checkpoint loaders.

Every loader turns one file (or one model folder) into a :class:`LoadedModel`: the 4-D
convolution weights of the network, in forward order, each tagged with its *level*
(layers that run in parallel share a level). Loaders never run untrusted code and raise
:class:`LoadError` with a one-line, user-facing reason for anything they refuse.

Every loader converts its format's kernel layout into PyTorch's (see :class:`ConvLayer`),
so the rest of the pipeline sees one layout only.
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

    ``weight`` is ``None`` for a conv whose weight is not stored in the file (e.g. an
    ONNX graph input): ``missing`` says why, ``shape`` holds its torch-layout shape when
    the graph declares one. Quantized weights are dequantized to float32: ``stored_dtype``
    keeps the dtype in the file (``int8``) and ``quantization`` how it was dequantized.
    """

    name: str
    weight: torch.Tensor | None
    op: str = "Conv"  # "Conv" | "ConvTranspose"
    groups: int | None = None
    level: int = 0
    stored_dtype: str | None = None
    quantization: str | None = None
    shape: tuple[int, ...] | None = None
    missing: str | None = None

    @property
    def dims(self) -> tuple[int, ...] | None:
        """The torch-layout shape: of the weight, else the declared ``shape``."""
        if self.weight is not None:
            return tuple(int(d) for d in self.weight.shape)
        return self.shape if self.shape is not None and len(self.shape) == 4 else None

    @property
    def kernel_shape(self) -> tuple[int, int] | None:
        dims = self.dims
        return (int(dims[2]), int(dims[3])) if dims is not None else None

    @property
    def n_kernels(self) -> int | None:
        """Kernels stored in the file (None when the weight is not in the file)."""
        if self.weight is None:
            return None
        return int(self.weight.shape[0] * self.weight.shape[1])

    @property
    def dtype_label(self) -> str | None:
        """The ``layers.dtype`` value: the stored dtype, ``"int8 (dequantized)"`` for
        quantized weights, None when the weight is not in the file."""
        if self.quantization:
            return f"{self.stored_dtype or 'quantized'} (dequantized)"
        if self.stored_dtype:
            return self.stored_dtype
        if self.weight is None:
            return None
        return str(self.weight.dtype).replace("torch.", "")


@dataclass
class LoadedModel:
    """All 2-D conv layers of one checkpoint, in forward order.

    ``metadata`` holds what the checkpoint says about itself (e.g. a Hugging Face
    ``config.json``'s ``architectures``); it goes to ``models.metadata``. ``warnings``
    are one-line notes for ``models.error`` of an ``ok`` model.
    """

    format: str  # one of loaders.FORMATS
    layers: list[ConvLayer] = field(default_factory=list)
    producer: str | None = None
    opset: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
