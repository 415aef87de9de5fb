"""Putting a shim into the target and taking it out again, with the target's own pip (never the doctor's).

`python -m pip install --no-deps --no-index WHEEL` and `python -m pip uninstall -y DIST`: pip records every file
it writes (bytecode included) in the dist-info RECORD, so the uninstall leaves the file set as it was.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from m3d_doctor.errors import DoctorError

from . import Shim
from .wheel import build_wheel

PIP_TIMEOUT_S = 300


def _pip(python: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONDONTWRITEBYTECODE="1")
    try:
        return subprocess.run([python, "-m", "pip", *args], capture_output=True, text=True, env=env,
                              timeout=PIP_TIMEOUT_S, errors="replace")
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DoctorError(f"pip {args[0]} under {python} did not run: {exc}") from exc


def _tail(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else f"exit {proc.returncode}"


def install_command(python: str, shim: Shim) -> str:
    return f"{python} -m pip install --no-deps --no-index <{shim.dist} wheel: m3d-doctor shims --build {shim.name}>"


def uninstall_command(python: str, dist: str) -> str:
    return f"{python} -m pip uninstall -y {dist}"


def install(python: str, shim: Shim) -> None:
    with tempfile.TemporaryDirectory(prefix="m3d-shim-") as tmp:
        wheel = build_wheel(shim, Path(tmp))
        proc = _pip(python, "install", "--no-deps", "--no-index", "--no-cache-dir", "-q", str(wheel))
    if proc.returncode != 0:
        raise DoctorError(f"pip could not install {shim.dist}: {_tail(proc)}")


def uninstall(python: str, dist: str) -> None:
    proc = _pip(python, "uninstall", "-y", "-q", dist)
    if proc.returncode != 0:
        raise DoctorError(f"pip could not uninstall {dist}: {_tail(proc)}")
