"""The resolver commands: one install call for everything that must change, by uv or pip, under constraints.

uv is preferred when the doctor can run it (on PATH, or the `uv` module in the doctor's own environment):
it needs no pip in the target and resolves fast. pip runs as `<target> -m pip`. A dry run of the very same
call tells the plan what will change before anything does (pip's `--report`, uv's `--dry-run` listing).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from packaging.utils import canonicalize_name

from .errors import UsageError

if TYPE_CHECKING:
    from .context import Context

PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_FAMILY = ("torch", "torchvision", "torchaudio")
# Tests only: once the installer changes files, SIGKILL the doctor ("doctor" or "1"), the installer, or
# "all"; or "interrupt" (SIGINT to the process group, as Ctrl-C in a terminal); "all:2": at the 2nd change.
KILL_ENV = "M3D_DOCTOR_TEST_KILL_DURING_INSTALL"
RESOLVE_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Change:
    name: str  # canonical
    old: Optional[str]  # installed version, None when the resolver adds it
    new: Optional[str]  # resolved version, None when it is removed


@dataclass(frozen=True)
class Installer:
    kind: str  # "uv" | "pip"
    python: str  # the target interpreter
    prefix: tuple[str, ...]  # how to run the tool

    def install(self, requirements: Sequence[str], constraints: Optional[Path] = None,
                extra_index: Optional[str] = None, *, no_deps: bool = False, dry_run: bool = False) -> list[str]:
        """argv of one install call into the target."""
        if self.kind == "uv":
            argv = [*self.prefix, "pip", "install", "--python", self.python]
            if extra_index:  # uv's default takes each package from the first index that has it
                argv += ["--extra-index-url", extra_index, "--index-strategy", "unsafe-best-match"]
            if dry_run:
                argv.append("--dry-run")
        else:
            argv = [*self.prefix, "install", "--disable-pip-version-check", "--no-input"]
            if extra_index:
                argv += ["--extra-index-url", extra_index]
            if dry_run:
                argv += ["--dry-run", "--quiet", "--report", "-"]
        if no_deps:
            argv.append("--no-deps")
        if constraints is not None:
            argv += ["-c", str(constraints)]
        return argv + list(requirements)


def find_uv() -> Optional[tuple[str, ...]]:
    if shutil.which("uv"):
        return (shutil.which("uv") or "uv",)
    if importlib.util.find_spec("uv") is not None:
        return (sys.executable, "-m", "uv")
    return None


def target_has_pip(python: str) -> bool:
    try:
        return subprocess.run([python, "-m", "pip", "--version"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def choose(requested: Optional[str], python: str) -> Installer:
    """`--installer uv|pip`; by default uv where the doctor can run it, else the target's pip."""
    uv = find_uv()
    if requested == "uv" or (requested is None and uv):
        if uv is None:
            raise UsageError("--installer uv: uv is not on PATH nor installed beside the doctor (pip install uv)")
        return Installer("uv", python, uv)
    if requested not in (None, "pip"):
        raise UsageError(f"--installer {requested}: expected uv or pip")
    if not target_has_pip(python):
        raise UsageError(f"{python} has no pip: use --installer uv, or run {python} -m ensurepip")
    return Installer("pip", python, (python, "-m", "pip"))


def torch_index(ctx: Context) -> tuple[Optional[str], Optional[str]]:
    """(index URL, why not): the CUDA index of the variant that suits this driver and GPU; CPU without a GPU."""
    from .checks.torch_stack import choose_variant

    gpu = ctx.gpu()
    if not gpu.get("available"):
        return PYTORCH_CPU_INDEX, None
    variant = ctx.fact("torch_variant", lambda: choose_variant(ctx, gpu))
    if variant is None:
        return None, (f"no CUDA variant of the profile suits driver {gpu.get('driver_version')} and these GPUs; "
                      "torch cannot be changed safely")
    return variant["index_url"], None


def resolve(installer: Installer, argv: list[str], installed: dict[str, str]) -> tuple[list[Change], Optional[str]]:
    """Run a dry-run argv: (what would change, None) or ([], the resolver's error)."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=RESOLVE_TIMEOUT_S,
                              env=_env(), errors="replace")
    except subprocess.TimeoutExpired:
        return [], f"the resolver did not answer within {RESOLVE_TIMEOUT_S:.0f}s"
    except OSError as exc:
        return [], f"cannot run {argv[0]}: {exc.strerror or exc}"
    if proc.returncode != 0:
        return [], error_summary(proc.stderr + proc.stdout)
    if installer.kind == "uv":
        return _uv_changes(proc.stderr + proc.stdout), None
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        return [], "pip printed no install report (pip >= 22.2 is needed for a dry run)"
    out = []
    for item in report.get("install", []):
        name = canonicalize_name(item["metadata"]["name"])
        out.append(Change(name, installed.get(name), item["metadata"]["version"]))
    return out, None


_UV_LINE = re.compile(r"^\s*([-+~])\s+([A-Za-z0-9][A-Za-z0-9._-]*)(?:==(\S+)|\s+@\s+\S+)")


def _uv_changes(text: str) -> list[Change]:
    old: dict[str, Optional[str]] = {}
    new: dict[str, Optional[str]] = {}
    for line in text.splitlines():
        m = _UV_LINE.match(line)
        if not m:
            continue
        sign, name, version = m.group(1), canonicalize_name(m.group(2)), m.group(3)
        if sign in "-~":
            old[name] = version
        if sign in "+~":
            new[name] = version
    return [Change(n, old.get(n), new.get(n)) for n in dict.fromkeys([*old, *new])]


def error_summary(text: str, lines: int = 6) -> str:
    """The resolver's own words, shortened: the error lines first, else the last lines."""
    rows = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("WARNING: Location")]
    errors = [ln for ln in rows if re.match(r"^(ERROR|error|Because|cause|hint|╰|×)", ln)]
    picked = (errors or rows)[-lines:]
    return " | ".join(picked)[:800] or "the resolver failed without a message"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONIOENCODING="utf-8")
    return env


def display(argv: Sequence[str]) -> str:
    return shlex.join(argv)


def run(argv: list[str], *, pass_fds: Sequence[int] = (), watch: Sequence[str] = (),
        on_start: Callable[[int], None] = lambda pid: None,
        progress: Callable[[str], None] = lambda line: None) -> tuple[int, str]:
    """Run the installer, relaying its output; returns (exit code, its last lines).

    `pass_fds` lets the installer hold the transaction lock too: if the doctor dies, the next `fix` still
    sees the lock while an orphaned installer writes. Ctrl-C reaches the installer (same process group);
    the doctor waits for it to stop before anyone restores anything.
    """
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            env=_env(), pass_fds=tuple(pass_fds))
    on_start(proc.pid)
    tail: deque[str] = deque(maxlen=40)

    def relay() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if line and not line.startswith("WARNING: Location"):
                tail.append(line)
                progress(line)

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    try:
        if os.environ.get(KILL_ENV):
            _kill_when_files_change(proc, watch, os.environ[KILL_ENV])
        code = proc.wait()
    except KeyboardInterrupt:
        _stop(proc)
        raise
    reader.join(5)
    return code, "\n".join(tail)


def _stop(proc: subprocess.Popen) -> None:
    """After Ctrl-C: let the installer finish its own clean-up, then make sure it is gone."""
    for sig, wait in ((None, 30.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        if sig is not None:
            proc.send_signal(sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except KeyboardInterrupt:
            continue


def _listing(dirs: Sequence[str]) -> list[tuple[str, int]]:
    out = []
    for d in dirs:
        with contextlib.suppress(OSError), os.scandir(d) as it:
            for e in it:
                with contextlib.suppress(OSError):  # renamed while we look: it counts as gone
                    out.append((e.path, e.stat(follow_symlinks=False).st_mtime_ns))
    return sorted(out)


def _kill_when_files_change(proc: subprocess.Popen, watch: Sequence[str], mode: str) -> None:
    """Test hook: kill or interrupt once the installer has changed site-packages (`mode:N`: at the N-th change
    seen, e.g. `all:2` once pip has moved the old files away and begun writing the new ones)."""
    mode, _, nth = mode.partition(":")
    left = int(nth or 1)
    before = _listing(watch)
    while proc.poll() is None:
        now = _listing(watch)
        if now != before:
            before, left = now, left - 1
        if left <= 0:
            if mode == "interrupt":  # Ctrl-C: SIGINT to the foreground process group, installer included
                os.killpg(os.getpgrp(), signal.SIGINT)
            if mode in ("installer", "all"):
                proc.kill()
            if mode in ("1", "doctor", "all"):
                os.kill(os.getpid(), signal.SIGKILL)
            return
        time.sleep(0.002)
