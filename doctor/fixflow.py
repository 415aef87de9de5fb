"""`m3d-doctor fix`: findings → plans → confirmation → apply → verify → roll back on failure.

Exit codes: 0 applied and verified (or a plan shown without applying), 1 nothing could be fixed,
3 another fix holds the lock, 4 applied but verification failed and it was rolled back.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import sys
from typing import Any, Iterator

from .check import discover_checks, discover_fixes
from .errors import EXIT_COULD_NOT_RUN, EXIT_FAIL, EXIT_OK, EXIT_ROLLED_BACK, DoctorError, UsageError
from .findings import Severity
from .fix import Fix, Plan, Risk
from .txn import recover_unfinished  # a transaction a killed fix left half-done is restored first

EXIT_LOCKED = EXIT_COULD_NOT_RUN


class FixLocked(DoctorError):
    exit_code = EXIT_LOCKED


@contextlib.contextmanager
def fix_lock(ctx: Any) -> Iterator[None]:
    """One fix at a time per target: a second `fix` is refused, not queued."""
    ident = os.path.realpath(ctx.target.interp["prefix"]) if ctx.target.live else "freeze"
    key = hashlib.sha256(ident.encode()).hexdigest()[:16]  # one lock per environment, however --python is spelled
    ctx.cache.directory.mkdir(parents=True, exist_ok=True)
    path = ctx.cache.directory / f"fix-{key}.lock"
    fh = open(path, "w")  # noqa: SIM115 - held for the lock's lifetime
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FixLocked(f"another m3d-doctor fix is running on this environment (lock {path})") from None
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fh.close()


def _select(args: argparse.Namespace, ctx: Any, fixes: dict[str, Fix]) -> dict[str, list[str]]:
    """fix id → the finding ids it answers. Named fix ids are taken as asked; finding ids (or nothing)
    run the checks and take the fixes their remedies name."""
    wanted: dict[str, list[str]] = {}
    finding_ids = []
    for i in args.ids:
        if i in fixes:
            wanted.setdefault(i, [])
        elif "." in i:
            finding_ids.append(i)
        else:
            raise UsageError(f"unknown fix or finding id {i!r} (fixes: {', '.join(sorted(fixes))})")
    if args.ids and not finding_ids:
        return wanted
    from .engine import run_checks

    report = run_checks(list(discover_checks().values()), ctx)
    seen = set()
    for r in report.results:
        for f in r.findings:
            if f.severity not in (Severity.FAIL, Severity.WARN) or not f.remedy or not f.remedy.fix_id:
                continue
            if finding_ids and f.id not in finding_ids:
                continue
            seen.add(f.id)
            if f.remedy.fix_id in fixes:
                wanted.setdefault(f.remedy.fix_id, []).append(f.id)
    missing = [i for i in finding_ids if i not in seen]
    if missing:
        raise UsageError(f"no failing finding with id {', '.join(missing)}")
    return wanted


def run_fix(args: argparse.Namespace) -> int:
    from .cli import build_context
    from .render import plan as plan_out

    fixes = discover_fixes()
    if args.list_fixes:
        for fid, fix in sorted(fixes.items()):
            print(f"{fid:24} {getattr(fix, 'description', '')}")
        return EXIT_OK
    ctx = build_context(args, [])
    selection = _select(args, ctx, fixes)  # bad ids fail before anything changes
    if not getattr(args, "safe_only", False):  # unattended runs never restore: a person decides that
        recover_unfinished(ctx, args, lambda m: plan_out.message(m, sys.stderr if args.json else sys.stdout))
    plans: list[Plan] = []
    for fid, finding_ids in selection.items():
        plan = fixes[fid].plan(ctx)
        plan.findings = sorted(set(finding_ids))
        plans.append(plan)
    doc: dict[str, Any] = {"schema": "m3d-doctor/fix/v1", "plans": [p.to_dict() for p in plans], "applied": []}
    out = sys.stderr if args.json else sys.stdout
    if not args.json:
        plan_out.render(doc["plans"], out)
    runnable = [p for p in plans if p.actions and not p.blocked]
    if getattr(args, "safe_only", False):  # unattended (the image entrypoint): never a risky or destructive step
        runnable = [p for p in runnable if p.risk is Risk.SAFE]
    if not args.ids:  # a bare `fix --yes` never deletes: destructive fixes run only when named
        held = [p.fix_id for p in runnable if p.risk is Risk.DESTRUCTIVE]
        runnable = [p for p in runnable if p.risk is not Risk.DESTRUCTIVE]
        if held:
            doc["held_back"] = held
            plan_out.message(f"held back (destructive, run only when named): {', '.join(held)} — "
                             f"m3d-doctor fix {' '.join(held)} --yes", out)
    if not runnable:
        return finish(args, doc, EXIT_FAIL if any(p.blocked for p in plans) else EXIT_OK,
                       "nothing to apply" if plans else "nothing to fix")
    if args.dry_run:
        return finish(args, doc, EXIT_OK, "dry run: nothing applied")
    destructive = any(p.risk is Risk.DESTRUCTIVE for p in runnable)
    if not args.yes:
        if destructive or not sys.stdin.isatty():
            why = "destructive steps need --yes" if destructive else "not a terminal: pass --yes to apply"
            return finish(args, doc, EXIT_OK, f"nothing applied ({why})")
        answer = input("apply this plan? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            return finish(args, doc, EXIT_OK, "nothing applied")
    code = EXIT_OK
    with fix_lock(ctx):
        for plan in runnable:
            fix = fixes[plan.fix_id]
            entry: dict[str, Any] = {"fix_id": plan.fix_id, "status": "applied"}

            def progress(msg: str, fid: str = plan.fix_id) -> None:
                plan_out.message(f"  {fid}: {msg}", out)

            try:
                fix.apply(ctx, plan, progress)
                still = fix.verify(ctx, plan)
            except KeyboardInterrupt:
                fix.rollback(ctx, plan, progress)
                raise
            except (DoctorError, OSError) as exc:  # disk full, permissions: roll back, never a traceback
                still, entry["error"] = [], str(exc)
                entry["status"] = "failed"
            if still or entry["status"] == "failed":
                fix.rollback(ctx, plan, progress)
                entry["status"] = "rolled-back"
                entry["still_failing"] = [f.id for f in still]
                code = EXIT_ROLLED_BACK
            doc["applied"].append(entry)
            if code != EXIT_OK:
                break
    return finish(args, doc, code, "done" if code == EXIT_OK else "verification failed: rolled back")


def finish(args: argparse.Namespace, doc: dict[str, Any], code: int, message: str) -> int:
    doc["exit_code"], doc["message"] = code, message
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        from .render import plan as plan_out

        plan_out.message(message, sys.stdout)
    return code
