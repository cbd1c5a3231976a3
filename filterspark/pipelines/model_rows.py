"""The ``models`` and ``layers`` row pieces extraction and the dataset.h5 import both build:
the fingerprint that decides whether a model is re-done, one ``layers`` row, and the
per-model quality roll-up. One definition each, so the two sources cannot drift."""
from __future__ import annotations

import hashlib

from filterspark.delta.schemas import MODEL_QUALITY_FIELDS
from filterspark.kernels.quality import LayerQuality, QualityThresholds, model_quality
from filterspark.kernels.shapes import selected_sizes


def fingerprint(*material: str) -> str:
    """Identity of everything that determines a model's rows (the skip test on re-runs):
    the sha256 of the given parts, one per line."""
    return hashlib.sha256("\n".join(material).encode()).hexdigest()


def kernels_material(selection: tuple[int, ...], shape_counts: dict[str, int] | None) -> list[str]:
    """The fingerprint part of the ``kernels`` selection: the selected sizes the model has
    (nothing when none, so a model without k x k layers keeps its fingerprint whatever
    the selection, and a changed selection re-extracts only the models it concerns)."""
    sizes = selected_sizes(selection, shape_counts)
    return [f"kernels {','.join(map(str, sizes))}"] if sizes else []


def layer_row(
    model_id: int,
    layer_index: int,
    *,
    layer_name: str | None,
    op: str | None,
    conv_depth: int,
    conv_depth_norm: float,
    out_channels: int | None,
    in_channels: int | None,
    groups: int | None,
    kernel_h: int | None,
    kernel_w: int | None,
    n_filters: int | None,
    dtype: str | None,
    quality: LayerQuality | None,
) -> dict:
    """One ``layers`` row; the quality columns are NULL without ``quality`` (not square k x k), and
    undefined (NaN) metrics become NULL."""
    row = {
        "model_id": model_id, "layer_index": layer_index, "layer_name": layer_name, "op": op,
        "conv_depth": conv_depth, "conv_depth_norm": conv_depth_norm,
        "out_channels": out_channels, "in_channels": in_channels, "groups": groups,
        "kernel_h": kernel_h, "kernel_w": kernel_w, "n_filters": n_filters, "dtype": dtype,
    }
    if quality is not None:
        row.update({k: v for k, v in quality.as_row().items() if k != "n_filters"})
    return row


def quality_rollup(qualities: list[LayerQuality], thresholds: QualityThresholds) -> dict:
    """The ``models`` quality columns over a model's 3x3 layers (in layer order);
    ``worst_layer_index`` indexes ``qualities``."""
    rollup = model_quality(qualities, thresholds)
    fields = {f.name: rollup.get(f.name) for f in MODEL_QUALITY_FIELDS}
    fields["layers_3x3"] = rollup["n_layers_3x3"]
    return fields
