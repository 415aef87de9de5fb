"""packages.align / numpy.align / env.persist through the real `m3d-doctor fix`, on copies of real venvs.

Every install here is a real pip (or uv) install from the registry into a copy of a cached fault venv; every
failure is a real one (an unsatisfiable pin, a SIGKILL in the middle of the install, a verification that
fails), and the proof of a rollback is the installed set — and the very file tree — being what it was.
Fixes are always named: `fix --yes` alone would also apply whatever else the machine needs (disk.clean-caches).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from m3d_doctor import txn
from m3d_doctor.installer import find_uv
from m3d_doctor.target import read_distributions

pytestmark = pytest.mark.venv

ALIGN_PROFILE = """
schema = 1
name = "align"
[python]
requires = ">=3.10"
[packages]
diffusers = { spec = "==0.29.2", import = "diffusers", why = "0.29 no longer imports cached_download" }
huggingface-hub = { spec = ">=0.23.2,<1.0", import = "huggingface_hub" }
[[imports]]
module = "huggingface_hub"
[[imports]]
module = "diffusers"
names = ["DiffusionPipeline"]
"""

NUMPY_PROFILE = """
schema = 1
name = "np2"
[python]
requires = ">=3.10"
[packages]
numpy = { spec = ">=1.26", import = "numpy" }
[[imports]]
module = "numpy"
[[imports]]
module = "bottleneck"
distribution = "Bottleneck"
"""

SIX_PROFILE = """
schema = 1
name = "six"
[python]
requires = ">=3.8"
[packages]
six = { spec = "==1.17.0", import = "six" }
[[imports]]
module = "six"
"""

EMPTY_PROFILE = 'schema = 1\nname = "empty"\n[python]\nrequires = ">=3.8"\n'

INSTALLERS = ["pip", pytest.param("uv", marks=pytest.mark.skipif(find_uv() is None, reason="uv is not installed"))]


def profile(tmp_path: Path, text: str, name: str) -> str:
    p = tmp_path / f"{name}.toml"
    p.write_text(text)
    return str(p)


def copy_venv(python: Path, dest: Path) -> Path:
    """A private copy of a cached venv (`cp -a` keeps it working when driven through `python -m`)."""
    subprocess.run(["cp", "-a", str(python.parent.parent), str(dest)], check=True)
    return dest / "bin" / "python"


def site(python: Path) -> Path:
    (sp,) = python.parent.parent.glob("lib/python3*/site-packages")
    return sp


def installed(python: Path) -> dict[str, str]:
    """name → version of every distribution, read from metadata."""
    return {n: d.version for n, d in read_distributions([str(site(python))]).items()}


def tree(python: Path) -> list[str]:
    """Every file and directory under site-packages, with file sizes: stricter than the installed set."""
    root = site(python)
    out = []
    for base, dirs, files in os.walk(root):
        out += [f"{Path(base, d).relative_to(root)}/" for d in dirs]
        out += [f"{Path(base, f).relative_to(root)} {os.lstat(Path(base, f)).st_size}" for f in files]
    return sorted(out)


def journal_dir(cache: Path) -> Path:
    (d,) = cache.glob("txn-*")  # one target per test
    return d


def journal(tmp_path: Path, python: Path) -> dict:
    return txn.Journal.read(journal_dir(tmp_path / "doctor-cache")) or {}


def fix(doctor, python: Path, prof: str, *args: str, fix_id: str = "packages.align", **kw):
    run = doctor("fix", fix_id, "--python", str(python), "--profile", prof, *args, **kw)
    assert "Traceback" not in run.stderr, run.stderr
    return run


@pytest.fixture
def cached_download(fault_venv, tmp_path):
    return copy_venv(fault_venv("cached-download"), tmp_path / "venv")


@pytest.fixture
def six_venv(tiny_venv, tmp_path):
    return copy_venv(tiny_venv, tmp_path / "venv")


# -- the field report's breaks, fixed ----------------------------------------------------------------------

@pytest.mark.parametrize("inst", INSTALLERS)
def test_cached_download_break_is_fixed_in_one_transaction_and_rechecks_clean(doctor, cached_download, tmp_path,
                                                                                inst):
    py, prof = cached_download, profile(tmp_path, ALIGN_PROFILE, "align")
    check = doctor("check", "imports", "packages", "--python", str(py), "--profile", prof, "--json")
    assert check.rc == 1
    to_fix = {f["id"] for c in check.doc["checks"] for f in c["findings"]
              if (f["remedy"] or {}).get("fix_id") == "packages.align"}
    assert to_fix == {"imports.name-missing", "packages.wrong-version"}

    run = fix(doctor, py, prof, "--yes", "--json", "--installer", inst)
    assert run.rc == 0, run.stderr
    (plan,) = run.doc["plans"]
    assert plan["risk"] == "risky" and plan["blocked"] is None
    change, install = plan["actions"]
    assert (change["package"], change["installed"], change["resolved"]) == ("diffusers", "0.27.2", "0.29.2")
    assert set(change["answers"]) == to_fix  # every finding has its entry in the plan
    assert "-c " in install["command"] and "diffusers==0.29.2" in install["command"]
    assert install["command"].startswith(f"{py} -m pip install" if inst == "pip" else find_uv()[0])
    assert run.doc["applied"] == [{"fix_id": "packages.align", "status": "applied"}]
    assert installed(py)["diffusers"] == "0.29.2" and installed(py)["huggingface-hub"] == "0.26.0"

    again = doctor("check", "imports", "packages", "--python", str(py), "--profile", prof)
    assert again.rc == 0, again.stdout
    j = journal(tmp_path, py)
    assert j["phase"] == "done" and not (journal_dir(tmp_path / "doctor-cache") / "stash").exists()


def test_numpy2_abi_break_is_fixed_by_a_numpy2_build_of_the_wheel(doctor, fault_venv, tmp_path):
    py = copy_venv(fault_venv("numpy-abi"), tmp_path / "venv")
    prof = profile(tmp_path, NUMPY_PROFILE, "np2")
    run = fix(doctor, py, prof, "--yes", "--json", fix_id="numpy.align")
    assert run.rc == 0, run.stderr
    (plan,) = run.doc["plans"]
    (change,) = [a for a in plan["actions"] if "package" in a]
    assert change["package"] == "bottleneck" and change["installed"] == "1.3.7"
    assert tuple(int(x) for x in change["resolved"].split(".")[:2]) >= (1, 4)  # first NumPy-2 build: 1.4.0
    assert installed(py)["numpy"] == "2.4.6"  # NumPy stays
    again = doctor("check", "imports", "packages", "--python", str(py), "--profile", prof)
    assert again.rc == 0, again.stdout


def test_numpy_kept_below_2_by_a_pin_moves_numpy_not_the_wheel(doctor, fault_venv, tmp_path):
    py = copy_venv(fault_venv("numpy-abi"), tmp_path / "venv")
    run = fix(doctor, py, profile(tmp_path, NUMPY_PROFILE, "np2"), "--dry-run", "--json", "--pin", "numpy<2",
              fix_id="numpy.align")
    assert run.rc == 0, run.stderr
    (plan,) = run.doc["plans"]
    changes = {a["package"]: a for a in plan["actions"] if "package" in a}
    assert set(changes) == {"numpy"} and changes["numpy"]["resolved"].startswith("1.")
    assert installed(py)["numpy"] == "2.4.6"  # a dry run changes nothing


def test_torch_family_is_planned_from_the_cuda_index_of_the_gpu_or_the_cpu_index(doctor, fault_venv, tmp_path):
    """Plans only (--offline, --dry-run): tests never install torch."""
    py = fault_venv("torch-mismatch")
    replay = tmp_path / "nvml.json"
    replay.write_text((Path(__file__).parent / "fixtures" / "gpu" / "h200-torch2.11-cu130.json").read_text())
    before = installed(py)
    for env, index in (({}, "https://download.pytorch.org/whl/cpu"),
                       ({"M3D_DOCTOR_NVML_REPLAY": str(replay)}, "https://download.pytorch.org/whl/cu126")):
        run = doctor("fix", "packages.align", "--python", str(py), "--dry-run", "--offline", "--json",
                     "--installer", "pip", env=env)
        (plan,) = run.doc["plans"]
        command = plan["actions"][-1]["command"]
        assert f"--extra-index-url {index}" in command
        assert all(f"{n}=={v}" in command for n, v in (("torch", "2.7.1"), ("torchvision", "0.22.1"),
                                                        ("torchaudio", "2.7.1")))
    assert installed(py) == before


# -- failures at each step leave the installed set exactly as it was ----------------------------------------

@pytest.mark.parametrize("pin", ["six==99.99", "no-such-package-m3d==1.0"])
@pytest.mark.parametrize("ahead", [True, False], ids=["resolved-ahead", "install-fails"])
def test_an_unsatisfiable_pin_changes_nothing(doctor, six_venv, tmp_path, pin, ahead):
    py, before, before_set = six_venv, tree(six_venv), installed(six_venv)
    args = ["--yes", "--json", "--installer", "pip", "--pin", pin] + ([] if ahead else ["--offline"])
    run = fix(doctor, py, profile(tmp_path, SIX_PROFILE, "six"), *args)
    if ahead:  # the dry run refuses the plan before anything is touched
        assert run.rc == 1 and run.doc["applied"] == []
        assert "the resolver cannot satisfy" in run.doc["plans"][0]["blocked"]
    else:  # not resolved ahead: the real install fails, the snapshot is restored
        assert run.rc == 4 and run.doc["applied"][0]["status"] == "rolled-back"
        assert "pip exited with 1" in run.doc["applied"][0]["error"]
        assert journal(tmp_path, py)["phase"] == "rolled-back"
    assert installed(py) == before_set and before_set["six"] == "1.16.0"
    assert tree(py) == before


def test_a_pin_that_installs_but_breaks_the_import_check_is_rolled_back(doctor, cached_download, tmp_path):
    py = cached_download
    (site(py) / "diffusers" / "written-at-runtime.json").write_text("{}")  # not in RECORD: kept all the same
    before = tree(py)
    run = fix(doctor, py, profile(tmp_path, ALIGN_PROFILE, "align"), "--yes", "--json", "--installer", "pip",
              "--pin", "diffusers==0.28.2")  # installs fine, still imports cached_download
    assert run.rc == 4, run.stderr
    (entry,) = run.doc["applied"]
    assert entry["status"] == "rolled-back" and entry["still_failing"] == ["imports.name-missing"]
    assert "diffusers 0.28.2" in run.stderr or "removed diffusers 0.28.2" in run.stdout + run.stderr
    assert installed(py)["diffusers"] == "0.27.2"
    assert tree(py) == before


@pytest.mark.parametrize("inst,when", [
    pytest.param("pip", "all", id="pip-old-files-moved-away"),
    pytest.param("pip", "all:2", id="pip-new-files-half-written"),
    pytest.param("uv", "all", id="uv", marks=pytest.mark.skipif(find_uv() is None, reason="uv is not installed"))])
def test_killed_mid_install_the_next_fix_restores_the_snapshot_first(doctor, cached_download, tmp_path, inst, when):
    """SIGKILL of the installer and of the doctor together (an OOM kill, a pod restart), once the installer
    has begun changing files."""
    py, prof = cached_download, profile(tmp_path, ALIGN_PROFILE, "align")
    before_set, before_tree = installed(py), tree(py)
    killed = fix(doctor, py, prof, "--yes", "--installer", inst, env={"M3D_DOCTOR_TEST_KILL_DURING_INSTALL": when})
    assert killed.rc == -9
    assert journal(tmp_path, py)["phase"] == "installing"
    assert tree(py) != before_tree  # really interrupted in the middle

    nxt = fix(doctor, py, profile(tmp_path, EMPTY_PROFILE, "empty"), "--yes")
    assert nxt.rc == 0, nxt.stderr
    assert "an interrupted fix (packages.align" in nxt.stdout and "restored diffusers 0.27.2" in nxt.stdout
    assert installed(py) == before_set and tree(py) == before_tree
    assert journal(tmp_path, py)["phase"] == "rolled-back"


def test_installer_killed_under_a_live_doctor_is_rolled_back_at_once(doctor, cached_download, tmp_path):
    py, before = cached_download, tree(cached_download)
    run = fix(doctor, py, profile(tmp_path, ALIGN_PROFILE, "align"), "--yes", "--json", "--installer", "pip",
              env={"M3D_DOCTOR_TEST_KILL_DURING_INSTALL": "installer"})
    assert run.rc == 4 and "exited with -9" in run.doc["applied"][0]["error"]
    assert tree(py) == before


def test_an_installer_orphaned_by_a_killed_doctor_is_waited_for_then_undone(doctor, cached_download, tmp_path):
    """The doctor dies, its installer runs on holding the transaction lock: the next fix refuses (exit 3)
    while it runs, then restores what it did."""
    py, before = cached_download, installed(cached_download)
    prof = profile(tmp_path, ALIGN_PROFILE, "align")
    killed = fix(doctor, py, prof, "--yes", "--installer", "pip", env={"M3D_DOCTOR_TEST_KILL_DURING_INSTALL": "doctor"})
    assert killed.rc == -9
    empty = profile(tmp_path, EMPTY_PROFILE, "empty")
    deadline, codes = time.monotonic() + 120, []
    while time.monotonic() < deadline:
        nxt = fix(doctor, py, empty, "--yes")
        codes.append(nxt.rc)
        if nxt.rc != 3:
            break
        assert "an install into this environment is still running" in nxt.stderr
        time.sleep(0.5)
    assert codes[-1] == 0 and installed(py) == before


def test_ctrl_c_mid_install_rolls_back_before_exiting(cached_download, tmp_path):
    """SIGINT to the process group (the installer too), as a terminal sends it; its own session here so the
    signal reaches only the doctor and its installer."""
    py, before = cached_download, tree(cached_download)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("M3D_", "HF_"))}
    env.update(M3D_DOCTOR_CACHE_DIR=str(tmp_path / "doctor-cache"), M3D_DOCTOR_TEST_KILL_DURING_INSTALL="interrupt")
    p = subprocess.run([sys.executable, "-m", "m3d_doctor", "fix", "packages.align", "--yes", "--python", str(py),
                        "--profile", profile(tmp_path, ALIGN_PROFILE, "align"), "--installer", "pip"],
                       capture_output=True, text=True, env=env, timeout=300, start_new_session=True, cwd=tmp_path)
    assert p.returncode == 130 and "m3d-doctor: interrupted" in p.stderr, p.stderr
    assert "restored: every distribution is at its version from before the fix" in p.stdout
    assert tree(py) == before and journal(tmp_path, py)["phase"] == "rolled-back"


def test_files_are_kept_beside_site_packages_when_the_cache_is_another_filesystem(doctor, cached_download, tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the venv")
    cache = shm / f"m3d-doctor-test-{os.getpid()}-{tmp_path.name}"
    py, before = cached_download, tree(cached_download)
    try:
        run = doctor("fix", "packages.align", "--python", str(py), "--profile", profile(tmp_path, ALIGN_PROFILE, "a"),
                     "--yes", "--json", "--installer", "pip", cache_dir=cache,
                     env={"M3D_DOCTOR_TEST_KILL_DURING_INSTALL": "installer"})
        assert run.rc == 4, run.stderr
        j = txn.Journal.read(journal_dir(cache))
        assert Path(j["stash"]).parent == site(py).parent  # hard links, not a copy onto the other disk
        assert not Path(j["stash"]).exists() and tree(py) == before
    finally:
        subprocess.run(["rm", "-rf", str(cache)], check=False)


def test_the_transaction_lock_outlives_the_doctor_in_the_installer(tmp_path):
    """The lock is a real flock: a child given its descriptor keeps it after the parent lets go."""
    j = txn.Journal(tmp_path / "txn")
    j.lock()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], pass_fds=[j.lock_fd])
    try:
        j.release()
        with pytest.raises(txn.TxnBusy):
            txn.Journal(tmp_path / "txn").lock()
    finally:
        child.kill()
        child.wait()
    txn.Journal(tmp_path / "txn").lock()  # free again once the child is gone


# -- env.persist ---------------------------------------------------------------------------------------------

def test_env_persist_writes_its_block_once_and_keeps_the_rest_of_the_file(doctor, tmp_path):
    rc_file = tmp_path / "profile.sh"
    rc_file.write_text("alias ll='ls -l'\n")
    env = {"M3D_DOCTOR_PROFILE_FILE": str(rc_file), "TORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    run = doctor("fix", "env.persist", "--yes", "--json", env=env)
    assert run.rc == 0, run.stderr
    (plan,) = run.doc["plans"]
    assert plan["risk"] == "safe" and len(plan["actions"]) == 1
    text = rc_file.read_text()
    assert text.startswith("alias ll='ls -l'\n")
    assert "\nexport PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True\n" in text
    again = doctor("fix", "env.persist", "--yes", "--json", env=env)
    assert again.doc["plans"][0]["actions"] == [] and rc_file.read_text() == text
    shell = subprocess.run(["sh", "-c", f". {rc_file}; echo $PYTORCH_CUDA_ALLOC_CONF"], capture_output=True, text=True)
    assert shell.stdout.strip() == "expandable_segments:True"


def test_plan_json_is_data(doctor, six_venv, tmp_path):
    run = fix(doctor, six_venv, profile(tmp_path, SIX_PROFILE, "six"), "--dry-run", "--json", "--installer", "pip")
    (plan,) = run.doc["plans"]
    change = plan["actions"][0]
    assert {k: change[k] for k in ("package", "installed", "resolved", "wanted", "answers", "risk")} == {
        "package": "six", "installed": "1.16.0", "resolved": "1.17.0", "wanted": "six==1.17.0",
        "answers": ["packages.wrong-version"], "risk": "risky"}
    json.dumps(run.doc)
    assert installed(six_venv)["six"] == "1.16.0"
