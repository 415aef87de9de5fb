#!/usr/bin/env bash
# On a GPU machine (device tool): the runner's panorama stage, 24 GiB plan vs resident, and selftest on the GPU.
set -u
OUT=${OUT:-/tmp/m3d-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
i=0
for hw in "512 1024" "1024 2048"; do
  set -- $hw
  for plan in "--plan resident" "--plan partial --cap-gib 24"; do
    i=$((i+1)); timeout 280 python3 benchmarks/pano_stage.py $plan --height $1 --width $2 --out "$OUT/p$i.json" 2>>"$OUT/pano.log" | tail -1
  done
done
python3 -m m3d_doctor.runtime.selftest --device cuda > "$OUT/selftest-cuda.json" 2>>"$OUT/pano.log"; echo "selftest rc=$?"
cat "$OUT/selftest-cuda.json"
