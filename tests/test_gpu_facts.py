"""torch/driver/arch reasoning on real NVML and torch answers recorded on a GPU machine.

The recording (tests/fixtures/gpu/h200-torch2.11-cu130.json) was made by benchmarks/gpu_record.sh on an
NVIDIA H200 (driver 580.159.04, torch 2.11.0+cu130) through the device tool on 2026-11-26; it stands in for
NVML here because these CI machines have no NVIDIA driver. Variants of it (older driver, a Blackwell card)
are derived in the tests and say so.
"""

from __future__ import annotations

import copy
import json

import pytest
from conftest import FIXTURES
from m3d_doctor import knowledge, nvml
from m3d_doctor.checks.torch_stack import arch_findings, driver_findings

REC = json.loads((FIXTURES / "gpu" / "h200-torch2.11-cu130.json").read_text())


def ids(findings):
    return [f.id for f in findings]


def test_recorded_h200_is_healthy_for_its_own_torch():
    info, gpu = REC["torch_info"], REC["nvml"]
    assert gpu["gpus"][0]["capability"] == "9.0" and gpu["driver_version"] == "580.159.04"
    assert ids(driver_findings(info["version"], info["cuda"], gpu)) == ["torch.driver-ok"]
    assert arch_findings(info, gpu) == []


def test_cuda13_build_on_a_550_driver_is_too_old():
    gpu = copy.deepcopy(REC["nvml"])
    gpu["driver_version"], gpu["cuda_driver_version"] = "550.54.15", "12.4"  # derived: an older pod driver
    (f,) = driver_findings("2.11.0+cu130", "13.0", gpu)
    assert f.id == "torch.driver-too-old" and f.evidence["needed"] == "580.65.06"


def test_cu126_build_on_a_550_driver_runs_under_minor_version_compatibility():
    gpu = copy.deepcopy(REC["nvml"])
    gpu["driver_version"] = "550.54.15"
    (f,) = driver_findings("2.7.1+cu126", "12.6", gpu)
    assert f.id == "torch.driver-minor-compat" and f.severity.value == "warn"


def test_cpu_build_on_a_gpu_pod_fails():
    (f,) = driver_findings("2.7.1+cpu", None, REC["nvml"])
    assert f.id == "torch.cpu-build-on-gpu"


def test_blackwell_card_with_a_cu126_arch_list_is_unsupported():
    gpu = copy.deepcopy(REC["nvml"])
    gpu["gpus"][0].update(name="NVIDIA GeForce RTX 5090", capability="12.0")  # derived: sm_120
    info = {"arch_flags": "sm_50 sm_60 sm_70 sm_75 sm_80 sm_86 sm_90"}  # torch 2.7 cu126 [S8]
    (f,) = arch_findings(info, gpu)
    assert f.id == "torch.arch-unsupported" and "RTX 5090" in f.cause
    assert arch_findings(REC["torch_info"], gpu) == []  # the recorded cu130 build lists sm_120


@pytest.mark.parametrize("cap, flags, runs", [
    ("8.9", ["sm_80", "sm_86", "sm_90"], True),  # RTX 4090 runs sm_86 SASS [S8][S11]
    ("9.0", ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86"], False),  # H100 on torch 2.0 cu117 [S8]
    ("9.0", ["sm_80", "compute_80"], True),  # PTX JIT
    ("12.0", ["sm_90", "sm_90a"], False),
    ("9.0", ["sm_90a"], True),
])
def test_arch_runs(cap, flags, runs):
    assert knowledge.arch_runs(cap, flags) is runs


def test_driver_versions_compare_numerically_not_as_strings():
    assert knowledge.driver_tuple("580.65.06") > knowledge.driver_tuple("580.9")
    assert knowledge.max_cuda_for_driver("560.35.03") == "12.6"
    assert knowledge.max_cuda_for_driver("580.159.04") == "13.0"


def test_real_nvml_without_a_driver_reports_why(monkeypatch):
    monkeypatch.delenv("M3D_DOCTOR_NVML_REPLAY", raising=False)
    snap = nvml.snapshot()  # the real nvidia-ml-py library; on a GPU machine this is a real answer
    if snap.get("available"):
        assert snap["gpus"] and snap["driver_version"]
    else:
        assert "driver" in snap["reason"].lower() or "nvml" in snap["reason"].lower()
