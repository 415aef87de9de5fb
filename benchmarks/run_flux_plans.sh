#!/usr/bin/env bash
# On a GPU machine (device tool): every plan side by side with the resident baseline, one process each.
# Carries diffusers and the doctor as wheels in .whl (see benchmarks/README section in the project README).
set -u
OUT=${OUT:-/tmp/m3d-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt"
i=0
run() { i=$((i+1)); timeout 300 python3 benchmarks/flux_plans.py "$@" --out "$OUT/r$i.json" >> "$OUT/log.txt" 2>&1 || echo "run $i failed: $*" >> "$OUT/log.txt"; }
PLANS=${PLANS:-full}
for hw in "512 1024" "1024 2048"; do
  set -- $hw; H=$1; W=$2
  run --plan resident --height $H --width $W --vae
  [ "$PLANS" = full ] && run --plan resident --cap-gib 24 --height $H --width $W
  run --plan partial --cap-gib 24 --height $H --width $W --vae
  run --plan partial --cap-gib 12 --height $H --width $W --vae
  [ "$PLANS" = full ] && run --plan group-offload --cap-gib 12 --height $H --width $W
done
python3 benchmarks/summarize_flux_plans.py "$OUT"/r*.json | tee "$OUT/summary.md"
