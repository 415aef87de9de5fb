"""`m3d-doctor shims` (list the m3d-shim-* distributions in the target, or build one's wheel) and
`m3d-doctor fix --undo shims` (remove all of them: plan -> confirm -> uninstall -> verify, reinstall on failure).

The list comes from the target's metadata files, read from the doctor's process: nothing of the target is
imported, so it works however broken the target is.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from .errors import EXIT_OK, EXIT_ROLLED_BACK, DoctorError, UsageError
from .fixflow import finish

SCHEMA = "m3d-doctor/shims/v1"


def add_parsers(subparsers: Any, target_options_fn: Callable[[argparse.ArgumentParser], None]) -> None:
    """The `shims` subcommand, and `--undo shims` on the existing `fix` subcommand."""
    s = subparsers.add_parser("shims", help="list the compatibility shims installed in the target")
    target_options_fn(s)
    s.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    s.add_argument("--build", default=None, metavar="NAME", help="write the wheel of shim NAME and print its path")
    s.add_argument("--dest", default=".", metavar="DIR", help="where --build writes the wheel (default: .)")
    fix = subparsers.choices.get("fix")
    if fix is not None:
        fix.add_argument("--undo", choices=["shims"], default=None,
                         help="remove what fixes installed: 'shims' uninstalls every m3d-shim-* distribution")


def installed_shims(target: Any) -> list[dict[str, Any]]:
    """Every m3d-shim-* distribution on the target's paths, with what its dist-info says about itself."""
    from m3d_doctor.fixes.shims import INFO_FILE, SHIM_PREFIX

    from .target import read_distributions

    out = []
    for dist in read_distributions(target.site_paths()).values():
        if not dist.name.startswith(SHIM_PREFIX):
            continue
        info: dict[str, Any] = {}
        if dist.location:
            try:
                info = json.loads((Path(dist.location) / INFO_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                info = {}
        out.append({
            "name": info.get("name", dist.name[len(SHIM_PREFIX):]),
            "distribution": dist.name,
            "version": dist.version,
            "provides": info.get("provides", ""),
            "why": info.get("why", ""),
            "unnecessary_when": info.get("unnecessary_when", ""),
            "sources": info.get("sources", ""),
            "location": dist.location,
            "remove": f"{target.python} -m pip uninstall -y {dist.name}",
        })
    return sorted(out, key=lambda s: s["distribution"])


def cmd_shims(args: argparse.Namespace) -> int:
    if args.build:
        return _build(args)
    from .cli import build_context

    ctx = build_context(args, [])
    if not getattr(ctx.target, "live", False):
        raise UsageError("shims needs a live interpreter (--python)")
    shims = installed_shims(ctx.target)
    if args.json:
        doc = {"schema": SCHEMA, "python": ctx.target.python, "shims": shims}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return EXIT_OK
    if not shims:
        print(f"no m3d-doctor shims installed in {ctx.target.python}")
        return EXIT_OK
    for s in shims:
        print(f"{s['distribution']} {s['version']}: {s['provides']}")
        for label, key in (("why", "why"), ("unnecessary", "unnecessary_when"), ("remove", "remove")):
            if s[key]:
                print(f"    {label}: {s[key]}")
    print("remove them all: m3d-doctor fix --undo shims" + (f" --python {args.python}" if args.python else ""))
    return EXIT_OK


def _build(args: argparse.Namespace) -> int:
    from m3d_doctor.fixes.shims import SHIMS
    from m3d_doctor.fixes.shims.wheel import build_wheel

    if args.build not in SHIMS:
        raise UsageError(f"unknown shim {args.build!r} (shims: {', '.join(sorted(SHIMS))})")
    dest = Path(args.dest)
    if not dest.is_dir():
        raise UsageError(f"--dest {dest}: not a directory")
    print(build_wheel(SHIMS[args.build], dest))
    return EXIT_OK


def cmd_undo(args: argparse.Namespace) -> int:
    """`fix --undo shims`: the fix flow's contract (plan, --yes/--dry-run, exit 0/1/4, JSON document)."""
    from m3d_doctor.fixes.shims import install as shim_install
    from m3d_doctor.fixes.shims import shim_for_dist

    from .cli import build_context
    from .fix import Action, Plan, Risk
    from .fixflow import fix_lock
    from .render import plan as plan_out

    if args.ids:
        raise UsageError("fix --undo shims takes no fix or finding ids")
    ctx = build_context(args, [])
    if not getattr(ctx.target, "live", False):
        raise UsageError("fix --undo shims needs a live interpreter (--python)")
    python = ctx.target.python
    plan = Plan("shims.undo", [])
    for s in installed_shims(ctx.target):
        plan.actions.append(Action(f"uninstall {s['distribution']} {s['version']}", Risk.SAFE,
                                   command=shim_install.uninstall_command(python, s["distribution"]),
                                   paths=[s["location"]] if s["location"] else [],
                                   data={"dist": s["distribution"]}))
    doc: dict[str, Any] = {"schema": "m3d-doctor/fix/v1", "plans": [plan.to_dict()], "applied": []}
    out = sys.stderr if args.json else sys.stdout
    if not args.json:
        plan_out.render(doc["plans"], out)
    if not plan.actions:
        return finish(args, doc, EXIT_OK, "no shims installed: nothing to remove")
    if args.dry_run:
        return finish(args, doc, EXIT_OK, "dry run: nothing removed")
    if not args.yes:
        if not sys.stdin.isatty():
            return finish(args, doc, EXIT_OK, "nothing removed (not a terminal: pass --yes to apply)")
        if input("remove these shims? [y/N] ").strip().lower() not in ("y", "yes"):
            return finish(args, doc, EXIT_OK, "nothing removed")
    removed: list[str] = []
    entry: dict[str, Any] = {"fix_id": plan.fix_id, "status": "applied"}
    with fix_lock(ctx):
        try:
            for a in plan.actions:
                shim_install.uninstall(python, a.data["dist"])
                removed.append(a.data["dist"])
                plan_out.message(f"  shims.undo: uninstalled {a.data['dist']}", out)
            left = [s["distribution"] for s in installed_shims(ctx.target)]
            if left:
                raise DoctorError(f"still installed after uninstalling: {', '.join(left)}")
        except DoctorError as exc:
            entry.update(status="rolled-back", error=str(exc))
            for dist in removed:  # put back what this run took out: the undo is all or nothing
                shim = shim_for_dist(dist)
                if shim is not None:
                    shim_install.install(python, shim)
                    plan_out.message(f"  shims.undo: reinstalled {dist}", out)
    doc["applied"].append(entry)
    if entry["status"] != "applied":
        return finish(args, doc, EXIT_ROLLED_BACK, f"undo failed: {entry['error']}")
    return finish(args, doc, EXIT_OK, f"removed {len(removed)} shim(s)")


