"""Time `m3d-doctor check --offline` (cold and warm) against `python -m torch.utils.collect_env`.

Side by side in one run, same target interpreter; prints medians and ratios and writes JSON.
Cold = an empty probe cache; warm = the second run with nothing changed.

    python benchmarks/check_speed.py --python /path/to/target/python [--runs 5] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", default=sys.executable, help="target interpreter")
    ap.add_argument("--doctor", default=None, help="m3d-doctor command (default: this interpreter -m m3d_doctor)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    doctor = args.doctor.split() if args.doctor else [sys.executable, "-m", "m3d_doctor"]
    env = dict(os.environ)
    check = [*doctor, "check", "--offline", "--python", args.python]
    imports = [m for m in ("torch", "diffusers", "transformers")
               if subprocess.run([args.python, "-c", f"import importlib.util as u; exit(u.find_spec('{m}') is None)"],
                                 check=False).returncode == 0]
    cold, warm, collect, bare, proof = [], [], [], [], []
    # What the import probe must really do: diffusers and transformers load lazily, so a bare import proves
    # little; resolving FluxPipeline is the import the panorama stage performs (and where torch.xpu breaks).
    proof_stmt = "import " + ", ".join(imports) + ("; from diffusers import FluxPipeline" if "diffusers" in imports
                                                    else "")
    for _ in range(args.runs):
        cache = tempfile.mkdtemp(prefix="m3d-bench-cache-")
        e = {**env, "M3D_DOCTOR_CACHE_DIR": cache}
        cold.append(timed(check, e))
        warm.append(timed(check, e))
        shutil.rmtree(cache, ignore_errors=True)
        collect.append(timed([args.python, "-m", "torch.utils.collect_env"], env))
        bare.append(timed([args.python, "-c", "import " + ", ".join(imports)], env))
        proof.append(timed([args.python, "-c", proof_stmt], env))
    med = {k: statistics.median(v) for k, v in
           {"check_cold": cold, "check_warm": warm, "collect_env": collect, "bare_import": bare,
            "import_with_flux_pipeline": proof}.items()}
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "host": platform.node(),
        "python": args.python,
        "bare_import_modules": imports,
        "runs": args.runs,
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "ratios": {
            "warm_vs_collect_env": round(med["check_warm"] / med["collect_env"], 3),
            "cold_vs_bare_import": round(med["check_cold"] / med["bare_import"], 3),
            "cold_vs_import_with_flux_pipeline": round(med["check_cold"] / med["import_with_flux_pipeline"], 3),
        },
        "targets": {"warm_s": 0.25, "warm_vs_collect_env": 0.15, "cold_vs_bare_import": 1.2},
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
