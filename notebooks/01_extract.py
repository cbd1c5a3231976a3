# Databricks notebook source
# MAGIC %md
# MAGIC # 1. Extract: checkpoints → Delta tables
# MAGIC
# MAGIC Reads a model catalog (CSV or JSON-lines, one model per row) and writes the
# MAGIC `models`, `layers` and `filters` tables of the warehouse. Unchanged models are
# MAGIC skipped, so re-running is cheap. With an empty `catalog` widget the built-in demo
# MAGIC zoo is trained (once) and used.
# MAGIC
# MAGIC On Databricks install `filterspark` on the cluster (wheel or `%pip install`) and set
# MAGIC the `warehouse` widget to a DBFS / cloud path. Locally:
# MAGIC `filterspark notebook run notebooks/01_extract.py --warehouse ./warehouse`.

# COMMAND ----------

dbutils.widgets.text("warehouse", "warehouse", "Warehouse (path or URI)")
dbutils.widgets.text("database", "filterdb", "Database")
dbutils.widgets.text("catalog_name", "", "Catalog (catalog mode, e.g. main; empty: Delta paths under the warehouse)")
dbutils.widgets.text("catalog", "", "Model catalog (empty: the demo zoo)")
dbutils.widgets.text("zoo_dir", "demo_zoo", "Where the demo zoo is built")

# COMMAND ----------

from filterspark import build_session

warehouse = dbutils.widgets.get("warehouse")
database = dbutils.widgets.get("database")
catalog_name = dbutils.widgets.get("catalog_name") or None  # Unity Catalog: tables catalog.database.table
# On Databricks (and under the local runner) this reuses the running session and
# registers the warehouse's tables as <database>.<table>.
spark = build_session(app_name="filterspark-extract", warehouse=warehouse, database=database, catalog=catalog_name)

# COMMAND ----------

# DBTITLE 1,The catalog
from pathlib import Path

from filterspark.sources.catalog import read_catalog

catalog = dbutils.widgets.get("catalog")
if not catalog:
    from filterspark.demo.zoo import build_demo_zoo

    zoo_catalog = Path(dbutils.widgets.get("zoo_dir")) / "catalog.csv"
    catalog = str(zoo_catalog) if zoo_catalog.exists() else str(build_demo_zoo(zoo_catalog.parent))
entries = read_catalog(catalog)
print(f"{len(entries)} models in {catalog}")

# COMMAND ----------

# DBTITLE 1,Extract
from filterspark.pipelines.extract import ExtractOptions, run_extraction

report = run_extraction(spark, entries, ExtractOptions(warehouse=warehouse, database=database, catalog_name=catalog_name))
print("\n".join(report.lines()))

# COMMAND ----------

# MAGIC %sql
# MAGIC -- what was extracted, per task
# MAGIC SELECT task, status, count(*) AS models, sum(filters_3x3) AS filters_3x3
# MAGIC FROM filterdb.models GROUP BY task, status ORDER BY task, status

# COMMAND ----------

# MAGIC %sql
# MAGIC SELECT name, format, conv_layers, filters_3x3, round(share_3x3, 3) AS share_3x3, status, error
# MAGIC FROM filterdb.models ORDER BY name
