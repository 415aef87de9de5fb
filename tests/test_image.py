"""`m3d-doctor lock` and the `image` check, against a real small venv and crafted build manifests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def lock_sha(text: str) -> str:
    return next(line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("# lock-sha256: "))


@pytest.fixture
def locked_profile(tiny_profile: Path) -> Path:
    """The tiny profile with a [lock] table and its lock file beside it."""
    (tiny_profile.parent / "tiny.lock.txt").write_text("# resolved by hand for the tests\nsix==1.16.0\npackaging==24.1\n")
    tiny_profile.write_text(tiny_profile.read_text() + '\n[lock]\nfile = "tiny.lock.txt"\npython = "3.11"\n')
    return tiny_profile


def installed(python: Path) -> dict[str, str]:
    code = ("import json, importlib.metadata as m, re\n"
            "print(json.dumps({re.sub(r'[-_.]+', '-', d.metadata['Name']).lower(): d.version"
            " for d in m.distributions()}))")
    return json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True,
                                     cwd="/").stdout)


def test_lock_exports_the_matrix3d_lock_as_exact_sorted_pins_with_a_provenance_header(doctor):
    r = doctor("lock")
    assert r.rc == 0, r.stderr
    header = [x for x in r.stdout.splitlines() if x.startswith("#")]
    pins = [x for x in r.stdout.splitlines() if not x.startswith("#")]
    assert "profile matrix3d (digest " in header[0] and "python 3.10" in header[0]
    assert "x86_64-manylinux_2_31" in header[0]
    assert len(pins) == 137 and all("==" in p for p in pins)
    assert pins == sorted(pins, key=lambda p: p.split("==")[0])
    for pin in ("torch==2.7.1", "xformers==0.0.31.post1", "diffusers==0.34.0", "transformers==4.51.0",
                "huggingface-hub==0.34.4", "numpy==1.26.4", "open3d==0.19.0"):
        assert pin in pins
    import hashlib

    assert lock_sha(r.stdout) == hashlib.sha256(("\n".join(pins) + "\n").encode()).hexdigest()


def test_lock_check_passes_on_its_own_output_and_fails_on_any_difference(doctor, tmp_path):
    out = tmp_path / "lock.txt"
    assert doctor("lock", "--output", str(out)).rc == 0
    assert doctor("lock", "--check", str(out)).rc == 0
    out.write_text(out.read_text().replace("numpy==1.26.4", "numpy==2.2.6"))
    r = doctor("lock", "--check", str(out))
    assert r.rc == 1 and "regenerate: m3d-doctor lock --output" in r.stdout
    assert doctor("lock", "--check", str(tmp_path / "missing.txt")).rc == 1


def test_lock_refuses_a_lock_line_that_is_not_an_exact_pin(doctor, locked_profile):
    (locked_profile.parent / "tiny.lock.txt").write_text("six>=1.16\n")
    r = doctor("lock", "--profile", str(locked_profile))
    assert r.rc == 2 and "tiny.lock.txt:1" in r.stderr and "not an exact pin" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_lock_of_a_profile_without_a_lock_table_is_a_usage_error(doctor, tiny_profile):
    r = doctor("lock", "--profile", str(tiny_profile))
    assert r.rc == 2 and "no [lock] table" in r.stderr


def test_build_manifest_records_the_lock_sha_and_the_installed_set(tmp_path):
    out = tmp_path / "build.json"
    subprocess.run([sys.executable, "-m", "m3d_doctor.buildinfo", "--lock", str(ROOT / "docker" / "matrix3d.lock.txt"),
                    "--output", str(out), "--git-commit", "abc123", "--build-date", "2026-01-01T00:00:00Z",
                    "--base-image", "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04"], check=True, capture_output=True)
    doc = json.loads(out.read_text())
    assert doc["lock_sha256"] == lock_sha((ROOT / "docker" / "matrix3d.lock.txt").read_text())
    assert doc["git_commit"] == "abc123" and doc["lock_pins"] == 137
    assert doc["installed"]["m3d-doctor"] and doc["installed"]["packaging"]
    assert "token" not in json.dumps(doc).lower()


def image_check(doctor, tiny_venv, profile, manifest: Path, inside: str = "1"):
    r = doctor("check", "image", "--python", str(tiny_venv), "--profile", str(profile), "--offline", "--json",
               env={"M3D_DOCTOR_BUILD_MANIFEST": str(manifest), "M3D_DOCTOR_IN_CONTAINER": inside})
    assert r.rc in (0, 1), r.stderr
    return r


def write_manifest(path: Path, lock: str, installed: dict[str, str]) -> Path:
    path.write_text(json.dumps({"schema": "m3d-doctor/build/v1", "doctor_version": "0.1.0", "lock_sha256": lock,
                                "git_commit": "0123456789abcdef", "build_date": "2026-01-01T00:00:00Z",
                                "base_image": "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04",
                                "image": "ghcr.io/example/m3d-pod:1", "installed": installed}))
    return path


def test_image_check_skips_outside_a_container(doctor, tiny_venv, locked_profile, tmp_path):
    r = image_check(doctor, tiny_venv, locked_profile, tmp_path / "none.json", inside="0")
    assert r.finding_ids() == {"image.skipped"}


def test_image_without_a_manifest_warns_and_names_the_rebuild_and_digest_pull(doctor, tiny_venv, locked_profile,
                                                                             tmp_path):
    r = image_check(doctor, tiny_venv, locked_profile, tmp_path / "none.json")
    (f,) = r.findings("image.no-manifest")
    assert f["severity"] == "warn" and r.rc == 0
    assert "docker build -t" in f["remedy"]["command"] and "GIT_COMMIT=$(git rev-parse HEAD)" in f["remedy"]["command"]
    assert "@sha256:<digest>" in f["remedy"]["note"] and "imagetools inspect" in f["remedy"]["note"]


def test_image_built_from_another_lock_fails_as_outdated(doctor, tiny_venv, locked_profile, tmp_path):
    m = write_manifest(tmp_path / "build.json", "0" * 64, installed(tiny_venv))
    r = image_check(doctor, tiny_venv, locked_profile, m)
    (f,) = r.findings("image.lock-outdated")
    assert r.rc == 1 and f["severity"] == "fail"
    assert "docker push ghcr.io/example/m3d-pod:1" in f["remedy"]["command"]
    assert "docker pull ghcr.io/example/m3d-pod@sha256:<digest>" in f["remedy"]["note"]


def test_packages_installed_since_the_build_are_reported(doctor, tiny_venv, locked_profile, tmp_path):
    lock = lock_sha(doctor("lock", "--profile", str(locked_profile)).stdout)
    recorded = installed(tiny_venv)
    recorded["six"] = "1.15.0"
    recorded["diffusers"] = "0.34.0"
    del recorded["packaging"]
    r = image_check(doctor, tiny_venv, locked_profile, write_manifest(tmp_path / "build.json", lock, recorded))
    assert "image.lock-outdated" not in r.finding_ids()
    (f,) = r.findings("image.packages-changed")
    assert f["severity"] == "warn"
    assert f["evidence"]["added"] == ["packaging"] and f["evidence"]["removed"] == ["diffusers"]
    assert f["evidence"]["changed"] == {"six": ["1.15.0", "1.16.0"]}


def test_image_matching_its_manifest_is_ok(doctor, tiny_venv, locked_profile, tmp_path):
    lock = lock_sha(doctor("lock", "--profile", str(locked_profile)).stdout)
    r = image_check(doctor, tiny_venv, locked_profile, write_manifest(tmp_path / "b.json", lock, installed(tiny_venv)))
    assert r.finding_ids() == {"image.ok"}


def test_an_unreadable_manifest_is_reported_not_a_crash(doctor, tiny_venv, locked_profile, tmp_path):
    bad = tmp_path / "build.json"
    bad.write_text("{not json")
    r = image_check(doctor, tiny_venv, locked_profile, bad)
    (f,) = r.findings("image.no-manifest")
    assert "unreadable build manifest" in f["cause"]
