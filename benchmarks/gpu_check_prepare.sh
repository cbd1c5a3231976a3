#!/usr/bin/env bash
# Prepare .gpu_carry/ for benchmarks/gpu_check.sh on an OFFLINE CUDA machine that has torch but no
# pyspark (e.g. a lent GPU box): copies the pure-Python parts of this venv's pyspark (no JARs, ~15 MB)
# and py4j. filterspark's extraction code imports pyspark's types, not its JVM.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
site=$("$PY" -c "import os, pyspark; print(os.path.dirname(os.path.dirname(pyspark.__file__)))")
rm -rf .gpu_carry && mkdir -p .gpu_carry/site
tar -C "$site" --exclude='pyspark/jars' --exclude='pyspark/examples' --exclude='pyspark/data' \
    --exclude='pyspark/licenses' --exclude='pyspark/bin' --exclude='pyspark/sbin' --exclude='pyspark/work' \
    --exclude='__pycache__' --exclude='*/tests' -cf - pyspark py4j | tar -C .gpu_carry/site -xf -
grep -qx '/.gpu_carry/' .git/info/exclude 2>/dev/null || echo '/.gpu_carry/' >> .git/info/exclude
du -sh .gpu_carry
echo "carry .gpu_carry with the run; the GPU machine runs: bash benchmarks/gpu_check.sh"
