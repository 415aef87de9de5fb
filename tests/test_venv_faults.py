"""The field report's faults, reproduced in real virtual environments built from registry packages.

Each is found with its exact finding id, cause and exit code, by the doctor running from its own
interpreter and probing the broken one in subprocesses.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FIXTURES

pytestmark = pytest.mark.venv

FAULTS_PROFILE = str(FIXTURES / "profiles" / "faults.toml")


def by_module(run, fid):
    return {f["evidence"]["module"]: f for f in run.findings(fid)}


def test_diffusers_importing_removed_cached_download(doctor, fault_venv):
    py = fault_venv("cached-download")
    run = doctor("check", "imports", "--python", str(py), "--json")
    assert run.rc == 1
    f = by_module(run, "imports.name-missing")["diffusers"]
    assert f["title"] == "diffusers: cannot import name 'cached_download' from 'huggingface_hub'"
    assert "huggingface_hub 0.26.0" in f["cause"]
    assert "removed cached_download in 0.26.0" in f["cause"] and "fixed in 0.29.0" in f["cause"]
    assert "diffusers==0.34.0" in f["remedy"]["command"] and "huggingface-hub" in f["remedy"]["command"]
    assert f["remedy"]["fix_id"] == "packages.align"
    # The same venv through the packages check: pins are off too, with the pinned versions to align to.
    pk = doctor("check", "packages", "--python", str(py), "--json")
    wrong = {f["evidence"]["package"]: f for f in pk.findings("packages.wrong-version")}
    assert wrong["diffusers"]["evidence"]["installed"] == "0.27.2"


def test_numpy1_compiled_extensions_under_numpy2(doctor, fault_venv):
    py = fault_venv("numpy-abi")
    run = doctor("check", "imports", "--python", str(py), "--profile", FAULTS_PROFILE, "--json")
    assert run.rc == 1
    found = by_module(run, "imports.numpy-abi")
    assert set(found) >= {"bottleneck", "cftime"}
    bn = found["bottleneck"]
    assert bn["title"] == "bottleneck was compiled for NumPy 1.x and NumPy 2.4.6 is installed"
    assert "compiled using NumPy 1.x cannot be run in" in bn["evidence"]["stderr"]  # printed, not raised
    assert bn["evidence"]["exception"] == "ImportError"
    assert found["cftime"]["evidence"]["exception"] == "ValueError"  # "numpy.dtype size changed"
    assert "numpy<2" in bn["remedy"]["command"] and bn["remedy"]["fix_id"] == "numpy.align"


def test_torch_extensions_built_for_another_torch(doctor, fault_venv):
    py = fault_venv("torch-mismatch")
    run = doctor("check", "torch", "imports", "--python", str(py), "--json")
    assert run.rc == 1
    ids = run.finding_ids()
    assert {"torch.torchaudio-mismatch", "torch.torchvision-mismatch"} <= ids
    (ta,) = run.findings("torch.torchaudio-mismatch")
    assert ta["evidence"] == {"package": "torchaudio", "version": "2.2.0", "built_for_torch": "==2.2.0",
                              "torch": "2.13.0+cpu"}
    assert "torch==2.7.1 torchvision==0.22.1 torchaudio==2.7.1" in ta["remedy"]["command"]
    libs = by_module(run, "imports.shared-library")
    assert "torchvision" in libs and "torchaudio" in libs
    assert "built for torch ==2.2.0; torch 2.13.0+cpu is installed" in libs["torchaudio"]["cause"]


def test_undefined_symbol_is_found_in_the_exception_cause(doctor, fault_venv):
    py = fault_venv("torch-mismatch")
    run = doctor("check", "imports", "--python", str(py), "--profile", FAULTS_PROFILE, "--json")
    tt = by_module(run, "imports.shared-library")["torchtext"]
    assert "undefined symbol" in tt["evidence"]["stderr"]
    assert tt["evidence"]["message"].startswith("Could not load this library")


def test_cpu_torch_on_a_recorded_gpu_machine(doctor, fault_venv, tmp_path):
    """NVML replayed from the H200 recording (no driver here): a CPU wheel on a GPU pod is a failure."""
    replay = tmp_path / "nvml.json"
    replay.write_text((FIXTURES / "gpu" / "h200-torch2.11-cu130.json").read_text())
    py = fault_venv("torch-mismatch")
    run = doctor("check", "torch", "--python", str(py), "--json", env={"M3D_DOCTOR_NVML_REPLAY": str(replay)})
    (f,) = run.findings("torch.cpu-build-on-gpu")
    assert f["evidence"]["driver"] == "580.159.04" and f["evidence"]["torch_cuda"] is None


def test_device_check_runs_real_ops_in_the_target_torch(doctor, fault_venv):
    py = fault_venv("torch-mismatch")
    plain = doctor("check", "device", "--python", str(py), "--json")
    assert plain.finding_ids() == {"device.ok"}
    assert plain.findings("device.ok")[0]["evidence"]["dtype"] == "float32"  # CPU default
    half = doctor("check", "device", "--python", str(py), "--dtype", "float16", "--json")
    (f,) = [f for c in half.doc["checks"] for f in c["findings"]]
    assert f["id"] in ("device.cpu-float16-unsupported", "device.cpu-low-precision")
    assert "float32" in f["title"]


def test_a_pip_install_invalidates_the_cached_probe(doctor, tmp_path, fault_venv):
    """Copy-free check: a fresh tiny venv, probed, changed with pip, probed again."""
    import subprocess
    import sys
    venv = tmp_path / "v"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    prof = tmp_path / "p.toml"
    prof.write_text('schema = 1\nname = "p"\n[python]\nrequires = ">=3.8"\n[[imports]]\nmodule = "six"\n')
    cache = tmp_path / "cache"
    first = doctor("check", "imports", "--python", str(py), "--profile", str(prof), "--json", cache_dir=cache)
    assert first.finding_ids() == {"imports.module-missing"}
    subprocess.run([str(py), "-m", "pip", "install", "-q", "six==1.16.0"], check=True)
    second = doctor("check", "imports", "--python", str(py), "--profile", str(prof), "--json", cache_dir=cache)
    assert not any(c["cached"] for c in second.doc["checks"])
    assert second.finding_ids() == {"imports.ok"}
    json.dumps(second.doc)


def test_sitecustomize_stubs_are_named_not_trusted(doctor, tmp_path, tiny_profile):
    """The field report's sitecustomize.py, reproduced in a real venv: imports pass, the stubs are flagged."""
    import subprocess
    import sys

    venv = tmp_path / "stubbed"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "sitecustomize.py").write_text(
        "import types, sys\n"
        "try:\n    import huggingface_hub\n    huggingface_hub.cached_download = lambda *a, **k: None\n"
        "except ImportError:\n    pass\n"
        "def matrix_to_quaternion(m):\n    return None\n"
        "sys.modules['pytorch3d.transforms'] = types.SimpleNamespace(matrix_to_quaternion=matrix_to_quaternion)\n")
    run = doctor("check", "imports", "--python", str(py), "--profile", str(tiny_profile), "--json")
    (f,) = run.findings("imports.sitecustomize-stubs")
    assert f["severity"] == "warn"
    assert set(f["evidence"]["stubs"]) == {"huggingface_hub.cached_download",
                                           "pytorch3d.transforms.matrix_to_quaternion"}
    assert "shims.pytorch3d-transforms" in f["cause"] and f["remedy"]["command"].startswith("mv ")
