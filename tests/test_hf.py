"""hf: the real huggingface_hub client (in the target interpreter) against a loopback fake Hub.

tests/fakehub.py answers with the Hub's real status codes and X-Error-Code/X-Error-Message headers
(checked against huggingface_hub 0.25.2 … 2.4.0). HF_ENDPOINT points the client at it.
"""

from __future__ import annotations

import time

import pytest
from conftest import build_venv
from fakehub import INVALID_TOKEN, NOGATE_TOKEN, VALID_TOKEN, FakeHub

PROFILE = """
schema = 1
name = "hf-test"
[python]
requires = ">=3.8"
[[models]]
repo = "fake-org/public-model"
stage = "pano"
files = ["config.json"]
[[models]]
repo = "fake-org/gated-model"
stage = "pano"
gated = true
files = ["config.json"]
"""


@pytest.fixture
def hub():
    with FakeHub() as h:
        yield h


@pytest.fixture
def prof(tmp_path):
    p = tmp_path / "hf.toml"
    p.write_text(PROFILE)
    return p


@pytest.fixture(scope="session")
def hub_venvs():
    """Targets with other huggingface_hub releases than the test interpreter's (2.x)."""
    return {"0.25.2": build_venv("hub-0.25", [["huggingface_hub==0.25.2"]]),
            "0.36.2": build_venv("hub-0.36", [["huggingface_hub==0.36.2"]])}


def env_for(hub, tmp_path, token=None, **extra):
    env = {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    if token:
        env["HF_TOKEN"] = token
    env.update(extra)
    return env


def test_full_access_is_healthy(doctor, hub, prof, tmp_path):
    run = doctor("check", "hf", "--profile", str(prof), "--json", "-v", env=env_for(hub, tmp_path, VALID_TOKEN))
    assert run.rc == 0, run.stdout
    ids = [f["id"] for f in run.doc["checks"][0]["findings"]]
    assert ids == ["hf.token-ok", "hf.repo-ok", "hf.repo-ok"]
    (tok,) = run.findings("hf.token-ok")
    assert tok["evidence"]["token_source"] == "env:HF_TOKEN" and tok["evidence"]["token_last4"] == VALID_TOKEN[-4:]
    assert "alice" in tok["title"]


def test_valid_token_without_gated_access_gives_the_request_url(doctor, hub, prof, tmp_path):
    run = doctor("check", "hf", "--profile", str(prof), "--json", env=env_for(hub, tmp_path, NOGATE_TOKEN))
    assert run.rc == 1
    (f,) = run.findings("hf.gated-no-access")
    assert f["evidence"]["request_access_url"] == f"{hub.endpoint}/fake-org/gated-model"
    assert f["evidence"]["http"] == 403
    assert len(run.findings("hf.repo-ok")) == 1


def test_no_token(doctor, hub, prof, tmp_path):
    run = doctor("check", "hf", "--profile", str(prof), "--json", env=env_for(hub, tmp_path))
    assert run.rc == 1
    assert {"hf.token-missing", "hf.gated-no-access", "hf.repo-ok"} <= run.finding_ids()


def test_token_from_the_token_file_is_found(doctor, hub, prof, tmp_path):
    env = env_for(hub, tmp_path)
    (tmp_path / "hf-home").mkdir()
    (tmp_path / "hf-home" / "token").write_text(VALID_TOKEN + "\n")
    run = doctor("check", "hf", "--profile", str(prof), "--json", env=env)
    (tok,) = run.findings("hf.token-ok")
    assert tok["evidence"]["token_source"].startswith("file:") and tok["evidence"]["token_source"].endswith("token")


def test_invalid_token(doctor, hub, prof, tmp_path):
    run = doctor("check", "hf", "--profile", str(prof), "--json", env=env_for(hub, tmp_path, INVALID_TOKEN))
    assert run.rc == 1
    (f,) = run.findings("hf.token-invalid")
    assert "(401)" in f["title"] and f["evidence"]["token_last4"] == INVALID_TOKEN[-4:]


def test_repo_not_found(doctor, hub, tmp_path):
    prof = tmp_path / "nf.toml"
    prof.write_text(PROFILE.replace("fake-org/public-model", "fake-org/no-such-model"))
    run = doctor("check", "hf", "--profile", str(prof), "--json", env=env_for(hub, tmp_path, VALID_TOKEN))
    (f,) = run.findings("hf.repo-not-found")
    assert f["evidence"]["repo"] == "fake-org/no-such-model" and f["evidence"]["http"] == 404


def test_a_hub_that_never_answers_ends_with_exit_3_within_10s(doctor, hub, prof, tmp_path):
    hub.hang = True
    t0 = time.monotonic()
    run = doctor("check", "hf", "--profile", str(prof), "--json", env=env_for(hub, tmp_path, VALID_TOKEN))
    elapsed = time.monotonic() - t0
    assert run.rc == 3, run.stdout
    assert elapsed < 12, elapsed
    assert len(run.findings("hf.unreachable")) == 3  # whoami + two repos, all bounded


def test_offline_mode_verifies_the_cache_instead(doctor, hub, prof, tmp_path):
    from huggingface_hub import hf_hub_download  # the test process may use the hub; the doctor never imports it

    env = env_for(hub, tmp_path, VALID_TOKEN)
    import os
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        hf_hub_download("fake-org/public-model", "config.json", endpoint=hub.endpoint,
                        cache_dir=str(tmp_path / "hf-home" / "hub"))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    hub.clear_log()
    hub.hang = True  # offline mode must send nothing
    run = doctor("check", "hf", "--profile", str(prof), "--json", env={**env, "HF_HUB_OFFLINE": "1"})
    assert {f["evidence"]["repo"] for f in run.findings("hf.offline-ok")} == {"fake-org/public-model"}
    (miss,) = run.findings("hf.offline-missing")
    assert miss["evidence"]["missing"] == ["config.json"] and miss["evidence"]["repo"] == "fake-org/gated-model"
    assert not [r for r in hub.requests if r["server"] == "hub"]
    # --offline does not skip it: in offline mode the check needs no network
    assert doctor("check", "hf", "--offline", "--profile", str(prof), "--json",
                  env={**env, "HF_HUB_OFFLINE": "1"}).findings("hf.offline-ok")


@pytest.mark.venv
@pytest.mark.parametrize("version", ["0.25.2", "0.36.2"])
def test_older_hub_releases_in_the_target(doctor, hub, prof, tmp_path, hub_venvs, version):
    py = hub_venvs[version]
    run = doctor("check", "hf", "--python", str(py), "--profile", str(prof), "--json",
                 env=env_for(hub, tmp_path, NOGATE_TOKEN))
    assert run.rc == 1
    assert {"hf.token-ok", "hf.gated-no-access", "hf.repo-ok"} == run.finding_ids()
    assert run.findings("hf.token-ok")[0]["evidence"]["hub_version"] == version
    hub.hang = True
    t0 = time.monotonic()
    hung = doctor("check", "hf", "--python", str(py), "--profile", str(prof), "--json",
                  env=env_for(hub, tmp_path, NOGATE_TOKEN))
    assert hung.rc == 3 and time.monotonic() - t0 < 12


def test_offline_flag_skips_the_network_check(doctor, prof, tmp_path):
    run = doctor("check", "hf", "--offline", "--profile", str(prof), "--json")
    assert run.finding_ids() == {"hf.skipped"}


def test_the_doctors_own_install_carries_the_hub_client_for_the_hf_check():
    """Issue #12: on a fresh pod whose target has no huggingface_hub, `check hf` runs through the doctor's own
    interpreter; the quick start's plain `pip install .` must bring the client along."""
    from importlib.metadata import requires

    assert any(r.replace(" ", "").lower().startswith("huggingface_hub>=") or
               r.replace(" ", "").lower().startswith("huggingface-hub>=") for r in requires("m3d-doctor") or [])
