# Databricks notebook source
# MAGIC %md
# MAGIC # 5. Figures and the HTML report
# MAGIC
# MAGIC Every figure of the study from the tables of one analysis run (default: the latest
# MAGIC of scope `all`): the PCA basis and its explained variance, the density of the first
# MAGIC two coefficients (a 2-D histogram computed by the executors), ridge plots of the
# MAGIC coefficient distributions, shift heatmaps and box plots, layer quality, and the
# MAGIC filters of single models. Set `report_out` to also write the static HTML report.

# COMMAND ----------

dbutils.widgets.text("warehouse", "warehouse", "Warehouse (path or URI)")
dbutils.widgets.text("database", "filterdb", "Database")
dbutils.widgets.text("catalog_name", "", "Catalog (catalog mode, e.g. main; empty: Delta paths under the warehouse)")
dbutils.widgets.text("run_id", "", "Analysis run (empty: the latest of scope 'all')")
dbutils.widgets.text("report_out", "", "Also write the HTML report to this local or /dbfs/ directory (empty: no report)")

# COMMAND ----------

from filterspark import build_session

warehouse = dbutils.widgets.get("warehouse")
database = dbutils.widgets.get("database")
catalog_name = dbutils.widgets.get("catalog_name") or None  # Unity Catalog: tables catalog.database.table
spark = build_session(app_name="filterspark-figures", warehouse=warehouse, database=database, catalog=catalog_name)

# COMMAND ----------

# MAGIC %sql
# MAGIC -- the analysis runs a figure can be drawn from (the newest first)
# MAGIC SELECT run_id, scope, n_models, n_filters, dimensions FROM filterdb.analysis_runs ORDER BY run_id DESC

# COMMAND ----------

# DBTITLE 1,The run the figures are drawn from
from filterspark.outputs import report_data

run = report_data.analysis_run(spark, database, dbutils.widgets.get("run_id") or None)
print("no analysis run: only the quality figures" if run is None else
      f"run {run['run_id']}: {run['n_filters']:,} filters of {run['n_models']} models, dimensions {run['dimensions']}")

# COMMAND ----------

# DBTITLE 1,Every figure (and the HTML report when report_out is set)
from filterspark.outputs.report import ReportOptions, build_figures, build_report

report_out = dbutils.widgets.get("report_out")
options = ReportOptions(warehouse=warehouse, out=report_out or "report", database=database, catalog_name=catalog_name,
                        run_id=dbutils.widgets.get("run_id") or None)


def show(entry, figure):
    print(entry.title)
    display(figure)


if report_out:  # one pass: each figure is shown as the report draws it
    print("\n".join(build_report(spark, options, on_figure=show).lines()))
else:
    for entry, figure in build_figures(spark, options, run):
        show(entry, figure)
