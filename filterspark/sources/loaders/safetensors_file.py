"""safetensors files: a flat name -> tensor mapping, no code at all.

The format stores tensors sorted by dtype and name, so the state_dict's module order is
lost; keys are put back in *natural* order (``blocks.2`` before ``blocks.10``), the best
forward-order guess available without the architecture.
"""
from __future__ import annotations

import re

import torch

from .base import LoadedModel, LoadError
from .torch_pickle import first_line, layers_from_state_dict

_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def natural_key(name: str) -> list[tuple[int, int | str]]:
    """Sort key treating digit runs as numbers: ``a.2.w`` < ``a.10.w``."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", name) if p]


def load_safetensors(path: str, device: torch.device) -> LoadedModel:
    """Load the conv-candidate tensors of a safetensors file onto ``device``."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device=str(device)) as f:
            tensors = {}
            for key in sorted(f.keys(), key=natural_key):
                meta = f.get_slice(key)
                if len(meta.get_shape()) == 4 and meta.get_dtype() in _FLOAT_DTYPES:
                    tensors[key] = f.get_tensor(key)
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, ...
        raise LoadError(f"corrupt safetensors file: {first_line(e)}") from None
    return LoadedModel("safetensors", layers_from_state_dict(tensors))
