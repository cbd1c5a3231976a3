"""A model catalog from a folder tree: ``filterspark catalog DIR --out FILE [--append]``.

:func:`scan_folder` walks the tree and finds one catalog row per checkpoint file or per
model folder:

* a Hugging Face cache repository ``models--<org>--<name>/`` is read at its
  ``snapshots/<sha>/`` (the one ``refs/main`` names, else the newest) and named
  ``<org>/<name>``;
* a model folder (``loaders.folder.is_model_folder``: a shard index, ``model.safetensors``,
  ``pytorch_model.bin``, ``diffusion_pytorch_model.*``, or a ``config.json`` next to
  weights) is one row; a diffusers pipeline (``model_index.json``) is one row per
  component folder (``unet/``, ``vae/``, ...), named ``<pipeline>/<component>``;
* every other file whose format is sniffed (``loaders.sniff``) is one row, named by
  its path relative to ``DIR`` without the extension (with it where two files would
  share a name). Files that are no checkpoint, or a checkpoint of an unsupported kind
  (with its reason), are skipped and counted.

Metadata columns come from a folder's ``config.json`` (``architectures``, ``model_type``,
diffusers' ``class_name``) and a model card's (``README.md``) YAML front matter
(``pipeline_tag`` → ``task``, ``datasets`` → ``training_dataset``, ``library_name``,
``license``). :func:`write_catalog` writes the CSV; ``append`` adds only the paths the
catalog lacks, so running it again changes nothing.
"""
from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass, field

from filterspark.sources.catalog import REQUIRED_COLUMNS
from filterspark.sources.loaders import LoadError
from filterspark.sources.loaders.folder import SKIP_DIRS, folder_config, folder_refusal, is_model_folder
from filterspark.sources.loaders.sniff import content_format, is_hdf5, unsupported_reason

#: Extensions of files that are part of model repositories but never checkpoints.
NOT_CHECKPOINT = {
    ".json", ".txt", ".md", ".csv", ".tsv", ".yaml", ".yml", ".py", ".ipynb", ".png", ".jpg",
    ".jpeg", ".gif", ".svg", ".html", ".model", ".vocab", ".spm", ".tiktoken", ".gitattributes",
    ".lock", ".log", ".cfg", ".toml", ".sh", ".wav", ".mp3", ".xml",
}
_BY_EXTENSION = {
    ".pt": "pytorch", ".pth": "pytorch", ".ckpt": "pytorch", ".jit": "torchscript",
    ".torchscript": "torchscript", ".ptl": "torchscript", ".safetensors": "safetensors",
    ".onnx": "onnx", ".keras": "keras", ".tflite": "tflite", ".h5": "keras", ".hdf5": "keras",
}
META_COLUMNS = ("task", "training_dataset", "library_name", "license", "architectures", "model_type", "class_name")
NOT_A_CHECKPOINT = "not a checkpoint"


@dataclass
class ScanReport:
    """What :func:`scan_folder` found (``rows``) and skipped (reason → count)."""

    rows: list[dict] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    added: int = 0
    out: str | None = None

    def lines(self) -> list[str]:
        out = [f"catalog {self.out}: {self.added} rows added" if self.out else f"{len(self.rows)} checkpoints found",
               f"checkpoints found: {len(self.rows)}; skipped (no supported checkpoint): {sum(self.skipped.values())}"]
        out += [f"  skipped {n}: {reason}" for reason, n in self.skipped.most_common()]
        return out


def _front_matter(folder: str) -> dict[str, str]:
    """``task``, ``training_dataset``, ``library_name``, ``license`` from ``README.md``."""
    path = os.path.join(folder, "README.md")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(1 << 20)
    except (OSError, UnicodeDecodeError):
        return {}
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    end = next((i for i, line in enumerate(lines[1:], 1) if line.strip() in ("---", "...")), None)
    if end is None:
        return {}
    try:
        import yaml

        data = yaml.safe_load("\n".join(lines[1:end]))
    except Exception:  # noqa: BLE001 - a broken model card only loses its metadata
        return {}
    if not isinstance(data, dict):
        return {}
    out: dict[str, str] = {}
    for key, column in (("pipeline_tag", "task"), ("datasets", "training_dataset"),
                        ("library_name", "library_name"), ("license", "license")):
        value = data.get(key)
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value if v is not None)
        if value not in (None, ""):
            out[column] = str(value)
    return out


def folder_metadata(folder: str, card_folder: str | None = None) -> dict[str, str]:
    meta, _ = folder_config(folder)
    meta.update(_front_matter(card_folder or folder) or _front_matter(folder))
    return meta


def _is_keras_h5(path: str) -> bool:
    try:
        import h5py

        with h5py.File(path, "r") as f:
            return "layer_names" in f.attrs or ("model_weights" in f and "layer_names" in f["model_weights"].attrs)
    except Exception:  # noqa: BLE001
        return False


def sniff_file(path: str) -> tuple[str | None, str]:
    """``(format, "")`` for a checkpoint file, ``(None, reason)`` for any other file."""
    ext = os.path.splitext(path)[1].lower()
    name = os.path.basename(path)
    if ext in NOT_CHECKPOINT or name.startswith("."):
        return None, NOT_A_CHECKPOINT
    reason = unsupported_reason(path)
    if reason:
        return None, reason
    try:
        fmt = content_format(path)
    except LoadError as err:
        return None, str(err)
    if fmt is None:
        fmt = _BY_EXTENSION.get(ext)
    if fmt is None:
        return None, NOT_A_CHECKPOINT
    if fmt == "keras" and is_hdf5(path) and not _is_keras_h5(path):
        return None, "HDF5 file without Keras weights"
    return fmt, ""


def _hf_snapshot(repo_dir: str) -> str | None:
    snapshots = os.path.join(repo_dir, "snapshots")
    try:
        shas = [s for s in os.listdir(snapshots) if os.path.isdir(os.path.join(snapshots, s))]
    except OSError:
        return None
    try:
        with open(os.path.join(repo_dir, "refs", "main"), encoding="utf-8") as f:
            main = f.read().strip()
        if main in shas:
            return os.path.join(snapshots, main)
    except OSError:
        pass
    if not shas:
        return None
    return max((os.path.join(snapshots, s) for s in shas), key=os.path.getmtime)


def _hf_repo_name(dirname: str) -> str | None:
    parts = dirname.split("--")
    if len(parts) >= 3 and parts[0] in ("models", "model"):
        return "/".join(parts[1:])
    return None


class _Scan:
    def __init__(self) -> None:
        self.report = ScanReport()

    def row(self, name: str, path: str, fmt: str, meta: dict[str, str] | None = None) -> None:
        self.report.rows.append({"name": name, "path": path, "format": fmt, **(meta or {})})

    def folder(self, folder: str, name: str) -> None:
        """A model root: a model folder, a diffusers pipeline, or a tree of loose files."""
        if os.path.isfile(os.path.join(folder, "model_index.json")):
            for sub in sorted(os.listdir(folder)):
                full = os.path.join(folder, sub)
                if os.path.isdir(full) and is_model_folder(full):
                    self.row(f"{name}/{sub}", full, "huggingface", folder_metadata(full, folder))
            return
        if is_model_folder(folder) and folder_refusal(folder) is None:
            self.row(name, folder, "huggingface", folder_metadata(folder))
            return
        self.tree(folder, name)

    def tree(self, root: str, prefix: str | None) -> None:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            keep = []
            for d in dirnames:
                full = os.path.join(dirpath, d)
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                label = f"{prefix}/{rel}" if prefix else rel
                repo = _hf_repo_name(d)
                if d in SKIP_DIRS or d.startswith("."):
                    continue
                if d.startswith(("datasets--", "spaces--")) and os.path.isdir(os.path.join(full, "snapshots")):
                    self.report.skipped["Hugging Face dataset or space repository (no models)"] += 1
                    continue
                if repo is not None and os.path.isdir(os.path.join(full, "snapshots")):
                    snapshot = _hf_snapshot(full)
                    if snapshot is not None:
                        self.folder(snapshot, repo)
                    continue
                refusal = folder_refusal(full)
                if refusal and refusal.startswith("TensorFlow/Keras SavedModel"):
                    self.report.skipped[refusal] += 1
                    continue
                if os.path.isfile(os.path.join(full, "model_index.json")) or is_model_folder(full):
                    self.folder(full, label)
                    continue
                keep.append(d)
            dirnames[:] = keep
            for fname in sorted(filenames):
                full = os.path.join(dirpath, fname)
                if not os.path.isfile(full):
                    continue
                fmt, reason = sniff_file(full)
                if fmt is None:
                    self.report.skipped[reason] += 1
                    continue
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                self.row(f"{prefix}/{rel}" if prefix else rel, full, fmt)


def _unique_names(rows: list[dict], taken: set[str]) -> None:
    """Names without the file extension where that stays unique, else with it (then ``#n``)."""
    stems = Counter()
    for row in rows:
        row["_stem"] = os.path.splitext(row["name"])[0] if os.path.isfile(row["path"]) else row["name"]
        stems[row["_stem"]] += 1
    for row in rows:
        stem = row.pop("_stem")
        name = stem if stems[stem] == 1 and stem not in taken else row["name"]
        base, n = name, 1
        while name in taken:
            n += 1
            name = f"{base}#{n}"
        taken.add(name)
        row["name"] = name


def scan_folder(directory: str | os.PathLike) -> ScanReport:
    """Catalog rows (``name``, absolute ``path``, ``format``, metadata) of a folder tree."""
    directory = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"not a folder: {directory}")
    scan = _Scan()
    repo = _hf_repo_name(os.path.basename(directory))
    if repo is not None and os.path.isdir(os.path.join(directory, "snapshots")):
        snapshot = _hf_snapshot(directory)
        if snapshot is not None:
            scan.folder(snapshot, repo)
    elif os.path.isfile(os.path.join(directory, "model_index.json")) or is_model_folder(directory):
        scan.folder(directory, os.path.basename(directory))
    else:
        scan.tree(directory, None)
    scan.report.rows.sort(key=lambda r: r["name"])
    return scan.report


_JSON_SUFFIXES = (".json", ".jsonl", ".ndjson")


def _read_existing(out: str, jsonl: bool) -> tuple[list[str], list[dict]]:
    """Columns and rows of an existing catalog, values kept as written."""
    with open(out, encoding="utf-8-sig", newline="") as f:
        if not jsonl:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), [dict(r) for r in reader]
        rows = [json.loads(line) for line in f if line.strip()]
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    return columns, rows


def _catalog_path(path: str, catalog_dir: str) -> str:
    """A catalog's ``path`` value as an absolute, normalised path (as ``read_catalog`` resolves it)."""
    if "://" in path:
        return path
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(catalog_dir, path))


def write_catalog(directory: str | os.PathLike, out: str | os.PathLike, append: bool = False) -> ScanReport:
    """Scan ``directory`` and write the catalog ``out`` (CSV; JSON lines for ``.json``/
    ``.jsonl``/``.ndjson``); with ``append`` keep its rows and add only paths it lacks
    (nothing is rewritten when nothing is new)."""
    out = os.path.abspath(os.fspath(out))
    catalog_dir = os.path.dirname(out)
    report = scan_folder(directory)
    report.out = out
    jsonl = out.lower().endswith(_JSON_SUFFIXES)
    columns: list[str] = []
    existing: list[dict] = []
    if append and os.path.isfile(out):
        columns, existing = _read_existing(out, jsonl)
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing and existing:
            raise ValueError(f"{out}: cannot append, missing column(s) {', '.join(missing)}")
    known_paths = {_catalog_path(r.get("path") or "", catalog_dir) for r in existing}
    new = [r for r in report.rows if os.path.normpath(r["path"]) not in known_paths]
    _unique_names(new, {r.get("name") or "" for r in existing})
    for row in new:
        rel = os.path.relpath(row["path"], catalog_dir)
        row["path"] = rel if not rel.startswith("..") else row["path"]
    report.added = len(new)
    if append and existing and not new:
        return report
    for c in ("name", "path", "format", *META_COLUMNS):
        if c not in columns and (c in ("name", "path", "format") or any(c in r for r in new)):
            columns.append(c)
    for r in new:
        columns += [c for c in r if c not in columns]
    os.makedirs(catalog_dir, exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        if jsonl:
            for r in existing + new:
                f.write(json.dumps({c: r[c] for c in columns if r.get(c) not in (None, "")}) + "\n")
        else:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for r in existing + new:
                writer.writerow({c: r.get(c, "") or "" for c in columns})
    os.replace(tmp, out)
    return report
