"""Every command over Spark Connect (the session of Databricks serverless, standard access
mode and Databricks Connect): a real local Connect server, clients in their own processes
(``filterspark ... --remote sc://...``), tables compared with the classic session's."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from clusters import run_cli
from compare import assert_same_analysis, assert_same_tables

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.py"))


def connect(server, *args: str) -> str:
    """Run ``filterspark ARGS --remote URL``; its output (it must succeed)."""
    rc, out = run_cli([*args, "--remote", server.url])
    assert rc == 0, out[-6000:]
    return out


@pytest.fixture(scope="module")
def connect_warehouse(connect_server, demo_warehouse, tmp_path_factory):
    """The demo zoo extracted and analysed (default dimensions) through the Connect server."""
    warehouse = str(tmp_path_factory.mktemp("connect-wh") / "warehouse")
    extract = connect(connect_server, "extract", "--catalog", str(demo_warehouse["catalog"]), "--warehouse", warehouse)
    analyze = connect(connect_server, "analyze", "--warehouse", warehouse)
    return {"warehouse": warehouse, "extract": extract, "analyze": analyze}


def test_extraction_over_connect_equals_classic(spark, demo_warehouse, connect_warehouse, connect_server):
    out = connect_warehouse["extract"]
    assert "filters written by: spark (direct Delta commits need the driver's JVM (a Spark Connect session" in out
    counts = assert_same_tables(spark, demo_warehouse["warehouse"], connect_warehouse["warehouse"])
    assert counts["filters"] == demo_warehouse["report"].filters_written > 20_000
    assert counts["kernels"] == demo_warehouse["report"].kernels_written > 0  # the spark path's second pass
    print(f"\n[connect] extraction tables equal classic: {counts}")
    # Fingerprints are read back over Connect too: the same catalog again commits nothing.
    again = connect(connect_server, "extract", "--catalog", str(demo_warehouse["catalog"]),
                    "--warehouse", connect_warehouse["warehouse"])
    assert "0 extracted" in again and f"{demo_warehouse['report'].models_total} unchanged" in again


def test_analysis_over_connect_equals_classic(spark, analyzed_warehouse, connect_warehouse):
    assert "filters read: files" in connect_warehouse["analyze"]  # the pyarrow file scan works over Connect
    counts = assert_same_analysis(spark, analyzed_warehouse["warehouse"], connect_warehouse["warehouse"])
    assert counts["shifts"] > 0 and counts["coefficient_histograms"] > 0
    print(f"\n[connect] analysis tables equal classic: {counts}")


def test_sql_quality_and_report_over_connect(spark, analyzed_warehouse, connect_warehouse, connect_server, tmp_path, capsys):
    from filterspark.cli import main

    wh = connect_warehouse["warehouse"]
    query = "SELECT task, count(*) AS n, round(sum(w4), 6) AS s FROM filterdb.filters GROUP BY task ORDER BY task"
    remote_sql = connect(connect_server, "sql", "--warehouse", wh, query)
    kernels_query = "SELECT k, count(*) AS n, round(sum(weights[0]), 6) AS s FROM filterdb.kernels GROUP BY k ORDER BY k"
    remote_kernels = connect(connect_server, "sql", "--warehouse", wh, kernels_query)
    remote_quality = connect(connect_server, "quality", "--warehouse", wh, "--limit", "0")
    remote_shifts = connect(connect_server, "sql", "--warehouse", wh,
                            "SELECT dimension, group_a, group_b, round(shift, 6) AS shift FROM filterdb.shifts_latest "
                            "ORDER BY dimension, group_a, group_b")
    capsys.readouterr()
    local = analyzed_warehouse["warehouse"]
    assert main(["sql", "--warehouse", local, query]) == 0
    assert main(["sql", "--warehouse", local, kernels_query]) == 0
    assert main(["quality", "--warehouse", local, "--limit", "0"]) == 0
    assert main(["sql", "--warehouse", local, "SELECT dimension, group_a, group_b, round(shift, 6) AS shift "
                 "FROM filterdb.shifts_latest ORDER BY dimension, group_a, group_b"]) == 0
    classic = capsys.readouterr().out
    for text in (remote_sql, remote_kernels, remote_quality, remote_shifts):
        assert _result_table(text) in classic
    out = connect(connect_server, "report", "--warehouse", wh, "--out", str(tmp_path / "report"))
    html = (tmp_path / "report" / "index.html").read_text()
    pngs = list((tmp_path / "report" / "figures").glob("*.png"))
    assert len(pngs) >= 20 and all(f'src="figures/{p.name}"' in html for p in pngs), out[-2000:]
    assert "digits-cnn" in html


def _result_table(text: str) -> str:
    """The printed result table of a ``sql``/``quality`` run (header through the row count)."""
    lines = text.splitlines()
    end = max(i for i, line in enumerate(lines) if line.startswith("(") and line.endswith(("rows)", "row)")))
    start = max(i for i in range(end) if set(lines[i]) <= {"-", " "} and lines[i].strip()) - 1
    return "\n".join(lines[start:end + 1])


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_runs_over_connect(connect_warehouse, connect_server, demo_warehouse, notebook, tmp_path):
    from filterspark.outputs.notebooks import parse_notebook

    warehouse = str(tmp_path / "warehouse")
    shutil.copytree(connect_warehouse["warehouse"], warehouse)
    args = ["notebook", "run", str(notebook), "--warehouse", warehouse, "--out", str(tmp_path / "figures")]
    if notebook.stem == "01_extract":
        args += ["--param", f"catalog={demo_warehouse['catalog']}"]
    if notebook.stem == "05_figures":
        args += ["--param", f"report_out={tmp_path / 'report'}"]
    out = connect(connect_server, *args)
    assert f"{len(parse_notebook(notebook.read_text()))} cells" in out
    if notebook.stem == "01_extract":
        assert "0 extracted" in out  # the same catalog: every model unchanged
    if notebook.stem == "05_figures":
        assert (tmp_path / "report" / "index.html").exists()


def test_import_filterdb_over_connect_equals_classic(spark, connect_server, tmp_path):
    """The dataset.h5 import over Connect (its per-layer results ride beside the streamed
    rows through an Observation) writes the same tables as on the classic session."""
    from test_import_filterdb import _import, write_filterdb

    path = tmp_path / "dataset.h5"
    write_filterdb(path)
    classic, remote = tmp_path / "classic", tmp_path / "remote"
    _import(spark, path, classic, rows_per_task=150)
    out = connect(connect_server, "import-filterdb", "--h5", str(path), "--warehouse", str(remote),
                  "--rows-per-task", "150")
    assert "imported" in out
    counts = assert_same_tables(spark, str(classic), str(remote))
    assert counts["filters"] > 0 and counts["layers"] > 0
