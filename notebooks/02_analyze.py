# Databricks notebook source
# MAGIC %md
# MAGIC # 2. Analyze: PCA basis, coefficient histograms, shifts
# MAGIC
# MAGIC One analysis run over the `filters` table: the PCA basis of the scaled 3x3 filters,
# MAGIC the 70-bin coefficient histograms per group of each dimension, and the shift
# MAGIC matrices between groups. Every run is kept; the `<table>_latest` views show the
# MAGIC latest complete run of each scope.

# COMMAND ----------

dbutils.widgets.text("warehouse", "warehouse", "Warehouse (path or URI)")
dbutils.widgets.text("database", "filterdb", "Database")
dbutils.widgets.text("catalog_name", "", "Catalog (catalog mode, e.g. main; empty: Delta paths under the warehouse)")
dbutils.widgets.text("by", "", "Dimensions, comma-separated (empty: the defaults that exist)")
dbutils.widgets.text("where", "", "Scope: SQL predicate over filter and model columns (empty: all)")

# COMMAND ----------

from filterspark import build_session

warehouse = dbutils.widgets.get("warehouse")
database = dbutils.widgets.get("database")
catalog_name = dbutils.widgets.get("catalog_name") or None  # Unity Catalog: tables catalog.database.table
spark = build_session(app_name="filterspark-analyze", warehouse=warehouse, database=database, catalog=catalog_name)

# COMMAND ----------

# DBTITLE 1,Run the analysis
from filterspark.pipelines.analyze import AnalyzeOptions, run_analysis

by = tuple(d.strip() for d in dbutils.widgets.get("by").split(",") if d.strip()) or None
where = dbutils.widgets.get("where") or None
result = run_analysis(spark, AnalyzeOptions(warehouse=warehouse, database=database, catalog_name=catalog_name, by=by, where=where))
print("\n".join(result.lines()))

# COMMAND ----------

# MAGIC %sql
# MAGIC -- the runs so far (the newest last)
# MAGIC SELECT run_id, scope, n_models, n_filters, round(seconds, 1) AS seconds, dimensions
# MAGIC FROM filterdb.analysis_runs ORDER BY run_id

# COMMAND ----------

# MAGIC %sql
# MAGIC SELECT component, round(explained_variance_ratio, 4) AS evr,
# MAGIC        round(sum(explained_variance_ratio) OVER (ORDER BY component), 4) AS cumulative
# MAGIC FROM filterdb.pca_basis_latest WHERE scope = 'all' ORDER BY component
