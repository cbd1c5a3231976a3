"""PyTorch ``torch.save`` checkpoints (zip or legacy pickle), loaded weights-only by default."""
from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import torch

from .base import ConvLayer, LoadedModel, LoadError

# Keys under which training checkpoints nest their weights, in priority order.
NESTED_KEYS = (
    "state_dict", "model_state_dict", "model", "ema", "model_ema", "state_dict_ema",
    "module", "net", "network", "weights", "params",
)
_MAX_NESTING = 6


def first_line(e: BaseException, limit: int = 200) -> str:
    """``"<Type>: <first line of the message>"``, cut to its first sentence if long."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    text = lines[0]
    if len(text) > limit:
        stop = text.find(". ", 40)
        text = text[: stop + 1] if 0 < stop < limit else text[:limit].rstrip() + "..."
    return f"{type(e).__name__}: {text}"


def _holds_tensors(d: Any) -> bool:
    return isinstance(d, Mapping) and any(isinstance(v, torch.Tensor) for v in d.values())


def _n_4d(d: Mapping) -> int:
    return sum(isinstance(v, torch.Tensor) and v.dim() == 4 for v in d.values())


def _richest_nested(obj: Any, depth: int = 0) -> Mapping | None:
    """The nested mapping (any depth) holding the most 4-D tensors, if any."""
    if not isinstance(obj, Mapping) or depth > _MAX_NESTING:
        return None
    best, best_n = (obj, _n_4d(obj)) if depth > 0 else (None, 0)
    for v in obj.values():
        cand = _richest_nested(v, depth + 1)
        if cand is not None and _n_4d(cand) > best_n:
            best, best_n = cand, _n_4d(cand)
    return best if best_n > 0 else None


def select_weights(obj: Any) -> Mapping | torch.nn.Module | None:
    """Pick the weights out of a plain state_dict, a training checkpoint or a model.

    ``nn.Module`` objects only appear when the file was unpickled with code allowed.
    """
    if isinstance(obj, torch.nn.Module):
        return obj
    if not isinstance(obj, Mapping):
        return None
    for key in NESTED_KEYS:
        value = obj.get(key)
        if isinstance(value, torch.nn.Module) or _holds_tensors(value):
            return value
    if _holds_tensors(obj):
        return obj
    nested = _richest_nested(obj)
    if nested is not None:
        return nested
    return next((v for v in obj.values() if isinstance(v, torch.nn.Module)), None)


def _layer_name(key: str) -> str:
    return key[: -len(".weight")] if key.endswith(".weight") else key


def layers_from_state_dict(sd: Mapping) -> list[ConvLayer]:
    """Conv layers of a state_dict: 4-D floating ``*weight`` tensors, in key order."""
    layers: list[ConvLayer] = []
    for key, value in sd.items():
        key = str(key)
        if key.startswith("module."):
            key = key[len("module."):]
        if (
            isinstance(value, torch.Tensor)
            and key.endswith("weight")
            and value.dim() == 4
            and value.is_floating_point()
        ):
            layers.append(ConvLayer(_layer_name(key), value.detach(), "Conv", None, len(layers)))
    return layers


def layers_from_module(module: torch.nn.Module) -> list[ConvLayer]:
    """Conv2d / ConvTranspose2d layers of an unpickled ``nn.Module``, in module order."""
    layers: list[ConvLayer] = []
    for name, m in module.named_modules():
        if isinstance(m, torch.nn.ConvTranspose2d):
            op = "ConvTranspose"
        elif isinstance(m, torch.nn.Conv2d):
            op = "Conv"
        else:
            continue
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() == 4 and w.is_floating_point():
            name = name[len("module."):] if name.startswith("module.") else name
            layers.append(ConvLayer(name, w.detach(), op, int(m.groups), len(layers)))
    return layers


def _refusal(e: pickle.UnpicklingError, is_pickle: bool) -> LoadError:
    text = str(e)
    glob = re.search(r"GLOBAL ([\w.]+)", text)
    if glob:
        return LoadError(
            f"refused to unpickle code: checkpoint references {glob.group(1)} (a full model "
            "object or arbitrary Python); set the catalog flag allow_pickle=true to opt in, "
            "only for trusted files"
        )
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    reason = detail.group(1).strip() if detail else first_line(e)
    if not is_pickle:
        return LoadError(f"corrupt pytorch checkpoint: neither a zip archive nor a pickle ({reason})")
    return LoadError(
        f"refused to unpickle: not a weights-only pytorch checkpoint ({reason}); "
        "set the catalog flag allow_pickle=true to opt in, only for trusted files"
    )


def load_pytorch(path: str, device: torch.device, allow_pickle: bool = False) -> LoadedModel:
    """Load a ``torch.save`` file; weights-only unless ``allow_pickle``."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04" and not zipfile.is_zipfile(path):
        raise LoadError("corrupt pytorch checkpoint: truncated or damaged zip archive (no central directory)")
    try:
        # a file object, not the path: torch.load would hand "*.safetensors" paths to safetensors
        with open(path, "rb") as f:
            obj = torch.load(f, map_location=device, weights_only=not allow_pickle)
    except pickle.UnpicklingError as e:
        if not allow_pickle and "Weights only load failed" in str(e):
            raise _refusal(e, head[:1] == b"\x80" or head.startswith(b"PK")) from None
        raise LoadError(f"corrupt pytorch checkpoint: {first_line(e)}") from None
    except (AttributeError, ImportError) as e:
        # allow_pickle only: the pickled model's classes are not importable here
        raise LoadError(f"cannot rebuild pickled pytorch model: {first_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - any failure is reported as one line
        raise LoadError(f"corrupt pytorch checkpoint: {first_line(e)}") from None
    if not isinstance(obj, (Mapping, torch.nn.Module)):
        raise LoadError(f"pytorch checkpoint holds a {type(obj).__name__}, not a state_dict or model")
    weights = select_weights(obj)
    if isinstance(weights, torch.nn.Module):
        return LoadedModel("pytorch", layers_from_module(weights))
    return LoadedModel("pytorch", layers_from_state_dict(weights) if weights is not None else [])
