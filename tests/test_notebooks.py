"""The Databricks notebooks under notebooks/ run locally (``filterspark notebook run``)
against a copy of the analysed demo-zoo warehouse, %sql cells included."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from filterspark.cli import main
from filterspark.outputs.notebooks import NotebookError, parse_notebook, run_notebook, split_sql
from filterspark.delta.registry import register_tables

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.py"))


def test_the_notebooks_are_databricks_source_files():
    assert [p.name for p in NOTEBOOKS] == [
        "01_extract.py", "02_analyze.py", "03_explore_quality.py", "04_explore_shifts.py", "05_figures.py"
    ]
    for path in NOTEBOOKS:
        text = path.read_text()
        cells = parse_notebook(text)
        kinds = {c.kind for c in cells}
        assert {"md", "python", "sql"} <= kinds, path.name
        assert "build_session(" in text and 'dbutils.widgets.get("warehouse")' in text
        compile(text, str(path), "exec")  # plain Python too, as Databricks imports it


def test_parse_cells_magics_titles_and_sql_statements():
    text = "\n".join([
        "# Databricks notebook source",
        "# MAGIC %md",
        "# MAGIC # Title",
        "# MAGIC",
        "# MAGIC text",
        "",
        "# COMMAND ----------",
        "",
        "# DBTITLE 1,Load",
        "x = 1",
        "",
        "# COMMAND ----------",
        "",
        "# MAGIC %sql",
        "# MAGIC SELECT ';' AS a; -- a comment; with a semicolon",
        "# MAGIC SELECT 2 AS b",
        "",
        "# COMMAND ----------",
        "# MAGIC %sh ls",
    ])
    cells = parse_notebook(text)
    assert [(c.number, c.kind, c.title) for c in cells] == [(1, "md", ""), (2, "python", "Load"), (3, "sql", ""), (4, "sh", "")]
    assert cells[0].source == "# Title\n\ntext"
    assert cells[1].source == "x = 1"
    assert cells[3].source == "ls"
    assert split_sql(cells[2].source) == ["SELECT ';' AS a", "-- a comment; with a semicolon\nSELECT 2 AS b"]
    with pytest.raises(NotebookError, match="first line"):
        parse_notebook("print(1)\n")


@pytest.fixture(scope="module")
def warehouse(spark, analyzed_warehouse, tmp_path_factory):
    """A copy: the analyze notebook adds a run, which must not disturb other modules."""
    path = tmp_path_factory.mktemp("notebooks") / "warehouse"
    shutil.copytree(analyzed_warehouse["warehouse"], path)
    return str(path)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_locally(spark, warehouse, analyzed_warehouse, path, tmp_path, capsys):
    figures = tmp_path / "figures"
    args = ["notebook", "run", str(path), "--warehouse", warehouse, "--out", str(figures)]
    if path.stem == "01_extract":
        args += ["--param", f"catalog={analyzed_warehouse['catalog']}"]
    if path.stem == "05_figures":
        args += ["--param", f"report_out={tmp_path / 'report'}"]
    register_tables(spark, warehouse)
    before = spark.sql("SELECT count(*) FROM filterdb.analysis_runs").first()[0] if path.stem == "02_analyze" else None
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    cells = parse_notebook(path.read_text())
    assert f"{len(cells)} cells" in out
    assert [line.split(": ")[-1] for line in out.splitlines() if line.startswith(f"--- {path.name} cell ")] == [
        c.kind for c in cells
    ]
    sql_cells = sum(c.kind == "sql" for c in cells)
    assert out.count("\n(") >= sql_cells  # each %sql cell printed a result table "(N rows)"
    pngs = sorted(figures.glob("*.png")) if figures.exists() else []
    for png in pngs:
        with Image.open(png) as im:
            assert np.asarray(im.convert("L"), dtype=float).std() > 5
    if path.stem == "01_extract":
        assert "0 extracted" in out and "unchanged" in out  # same catalog: every model skipped
    if path.stem == "02_analyze":
        assert spark.sql("SELECT count(*) FROM filterdb.analysis_runs").first()[0] == before + 1
    if path.stem == "03_explore_quality":
        assert len(pngs) == 2
    if path.stem == "04_explore_shifts":
        assert len(pngs) == 2 and "handwriting" in out  # the visual_category shifts
    if path.stem == "05_figures":
        # one pass: every figure of the report shown once, as the report drew it
        assert len(pngs) >= 20 and (tmp_path / "report" / "index.html").exists()
        assert f"({len(pngs)} figures," in out and f"{len(pngs)} figures in {figures}" in out


def test_failing_cell_and_unsupported_magic_are_reported(spark, warehouse, tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("# Databricks notebook source\nx = 1\n\n# COMMAND ----------\n\n1 / 0\n")
    with pytest.raises(NotebookError, match=r"bad.py cell 2 failed: ZeroDivisionError"):
        run_notebook(bad, spark, {"warehouse": warehouse}, out=io.StringIO())
    shell = tmp_path / "shell.py"
    shell.write_text("# Databricks notebook source\n# MAGIC %sh\n# MAGIC ls\n")
    assert main(["notebook", "run", str(shell), "--warehouse", warehouse]) == 1
    assert "%sh cells cannot run locally" in capsys.readouterr().err
    widgets = tmp_path / "widgets.py"
    widgets.write_text("# Databricks notebook source\ndbutils.widgets.text('n', '3')\n"
                       "assert dbutils.widgets.get('n') == '7' and dbutils.widgets.get('warehouse')\n"
                       "# COMMAND ----------\n# MAGIC %sql\n# MAGIC SELECT CAST(:n AS INT) * 2 AS doubled\n")
    assert main(["notebook", "run", str(widgets), "--warehouse", warehouse, "--param", "n=7"]) == 0
    assert "14" in capsys.readouterr().out
