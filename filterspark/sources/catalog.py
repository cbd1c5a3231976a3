"""Model catalogs: CSV or JSON-lines files that say where each checkpoint is and what it is.

Required columns: ``name`` and ``path`` (relative paths resolve against the catalog's
own directory). Known metadata columns become columns of ``models``; ``format`` picks a
loader (sniffed when empty); ``allow_pickle`` (true/false) opts one model into full
pickle loading. Every other column is kept in ``models.metadata`` and can be used as an
analysis dimension.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from filterspark.errors import CatalogError


REQUIRED_COLUMNS = ("name", "path")
CONTROL_COLUMNS = ("format", "allow_pickle")
_TRUE = {"1", "true", "yes", "y", "on"}


#: Catalog metadata columns promoted to top-level columns of ``models``.
KNOWN_METADATA = (
    "task",
    "visual_category",
    "training_dataset",
    "pretraining_dataset",
    "architecture",
    "family",
    "paper",
    "source",
)


@dataclass(frozen=True)
class CatalogEntry:
    """One model of the catalog."""

    name: str
    path: str
    format: str | None = None
    allow_pickle: bool = False
    known: dict[str, str | None] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def model_id(self) -> int:
        return model_id_for(self.name)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "path": self.path,
            "format": self.format,
            "allow_pickle": self.allow_pickle,
            "known": dict(self.known),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "CatalogEntry":
        return cls(
            name=d["name"],
            path=d["path"],
            format=d.get("format"),
            allow_pickle=bool(d.get("allow_pickle")),
            known=dict(d.get("known") or {}),
            extra=dict(d.get("extra") or {}),
        )

    def fingerprint_material(self) -> str:
        """Everything of the entry that ends up in the tables, as canonical JSON."""
        return json.dumps(self.to_dict(), sort_keys=True)


def model_id_for(name: str) -> int:
    """Stable positive 63-bit id of a model name (the same in every run and catalog)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") >> 1


def _clean(value) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _read_rows(path: Path) -> tuple[list[str], list[dict]]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() in (".json", ".jsonl", ".ndjson"):
        rows, columns = [], []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise CatalogError(f"{path}: line {lineno} is not valid JSON: {err.msg}") from None
            if not isinstance(row, dict):
                raise CatalogError(f"{path}: line {lineno} is not a JSON object")
            for key in row:
                if key not in columns:
                    columns.append(key)
            rows.append(row)
        return columns, rows
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip() for c in (reader.fieldnames or [])]
    rows = [{(k or "").strip(): v for k, v in row.items()} for row in reader]
    return columns, rows


def read_catalog(path: str | os.PathLike) -> list[CatalogEntry]:
    """Parse and validate a catalog; raise :class:`CatalogError` early with a clear reason."""
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"catalog not found: {path}")
    columns, rows = _read_rows(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise CatalogError(
            f"{path}: missing required column(s) {', '.join(missing)}; found {', '.join(columns) or 'none'}"
        )
    if not rows:
        raise CatalogError(f"{path}: the catalog has no models")
    base = path.resolve().parent
    entries: list[CatalogEntry] = []
    seen: dict[str, int] = {}
    for number, row in enumerate(rows, 1):
        name = _clean(row.get("name"))
        file_path = _clean(row.get("path"))
        if not name or not file_path:
            raise CatalogError(f"{path}: row {number} has an empty name or path")
        if name in seen:
            raise CatalogError(f"{path}: duplicate model name {name!r} (rows {seen[name]} and {number})")
        seen[name] = number
        if "://" not in file_path and not os.path.isabs(file_path):
            file_path = str(base / file_path)
        extra = {
            k: _clean(v)
            for k, v in row.items()
            if k and k not in REQUIRED_COLUMNS + CONTROL_COLUMNS + KNOWN_METADATA and _clean(v) is not None
        }
        entries.append(
            CatalogEntry(
                name=name,
                path=file_path,
                format=_clean(row.get("format")),
                allow_pickle=(_clean(row.get("allow_pickle")) or "").lower() in _TRUE,
                known={k: _clean(row.get(k)) for k in KNOWN_METADATA},
                extra=extra,
            )
        )
    return entries
