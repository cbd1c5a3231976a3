"""Per-model extraction, as run inside one Spark task (no SparkSession here).

``extract_model`` loads one checkpoint completely (so a broken file fails before any
row is emitted), computes the per-layer rows and quality metrics on the task's device,
and returns the small summaries plus a generator of Arrow batches of filter rows that
holds at most one layer's rows at a time.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterator

import numpy as np
import pyarrow as pa
import torch

from filterspark.delta.schemas import FILTER_METADATA, FILTERS, KERNELS, arrow_schema
from filterspark.kernels.quality import QualityThresholds, layer_quality
from filterspark.pipelines.model_rows import layer_row, quality_rollup
from filterspark.sources.catalog import CatalogEntry
from filterspark.sources.loaders import load_model
from filterspark.sources.loaders.base import ConvLayer, LoadError, LoadedModel

#: Rows per Arrow batch streamed to Spark (a layer larger than this is split).
MAX_BATCH_ROWS = 262_144
_READ_CHUNK = 1 << 22
FILTERS_ARROW_SCHEMA = arrow_schema(FILTERS)
KERNELS_ARROW_SCHEMA = arrow_schema(KERNELS)


def file_checksum(path: str) -> tuple[str, int]:
    """sha256 hex digest and size of a file, read in chunks.

    A model folder (Hugging Face layout) gets the sha256 of its sorted
    ``relative path<TAB>file sha256`` lines and the total size of its files, so any
    changed, added or removed file changes the checksum.
    """
    if os.path.isdir(path):
        return folder_checksum(path)
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def folder_checksum(path: str) -> tuple[str, int]:
    """sha256 over the sorted (relative path, file sha256) list of a folder, and its bytes."""
    from filterspark.sources.loaders.folder import folder_files

    lines, total = [], 0
    for rel, full in folder_files(path):
        checksum, size = file_checksum(full)
        lines.append(f"{rel}\t{checksum}\n")
        total += size
    digest = hashlib.sha256("".join(sorted(lines)).encode("utf-8"))
    return digest.hexdigest(), total


def checksum_or_error(path: str) -> dict:
    """Checksum record of one catalog file; never raises."""
    try:
        checksum, size = file_checksum(path)
        return {"checksum": checksum, "file_size": size, "error": None}
    except FileNotFoundError:
        return {"checksum": None, "file_size": None, "error": f"file not found: {path}"}
    except OSError as err:
        return {"checksum": None, "file_size": None, "error": f"cannot read file: {err.strerror or err}"}


def conv_depths(layers: list[ConvLayer]) -> list[tuple[int, float]]:
    """(conv_depth, conv_depth_norm) per layer from the loaders' levels (docs/definitions.md: Depth)."""
    levels = sorted({layer.level for layer in layers})
    rank = {level: i for i, level in enumerate(levels)}
    span = max(len(levels) - 1, 1)
    return [(rank[l.level], rank[l.level] / span if len(levels) > 1 else 0.0) for l in layers]


def _channels(layer: ConvLayer) -> tuple[int | None, int | None]:
    dims = layer.dims
    if dims is None:
        return None, None
    a, b = dims[0], dims[1]
    groups = layer.groups or 1
    if layer.op == "ConvTranspose":
        return b * groups, a  # (out, in)
    return a, b * groups


def _row_columns(
    model_id: int, layer_index: int, first_index: int, n: int, weights: list[pa.Array],
    meta: list[str | None], depth: int | None, depth_norm: float | None,
) -> list[pa.Array]:
    """The columns of ``n`` per-kernel rows of one layer (``filters`` or ``kernels``): the
    keys, the weight columns given, the denormalised metadata and depth."""
    return [
        pa.array(np.full(n, model_id, dtype=np.int64)),
        pa.array(np.full(n, layer_index, dtype=np.int32)),
        pa.array(np.arange(first_index, first_index + n, dtype=np.int32)),
        *weights,
        *[pa.nulls(n, pa.string()) if v is None else pa.repeat(pa.scalar(v, pa.string()), n) for v in meta],
        pa.nulls(n, pa.int32()) if depth is None else pa.array(np.full(n, depth, dtype=np.int32)),
        pa.nulls(n, pa.float64()) if depth_norm is None else pa.array(np.full(n, depth_norm, dtype=np.float64)),
    ]


def filter_batch(
    model_id: int,
    layer_index: int,
    first_index: int,
    weights: np.ndarray,
    meta: list[str | None],
    depth: int | None,
    depth_norm: float | None,
) -> pa.RecordBatch:
    """One Arrow batch of ``filters`` rows: ``weights`` is a float32 ``(n, 9)`` slice of one
    layer whose first row has ``filter_index = first_index``; ``meta`` holds the
    ``FILTER_METADATA`` values. Shared by extraction and the CNN Filter DB import."""
    n = weights.shape[0]
    columns = [pa.array(np.ascontiguousarray(weights[:, j], dtype=np.float32)) for j in range(9)]
    return pa.RecordBatch.from_arrays(
        _row_columns(model_id, layer_index, first_index, n, columns, meta, depth, depth_norm),
        schema=FILTERS_ARROW_SCHEMA,
    )


def kernel_batch(
    model_id: int,
    layer_index: int,
    first_index: int,
    weights: np.ndarray,
    meta: list[str | None],
    depth: int | None,
    depth_norm: float | None,
) -> pa.RecordBatch:
    """One Arrow batch of ``kernels`` rows: ``weights`` is a float32 ``(n, k*k)`` slice of one
    k x k layer (rows row-major), the first row ``filter_index = first_index``."""
    n, width = weights.shape
    k = int(round(width ** 0.5))
    values = pa.array(np.ascontiguousarray(weights, dtype=np.float32).reshape(-1))
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
    lists = pa.ListArray.from_arrays(offsets, values, type=KERNELS_ARROW_SCHEMA.field("weights").type)
    columns = [pa.array(np.full(n, k, dtype=np.int32)), lists]
    return pa.RecordBatch.from_arrays(
        _row_columns(model_id, layer_index, first_index, n, columns, meta, depth, depth_norm),
        schema=KERNELS_ARROW_SCHEMA,
    )


@dataclass
class ModelExtraction:
    """What one task produces for one model."""

    summary: dict
    layers: list[dict] = field(default_factory=list)
    loaded: LoadedModel | None = None
    depths: list[tuple[int, float]] = field(default_factory=list)

    def filter_batches(self, max_rows: int = MAX_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """Arrow batches of ``filters`` rows, one layer (or slice of one) at a time."""
        return self._batches(lambda k: k == 3, filter_batch, max_rows)

    def kernel_batches(self, sizes: tuple[int, ...], max_rows: int = MAX_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """Arrow batches of ``kernels`` rows of the model's k x k layers, k in ``sizes``."""
        return self._batches(lambda k: k in sizes, kernel_batch, max_rows)

    def _batches(self, keep, make_batch, max_rows: int) -> Iterator[pa.RecordBatch]:
        """``make_batch`` over every square layer whose k ``keep`` accepts, in row slices."""
        if self.loaded is None:
            return
        model_id = self.summary["model_id"]
        meta = [self.summary.get(c) for c in FILTER_METADATA]
        for index, layer in enumerate(self.loaded.layers):
            kh, kw = layer.kernel_shape or (0, 0)
            if layer.weight is None or kh != kw or not keep(kh):
                continue
            weights = layer.weight.detach().reshape(-1, kh * kw).to("cpu", torch.float32).numpy()
            depth, depth_norm = self.depths[index]
            for start in range(0, weights.shape[0], max_rows):
                yield make_batch(model_id, index, start, weights[start : start + max_rows], meta, depth, depth_norm)
            del weights


def base_summary(entry: CatalogEntry) -> dict:
    """The ``models`` row fields that come from the catalog alone."""
    return {
        "model_id": entry.model_id,
        "name": entry.name,
        "path": entry.path,
        "format": entry.format,
        **entry.known,
        "metadata": dict(entry.extra),
    }


def failed_summary(entry: CatalogEntry, error: str, **fields) -> dict:
    """A ``models`` row for a model that could not be extracted."""
    summary = base_summary(entry)
    summary.update(fields)
    summary.update(status="failed", error=error.splitlines()[0][:1000] if error else "unknown error")
    summary.setdefault("extracted_at", datetime.now(timezone.utc))
    return summary


def _layer_row(model_id: int, index: int, layer: ConvLayer, depth: tuple[int, float], quality) -> dict:
    out_ch, in_ch = _channels(layer)
    kh, kw = layer.kernel_shape or (None, None)
    return layer_row(
        model_id, index, layer_name=layer.name, op=layer.op, conv_depth=depth[0], conv_depth_norm=depth[1],
        out_channels=out_ch, in_channels=in_ch, groups=layer.groups, kernel_h=kh, kernel_w=kw,
        n_filters=layer.n_kernels, dtype=layer.dtype_label, quality=quality,
    )


def extract_model(
    entry: CatalogEntry,
    device: str | torch.device = "cpu",
    thresholds: QualityThresholds | None = None,
    checksum: dict | None = None,
) -> ModelExtraction:
    """Load one model and compute its ``models`` summary and ``layers`` rows; never raises."""
    thresholds = thresholds or QualityThresholds()
    started = time.perf_counter()
    checksum = checksum or checksum_or_error(entry.path)
    file_fields = {"checksum": checksum["checksum"], "file_size": checksum["file_size"], "device": str(device)}
    if checksum["error"]:
        return ModelExtraction(failed_summary(entry, checksum["error"], **file_fields))
    try:
        loaded = load_model(entry.path, entry.format, device=device, allow_pickle=entry.allow_pickle)
    except LoadError as err:
        return ModelExtraction(failed_summary(entry, str(err), **file_fields))
    except Exception as err:  # a loader bug must not fail the job either
        return ModelExtraction(failed_summary(entry, f"{type(err).__name__}: {err}", **file_fields))

    try:
        depths = conv_depths(loaded.layers)
        # every square k x k layer (k >= 2) gets its quality; the model roll-up stays over 3x3
        quality_by_index = {
            i: layer_quality(l.weight, thresholds)
            for i, l in enumerate(loaded.layers)
            if l.weight is not None and l.kernel_shape[0] == l.kernel_shape[1] >= 2
        }
        layer_rows = [
            _layer_row(entry.model_id, i, layer, depths[i], quality_by_index.get(i))
            for i, layer in enumerate(loaded.layers)
        ]
        quality_3x3 = {i: q for i, q in quality_by_index.items() if loaded.layers[i].kernel_shape == (3, 3)}
    except Exception as err:
        return ModelExtraction(failed_summary(entry, f"metrics failed: {type(err).__name__}: {err}", **file_fields))

    shapes = Counter()
    for layer in loaded.layers:
        if layer.weight is None:
            continue  # not in the file: counted in conv_layers, named in the warning
        kh, kw = layer.kernel_shape
        shapes[f"{kh}x{kw}"] += layer.n_kernels
    filters_3x3 = shapes.get("3x3", 0)
    total = sum(n for shape, n in shapes.items() if shape != "1x1")
    summary = base_summary(entry)
    summary.update(file_fields)
    # what the checkpoint says about itself, under the catalog's own columns (they win)
    summary["metadata"] = {**loaded.metadata, **summary["metadata"]}
    warning = "; ".join(loaded.warnings) or (None if loaded.layers else "no 2-D convolution layers")
    summary.update(
        format=loaded.format,
        producer=loaded.producer,
        opset=loaded.opset,
        conv_layers=len(loaded.layers),
        conv_levels=len({l.level for l in loaded.layers}),
        kernel_shape_counts=dict(shapes),
        filters_3x3=filters_3x3,
        total_filters=total,
        share_3x3=(filters_3x3 / total) if total else None,
        status="ok",
        error=warning[:1000] if warning else None,
        extracted_at=datetime.now(timezone.utc),
    )
    summary.update(quality_rollup(list(quality_3x3.values()), thresholds))
    if summary.get("worst_layer_index") is not None:
        # model_quality indexes its input list; map back to the model's layer_index.
        summary["worst_layer_index"] = list(quality_3x3)[summary["worst_layer_index"]]
    summary["extraction_seconds"] = time.perf_counter() - started
    return ModelExtraction(summary, layer_rows, loaded, depths)
