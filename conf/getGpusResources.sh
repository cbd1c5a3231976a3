#!/usr/bin/env bash
# Spark GPU discovery script for filterspark (spark.{worker,executor,driver}.resource.gpu.discoveryScript).
# Prints the ResourceInformation JSON Spark expects, e.g. {"name": "gpu", "addresses": ["0", "1"]}:
#   * with CUDA_VISIBLE_DEVICES set (a resource manager isolated some GPUs): exactly those entries;
#   * otherwise every GPU index nvidia-smi lists.
# Exits non-zero with a message on stderr when no GPU can be listed, so Spark refuses to start an
# executor that was promised GPUs instead of starting it without any.
set -euo pipefail

addresses=()
if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
  IFS=',' read -r -a visible <<<"${CUDA_VISIBLE_DEVICES}"
  for device in "${visible[@]}"; do
    device="${device// /}"
    [[ -n "$device" && "$device" != "-1" && "$device" != "NoDevFiles" ]] && addresses+=("$device")
  done
else
  if ! listing=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>&1); then
    echo "getGpusResources.sh: nvidia-smi failed: ${listing}" >&2
    exit 1
  fi
  while read -r index; do
    index="${index// /}"
    [[ "$index" =~ ^[0-9]+$ ]] && addresses+=("$index")
  done <<<"$listing"
fi

if [[ ${#addresses[@]} -eq 0 ]]; then
  echo "getGpusResources.sh: no GPU found" >&2
  exit 1
fi
json=""
for address in "${addresses[@]}"; do
  json+="${json:+, }\"${address}\""
done
printf '{"name": "gpu", "addresses": [%s]}\n' "$json"
