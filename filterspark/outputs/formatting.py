"""Query rows as text: an aligned table, CSV or JSON lines (``filterspark sql``, ``quality``)."""
from __future__ import annotations

import csv
import datetime as _dt
import json
import sys


def _jsonable(value):
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if hasattr(value, "asDict"):
        return {k: _jsonable(v) for k, v in value.asDict().items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def format_rows(columns: list[str], rows: list, fmt: str, out=None) -> None:
    """Print query rows as an aligned table, CSV or JSON lines."""
    out = out or sys.stdout
    if fmt == "json":
        for row in rows:
            out.write(json.dumps({c: _jsonable(v) for c, v in zip(columns, row)}, default=str) + "\n")
        return
    cells = [[("" if v is None else str(_jsonable(v))) for v in row] for row in rows]
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(cells)
        return
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip() + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for r in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() + "\n")
    out.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n")
