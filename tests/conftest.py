"""Shared fixtures: run the real `m3d-doctor` in a subprocess, and build real virtual environments.

Virtual environments are built from registry packages once and cached across tests and runs under
M3D_TEST_VENV_CACHE (default ~/.cache/m3d-doctor-tests); a venv is complete only once its marker exists,
so an interrupted build is rebuilt, never half-used.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
VENV_CACHE = Path(os.environ.get("M3D_TEST_VENV_CACHE", Path.home() / ".cache" / "m3d-doctor-tests"))
LOCAL_TORCH = "torch==2.13.0"  # /etc/xdg/pip points pip at the CPU wheel on disk


@dataclass
class DoctorRun:
    rc: int
    stdout: str
    stderr: str

    @property
    def doc(self) -> dict[str, Any]:
        return json.loads(self.stdout)

    def finding_ids(self) -> set[str]:
        return {f["id"] for c in self.doc["checks"] for f in c["findings"]}

    def findings(self, fid: str) -> list[dict[str, Any]]:
        return [f for c in self.doc["checks"] for f in c["findings"] if f["id"] == fid]


@pytest.fixture
def doctor(tmp_path):
    """Run `python -m m3d_doctor ARGS` with a private probe cache; returns rc, stdout, stderr."""
    cache = tmp_path / "doctor-cache"

    def run(*args: str, env: Optional[dict[str, str]] = None, timeout: float = 300,
            cache_dir: Optional[Path] = None) -> DoctorRun:
        e = {k: v for k, v in os.environ.items() if not k.startswith(("M3D_", "HF_", "PYTORCH_CUDA"))}
        e["M3D_DOCTOR_CACHE_DIR"] = str(cache_dir or cache)
        e.update(env or {})
        p = subprocess.run([sys.executable, "-m", "m3d_doctor", *args], capture_output=True, text=True,
                           env=e, timeout=timeout, cwd=tmp_path)
        return DoctorRun(p.returncode, p.stdout, p.stderr)

    return run


def _pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
                   check=True, capture_output=True, text=True, timeout=1800)


def build_venv(name: str, steps: list[list[str]]) -> Path:
    """A cached venv: each step is one `pip install` argument list, run in order (so `--no-deps` steps can
    deliberately break what earlier steps resolved). Returns the venv's python."""
    key = hashlib.sha256(json.dumps([sys.version, steps]).encode()).hexdigest()[:12]
    root = VENV_CACHE / f"{name}-{key}"
    python = root / "bin" / "python"
    marker = root / ".complete"
    VENV_CACHE.mkdir(parents=True, exist_ok=True)
    with open(VENV_CACHE / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return python
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=300)
        for step in steps:
            try:
                _pip(python, *step)
            except subprocess.CalledProcessError as exc:
                raise RuntimeError(f"building venv {name}: pip install {' '.join(step)} failed:\n{exc.stderr}") from exc
        marker.write_text(json.dumps(steps))
    return python


@pytest.fixture(scope="session")
def tiny_venv() -> Path:
    """A small healthy target: two pure-Python packages, no ML stack."""
    return build_venv("tiny", [["six==1.16.0", "packaging==24.1"]])


@pytest.fixture
def tiny_profile(tmp_path) -> Path:
    p = tmp_path / "tiny.toml"
    p.write_text((FIXTURES / "profiles" / "tiny.toml").read_text())
    return p


# The reproduced faults (recipes checked by hand: see tests/test_venv_faults.py for what each proves).
FAULT_RECIPES = {
    # diffusers <= 0.28.2 imports cached_download, removed from huggingface_hub in 0.26.0 [S16][S17]
    "cached-download": [["diffusers==0.27.2", "huggingface_hub==0.26.0"]],
    # NumPy-1-compiled wheels under NumPy 2: Bottleneck (ImportError + banner), cftime (dtype size ValueError)
    "numpy-abi": [["numpy==2.4.6"], ["--no-deps", "Bottleneck==1.3.7", "cftime==1.6.2"]],
    # torch extension wheels built for torch 2.2.0 beside torch 2.13.0+cpu, installed with --no-deps
    "torch-mismatch": [[LOCAL_TORCH, "numpy==2.4.6"],
                       ["--no-deps", "torchaudio==2.2.0", "torchvision==0.17.0", "torchtext==0.17.0"]],
}


@pytest.fixture(scope="session")
def fault_venv():
    def get(name: str) -> Path:
        return build_venv(name, FAULT_RECIPES[name])
    return get
