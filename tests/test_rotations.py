"""The pytorch3d-transforms shim's rotation math, numerically, against SciPy's Rotation.

The checks (`rotation_checks.py`) run in a cached venv with torch 2.13 CPU and SciPy, on the very source file
the shim's wheel installs; the doctor's own test venv stays free of torch. Tolerances: 1e-12 (float64) and
2e-6 (float32) on matrices and quaternions, ten times that on angles.
"""

from __future__ import annotations

import json
import os
import subprocess
from importlib import resources
from pathlib import Path

import pytest
from shimvenv import torch_scipy_python

pytestmark = pytest.mark.venv

ROTATIONS = resources.files("m3d_doctor.fixes.shims").joinpath("sources", "rotations.py")
CHECKS = Path(__file__).with_name("rotation_checks.py")


@pytest.fixture(scope="module")
def report() -> dict:
    python = torch_scipy_python()
    proc = subprocess.run([str(python), str(CHECKS), str(ROTATIONS)], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"), cwd=CHECKS.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def over_tolerance(report: dict, *words: str) -> dict:
    picked = {k: v for k, v in report["errors"].items() if all(w in k for w in words)}
    assert picked, f"no checks named {words}"
    return {k: v for k, v in picked.items() if v[0] > v[1]}


def test_matrix_to_quaternion_matches_scipy_batched_at_180_degrees_and_near_identity(report):
    assert over_tolerance(report, "matrix_to_quaternion") == {}
    assert {"matrix_to_quaternion 180deg (up to sign)[float64]", "matrix_to_quaternion near identity[float32]",
            "matrix_to_quaternion batched (4,5)[float64]"} <= set(report["errors"])
    assert over_tolerance(report, "real part >= 0 at 180deg") == {}


def test_quaternion_and_axis_angle_round_trips_hold_in_float32_and_float64(report):
    for words in (("round trip",), ("quaternion_to_matrix",), ("axis_angle",), ("axis angle",)):
        assert over_tolerance(report, *words) == {}


def test_quaternion_algebra_matches_scipy_composition_inverse_and_apply(report):
    for name in ("quaternion_multiply", "quaternion_raw_multiply", "quaternion_invert", "quaternion_apply",
                 "standardize_quaternion"):
        assert over_tolerance(report, name) == {}


def test_euler_angles_match_scipy_in_all_twelve_conventions_and_survive_gimbal_lock(report):
    assert over_tolerance(report, "euler") == {}
    assert over_tolerance(report, "gimbal lock") == {}
    assert len([k for k in report["errors"] if k.startswith("matrix_to_euler_angles")]) == 24  # 12 x 2 dtypes


def test_results_keep_the_input_dtype(report):
    assert report["dtypes"] == {"matrix_to_quaternion[torch.float64]": "torch.float64",
                                "matrix_to_quaternion[torch.float32]": "torch.float32"}


def test_gradients_are_finite_at_180_degrees_identity_and_gimbal_lock(report):
    assert report["finite"] and all(report["finite"].values()), report["finite"]
    assert "matrix_to_quaternion at 180deg (x, y, z, random axes)" in report["finite"]


def test_gradcheck_passes_in_float64_at_generic_points(report):
    assert report["gradcheck"] and all(report["gradcheck"].values()), report["gradcheck"]
