#!/bin/bash
# Databricks cluster init script (conf/databricks.json: init_scripts): installs filterspark into the
# cluster's Python WITHOUT its pyspark/delta-spark pins — Databricks Runtime brings its own Spark
# and Delta, and replacing them breaks the cluster. Upload the wheel (`python -m pip wheel --no-deps .`)
# to the volume below first, and this script to the workspace path named in databricks.json.
set -euo pipefail
WHEEL_DIR=${FILTERSPARK_WHEEL_DIR:-/Volumes/main/filterspark/wheels}
/databricks/python/bin/pip install --no-deps "${WHEEL_DIR}"/filterspark-*.whl
/databricks/python/bin/pip install "onnx>=1.16" "safetensors>=0.4"
