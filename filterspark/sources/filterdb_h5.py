"""The published CNN Filter DB file (``dataset.h5``, Gavrikov & Keuper): read, validate, map.

Pure Python (h5py + pandas), no Spark. The driver calls :func:`read_filterdb`, which
reads only the small ``meta`` table and the *shape* of ``filters`` — never the filters —
and returns the models, their layers (contiguous row ranges of ``filters``) and the
mapping of the published columns onto our ``models`` columns. :func:`plan_units` cuts the
layers into work units for the executors, which read their rows with
:func:`open_filters` / :func:`read_rows`.

The published format, as documented by its authors:

* dataset ``filters``: every 3x3 filter as float32, ``N x 9`` or ``N x 3 x 3``; the row
  number is the filter id;
* ``meta``: a pandas DataFrame, one row per extracted layer, indexed by a MultiIndex that
  includes ``model_id``, ``conv_depth`` and ``conv_depth_norm``; ``filter_ids`` is the
  string ``"start:end"`` with an *inclusive* end. Written with pandas' ``HDFStore``
  (PyTables); the authors' own notebook also reads it as CSV text stored in a byte
  dataset, so both storages are accepted;
* model columns ``model`` (unique string id), ``Name``, ``producer``, ``op_set``,
  ``depth``, ``Paper``, ``Pretraining-Dataset``, ``Training-Dataset``,
  ``Visual Category`` (``Datatype`` in v0.1.0), ``Task``, ``Accessible``,
  ``Dataset URL``, ``total_filters``, ``3x3_filter_share``, ``(X, Y) filters`` and ONNX
  operator counts.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from filterspark.errors import FilterDBFormatError
from filterspark.sources.catalog import model_id_for

FILTERS_KEY = "filters"
META_KEY = "meta"
FORMAT_NAME = "filterdb-h5"

#: Columns (or index levels) every ``meta`` row must have.
REQUIRED_COLUMNS = ("model_id", "conv_depth", "conv_depth_norm", "filter_ids", "model")
#: Per-layer columns: everything else in ``meta`` describes the model.
LAYER_COLUMNS = ("model_id", "conv_depth", "conv_depth_norm", "filter_ids")

#: Published column -> ``models`` string column. ``Visual Category`` wins over ``Datatype``.
KNOWN_COLUMN_MAP = {
    "Name": "architecture",
    "Task": "task",
    "Visual Category": "visual_category",
    "Datatype": "visual_category",
    "Training-Dataset": "training_dataset",
    "Pretraining-Dataset": "pretraining_dataset",
    "Paper": "paper",
    "Accessible": "source",
}
#: Published columns that become typed ``models`` columns (not metadata).
TYPED_COLUMNS = ("model", "producer", "op_set", "total_filters", "3x3_filter_share")
#: ``models.metadata`` key holding the published integer model id.
PUBLISHED_ID_KEY = "filterdb_model_id"
#: ``models.metadata`` key holding the original task label when ``normalise_tasks`` changed it.
ORIGINAL_TASK_KEY = "filterdb_task"

_KERNEL_COLUMN = re.compile(r"^\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*filters$")
_UNNAMED = re.compile(r"^Unnamed: \d+$")


# --------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class FiltersInfo:
    """Shape of the ``filters`` dataset (read from its header only)."""

    count: int
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class LayerRange:
    """One ``meta`` row: a layer whose filters are rows ``[start, stop)`` of ``filters``."""

    model_id: int
    layer_index: int
    start: int
    stop: int
    conv_depth: int | None
    conv_depth_norm: float | None

    @property
    def n_filters(self) -> int:
        return self.stop - self.start

    @property
    def filter_ids(self) -> str:
        """The published inclusive ``"start:end"`` string."""
        return f"{self.start}:{self.stop - 1}"


@dataclass
class ImportModel:
    """One published model with its ``models`` columns and its layers in ``layer_index`` order."""

    model_id: int
    name: str
    published_id: Any
    known: dict[str, str | None]
    metadata: dict[str, str]
    producer: str | None
    opset: int | None
    total_filters: int | None
    share_3x3: float | None
    kernel_shape_counts: dict[str, int]
    fingerprint_material: str
    layers: list[LayerRange] = field(default_factory=list)

    @property
    def filters_3x3(self) -> int:
        return sum(layer.n_filters for layer in self.layers)

    @property
    def conv_levels(self) -> int:
        return len({layer.conv_depth for layer in self.layers})


@dataclass
class FilterDB:
    """What the driver knows about one ``dataset.h5`` before any filter is read."""

    path: str
    file_size: int
    filters: FiltersInfo
    models: list[ImportModel]
    meta_digest: str
    uncovered: int
    warnings: list[str] = field(default_factory=list)

    @property
    def layers(self) -> list[LayerRange]:
        """Every layer in file order (ascending ``start``)."""
        return sorted((l for m in self.models for l in m.layers), key=lambda l: l.start)

    @property
    def covered(self) -> int:
        return sum(m.filters_3x3 for m in self.models)


# --------------------------------------------------------------------------- small helpers


def _require_h5py():
    try:
        import h5py
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise FilterDBFormatError(
            "reading dataset.h5 needs h5py (and PyTables for the meta table): "
            "pip install 'filterspark[filterdb]'"
        ) from err
    return h5py


def _open(path: str):
    """Open read-only without HDF5 file locking (shared/network file systems reject locks)."""
    h5py = _require_h5py()
    try:
        return h5py.File(path, "r", locking=False)
    except TypeError:  # h5py built against HDF5 < 1.12.1
        return h5py.File(path, "r")


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    try:
        import pandas as pd

        return bool(pd.isna(value)) if np.ndim(value) == 0 else False
    except (TypeError, ValueError):
        return False


def _text(value: Any) -> str | None:
    """A metadata value as text: None for missing/empty, integral floats without ``.0``."""
    if _is_missing(value):
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, (np.integer,)):
        value = int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if value.is_integer():
            return str(int(value))
        return repr(value)
    text = str(value).strip()
    return text or None


def _int(value: Any) -> int | None:
    text = _text(value)
    if text is None:
        return None
    try:
        return int(float(text))
    except ValueError:
        return None


def _float(value: Any) -> float | None:
    text = _text(value)
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def normalise_task(label: str | None) -> str | None:
    """The authors' recommended task normalisation: every label that mentions
    segmentation (v1.0.0 has longer labels such as ``"Semantic Segmentation"``)
    becomes ``"Segmentation"``; other labels keep their text (whitespace collapsed)."""
    if label is None:
        return None
    text = " ".join(str(label).split())
    if "segmentation" in text.lower():
        return "Segmentation"
    return text or None


def parse_filter_ids(value: Any) -> tuple[int, int]:
    """``"start:end"`` (inclusive end) -> ``(start, stop)`` with an exclusive ``stop``."""
    text = value.decode() if isinstance(value, bytes) else str(value)
    parts = text.strip().split(":")
    if len(parts) != 2:
        raise ValueError(f"expected 'start:end', got {text!r}")
    try:
        start, end = int(parts[0].strip()), int(parts[1].strip())
    except ValueError:
        raise ValueError(f"expected integers in 'start:end', got {text!r}") from None
    if start < 0 or end < start:
        raise ValueError(f"expected 0 <= start <= end, got {text!r}")
    return start, end + 1


def kernel_shape_key(column: str) -> str | None:
    """``"(3, 3) filters"`` -> ``"3x3"``; None for other columns."""
    match = _KERNEL_COLUMN.match(column.strip())
    return f"{match.group(1)}x{match.group(2)}" if match else None


# --------------------------------------------------------------------------- reading


def inspect_filters(h5file) -> FiltersInfo:
    """Validate the ``filters`` dataset's header: float, ``N x 9`` or ``N x 3 x 3``."""
    h5py = _require_h5py()
    obj = h5file[FILTERS_KEY]
    if not isinstance(obj, h5py.Dataset):
        raise FilterDBFormatError(f"'{FILTERS_KEY}' is a group, expected a dataset of N x 9 or N x 3 x 3 floats")
    shape = tuple(int(s) for s in obj.shape)
    if not (len(shape) == 2 and shape[1] == 9) and not (len(shape) == 3 and shape[1:] == (3, 3)):
        raise FilterDBFormatError(f"'{FILTERS_KEY}' has shape {shape}, expected N x 9 or N x 3 x 3")
    if obj.dtype.kind != "f":
        raise FilterDBFormatError(f"'{FILTERS_KEY}' has dtype {obj.dtype}, expected float32")
    return FiltersInfo(count=shape[0], shape=shape, dtype=str(obj.dtype))


def _meta_storage(h5file) -> str:
    """``"hdfstore"`` (pandas/PyTables group) or ``"csv"`` (CSV text in a byte dataset)."""
    h5py = _require_h5py()
    obj = h5file[META_KEY]
    if isinstance(obj, h5py.Group):
        if "pandas_type" in obj.attrs:
            return "hdfstore"
        raise FilterDBFormatError(f"'{META_KEY}' is an HDF5 group but not a pandas HDFStore frame")
    if obj.dtype.kind in "uiSO" and obj.ndim <= 1:
        return "csv"
    raise FilterDBFormatError(f"'{META_KEY}' is a {obj.dtype} dataset of shape {obj.shape}, expected a pandas DataFrame")


def _as_bytes(raw) -> bytes:
    """The content of a byte dataset (uint8 buffer, fixed-length or variable-length strings)."""
    if isinstance(raw, bytes):
        return raw
    arr = np.asarray(raw)
    if arr.dtype.kind in "ui":
        return arr.astype(np.uint8, copy=False).tobytes()
    return b"".join(x if isinstance(x, bytes) else str(x).encode("utf-8") for x in arr.ravel().tolist())


def _flatten_index(df):
    """Turn named index levels (the published MultiIndex) into columns."""
    names = [n for n in df.index.names if n is not None]
    if not names:
        return df.reset_index(drop=True)
    keep = [n for n in names if n not in df.columns]
    drop = [n for n in names if n in df.columns]
    if drop and keep:
        df = df.reset_index(level=drop, drop=True)
    elif drop:
        return df.reset_index(drop=True)
    return df.reset_index()


def read_meta(path: str):
    """The ``meta`` table as a flat DataFrame (index levels as columns)."""
    import pandas as pd

    with _open(path) as f:
        storage = _meta_storage(f)
        raw = None if storage == "hdfstore" else f[META_KEY][()]
    if storage == "hdfstore":
        try:
            df = pd.read_hdf(path, META_KEY)
        except ImportError as err:  # pragma: no cover - depends on the installation
            raise FilterDBFormatError("reading the meta table needs PyTables: pip install 'filterspark[filterdb]'") from err
        if not isinstance(df, pd.DataFrame):
            raise FilterDBFormatError(f"'{META_KEY}' holds a {type(df).__name__}, expected a DataFrame")
    else:
        data = _as_bytes(raw)
        try:
            df = pd.read_csv(io.BytesIO(data))
        except Exception as err:
            raise FilterDBFormatError(f"'{META_KEY}' is a byte dataset but not CSV text: {err}") from None
    df = _flatten_index(df)
    unnamed = [c for c in df.columns if isinstance(c, str) and _UNNAMED.match(c)]
    df = df.drop(columns=unnamed)
    df.columns = [str(c) for c in df.columns]
    return df


def _check_keys(path: str) -> None:
    h5py = _require_h5py()
    if not os.path.isfile(path):
        raise FilterDBFormatError(f"file not found: {path}")
    if not h5py.is_hdf5(path):
        raise FilterDBFormatError(f"{path} is not an HDF5 file")
    with _open(path) as f:
        keys = sorted(f.keys())
    missing = [k for k in (FILTERS_KEY, META_KEY) if k not in keys]
    if missing:
        raise FilterDBFormatError(
            f"{path} is not a CNN Filter DB file: missing key(s) {', '.join(missing)}; found {', '.join(keys) or 'none'}"
        )


def _describe(row) -> str:
    return f"model {row.get('model')!r} (model_id {row.get('model_id')}), filter_ids {row.get('filter_ids')!r}"


def check_ranges(ranges: list[tuple[int, int, dict]], count: int) -> int:
    """Raise unless every ``[start, stop)`` lies within ``count`` rows and none overlap.

    ``ranges`` holds ``(start, stop, row)``; returns the number of rows no range covers.
    """
    beyond = [r for r in ranges if r[1] > count]
    if beyond:
        shown = "; ".join(_describe(r[2]) for r in beyond[:5])
        raise FilterDBFormatError(
            f"{len(beyond)} filter_ids range(s) exceed the {count:,} filters in '{FILTERS_KEY}', e.g. {shown}"
        )
    ordered = sorted(ranges, key=lambda r: (r[0], r[1]))
    overlaps = [(a, b) for a, b in zip(ordered, ordered[1:]) if b[0] < a[1]]
    if overlaps:
        shown = "; ".join(f"{_describe(a[2])} and {_describe(b[2])}" for a, b in overlaps[:3])
        raise FilterDBFormatError(f"{len(overlaps)} overlapping filter_ids range(s): {shown}")
    return count - sum(stop - start for start, stop, _ in ranges)


def _model_columns(columns: list[str]) -> tuple[dict[str, str], list[str]]:
    """Published -> ours for the known string columns present, and the metadata columns."""
    known: dict[str, str] = {}
    for col, ours in KNOWN_COLUMN_MAP.items():
        if col in columns and ours not in known.values():
            known[col] = ours
    metadata = [
        c for c in columns
        if c not in LAYER_COLUMNS and c not in TYPED_COLUMNS and c not in known and kernel_shape_key(c) is None
    ]
    return known, metadata


def _digest(df) -> str:
    return hashlib.sha256(df.to_csv(index=False).encode("utf-8")).hexdigest()


def read_filterdb(path: str, normalise_tasks: bool = False) -> FilterDB:
    """Read and validate ``meta`` and the header of ``filters``; map models and layers.

    Raises :class:`FilterDBFormatError` naming what is missing or inconsistent. Model ids
    are ``catalog.model_id_for(model)`` (the published integer id is kept in
    ``metadata['filterdb_model_id']``); a ``model`` string shared by several published ids
    gets ``#<id>`` appended to keep names unique.
    """
    path = os.path.abspath(os.path.expanduser(path))
    _check_keys(path)
    with _open(path) as f:
        info = inspect_filters(f)
    df = read_meta(path)
    columns = list(df.columns)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise FilterDBFormatError(
            f"'{META_KEY}' lacks column(s) or index level(s) {', '.join(missing)}; found {', '.join(columns) or 'none'}"
        )
    if len(df) == 0:
        raise FilterDBFormatError(f"'{META_KEY}' has no rows")
    if df["model_id"].isna().any():
        raise FilterDBFormatError(f"{int(df['model_id'].isna().sum())} '{META_KEY}' row(s) have no model_id")

    records = df.to_dict(orient="records")
    ranges: list[tuple[int, int, dict]] = []
    bad = []
    for row in records:
        try:
            start, stop = parse_filter_ids(row["filter_ids"])
        except ValueError as err:
            bad.append(f"{_describe(row)}: {err}")
            continue
        ranges.append((start, stop, row))
    if bad:
        raise FilterDBFormatError(f"{len(bad)} unreadable filter_ids value(s), e.g. " + "; ".join(bad[:5]))
    uncovered = check_ranges(ranges, info.count)

    warnings: list[str] = []
    if uncovered:
        warnings.append(f"{uncovered:,} of {info.count:,} filters belong to no meta row and are not imported")
    known_cols, meta_cols = _model_columns(columns)
    kernel_cols = {c: kernel_shape_key(c) for c in columns if kernel_shape_key(c)}

    by_model: dict[Any, list[tuple[int, int, dict]]] = {}
    for start, stop, row in sorted(ranges, key=lambda r: r[0]):
        by_model.setdefault(row["model_id"], []).append((start, stop, row))

    names_per_string: dict[str, set] = {}
    for pid, rows in by_model.items():
        names_per_string.setdefault(_text(rows[0][2]["model"]) or f"model_{pid}", set()).add(pid)
    model_level = [c for c in columns if c not in LAYER_COLUMNS]
    spread = df.groupby("model_id", sort=False)[model_level].nunique(dropna=False).max() if model_level else None
    varying = sorted(c for c in model_level if spread is not None and spread[c] > 1)
    if varying:
        warnings.append(
            "column(s) vary between the layers of a model; the first layer's value is kept: " + ", ".join(varying)
        )
    digests = {pid: _digest(part) for pid, part in df.groupby("model_id", sort=False)}
    models: list[ImportModel] = []
    for pid, rows in by_model.items():
        first = rows[0][2]
        base = _text(first["model"]) or f"model_{pid}"
        name = base if len(names_per_string[base]) == 1 else f"{base}#{_text(pid)}"
        model_id = model_id_for(name)
        known = {ours: _text(first.get(col)) for col, ours in known_cols.items()}
        metadata = {c: v for c in meta_cols if (v := _text(first.get(c))) is not None}
        metadata[PUBLISHED_ID_KEY] = _text(pid) or ""
        if normalise_tasks and known.get("task") is not None:
            task = normalise_task(known["task"])
            if task != known["task"]:
                metadata[ORIGINAL_TASK_KEY] = known["task"]
            known["task"] = task
        for ours in set(KNOWN_COLUMN_MAP.values()):
            known.setdefault(ours, None)
        known.setdefault("family", None)
        counts = {key: n for col, key in kernel_cols.items() if (n := _int(first.get(col)))}
        layers = [
            LayerRange(
                model_id=model_id,
                layer_index=i,
                start=start,
                stop=stop,
                conv_depth=_int(row.get("conv_depth")),
                conv_depth_norm=_float(row.get("conv_depth_norm")),
            )
            for i, (start, stop, row) in enumerate(rows)
        ]
        material = json.dumps(
            {"meta": digests[pid], "filters": list(info.shape), "dtype": info.dtype},
            sort_keys=True,
        )
        models.append(
            ImportModel(
                model_id=model_id,
                name=name,
                published_id=pid,
                known=known,
                metadata=metadata,
                producer=_text(first.get("producer")),
                opset=_int(first.get("op_set")),
                total_filters=_int(first.get("total_filters")),
                share_3x3=_float(first.get("3x3_filter_share")),
                kernel_shape_counts=counts,
                fingerprint_material=material,
                layers=layers,
            )
        )
    renamed = sorted(b for b, ids in names_per_string.items() if len(ids) > 1)
    if renamed:
        warnings.append(f"model name(s) shared by several model_ids, made unique with '#<model_id>': {', '.join(renamed[:5])}")
    meta_digest = hashlib.sha256(
        json.dumps([sorted(digests.values()), list(info.shape), info.dtype]).encode()
    ).hexdigest()
    return FilterDB(
        path=path,
        file_size=os.path.getsize(path),
        filters=info,
        models=models,
        meta_digest=meta_digest,
        uncovered=uncovered,
        warnings=warnings,
    )


# --------------------------------------------------------------------------- executor side


def plan_units(layers: Iterable[LayerRange], rows_per_unit: int) -> list[list[LayerRange]]:
    """Cut layers (in file order) into work units of at most ``rows_per_unit`` filters.

    A unit is a run of consecutive layers *of one model*, so each task reads one
    contiguous stretch of the file and writes exactly one ``model_id`` partition (the
    writer then needs no sort, see ``import_job``); a layer larger than ``rows_per_unit``
    is a unit of its own (a layer is never split: its quality metrics need all its filters).
    """
    if rows_per_unit < 1:
        raise ValueError("rows_per_unit must be >= 1")
    units: list[list[LayerRange]] = []
    current: list[LayerRange] = []
    size = 0
    for layer in sorted(layers, key=lambda l: l.start):
        if current and (size + layer.n_filters > rows_per_unit or layer.model_id != current[0].model_id):
            units.append(current)
            current, size = [], 0
        current.append(layer)
        size += layer.n_filters
    if current:
        units.append(current)
    return units


def open_filters(path: str):
    """Open the file read-only on an executor; returns ``(h5 file, filters dataset)``."""
    f = _open(path)
    return f, f[FILTERS_KEY]


def read_rows(dataset, start: int, stop: int) -> np.ndarray:
    """Rows ``[start, stop)`` of ``filters`` as a C-contiguous float32 ``(n, 9)`` array."""
    block = dataset[start:stop]
    return np.ascontiguousarray(block.reshape(block.shape[0], 9), dtype=np.float32)
