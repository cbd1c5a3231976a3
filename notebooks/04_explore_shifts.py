# Databricks notebook source
# MAGIC %md
# MAGIC # 4. Explore distribution shifts
# MAGIC
# MAGIC `shifts` holds, for each dimension, the shift `D(P,Q) = Σ evr_i (KL(P_i‖Q_i) + KL(Q_i‖P_i))`
# MAGIC between the coefficient distributions of every pair of groups (both orders, equal
# MAGIC values); `model_shifts` each model against the rest of its group. The queries read
# MAGIC the latest complete run of scope `all` (`*_latest` views).

# COMMAND ----------

dbutils.widgets.text("warehouse", "warehouse", "Warehouse (path or URI)")
dbutils.widgets.text("database", "filterdb", "Database")
dbutils.widgets.text("catalog_name", "", "Catalog (catalog mode, e.g. main; empty: Delta paths under the warehouse)")
dbutils.widgets.text("dimension", "visual_category", "Dimension of the heatmap")

# COMMAND ----------

from filterspark import build_session

warehouse = dbutils.widgets.get("warehouse")
database = dbutils.widgets.get("database")
catalog_name = dbutils.widgets.get("catalog_name") or None  # Unity Catalog: tables catalog.database.table
spark = build_session(app_name="filterspark-shifts", warehouse=warehouse, database=database, catalog=catalog_name)

# COMMAND ----------

# MAGIC %sql
# MAGIC -- shift between visual domains (each pair once)
# MAGIC SELECT group_a, group_b, round(shift, 4) AS shift, n_a, n_b, small
# MAGIC FROM filterdb.shifts_latest
# MAGIC WHERE scope = 'all' AND dimension = 'visual_category' AND group_a < group_b
# MAGIC ORDER BY shift DESC

# COMMAND ----------

# MAGIC %sql
# MAGIC -- average shift of each visual domain to the others
# MAGIC SELECT group_a AS visual_category, round(avg(shift), 4) AS mean_shift, count(*) AS pairs
# MAGIC FROM filterdb.shifts_latest
# MAGIC WHERE scope = 'all' AND dimension = 'visual_category'
# MAGIC GROUP BY group_a ORDER BY mean_shift DESC

# COMMAND ----------

# MAGIC %sql
# MAGIC -- how strongly each dimension separates its groups
# MAGIC SELECT dimension, count(*) AS pairs, round(avg(shift), 4) AS mean_shift, round(max(shift), 4) AS max_shift
# MAGIC FROM filterdb.shifts_latest WHERE scope = 'all' AND group_a < group_b
# MAGIC GROUP BY dimension ORDER BY mean_shift DESC

# COMMAND ----------

# MAGIC %sql
# MAGIC -- the shift by depth: neighbouring deciles
# MAGIC SELECT group_a, group_b, round(shift, 4) AS shift
# MAGIC FROM filterdb.shifts_latest WHERE scope = 'all' AND dimension = 'depth_decile' AND group_a < group_b
# MAGIC ORDER BY group_a, group_b;
# MAGIC -- the models farthest from the rest of the population
# MAGIC SELECT name, round(shift, 4) AS shift, n_filters, small
# MAGIC FROM filterdb.model_shifts_latest WHERE scope = 'all' AND dimension = 'all'
# MAGIC ORDER BY shift DESC

# COMMAND ----------

# DBTITLE 1,Heatmap and box plot
from filterspark.outputs import plots

shifts = spark.sql(
    "SELECT dimension, group_a, group_b, shift FROM filterdb.shifts_latest WHERE scope = 'all'"
).toPandas()
display(plots.shift_heatmap(shifts, dbutils.widgets.get("dimension")))
display(plots.shift_boxplot(shifts))
