# Databricks notebook source
# MAGIC %md
# MAGIC # 3. Explore filter quality
# MAGIC
# MAGIC Data-free degeneration checks from the `layers` and `models` tables: which models
# MAGIC have random-like, sparse or low-variety (replicated) 3x3 layers, and where in the
# MAGIC network they are.

# COMMAND ----------

dbutils.widgets.text("warehouse", "warehouse", "Warehouse (path or URI)")
dbutils.widgets.text("database", "filterdb", "Database")
dbutils.widgets.text("catalog_name", "", "Catalog (catalog mode, e.g. main; empty: Delta paths under the warehouse)")
dbutils.widgets.text("group_by", "health", "Model groups: health, a models column or a metadata key")

# COMMAND ----------

from filterspark import build_session

warehouse = dbutils.widgets.get("warehouse")
database = dbutils.widgets.get("database")
catalog_name = dbutils.widgets.get("catalog_name") or None  # Unity Catalog: tables catalog.database.table
spark = build_session(app_name="filterspark-quality", warehouse=warehouse, database=database, catalog=catalog_name)

# COMMAND ----------

# MAGIC %sql
# MAGIC -- models with the largest share of degenerated 3x3 layers
# MAGIC SELECT name, task, layers_3x3, round(share_degenerate, 3) AS degenerate,
# MAGIC        round(share_random, 3) AS random, round(share_sparse, 3) AS sparse,
# MAGIC        round(share_low_variety, 3) AS low_variety, worst_layer_reason
# MAGIC FROM filterdb.models WHERE status = 'ok' AND layers_3x3 > 0
# MAGIC ORDER BY share_degenerate DESC, name

# COMMAND ----------

# MAGIC %sql
# MAGIC -- the degenerated layers themselves
# MAGIC SELECT m.name, l.layer_name, l.n_filters, round(l.sparsity, 3) AS sparsity,
# MAGIC        round(l.variance_entropy_norm, 3) AS entropy_norm,
# MAGIC        l.degenerate_random AS random, l.degenerate_sparse AS sparse, l.degenerate_low_variety AS low_variety
# MAGIC FROM filterdb.layers l JOIN filterdb.models m USING (model_id)
# MAGIC WHERE l.degenerate_random OR l.degenerate_sparse OR l.degenerate_low_variety
# MAGIC ORDER BY m.name, l.layer_index

# COMMAND ----------

# MAGIC %sql
# MAGIC -- mean normalised entropy per task and depth
# MAGIC SELECT m.task, round(l.conv_depth_norm, 1) AS depth, count(*) AS layers,
# MAGIC        round(avg(l.variance_entropy_norm), 3) AS mean_entropy_norm, round(avg(l.sparsity), 3) AS mean_sparsity
# MAGIC FROM filterdb.layers l JOIN filterdb.models m USING (model_id)
# MAGIC WHERE m.status = 'ok' AND l.kernel_h = 3 AND l.kernel_w = 3
# MAGIC GROUP BY m.task, round(l.conv_depth_norm, 1) ORDER BY m.task, depth

# COMMAND ----------

# DBTITLE 1,Entropy vs. sparsity, and per depth decile
from filterspark.outputs import plots, report_data

layers = report_data.quality_layers(spark, database, dbutils.widgets.get("group_by"))
display(plots.entropy_sparsity_scatter(layers))
display(plots.depth_boxplot(layers))
