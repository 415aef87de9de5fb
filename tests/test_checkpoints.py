"""checkpoints: written fixtures (real safetensors files, a real HF cache layout, a fake Matrix-3D tree)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

PROFILE = """
schema = 1
name = "ckpt"
[python]
requires = ">=3.8"
[pod]
matrix3d_root = "{root}"

[[models]]
repo = "acme/pipe"
stage = "pano"
layout = "diffusers"
files = [{{ path = "model_index.json" }}, {{ path = "transformer/diffusion_pytorch_model.safetensors" }}]

[[models]]
repo = "acme/lora"
stage = "pano"
layout = "lora"
local_dir = "checkpoints/flux_lora"
files = [{{ path = "checkpoints/text2panoimage_lora.safetensors", loaded_from = "checkpoints/flux_lora/pano_image_lora.safetensors" }}]
"""


def tensor_file(path: Path, n: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"w": np.arange(n, dtype=np.float32)}, str(path))
    return path


def diffusers_folder(root: Path) -> Path:
    (root / "transformer").mkdir(parents=True)
    (root / "vae").mkdir()
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"], "tokenizer": [None, None]}))
    tensor_file(root / "transformer" / "diffusion_pytorch_model.safetensors")
    return root


def hf_cache_file(hub: Path, repo: str, filename: str, content_writer, commit: str = "a" * 40) -> Path:
    repo_dir = hub / f"models--{repo.replace('/', '--')}"
    blob = repo_dir / "blobs" / f"blob-{abs(hash(filename))}"
    blob.parent.mkdir(parents=True, exist_ok=True)
    content_writer(blob)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snap = repo_dir / "snapshots" / commit / filename
    snap.parent.mkdir(parents=True, exist_ok=True)
    snap.symlink_to(Path("../" * (filename.count("/") + 2)) / "blobs" / blob.name)
    return snap


@pytest.fixture
def setup(tmp_path):
    root = tmp_path / "Matrix-3D"
    root.mkdir()
    hf_home = tmp_path / "hf"
    prof = tmp_path / "ckpt.toml"
    prof.write_text(PROFILE.format(root=root))
    env = {"HF_HOME": str(hf_home)}
    return root, hf_home / "hub", prof, env


def test_a_diffusers_folder_loads_with_from_pretrained(doctor, setup, tmp_path):
    root, hub, prof, env = setup
    folder = diffusers_folder(tmp_path / "pipe")
    run = doctor("check", "checkpoints", "--profile", str(prof), "--checkpoint", f"acme/pipe={folder}", "--json",
                 "-v", env=env)
    assert "checkpoints.layout-ok" in run.finding_ids()
    assert not [f for f in run.findings("checkpoints.missing") if f["evidence"]["repo"] == "acme/pipe"]


def test_folder_without_model_index_says_which_loading_call_works(doctor, setup, tmp_path):
    root, hub, prof, env = setup
    folder = tmp_path / "checkpoints"  # the field report's /workspace/checkpoints
    tensor_file(folder / "flux1-dev.safetensors")
    run = doctor("check", "checkpoints", "--profile", str(prof), "--checkpoint", f"acme/pipe={folder}", "--json",
                 env=env)
    assert run.rc == 1
    (f,) = run.findings("checkpoints.layout-single-file")
    assert "from_single_file" in f["cause"] and "FluxPipeline.from_pretrained('acme/pipe', transformer=" in f["cause"]
    assert f["evidence"]["single_file"].endswith("flux1-dev.safetensors")


def test_missing_component_folder(doctor, setup, tmp_path):
    root, hub, prof, env = setup
    folder = diffusers_folder(tmp_path / "pipe")
    import shutil
    shutil.rmtree(folder / "vae")
    run = doctor("check", "checkpoints", "--profile", str(prof), "--checkpoint", f"acme/pipe={folder}", "--json",
                 env=env)
    (f,) = run.findings("checkpoints.layout-missing-component")
    assert f["evidence"]["missing"] == ["vae"]


def test_truncated_safetensors_in_the_hf_cache(doctor, setup):
    root, hub, prof, env = setup

    def truncated(blob):
        tensor_file(blob, n=4096)
        data = blob.read_bytes()
        blob.write_bytes(data[: len(data) - 1000])

    hf_cache_file(hub, "acme/pipe", "model_index.json", lambda b: b.write_text("{}"))
    hf_cache_file(hub, "acme/pipe", "transformer/diffusion_pytorch_model.safetensors", truncated)
    run = doctor("check", "checkpoints", "--profile", str(prof), "--json", env=env)
    assert run.rc == 1
    (f,) = run.findings("checkpoints.truncated")
    assert f["evidence"]["found_in"] == "hf-cache" and f["evidence"]["expected_at_least"] > f["evidence"]["size"]
    assert f["remedy"]["command"].startswith("hf download acme/pipe transformer/")


def test_garbage_is_not_a_safetensors_file(doctor, setup):
    root, hub, prof, env = setup
    hf_cache_file(hub, "acme/pipe", "model_index.json", lambda b: b.write_text("{}"))
    hf_cache_file(hub, "acme/pipe", "transformer/diffusion_pytorch_model.safetensors",
                  lambda b: b.write_bytes(b"<html>403 Forbidden</html>"))
    run = doctor("check", "checkpoints", "--profile", str(prof), "--json", env=env)
    (f,) = run.findings("checkpoints.corrupt")
    assert "does not fit" in f["cause"]


def test_incomplete_blob_is_reported(doctor, setup):
    root, hub, prof, env = setup
    hf_cache_file(hub, "acme/pipe", "model_index.json", lambda b: b.write_text("{}"))
    partial = hub / "models--acme--pipe" / "blobs" / "deadbeef.incomplete"
    partial.write_bytes(b"\0" * 1234)
    run = doctor("check", "checkpoints", "--profile", str(prof), "--json", env=env)
    (f,) = run.findings("checkpoints.incomplete")
    assert f["evidence"]["bytes"] == 1234 and f["severity"] == "warn"
    assert f["remedy"]["fix_id"] == "hf.download"


def test_upstream_lora_name_and_path_mismatch(doctor, setup):
    """download_checkpoints.py writes checkpoints/flux_lora/checkpoints/text2panoimage_lora.safetensors;
    panoramic_image_generation.py reads checkpoints/flux_lora/pano_image_lora.safetensors."""
    root, hub, prof, env = setup
    tensor_file(root / "checkpoints/flux_lora/checkpoints/text2panoimage_lora.safetensors")
    run = doctor("check", "checkpoints", "--profile", str(prof), "--json", env=env)
    (f,) = run.findings("checkpoints.lora-path-mismatch")
    assert f["evidence"]["expected"] == str(root / "checkpoints/flux_lora/pano_image_lora.safetensors")
    assert "ln -sfn" in f["remedy"]["command"]
    assert not [m for m in run.findings("checkpoints.missing") if m["evidence"]["repo"] == "acme/lora"]


def test_nothing_anywhere_is_missing_with_the_bytes_to_download(doctor, setup):
    root, hub, prof, env = setup
    run = doctor("check", "checkpoints", "--profile", str(prof), "--json", env=env)
    repos = {f["evidence"]["repo"] for f in run.findings("checkpoints.missing")}
    assert repos == {"acme/pipe", "acme/lora"}


def test_bad_checkpoint_flag_is_a_usage_error(doctor, setup):
    root, hub, prof, env = setup
    run = doctor("check", "checkpoints", "--profile", str(prof), "--checkpoint", "no-equals-sign", env=env)
    assert run.rc == 2 and "expected REPO=PATH" in run.stderr
