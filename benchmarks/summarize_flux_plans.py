"""Table of flux_plans.py results: per-step ratio against the resident run at the same resolution, peaks,
and the planner's predicted peak against the measured one."""

from __future__ import annotations

import json
import sys


def main(paths: list[str]) -> int:
    rows = []
    for p in paths:
        with open(p) as fh:
            rows.append(json.load(fh))
    base = {(r["height"], r["width"]): r for r in rows
            if r["plan"] == "resident" and not r["cap_gib"] and r.get("ok")}
    print("| plan | cap GiB | resolution | step s | × resident | peak alloc GiB | peak reserved GiB "
          "| predicted peak GiB | decode peak GiB | streamed GiB | same output |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        b = base.get((r["height"], r["width"]))
        res = f"{r['height']}×{r['width']}"
        if not r.get("ok"):
            print(f"| {r['plan']} | {r['cap_gib'] or '-'} | {res} | {'OOM' if r.get('oom') else 'error'} | | "
                  f"{r.get('peak_alloc_gib', '')} | | | | | |")
            continue
        ratio = f"{r['step_s_median'] / b['step_s_median']:.3f}" if b else ""
        pred = r.get("planner", {}).get("phase_peaks_gib", {}).get("denoise", "")
        same = ""
        if b and b is not r:
            same = "yes" if all(abs(x - y) <= 1e-3 * max(1.0, abs(y)) for x, y in
                                zip(r["output_checksum"], b["output_checksum"])) else "NO"
        print(f"| {r['plan']} | {r['cap_gib'] or '-'} | {res} | {r['step_s_median']} | {ratio} "
              f"| {r['peak_alloc_gib']} | {r['peak_reserved_gib']} | {pred} | {r.get('decode_peak_alloc_gib', '')} "
              f"| {r.get('streamed_gib', '')} | {same} |")
    if rows:
        r = rows[0]
        print(f"\n{r['device']}, torch {r['torch']}, diffusers {r.get('diffusers')}, H2D {r.get('h2d_gb_s')} GB/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
