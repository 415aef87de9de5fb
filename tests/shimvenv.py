"""Targets for the shim tests: a fresh venv per test over a cached base, file-set snapshots, code run in a target.

A fresh venv per test keeps installs from leaking between tests. Its own site-packages starts empty but for
one `.pth` line that puts a cached base venv's site-packages on its path (torch 2.13 CPU is 1.1 GB installed:
reinstalling it per test would cost ~25 s and the disk each time). pip, run by the fresh interpreter,
installs into and uninstalls from the fresh site-packages only, and that is the directory whose file set
the tests compare before and after; the base is never written (every process runs with
PYTHONDONTWRITEBYTECODE=1, the doctor's probes too).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from conftest import LOCAL_TORCH, build_venv
from m3d_doctor.fixes.shims.wheel import wheel_contents, write_wheel

TORCH_SCIPY = ("torch-scipy", [[LOCAL_TORCH, "scipy", "numpy"]])
PYVER = f"python{sys.version_info.major}.{sys.version_info.minor}"


def site_packages(python: Path) -> Path:
    return python.parent.parent / "lib" / PYVER / "site-packages"


def layered_venv(root: Path, base_python: Path) -> Path:
    """A new venv at `root` that sees `base_python`'s packages; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    (site_packages(python) / "_m3d_test_base.pth").write_text(f"{site_packages(base_python)}\n")
    return python


def tree(directory: Path) -> set[str]:
    """Every file and directory under `directory`, relative (directories end with '/')."""
    return {str(p.relative_to(directory)) + ("/" if p.is_dir() else "") for p in directory.rglob("*")}


def run_in(python: Path, code: str, env: Optional[dict[str, str]] = None, cwd: Optional[Path] = None,
           timeout: float = 300) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "M3D_"))}
    e.update(env or {}, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=e, timeout=timeout,
                          cwd=cwd)


def pip_in(python: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "pip", *args, "--disable-pip-version-check"],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))


def lookalike_wheel(directory: Path, dist: str, version: str, files: dict[str, str]) -> Path:
    """A real distribution `dist` with these files, for standing in where the real one cannot be had."""
    meta = f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\nSummary: test stand-in\n"
    name = f"{dist.replace('-', '_')}-{version}-py3-none-any.whl"
    return write_wheel(directory / name, wheel_contents(dist, version, files, meta))


def torch_scipy_python() -> Path:
    return build_venv(*TORCH_SCIPY)
