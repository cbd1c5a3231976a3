"""Run a Databricks source-format notebook locally: ``filterspark notebook run X.py``.

A notebook is ``# Databricks notebook source`` followed by cells separated by
``# COMMAND ----------``; a non-Python cell has every line prefixed ``# MAGIC `` and
starts with its magic (``%md``, ``%sql``, ``%python``). Here Python cells run in one
shared namespace that provides ``spark`` (the project's session, tables registered),
``display``/``displayHTML`` and a ``dbutils.widgets`` shim whose values come from the
command line (``--warehouse`` → widget ``warehouse``, ``--database`` → ``database``,
``--param name=value``); ``%sql`` cells run statement by statement through
``spark.sql`` (widget values bound to ``:name`` markers) and show the last result;
``%md`` cells are skipped. Other magics (``%sh``, ``%pip``, ``%run``...) are refused.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from filterspark.delta.capabilities import is_connect
from filterspark.errors import NotebookError

HEADER = "# Databricks notebook source"
SEPARATOR = "# COMMAND ----------"
MAGIC = "# MAGIC"
DISPLAY_ROWS = 20


@dataclass
class Cell:
    number: int  # 1-based, in file order
    kind: str  # python | sql | md | the other magic's name
    source: str
    title: str = ""


def parse_notebook(text: str) -> list[Cell]:
    """The cells of a Databricks source-format notebook."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != HEADER:
        raise NotebookError(f"not a Databricks source notebook: the first line must be {HEADER!r}")
    chunks: list[list[str]] = [[]]
    for line in lines[1:]:
        if line.strip() == SEPARATOR:
            chunks.append([])
        else:
            chunks[-1].append(line)
    cells = []
    for chunk in chunks:
        title = ""
        while chunk and not chunk[0].strip():
            chunk.pop(0)
        while chunk and chunk[0].startswith("# DBTITLE"):
            title = chunk.pop(0).split(",", 1)[-1].strip()
        body = [line for line in chunk if line.strip()]
        if not body:
            continue
        kind, source = "python", "\n".join(chunk).strip("\n")
        if all(line.startswith(MAGIC) for line in body):
            stripped = [line[len(MAGIC) + 1:] if line.startswith(MAGIC + " ") else line[len(MAGIC):] for line in chunk]
            first = next(i for i, line in enumerate(stripped) if line.strip())
            match = re.match(r"\s*%(\w+)\s?(.*)$", stripped[first])
            if match:
                kind = match.group(1).lower()
                stripped[first] = match.group(2)
            source = "\n".join(stripped[first:]).strip("\n")
        cells.append(Cell(len(cells) + 1, kind, source, title))
    return cells


def split_sql(source: str) -> list[str]:
    """Statements of a ``%sql`` cell: split at ``;`` outside quotes and comments."""
    out, buf, quote, i = [], [], "", 0
    while i < len(source):
        ch = source[i]
        if quote:
            buf.append(ch)
            if ch == "\\" and i + 1 < len(source):
                buf.append(source[i + 1])
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"`":
            quote = ch
            buf.append(ch)
        elif source.startswith("--", i):
            end = source.find("\n", i)
            end = len(source) if end < 0 else end
            buf.append(source[i:end])
            i = end
            continue
        elif ch == ";":
            out.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    out.append("".join(buf))
    return [s.strip() for s in out if re.sub(r"--[^\n]*", "", s).strip()]


_TOKENS = re.compile(r"'(?:\\.|[^'\\])*'|\"(?:\\.|[^\"\\])*\"|`[^`]*`|--[^\n]*|(?<![:\w]):([A-Za-z_]\w*)")


def bind_markers(statement: str, values: dict[str, str]) -> str:
    """Replace the named parameter markers ``:name`` of widgets by string literals, as
    Databricks binds widget values (outside quotes and comments; ``::type`` casts and
    unknown names are left alone). Inlined: pyspark 4.2.0 leaves ``args`` unbound."""
    from filterspark.outputs.report_data import sql_literal

    def sub(match: re.Match) -> str:
        name = match.group(1)
        return sql_literal(values[name]) if name and name in values else match.group(0)

    return _TOKENS.sub(sub, statement)


class Widgets:
    """The parts of ``dbutils.widgets`` notebooks use: define with a default, read back.
    Values given on the command line win over a widget's default."""

    def __init__(self, params: dict[str, str] | None = None) -> None:
        self._params = dict(params or {})
        self._values: dict[str, str] = {}

    def _define(self, name: str, default: str) -> None:
        self._values[name] = self._params.get(name, "" if default is None else str(default))

    def text(self, name: str, defaultValue: str = "", label: str | None = None) -> None:  # noqa: N803 - dbutils names
        self._define(name, defaultValue)

    def dropdown(self, name: str, defaultValue: str, choices: list[str], label: str | None = None) -> None:  # noqa: N803
        self._define(name, defaultValue)
        if self._values[name] not in choices:
            raise ValueError(f"widget {name!r}: {self._values[name]!r} is not one of {choices}")

    def combobox(self, name: str, defaultValue: str, choices: list[str] | None = None, label: str | None = None) -> None:  # noqa: N803
        self._define(name, defaultValue)

    def multiselect(self, name: str, defaultValue: str, choices: list[str], label: str | None = None) -> None:  # noqa: N803
        self._define(name, defaultValue)

    def get(self, name: str) -> str:
        if name in self._values:
            return self._values[name]
        if name in self._params:
            return self._params[name]
        raise ValueError(f"no widget named {name!r} (define it with dbutils.widgets.text first)")

    def getArgument(self, name: str, default: str | None = None) -> str | None:  # noqa: N802 - dbutils name
        try:
            return self.get(name)
        except ValueError:
            return default

    def getAll(self) -> dict[str, str]:  # noqa: N802 - dbutils name
        return {**self._params, **self._values}

    def remove(self, name: str) -> None:
        self._values.pop(name, None)

    def removeAll(self) -> None:  # noqa: N802 - dbutils name
        self._values.clear()


@dataclass
class DBUtils:
    widgets: Widgets


@dataclass
class NotebookRun:
    path: Path
    cells: list[Cell] = field(default_factory=list)
    executed: dict[str, int] = field(default_factory=dict)  # cells run per kind
    figures: list[Path] = field(default_factory=list)
    seconds: float = 0.0


class Display:
    """``display``: tables as aligned text (first rows), figures saved as PNG into
    ``out_dir`` (when given), anything else printed."""

    def __init__(self, out: TextIO, out_dir: Path | None, run: NotebookRun) -> None:
        self.out, self.out_dir, self.run, self.cell = out, out_dir, run, 0

    def __call__(self, obj: Any = None, *args, **kwargs) -> None:
        from matplotlib.figure import Figure

        from filterspark.outputs.formatting import format_rows

        if hasattr(obj, "sparkSession") and hasattr(obj, "columns"):  # a Spark DataFrame
            rows = obj.limit(DISPLAY_ROWS + 1).collect()
            format_rows(obj.columns, [tuple(r) for r in rows[:DISPLAY_ROWS]], "table", self.out)
            if len(rows) > DISPLAY_ROWS:
                print(f"(first {DISPLAY_ROWS} rows shown)", file=self.out)
        elif hasattr(obj, "to_string") and hasattr(obj, "columns"):  # pandas
            print(obj.head(DISPLAY_ROWS).to_string(index=False), file=self.out)
        elif isinstance(obj, Figure) or hasattr(obj, "get_figure"):  # a figure, or an Axes
            fig = obj if isinstance(obj, Figure) else obj.get_figure()
            if self.out_dir is not None:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                path = self.out_dir / f"{self.run.path.stem}-cell{self.cell:02d}-{len(self.run.figures) + 1:02d}.png"
                fig.savefig(path, dpi=100, bbox_inches="tight")
                self.run.figures.append(path)
                print(f"[figure: {path}]", file=self.out)
            else:
                print("[figure]", file=self.out)
        else:
            print(obj, file=self.out)


def run_notebook(
    path: str | Path,
    spark=None,
    params: dict[str, str] | None = None,
    out_dir: str | Path | None = None,
    out: TextIO | None = None,
) -> NotebookRun:
    """Execute a notebook's cells in order; raise :class:`NotebookError` naming the failing cell."""
    import matplotlib

    matplotlib.use("Agg")
    path = Path(path)
    out = out or sys.stdout
    params = dict(params or {})
    started = time.perf_counter()
    run = NotebookRun(path=path, cells=parse_notebook(path.read_text(encoding="utf-8")))
    if spark is None:
        from filterspark.engine.session import build_session
        from filterspark.delta.warehouse import DEFAULT_DATABASE

        spark = build_session(app_name=f"filterspark-notebook-{path.stem}", warehouse=params.get("warehouse"),
                              database=params.get("database", DEFAULT_DATABASE))
    widgets = Widgets(params)
    display = Display(out, Path(out_dir) if out_dir else None, run)
    namespace: dict[str, Any] = {
        "__name__": "__main__", "__file__": str(path), "spark": spark, "sc": None if is_connect(spark) else spark.sparkContext,
        "display": display, "displayHTML": lambda h: print(f"[html: {len(str(h))} characters]", file=out),
        "dbutils": DBUtils(widgets),
    }
    for cell in run.cells:
        display.cell = cell.number
        label = f"{path.name} cell {cell.number}" + (f" ({cell.title})" if cell.title else "")
        print(f"--- {label}: {cell.kind}", file=out)
        try:
            if cell.kind == "md":
                pass
            elif cell.kind == "python":
                exec(compile(cell.source, f"{path}:cell{cell.number}", "exec"), namespace)  # noqa: S102
            elif cell.kind == "sql":
                result = None
                for statement in split_sql(cell.source):
                    result = spark.sql(bind_markers(statement, widgets.getAll()))
                if result is not None and result.columns:
                    display(result)
            else:
                raise NotebookError(f"%{cell.kind} cells cannot run locally")
        except NotebookError as err:
            raise NotebookError(f"{label}: {err}") from err
        except Exception as err:  # noqa: BLE001 - report which cell failed
            raise NotebookError(f"{label} failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
        run.executed[cell.kind] = run.executed.get(cell.kind, 0) + 1
    run.seconds = time.perf_counter() - started
    return run


# --- command line --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``filterspark notebook run NOTEBOOK --warehouse DIR [--param k=v] [--out DIR]``."""
    from filterspark.delta.warehouse import DEFAULT_DATABASE, DEFAULT_WAREHOUSE

    sub = parser.add_subparsers(dest="notebook_command", required=True)
    run_parser = sub.add_parser("run", help="execute a Databricks source notebook locally",
                                description="execute a Databricks source notebook locally")
    run_parser.add_argument("notebook", help="path of the notebook (.py, Databricks source format)")
    run_parser.add_argument("--warehouse", default=None, help="widget 'warehouse' (default: the one a `filterspark "
                            f"serve` at --remote serves, else {DEFAULT_WAREHOUSE})")
    run_parser.add_argument("--database", default=DEFAULT_DATABASE, help="widget 'database' (default: filterdb)")
    run_parser.add_argument("--catalog-name", default=None, help="widget 'catalog_name': catalog mode (tables managed "
                            "as CATALOG.DATABASE.TABLE)")
    run_parser.add_argument("--remote", default=None, help="Spark Connect URL (sc://host:port) the notebook's "
                            "session connects to (default: $SPARK_REMOTE, else a local driver)")
    run_parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="any other widget value")
    run_parser.add_argument("--out", help="save displayed figures as PNG here")


def run(args: argparse.Namespace) -> int:
    """``filterspark notebook run``: the notebook on a session of the given warehouse (and remote)."""
    from filterspark.delta.warehouse import DEFAULT_WAREHOUSE
    from filterspark.engine.session import build_session, warehouse_in_use

    widgets = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep:
            print(f"error: --param {item!r} is not NAME=VALUE", file=sys.stderr)
            return 2
        widgets[name.strip()] = value
    spark = build_session(app_name=f"filterspark-notebook-{Path(args.notebook).stem}", warehouse=args.warehouse,
                          database=args.database, remote=args.remote, catalog=args.catalog_name,
                          default_warehouse=DEFAULT_WAREHOUSE, short_lived=True)
    params = {"warehouse": warehouse_in_use(spark, args.warehouse, args.database), "database": args.database}
    if args.catalog_name:
        params["catalog_name"] = args.catalog_name
    params.update(widgets)
    try:
        result = run_notebook(args.notebook, spark, params=params, out_dir=args.out)
    except (NotebookError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    kinds = ", ".join(f"{n} {k}" for k, n in result.executed.items())
    print(f"{result.path}: {len(result.cells)} cells ({kinds}) in {result.seconds:.1f} s"
          + (f"; {len(result.figures)} figures in {args.out}" if result.figures else ""))
    return 0
