"""`m3d-doctor gate`: the pre-flight for a container entrypoint — one decision line and the contract's exit code.

Runs the checks that matter at start, plus thresholds (free VRAM, free disk, stages that must fit). Pure
checks are not re-run while the environment's fingerprint is unchanged (the engine's result cache), and the
disk check skips its deep measuring, so a pod restart with nothing changed passes in well under a second.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable

from . import nvml
from .errors import EXIT_FAIL, EXIT_OK
from .findings import CheckResult, Finding, Severity
from .units import human, parse_size

GATE_CHECKS = ("python", "packages", "torch", "imports", "env", "device", "checkpoints", "disk", "vram", "hf", "image")


def add_parsers(subparsers: Any, target_options_fn: Callable[[argparse.ArgumentParser], None]) -> None:
    g = subparsers.add_parser("gate", help="pre-flight for an entrypoint: one decision line, contract exit codes")
    target_options_fn(g)
    g.add_argument("--skip", action="append", default=[], metavar="CHECK", help="waive a check (repeatable)")
    g.add_argument("--min-free-vram", default=None, metavar="SIZE", help="free memory the best GPU must have")
    g.add_argument("--min-free-disk", default=None, metavar="SIZE", help="free space the HF cache's mount must have")
    g.add_argument("--json", action="store_true", help="print the decision and the failing findings as JSON")
    g.add_argument("--checkpoint", action="append", default=[], metavar="REPO=PATH", help="local model folders")
    g.add_argument("--strict", action="store_true", help="warnings block too")


def threshold_findings(args: argparse.Namespace, ctx: Any) -> list[Finding]:
    out: list[Finding] = []
    if args.min_free_vram:
        need = parse_size(args.min_free_vram, "--min-free-vram")
        snap = nvml.snapshot()
        free = max((g["memory_free"] for g in snap.get("gpus", [])), default=0) if snap.get("available") else 0
        ok = free >= need
        out.append(Finding("gate.vram-ok" if ok else "gate.vram-below-threshold", Severity.OK if ok else Severity.FAIL,
                           f"best GPU has {human(free)} free ({'>=' if ok else '<'} {human(need)})",
                           cause="" if ok else (snap.get("reason") or "other processes hold the memory"),
                           evidence={"free": free, "needed": need}))
    if args.min_free_disk:
        from .caches import existing_ancestor, free_bytes
        from .hfcache import hub_cache_dir

        need = parse_size(args.min_free_disk, "--min-free-disk")
        path = existing_ancestor(hub_cache_dir())
        free = free_bytes(path)
        ok = free >= need
        out.append(Finding("gate.disk-ok" if ok else "gate.disk-below-threshold", Severity.OK if ok else Severity.FAIL,
                           f"{human(free)} free on the HF cache's mount ({'>=' if ok else '<'} {human(need)})",
                           evidence={"free": free, "needed": need, "path": str(path)}))
    return out


def cmd_gate(args: argparse.Namespace) -> int:
    from .check import discover_checks
    from .cli import build_context
    from .engine import run_checks

    t0 = time.perf_counter()
    available = discover_checks()
    unknown = [s for s in args.skip if s not in available]
    if unknown:
        from .errors import UsageError

        raise UsageError(f"--skip {', '.join(unknown)}: unknown check (available: {', '.join(sorted(available))})")
    names = [n for n in GATE_CHECKS if n in available and n not in args.skip]
    checks = [available[n] for n in names]
    ctx = build_context(args, checks)
    ctx.options.extra["quick"] = True
    if not ctx.options.extra.get("stages"):
        ctx.options.extra["stages"] = ["pano"]
    report = run_checks(checks, ctx)
    extra = threshold_findings(args, ctx)
    if extra:
        report.results.append(CheckResult("gate", "thresholds", extra))
    code = report.exit_code(strict=args.strict)
    blocking = [(r.name, f) for r in report.results for f in r.findings
                if f.severity in (Severity.FAIL, Severity.ERROR) or (args.strict and f.severity is Severity.WARN)]
    cached = sum(1 for r in report.results if r.cached)
    elapsed = time.perf_counter() - t0
    if code == EXIT_OK:
        line = f"m3d-doctor gate: PASS ({len(report.results)} checks, {cached} unchanged since the last pass, " \
               f"{elapsed:.2f}s)"
    else:
        what = ", ".join(dict.fromkeys(f.id for _, f in blocking))
        verdict = "FAIL" if code == EXIT_FAIL else "INCOMPLETE"
        line = f"m3d-doctor gate: {verdict} ({what}) — see: m3d-doctor check -v"
    if args.json:
        doc = {"schema": "m3d-doctor/gate/v1", "decision": "pass" if code == EXIT_OK else "block",
               "exit_code": code, "line": line, "skipped": args.skip, "duration_s": round(elapsed, 3),
               "fingerprint": report.fingerprint,
               "blocking": [dict(f.to_dict(), check=name) for name, f in blocking]}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        print(line)
        for _name, f in blocking if args.verbose else []:
            fix = f" → {f.remedy.command}" if f.remedy and f.remedy.command else ""
            print(f"  {f.severity.value}: {f.title} ({f.id}){fix}")
    return code
