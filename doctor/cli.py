"""The `m3d-doctor` command line. Bare `m3d-doctor` is `m3d-doctor check`.

Errors the user can act on print one line and exit with the documented code; only a bug in the doctor
itself exits 70 (its traceback only with M3D_DOCTOR_DEBUG=1).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import traceback
from typing import Any, Optional, Sequence

from . import __version__, gate, lock, report, run_cli, shims_cli
from .errors import EXIT_INTERNAL, EXIT_USAGE, DoctorError, UsageError
from .units import parse_size


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage block
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="m3d-doctor", description="Diagnose a GPU pod for Matrix-3D.")
    p.add_argument("--version", action="version", version=f"m3d-doctor {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    c = sub.add_parser("check", help="run checks (the default command)")
    c.add_argument("names", nargs="*", metavar="NAME", help="checks to run (default: all)")
    c.add_argument("--list-checks", action="store_true", help="list the available checks and exit")
    _target_options(c)
    c.add_argument("--freeze", default=None, metavar="FILE", help="judge a pip freeze file instead of an interpreter")
    c.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    c.add_argument("--strict", action="store_true", help="warnings fail too (exit 1)")
    c.add_argument("--checkpoint", action="append", default=[], metavar="REPO=PATH",
                   help="where a model lives locally (repeatable; also M3D_CHECKPOINTS='REPO=PATH;...')")
    c.add_argument("--device", choices=["cuda", "cpu"], default=None, help="device a run will use")
    c.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="dtype a run will ask for")
    f = sub.add_parser("fix", help="plan and apply fixes (plan -> confirm -> apply -> verify)")
    f.add_argument("ids", nargs="*", metavar="ID", help="fix ids or finding ids (default: every failing finding)")
    _target_options(f)
    f.add_argument("--yes", "-y", action="store_true", help="apply without asking (required for destructive steps)")
    f.add_argument("--dry-run", action="store_true", help="show the plan, never apply")
    f.add_argument("--safe-only", action="store_true", help="apply only plans whose every step is safe (unattended)")
    f.add_argument("--json", action="store_true", help="print the plan (and outcome) as JSON")
    f.add_argument("--list-fixes", action="store_true", help="list the available fixes and exit")
    f.add_argument("--volume", default=None, help="persistent volume to move caches onto (disk.move-hf-cache)")
    f.add_argument("--checkpoint", action="append", default=[], metavar="REPO=PATH",
                   help="where a model lives locally (repeatable)")
    f.add_argument("--pin", action="append", default=[], metavar="SPEC",
                   help="add or override a profile pin for this run (repeatable), e.g. 'diffusers==0.34.0'")
    f.add_argument("--installer", choices=["uv", "pip"], default=None,
                   help="resolver for package fixes (default: uv when available, else the target's pip)")
    shims_cli.add_parsers(sub, _target_options)
    run_cli.add_parsers(sub, _target_options)  # `run`, `selftest`
    gate.add_parsers(sub, _target_options)
    report.add_parsers(sub, _target_options)  # `shims`, and `fix --undo shims`
    lock.add_parsers(sub, _target_options)
    return p


def _target_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--python", default=None, help="target interpreter (default: this one)")
    p.add_argument("--profile", default=None, help="profile TOML file or embedded profile name")
    p.add_argument("--offline", action="store_true", help="skip every check that needs the network")
    p.add_argument("--no-cache", action="store_true", help="ignore and do not write the probe cache")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds each probe may take (default 60)")
    p.add_argument("-v", "--verbose", action="store_true", help="more detail")
    p.add_argument("--stage", default=None, help="stages to plan for, comma-separated (pano,video)")
    p.add_argument("--resolution", default=None, help="stage resolution: 512x1024 (pano), 480 or 720 (video)")
    p.add_argument("--budget", default=None, help="plan for a GPU memory budget instead of the free memory, e.g. 24GiB")
    p.add_argument("--matrix3d-root", default=None,
                   help="the Matrix-3D checkout (default: the profile's, or M3D_MATRIX3D_ROOT)")


def _normalise(argv: list[str]) -> list[str]:
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        return ["check", *argv]
    return argv


def resolve_python(spec: Optional[str]) -> str:
    """`--python` takes a path or a command name on PATH ("python3")."""
    if not spec:
        return sys.executable
    if os.sep in spec:
        return os.path.abspath(spec)  # probes run from an empty directory
    found = shutil.which(spec)
    if not found:
        raise UsageError(f"--python {spec}: not found on PATH")
    return found


def build_context(args: argparse.Namespace, checks: list) -> Any:
    """Target, profile, options and cache from the shared flags; bad input raises UsageError/ProfileError."""
    from .cache import Cache
    from .context import Context, Options
    from .profile import load_profile
    from .target import Target, load_freeze

    profile = load_profile(args.profile)
    if not math.isfinite(args.timeout) or args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    cache = Cache(enabled=not args.no_cache)
    if getattr(args, "freeze", None):
        if args.python:
            raise UsageError("--freeze and --python are exclusive")
        target = load_freeze(args.freeze)
    else:
        target = Target(python=resolve_python(args.python), cache=cache, probe_timeout=args.timeout)
        _ = target.interp  # an interpreter that cannot run is reported once, up front
    options = Options(offline=args.offline, verbose=args.verbose, strict=getattr(args, "strict", False),
                      dtype=getattr(args, "dtype", None), device=getattr(args, "device", None),
                      use_cache=not args.no_cache)
    options.extra["imports_selected"] = any(c.name == "imports" for c in checks)
    options.extra["checkpoints"] = parse_checkpoint_args(getattr(args, "checkpoint", []) or [])
    options.extra["volume"] = getattr(args, "volume", None)
    options.extra["matrix3d_root"] = getattr(args, "matrix3d_root", None)
    options.extra["stages"] = [x.strip() for x in (args.stage or "").split(",") if x.strip()] or None
    unknown = [x for x in options.extra["stages"] or [] if x not in profile.stages]
    if unknown:
        raise UsageError(f"--stage {','.join(unknown)}: the profile has stages {', '.join(profile.stages) or 'none'}")
    options.extra["resolution"] = args.resolution
    options.extra["budget"] = parse_size(args.budget, "--budget") if args.budget else None
    if options.extra["budget"] is not None and options.extra["budget"] <= 0:
        raise UsageError(f"--budget {args.budget}: must be more than zero")
    options.extra["pins"] = getattr(args, "pin", []) or []
    options.extra["installer"] = getattr(args, "installer", None)
    return Context(target, profile, options, cache)


def parse_checkpoint_args(values: list[str]) -> dict[str, str]:
    """`--checkpoint REPO=PATH` (repeatable) over `M3D_CHECKPOINTS="REPO=PATH;REPO=PATH"`."""
    out: dict[str, str] = {}
    env = [v for v in os.environ.get("M3D_CHECKPOINTS", "").split(";") if v.strip()]
    for value in [*env, *values]:
        repo, sep, path = value.partition("=")
        if not sep or not repo.strip() or not path.strip() or "/" not in repo:
            raise UsageError(f"--checkpoint {value!r}: expected REPO=PATH (e.g. org/model=/data/model)")
        out[repo.strip()] = os.path.expanduser(path.strip())
    return out


def cmd_fix(args: argparse.Namespace) -> int:
    from .fixflow import run_fix

    if getattr(args, "undo", None):
        return shims_cli.cmd_undo(args)
    return run_fix(args)


def cmd_check(args: argparse.Namespace) -> int:
    from .check import discover_checks, select_checks
    from .document import build_document
    from .engine import run_checks

    available = discover_checks()
    if args.list_checks:
        for name, check in available.items():
            flags = " [network]" if getattr(check, "needs_network", False) else ""
            print(f"{name:12} {getattr(check, 'description', '')}{flags}")
        return 0
    checks = select_checks(available, args.names)
    ctx = build_context(args, checks)
    report = run_checks(checks, ctx)
    code = report.exit_code(strict=args.strict)
    doc = build_document(report, ctx.profile, ctx.target, code, sorted(ctx.cache_hits))
    if args.json:
        from .render import json_out

        json_out.render(doc, sys.stdout)
    else:
        from .render import human  # rich is imported only for people

        human.render(doc, sys.stdout, verbose=args.verbose)
    return code


COMMANDS = {"check": cmd_check, "fix": cmd_fix, "gate": gate.cmd_gate, "report": report.cmd_report,
            "shims": shims_cli.cmd_shims, "run": run_cli.cmd_run, "selftest": run_cli.cmd_selftest,
            "lock": lock.cmd_lock}


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .secrets import RedactingStream

    argv = _normalise(list(sys.argv[1:] if argv is None else argv))
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(out), RedactingStream(err)  # type: ignore[assignment]
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = out, err


def _main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except DoctorError as exc:
        print(f"m3d-doctor: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("m3d-doctor: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    except Exception as exc:
        if os.environ.get("M3D_DOCTOR_DEBUG"):
            traceback.print_exc()
        print(f"m3d-doctor: internal error: {type(exc).__name__}: {exc} "
              "(set M3D_DOCTOR_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
