"""The pod image: Dockerfile and entrypoint linted, the baked lock kept current, every entrypoint policy run for
real (bash, the dev venv's m3d-doctor, a small venv, a tiny profile, a crafted build manifest)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} not installed (pip install -e '.[test]')")
    return str(path)


def test_dockerfile_is_hadolint_clean():
    p = subprocess.run([tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_entrypoint_is_shellcheck_clean():
    p = subprocess.run([tool("shellcheck"), str(ENTRYPOINT)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_image_lock_is_exactly_the_doctors_export(doctor):
    r = doctor("lock")
    assert r.rc == 0
    assert (ROOT / "docker" / "matrix3d.lock.txt").read_text() == r.stdout, \
        "docker/matrix3d.lock.txt is stale: run `m3d-doctor lock --output docker/matrix3d.lock.txt` and commit it"


def test_dockerfile_bakes_the_lock_keeps_secrets_out_and_runs_tini():
    text = DOCKERFILE.read_text()
    assert "COPY docker/matrix3d.lock.txt" in text and "m3d-doctor lock --check" in text
    assert not re.search(r"^\s*(ARG|ENV)\b.*(TOKEN|SECRET|PASSWORD)", text, re.M | re.I)
    assert 'ENTRYPOINT ["tini", "--", "/usr/local/bin/m3d-entrypoint"]' in text
    assert "FROM ${BASE_IMAGE} AS runtime" in text and "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04" in text
    for env in ("HF_HOME=/workspace/.cache/huggingface", "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"):
        assert env in text
    assert "VOLUME /workspace" in text and "/etc/m3d-doctor/build.json" in text
    assert "set -x" not in ENTRYPOINT.read_text().replace("Never `set -x`", "")


@pytest.fixture
def pod(tmp_path, tiny_venv, tiny_profile):
    """An environment for the entrypoint: tiny profile with an env rule and a lock, a matching manifest."""
    (tmp_path / "tiny.lock.txt").write_text("packaging==24.1\nsix==1.16.0\n")
    tiny_profile.write_text(tiny_profile.read_text() + '\n[env.PYTORCH_CUDA_ALLOC_CONF]\nid = "alloc-conf"\n'
                            'want = "expandable_segments:True"\n\n[lock]\nfile = "tiny.lock.txt"\n')
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path / "home"), "LANG": "C.UTF-8",
           "M3D_DOCTOR_CACHE_DIR": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "vol" / "hf"),
           "M3D_DOCTOR_PROFILE_FILE": str(tmp_path / "vol" / ".m3d-doctor" / "env.sh"),
           "M3D_OUTPUTS": str(tmp_path / "vol" / "outputs"),
           "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "M3D_DOCTOR_IN_CONTAINER": "1",
           "M3D_GATE_ARGS": f"--python {tiny_venv} --profile {tiny_profile} --offline"}
    lock = subprocess.run([str(BIN / "m3d-doctor"), "lock", "--profile", str(tiny_profile)], env=env,
                          capture_output=True, text=True, check=True).stdout
    code = "import json, importlib.metadata as m, re; print(json.dumps({re.sub(r'[-_.]+', '-', " \
           "d.metadata['Name']).lower(): d.version for d in m.distributions()}))"
    installed = json.loads(subprocess.run([str(tiny_venv), "-c", code], capture_output=True, text=True,
                                          check=True, cwd="/").stdout)
    sha = re.search(r"^# lock-sha256: (\w+)$", lock, re.M).group(1)
    for name, lock_sha in (("build.json", sha), ("stale.json", "f" * 64)):
        (tmp_path / name).write_text(json.dumps({"schema": "m3d-doctor/build/v1", "lock_sha256": lock_sha,
                                                 "git_commit": "0" * 40, "build_date": "2026-01-01T00:00:00Z",
                                                 "installed": installed}))
    env["M3D_DOCTOR_BUILD_MANIFEST"] = str(tmp_path / "build.json")
    return env


def entry(env: dict[str, str], *cmd: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ENTRYPOINT), *(cmd or ("sh", "-c", "echo ran"))], env={**env, **extra},
                          capture_output=True, text=True, timeout=120)


def stale(env: dict[str, str]) -> str:
    return str(Path(env["M3D_DOCTOR_BUILD_MANIFEST"]).with_name("stale.json"))


def test_a_passing_gate_execs_the_command(pod):
    p = entry(pod)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.startswith("m3d-doctor gate: PASS") and p.stdout.endswith("ran\n")
    assert Path(pod["M3D_OUTPUTS"]).is_dir()


def test_fail_policy_exits_with_the_gate_code_and_never_runs_the_command(pod):
    p = entry(pod, M3D_DOCTOR_BUILD_MANIFEST=stale(pod))
    assert p.returncode == 1
    assert "ran" not in p.stdout and "image.lock-outdated" in p.stdout and "docker build" in p.stdout
    assert "gate blocked the start (exit 1)" in p.stderr


def test_a_gate_usage_error_is_passed_through_as_exit_2(pod):
    p = entry(pod, M3D_GATE_ARGS=pod["M3D_GATE_ARGS"] + " --min-free-vram lots")
    assert p.returncode == 2 and "ran" not in p.stdout


def test_warn_policy_reports_and_starts_anyway(pod):
    p = entry(pod, M3D_DOCTOR_BUILD_MANIFEST=stale(pod), M3D_GATE_POLICY="warn")
    assert p.returncode == 0 and "FAIL (image.lock-outdated)" in p.stdout and p.stdout.endswith("ran\n")
    assert "starting anyway" in p.stderr


def test_fix_policy_applies_a_safe_fix_into_the_volume_and_the_second_gate_passes(pod):
    env = {k: v for k, v in pod.items() if k != "PYTORCH_CUDA_ALLOC_CONF"}
    env["M3D_GATE_ARGS"] += " --strict"  # the alloc-conf warning blocks
    p = entry(env, "sh", "-c", 'echo "ran $PYTORCH_CUDA_ALLOC_CONF"', M3D_GATE_POLICY="fix")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "FAIL (env.alloc-conf)" in p.stdout and "gating again" in p.stderr
    assert p.stdout.endswith("ran expandable_segments:True\n")
    assert "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in Path(env["M3D_DOCTOR_PROFILE_FILE"]).read_text()
    again = entry(env, M3D_GATE_POLICY="fail")  # the next start reads the persisted value from the volume
    assert again.returncode == 0 and again.stdout.endswith("ran\n")


def test_fix_policy_exits_with_the_second_gates_code_when_no_safe_fix_helps(pod):
    p = entry(pod, M3D_DOCTOR_BUILD_MANIFEST=stale(pod), M3D_GATE_POLICY="fix")
    assert p.returncode == 1 and "ran" not in p.stdout
    assert p.stdout.count("FAIL (image.lock-outdated)") == 2 and "still blocks" in p.stderr


def test_skip_gate_is_logged_and_runs_the_command(pod):
    p = entry(pod, M3D_DOCTOR_BUILD_MANIFEST=stale(pod), M3D_SKIP_GATE="1")
    assert p.returncode == 0 and p.stdout == "ran\n" and "M3D_SKIP_GATE=1: gate skipped" in p.stderr


def test_an_unknown_policy_is_a_usage_error(pod):
    p = entry(pod, M3D_GATE_POLICY="maybe")
    assert p.returncode == 2 and "expected fail, fix or warn" in p.stderr and "ran" not in p.stdout


def test_the_entrypoint_never_prints_the_hf_token(pod):
    token = "hf_" + "x" * 34
    p = entry(pod, M3D_DOCTOR_BUILD_MANIFEST=stale(pod), M3D_GATE_POLICY="fix", HF_TOKEN=token)
    assert token not in p.stdout + p.stderr


def test_sigterm_reaches_the_command_because_the_entrypoint_execs_it(pod):
    proc = subprocess.Popen(["bash", str(ENTRYPOINT), "sleep", "30"], env=pod, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until exec has replaced bash with sleep (same pid)
        try:
            if Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"sleep"):
                break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=5)
    assert proc.returncode == -signal.SIGTERM and time.monotonic() - t0 < 2


def test_gate_at_restart_with_nothing_changed_takes_well_under_a_second(doctor, tiny_venv, tiny_profile, tmp_path):
    args = ("gate", "--offline", "--python", str(tiny_venv), "--profile", str(tiny_profile))
    env = {"HF_HOME": str(tmp_path / "hf"), "M3D_DOCTOR_IN_CONTAINER": "0"}
    first = doctor(*args, env=env)
    assert first.rc == 0, first.stdout
    t0 = time.perf_counter()
    second = doctor(*args, env=env)  # a whole subprocess: interpreter start, imports, checks
    wall = time.perf_counter() - t0
    assert second.rc == 0 and "0 unchanged" not in second.stdout
    assert wall < 1.0, f"second gate took {wall:.2f}s"
