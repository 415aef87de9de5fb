"""The `m3d-doctor` command line. Bare `m3d-doctor` is `m3d-doctor check`.

Errors the user can act on print one line and exit with the documented code; only a bug in the doctor
itself exits 70 (its traceback only with M3D_DOCTOR_DEBUG=1).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import traceback
from typing import Optional, Sequence

from . import __version__
from .errors import EXIT_INTERNAL, EXIT_USAGE, DoctorError, UsageError

SUBCOMMANDS = ("check",)


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
    c.add_argument("--python", default=None, help="target interpreter (default: this one)")
    c.add_argument("--profile", default=None, help="profile TOML file or embedded profile name")
    c.add_argument("--freeze", default=None, metavar="FILE", help="judge a pip freeze file instead of an interpreter")
    c.add_argument("--offline", action="store_true", help="skip every check that needs the network")
    c.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    c.add_argument("-v", "--verbose", action="store_true", help="show every finding with its evidence")
    c.add_argument("--strict", action="store_true", help="warnings fail too (exit 1)")
    c.add_argument("--device", choices=["cuda", "cpu"], default=None, help="device a run will use")
    c.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="dtype a run will ask for")
    c.add_argument("--no-cache", action="store_true", help="ignore and do not write the probe cache")
    c.add_argument("--timeout", type=float, default=60.0, help="seconds each probe may take (default 60)")
    return p


def _normalise(argv: list[str]) -> list[str]:
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        return ["check", *argv]
    return argv


def resolve_python(spec: Optional[str]) -> str:
    """`--python` takes a path or a command name on PATH ("python3")."""
    if not spec:
        return sys.executable
    if os.sep in spec:
        return spec
    found = shutil.which(spec)
    if not found:
        raise UsageError(f"--python {spec}: not found on PATH")
    return found


def cmd_check(args: argparse.Namespace) -> int:
    from .cache import Cache
    from .check import discover_checks, select_checks
    from .context import Context, Options
    from .document import build_document
    from .engine import run_checks
    from .profile import load_profile
    from .target import Target, load_freeze

    available = discover_checks()
    if args.list_checks:
        for name, check in available.items():
            flags = " [network]" if getattr(check, "needs_network", False) else ""
            print(f"{name:12} {getattr(check, 'description', '')}{flags}")
        return 0
    checks = select_checks(available, args.names)
    profile = load_profile(args.profile)
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    cache = Cache(enabled=not args.no_cache)
    if args.freeze:
        if args.python:
            raise UsageError("--freeze and --python are exclusive")
        target = load_freeze(args.freeze)
    else:
        python = resolve_python(args.python)
        target = Target(python=python, cache=cache, probe_timeout=args.timeout)
        _ = target.interp  # an interpreter that cannot run is a usage error, reported once, up front
    options = Options(offline=args.offline, verbose=args.verbose, strict=args.strict, dtype=args.dtype,
                      device=args.device, use_cache=not args.no_cache)
    options.extra["imports_selected"] = any(c.name == "imports" for c in checks)
    ctx = Context(target, profile, options, cache)
    report = run_checks(checks, ctx)
    code = report.exit_code(strict=args.strict)
    doc = build_document(report, profile, target, code, sorted(ctx.cache_hits))
    if args.json:
        from .render import json_out

        json_out.render(doc, sys.stdout)
    else:
        from .render import human  # rich is imported only for people

        human.render(doc, sys.stdout, verbose=args.verbose)
    return code


COMMANDS = {"check": cmd_check}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = _normalise(list(sys.argv[1:] if argv is None else argv))
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
