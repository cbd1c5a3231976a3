"""TorchScript archives (``torch.jit.save``): conv modules read without running forward."""
from __future__ import annotations

import torch

from .base import ConvLayer, LoadedModel, LoadError
from .torch_pickle import first_line

# Graph ops that perform a 2-D convolution; the groups argument is found by name.
_CONV_KINDS = (
    "aten::conv2d",
    "aten::conv_transpose2d",
    "aten::_convolution",
    "aten::convolution",
)


def _op_of(original_name: str) -> str | None:
    if "ConvTranspose2d" in original_name:
        return "ConvTranspose"
    if "Conv2d" in original_name:
        return "Conv"
    return None


def _groups_from_graph(m: torch.jit.ScriptModule) -> int | None:
    """Constant ``groups`` argument of the first conv op in the module's forward graph."""
    try:
        graph = m.inlined_graph
    except Exception:  # noqa: BLE001 - no forward / not inlinable: groups unknowable
        return None
    for node in graph.nodes():
        if not node.kind().startswith(_CONV_KINDS):
            continue
        try:
            args = torch._C.parse_schema(node.schema()).arguments
        except Exception:  # noqa: BLE001
            return None
        names = [a.name for a in args]
        if "groups" not in names:
            return None
        value = list(node.inputs())[names.index("groups")]
        producer = value.node()
        if producer.kind() != "prim::Constant":
            return None
        groups = value.toIValue()
        return int(groups) if isinstance(groups, int) else None
    return None


def _groups(m: torch.jit.ScriptModule) -> int | None:
    try:
        groups = getattr(m, "groups")
    except Exception:  # noqa: BLE001 - traced modules keep no attribute
        groups = None
    if isinstance(groups, int) and not isinstance(groups, bool):
        return groups
    return _groups_from_graph(m)


def load_torchscript(path: str, device: torch.device) -> LoadedModel:
    """Load a TorchScript archive and list its Conv2d / ConvTranspose2d modules."""
    try:
        module = torch.jit.load(path, map_location=device)
    except Exception as e:  # noqa: BLE001 - any failure is reported as one line
        raise LoadError(f"corrupt torchscript archive: {first_line(e)}") from None
    layers: list[ConvLayer] = []
    for name, m in module.named_modules():
        op = _op_of(getattr(m, "original_name", "") or "")
        if op is None:
            continue
        try:
            w = getattr(m, "weight")
        except Exception:  # noqa: BLE001 - a conv without a weight attribute
            continue
        if isinstance(w, torch.Tensor) and w.dim() == 4 and w.is_floating_point():
            layers.append(ConvLayer(name, w.detach(), op, _groups(m), len(layers)))
    return LoadedModel("torchscript", layers)
