"""--freeze judges an exported freeze offline; the probe cache skips work only while nothing changed."""

from __future__ import annotations

import pytest
from m3d_doctor.errors import UsageError
from m3d_doctor.target import parse_freeze

SEED_FREEZE = """\
# the field report's seed image (matrix3d_pip_freeze.txt, abridged)
torch==2.7.0+cu126
torchvision==0.22.0
torchaudio==2.2.0
triton==3.3.0
numpy==2.2.6
einops==0.8.1
fsspec==2024.2.0
-e git+https://github.com/SkyworkAI/DiffSynth-Studio.git@abc#egg=diffsynth
pytorch3d @ git+https://github.com/facebookresearch/pytorch3d.git@v0.7.7
"""


def test_parse_freeze_keeps_local_tags_editables_and_direct_urls():
    dists = parse_freeze(SEED_FREEZE, "seed.txt")
    assert dists["torch"].version == "2.7.0+cu126"
    assert dists["diffsynth"].version == ""
    assert dists["pytorch3d"].version == ""
    assert "fsspec" in dists


def test_parse_freeze_rejects_garbage_with_file_and_line():
    with pytest.raises(UsageError, match=r"f.txt:2: not a pip freeze line"):
        parse_freeze("six==1.16.0\nthis is not a requirement!\n", "f.txt")


def test_freeze_of_the_seed_image_reports_pins_and_what_could_not_run(doctor, tmp_path):
    freeze = tmp_path / "freeze.txt"
    freeze.write_text(SEED_FREEZE)
    run = doctor("--freeze", str(freeze), "--json")
    assert run.rc == 1
    wrong = {f["evidence"]["package"]: f["evidence"]["installed"] for f in run.findings("packages.wrong-version")}
    assert wrong["torch"] == "2.7.0+cu126" and wrong["numpy"] == "2.2.6"
    missing = {f["evidence"]["package"] for f in run.findings("packages.missing")}
    assert {"diffusers", "transformers", "huggingface-hub", "sentencepiece"} <= missing
    skipped = {c["name"]: c["findings"][0] for c in run.doc["checks"] if c["status"] == "skip"}
    assert {"imports", "torch", "device"} <= set(skipped)
    assert "freeze" in skipped["imports"]["title"]
    assert run.doc["target"]["freeze"] == str(freeze)


def test_freeze_and_python_are_exclusive(doctor, tmp_path):
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("six==1.16.0\n")
    run = doctor("--freeze", str(freeze), "--python", "python3")
    assert run.rc == 2 and "exclusive" in run.stderr


def test_second_run_reuses_the_import_probe_until_the_environment_changes(doctor, tiny_venv, tmp_path,
                                                                          tiny_profile):
    cache = tmp_path / "shared-cache"
    first = doctor("--python", str(tiny_venv), "--profile", str(tiny_profile), "--json", cache_dir=cache)
    second = doctor("--python", str(tiny_venv), "--profile", str(tiny_profile), "--json", cache_dir=cache)
    cached = {c["name"]: c["cached"] for c in second.doc["checks"]}
    assert not any(c["cached"] for c in first.doc["checks"])
    assert cached["imports"] and cached["packages"] and cached["python"]  # nothing re-probed
    assert not cached["env"]  # environment variables are read every time
    live = {"disk", "vram"}  # free space and free memory right now: other processes change them
    assert [c for c in first.doc["checks"] if c["name"] not in live] == [
        dict(c, cached=False, duration_s=c0["duration_s"])
        for c, c0 in zip(second.doc["checks"], first.doc["checks"]) if c["name"] not in live]
    assert first.doc["target"]["fingerprint"] == second.doc["target"]["fingerprint"]
    # A different profile asks different imports: never reuse an answer to another question.
    other = tmp_path / "other.toml"
    other.write_text(tiny_profile.read_text() + '\n[[imports]]\nmodule = "json"\n')
    third = doctor("--python", str(tiny_venv), "--profile", str(other), "--json", cache_dir=cache)
    assert not any(c["cached"] for c in third.doc["checks"] if c["name"] == "imports")
    assert "imports_probe" not in third.doc["summary"]["cached_facts"]
