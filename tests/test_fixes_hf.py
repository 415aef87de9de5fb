"""hf.download and checkpoints.link through `m3d-doctor fix`, against the loopback fake Hub."""

from __future__ import annotations

import numpy as np
import pytest
from fakehub import VALID_TOKEN, FakeHub, FakeRepo
from safetensors.numpy import save

PROFILE = """
schema = 1
name = "dl"
[python]
requires = ">=3.8"
[pod]
matrix3d_root = "{root}"
[[models]]
repo = "fake-org/real-model"
stage = "pano"
layout = "files"
files = [{{ path = "config.json", size = {cfg} }}, {{ path = "model.safetensors", size = {w} }}]
"""


WEIGHTS = save({"w": np.arange(16000, dtype=np.float32)})  # a real safetensors file, served as LFS


@pytest.fixture
def hub():
    with FakeHub() as h:
        h.add_repo(FakeRepo("fake-org/real-model", files={"config.json": b'{"hidden_size": 8}',
                                                          "model.safetensors": WEIGHTS},
                            lfs_files={"model.safetensors"}))
        yield h


@pytest.fixture
def setup(tmp_path, hub):
    root = tmp_path / "m3d"
    root.mkdir()
    prof = tmp_path / "dl.toml"
    prof.write_text(PROFILE.format(root=root, cfg=18, w=len(WEIGHTS)))
    env = {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": VALID_TOKEN}
    return prof, env, tmp_path / "hf" / "hub"


def test_dry_run_downloads_nothing(doctor, setup):
    prof, env, cache = setup
    run = doctor("fix", "hf.download", "--dry-run", "--profile", str(prof), "--json", env=env)
    assert run.rc == 0
    (plan,) = run.doc["plans"]
    assert plan["risk"] == "safe" and plan["blocked"] is None
    assert plan["actions"][0]["bytes"] == 18 + len(WEIGHTS)
    assert not cache.exists()


def test_download_then_the_checkpoints_check_is_clean(doctor, setup):
    prof, env, cache = setup
    run = doctor("fix", "hf.download", "--yes", "--profile", str(prof), "--json", env=env)
    assert run.rc == 0, run.stdout + run.stderr
    assert run.doc["applied"] == [{"fix_id": "hf.download", "status": "applied"}]
    assert (cache / "models--fake-org--real-model").is_dir()
    check = doctor("check", "checkpoints", "--profile", str(prof), "--json", env=env)
    assert check.rc == 0 and check.finding_ids() == {"checkpoints.ok"}
    again = doctor("fix", "hf.download", "--yes", "--profile", str(prof), "--json", env=env)
    assert again.doc["plans"][0]["actions"] == []  # nothing left to fetch


def test_download_is_blocked_when_it_would_not_fit(doctor, setup, tmp_path):
    prof, env, cache = setup
    big = tmp_path / "big.toml"
    big.write_text(prof.read_text().replace(f"size = {len(WEIGHTS)}", "size = 999999999999999"))
    run = doctor("fix", "hf.download", "--yes", "--profile", str(big), "--json", env=env)
    assert run.rc == 1
    assert "free on the mount" in run.doc["plans"][0]["blocked"]
    assert not cache.exists()


def test_failed_download_exits_4_and_says_why(doctor, setup, hub):
    prof, env, cache = setup
    hub.repos.pop(("model", "fake-org/real-model"))  # the repo vanished between plan and apply
    run = doctor("fix", "hf.download", "--yes", "--profile", str(prof), "--json", env=env)
    assert run.rc == 4
    assert run.doc["applied"][0]["status"] == "rolled-back"
    assert "failed" in run.doc["applied"][0]["error"]


def test_lora_link_fix_links_the_file_where_the_generator_reads_it(doctor, tmp_path):
    root = tmp_path / "m3d"
    lora = root / "checkpoints/flux_lora/checkpoints/text2panoimage_lora.safetensors"
    lora.parent.mkdir(parents=True)
    lora.write_bytes(WEIGHTS)
    prof = tmp_path / "l.toml"
    prof.write_text(f"""
schema = 1
name = "l"
[python]
requires = ">=3.8"
[pod]
matrix3d_root = "{root}"
[[models]]
repo = "acme/lora"
layout = "lora"
local_dir = "checkpoints/flux_lora"
files = [{{ path = "checkpoints/text2panoimage_lora.safetensors", loaded_from = "checkpoints/flux_lora/pano_image_lora.safetensors" }}]
""")
    env = {"HF_HOME": str(tmp_path / "hf")}
    plan = doctor("fix", "checkpoints.lora-path-mismatch", "--dry-run", "--profile", str(prof), "--json", env=env)
    assert [p["fix_id"] for p in plan.doc["plans"]] == ["checkpoints.link"]
    run = doctor("fix", "checkpoints.link", "--yes", "--profile", str(prof), "--json", env=env)
    assert run.rc == 0
    link = root / "checkpoints/flux_lora/pano_image_lora.safetensors"
    assert link.is_symlink() and link.resolve() == lora.resolve()
    assert doctor("check", "checkpoints", "--profile", str(prof), "--json", env=env).rc == 0


def test_two_fixes_at_once_the_second_is_refused(doctor, setup, hub):
    """A real concurrent run: the first fix holds the lock while its download hangs on the fake hub."""
    import subprocess
    import sys
    import time

    prof, env, cache = setup
    hub.hang_paths = [r"/resolve/"]
    import os
    e = {k: v for k, v in os.environ.items() if not k.startswith(("M3D_", "HF_"))}
    e.update(env, M3D_DOCTOR_CACHE_DIR=str(cache.parent / "doctor-cache"), HF_HUB_ETAG_TIMEOUT="30")
    first = subprocess.Popen([sys.executable, "-m", "m3d_doctor", "fix", "hf.download", "--yes", "--profile",
                              str(prof)], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not [r for r in hub.requests if "/resolve/" in r["path"]]:
            time.sleep(0.1)
        second = doctor("fix", "hf.download", "--yes", "--profile", str(prof), env=env,
                        cache_dir=cache.parent / "doctor-cache")
        assert second.rc == 3 and "another m3d-doctor fix is running" in second.stderr
    finally:
        first.kill()
        first.wait()


def test_the_fix_lock_is_per_environment_however_python_is_spelled(doctor, tiny_venv, tmp_path):
    """Holding the lock for `<venv>/bin/python` refuses a fix on `<venv>/bin/python3` (same environment)."""
    import subprocess
    from types import SimpleNamespace

    from m3d_doctor.cache import Cache
    from m3d_doctor.fixflow import fix_lock

    prefix = subprocess.run([str(tiny_venv), "-c", "import sys; print(sys.prefix)"], capture_output=True,
                            text=True, check=True).stdout.strip()
    cache = tmp_path / "doctor-cache"
    ctx = SimpleNamespace(target=SimpleNamespace(live=True, interp={"prefix": prefix}), cache=Cache(cache))
    env = {"M3D_DOCTOR_PROFILE_FILE": str(tmp_path / "profile.sh")}
    with fix_lock(ctx):
        run = doctor("fix", "env.persist", "--yes", "--python", str(tiny_venv.parent / "python3"), env=env,
                     cache_dir=cache)
    assert run.rc == 3 and "another m3d-doctor fix is running" in run.stderr
    assert not (tmp_path / "profile.sh").exists()

