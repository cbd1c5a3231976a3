#!/usr/bin/env bash
# One-shot GPU check (< 5 min): real GPU discovery, the GPU unit tests, and per-task extraction
# speed on GPU vs CPU (filters/s). Run from a fresh checkout on a CUDA machine:
#     bash benchmarks/gpu_check.sh            # results in $OUT (or ./gpu_check_out)
# Python: an interpreter that already has filterspark's needs is used as is; otherwise it installs
# from pyproject.toml into .venv-gpu (reusing the machine's CUDA torch). Offline machines without
# pyspark: run benchmarks/gpu_check_prepare.sh where pip works and bring .gpu_carry/ along.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
PY=${PYTHON:-python3}
started=$(date +%s)
step() { echo; echo "=== $* ($(( $(date +%s) - started )) s)"; }

step "GPUs"
nvidia-smi -L || echo "nvidia-smi not available"
echo "conf/getGpusResources.sh -> $(bash conf/getGpusResources.sh 2>&1)"

step "Python environment"
needs="import torch, numpy, pyarrow, pandas, onnx, safetensors, sklearn, pyspark, pytest"
if ! PYTHONPATH=$PWD "$PY" -c "$needs" 2>/dev/null; then
  if [[ -d .gpu_carry/site ]]; then
    echo "using the carried pure-Python packages in .gpu_carry/site (offline machine)"
    export PYTHONPATH=$PWD/.gpu_carry/site
  elif "$PY" -m venv --system-site-packages .venv-gpu \
       && timeout 240 .venv-gpu/bin/pip install -q --retries 1 --timeout 15 -e ".[test]"; then
    PY=$PWD/.venv-gpu/bin/python
    echo "installed from pyproject.toml into .venv-gpu"
  else
    echo "cannot install (offline?): run benchmarks/gpu_check_prepare.sh on a machine with pip access and carry .gpu_carry/"
    exit 2
  fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
"$PY" -c "$needs" || { echo "missing packages"; exit 2; }
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), torch.cuda.device_count(), 'devices')"

step "GPU unit tests (task device mapping, fallback, real-GPU extraction equals CPU)"
timeout 180 "$PY" -m pytest tests/test_cluster.py -q -p no:cacheprovider -m "not cluster" -k "gpu or task or falls_back or discovery" -rs
tests_rc=$?

step "Extraction speed, GPU vs CPU"
timeout 240 "$PY" benchmarks/gpu_bench.py --out "$OUT"
bench_rc=$?

step "done: tests rc=$tests_rc, benchmark rc=$bench_rc"
exit $(( tests_rc || bench_rc ))
