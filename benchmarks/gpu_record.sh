#!/usr/bin/env bash
# Run on a GPU machine (the device tool): record the doctor's real NVML/torch answers as a test fixture,
# its output, and the check-speed benchmark. Writes into $OUT.
set -u
OUT=${OUT:-/tmp/m3d-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
export M3D_DOCTOR_CACHE_DIR=/tmp/m3d-cache
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv > "$OUT/nvidia-smi.csv" 2>&1
python3 - <<'PY' > "$OUT/gpu-facts.json"
import json, sys
from m3d_doctor import nvml
from m3d_doctor.probe import run_probe
print(json.dumps({"nvml": nvml.snapshot(),
                  "torch_info": run_probe(sys.executable, "torch_info", timeout=300).data,
                  "interp": run_probe(sys.executable, "interp").data}, indent=2))
PY
python3 -m m3d_doctor check --json -v > "$OUT/check.json"; echo "check exit $?"
python3 -m m3d_doctor check -v > "$OUT/check.txt" 2>&1; echo "human exit $?"
python3 benchmarks/check_speed.py --python python3 --runs 5 --out "$OUT/check-speed.json"
cat "$OUT/check.txt" | head -80
