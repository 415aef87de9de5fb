"""`m3d-doctor run` and `selftest`: the upstream adapter against a fake Matrix-3D tree written here (the 3D
stage's script with its own argparse, writing what the real one writes: the real one needs GPUs and weights;
the native video stage has its own tests in test_video_stage.py), resume and interruption, and the native panorama stage on a real tiny FLUX pipeline (random
weights, built locally, saved with save_pretrained) in a real venv with torch + diffusers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import LOCAL_TORCH, build_venv
from m3d_doctor import upstream
from m3d_doctor.errors import UsageError
from m3d_doctor.pano_sources import resolve_source

RUNNER = [[LOCAL_TORCH, "diffusers==0.42.1", "transformers==5.24.0", "accelerate==1.15.0", "tokenizers",
           "sentencepiece", "protobuf", "safetensors", "pillow", "numpy"]]

SCENE = '''import argparse, os, time
parser = argparse.ArgumentParser()
parser.add_argument("--device", type=str, default="cuda:0")
parser.add_argument("--inout_dir", type=str, default="./output/example1")
parser.add_argument("--resolution", type=int, default=720)
a = parser.parse_args()
assert os.path.exists(os.path.join(a.inout_dir, "pano_video.mp4")) and os.path.exists("checkpoints")
open(os.path.join(a.inout_dir, "generated_3dgs_opt.ply"), "w").write("partial")
if os.environ.get("FAKE_HANG"):
    time.sleep(120)
open(os.path.join(a.inout_dir, "generated_3dgs_opt.ply"), "w").write("ply")
print("scene", a.resolution, a.device)
'''


@pytest.fixture(scope="module")
def runner_venv() -> Path:
    return build_venv("runner", RUNNER)


@pytest.fixture
def fake_root(tmp_path) -> Path:
    root = tmp_path / "Matrix-3D"
    (root / "code").mkdir(parents=True)
    (root / "checkpoints").mkdir()
    (root / upstream.SCENE_SCRIPT).write_text(SCENE)
    return root


@pytest.fixture
def case(tmp_path) -> Path:
    out = tmp_path / "case"
    out.mkdir()
    (out / "pano_img.jpg").write_bytes(b"jpg")
    (out / "prompt.txt").write_text("a lake")
    (out / "pano_video.mp4").write_bytes(b"mp4")  # what the (native) video stage leaves for the scene stage
    return out


def _run_args(root: Path, out: Path, python: Path, *extra: str) -> list[str]:
    return ["run", "--stages", "scene", "--out", str(out), "--matrix3d-root", str(root), "--python",
            str(python), "--force", "--device", "cpu", "--resolution", "480", *extra]


def test_adapter_reads_real_upstream_options(tmp_path):
    """The real step-2 script (from the fetched mirror) declares what the adapter passes."""
    mirror = Path("/work/.mirror/SkyworkAI+Matrix-3D/repo")
    if not mirror.exists():
        pytest.skip("Matrix-3D mirror not fetched on this machine")
    src = subprocess.run(["git", "-C", str(mirror), "show", f"HEAD:{upstream.VIDEO_SCRIPT}"], capture_output=True,
                         text=True, check=True).stdout
    (tmp_path / "v.py").write_text(src)
    cli = upstream.read_cli(tmp_path / "v.py")
    assert {"--inout_dir", "--resolution", "--seed"} <= set(cli.options)
    assert cli.options["--resolution"].type == "int" and cli.options["--resolution"].default == 720


def test_drift_refuses_before_launch_naming_the_option(doctor, fake_root, case, runner_venv):
    (fake_root / upstream.SCENE_SCRIPT).write_text(SCENE.replace(
        'parser.add_argument("--resolution", type=int, default=720)\n', ""))
    r = doctor(*_run_args(fake_root, case, runner_venv))
    assert r.rc == 1, r.stderr
    assert "no longer accepts --resolution" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (case / "scene.log").exists()


def test_dry_run_prints_exact_commands(doctor, fake_root, case, runner_venv):
    r = doctor(*_run_args(fake_root, case, runner_venv, "--dry-run", "--json"))
    assert r.rc == 0, r.stderr
    (scene,) = json.loads(r.stdout)["stages"]
    assert scene["cwd"] == str(fake_root.resolve())
    assert "--inout_dir=" + str(case.resolve() / ".STAGE") in scene["command"]
    assert "--resolution=480" in scene["command"] and "--device=cpu" in scene["command"]
    text = doctor(*_run_args(fake_root, case, runner_venv, "--dry-run"))
    assert text.rc == 0 and "panoramic_video_to_3DScene.py" in text.stdout
    assert not (case / "run.json").exists()


def test_run_completes_then_resume_skips_finished_stages(doctor, fake_root, case, runner_venv):
    r = doctor(*_run_args(fake_root, case, runner_venv))
    assert r.rc == 0, r.stderr + (case / "scene.log").read_text()
    assert (case / "generated_3dgs_opt.ply").read_text() == "ply"
    manifest = json.loads((case / "run.json").read_text())
    assert {k: v["status"] for k, v in manifest["stages"].items()} == {"scene": "done"}
    assert "scene 480 cpu" in (case / "scene.log").read_text()
    assert not list(case.glob(".partial-*"))
    again = doctor(*_run_args(fake_root, case, runner_venv))
    assert again.rc == 0 and "scene: already done, skipped" in again.stderr


def test_interrupted_stage_leaves_nothing_finished_and_rerun_completes(fake_root, case, runner_venv, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("M3D_")}
    env.update(FAKE_HANG="1", M3D_DOCTOR_CACHE_DIR=str(tmp_path / "dc"))
    p = subprocess.Popen([sys.executable, "-m", "m3d_doctor", *_run_args(fake_root, case, runner_venv)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    partial = case / ".partial-scene" / "generated_3dgs_opt.ply"
    deadline = time.time() + 60
    while time.time() < deadline and not partial.exists():
        time.sleep(0.2)
    assert partial.exists(), "the fake scene stage never started"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not (case / "generated_3dgs_opt.ply").exists()
    assert json.loads((case / "run.json").read_text())["stages"]["scene"]["status"] != "done"
    env.pop("FAKE_HANG")
    r = subprocess.run([sys.executable, "-m", "m3d_doctor", *_run_args(fake_root, case, runner_venv)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (case / "generated_3dgs_opt.ply").read_text() == "ply"


def test_preflight_refuses_without_force(doctor, fake_root, case, tiny_venv):
    args = [a for a in _run_args(fake_root, case, tiny_venv) if a != "--force"]
    r = doctor(*args, "--offline")
    assert r.rc == 1 and "run refused" in r.stderr
    assert not (case / "scene.log").exists()


def test_pano_source_resolution(tmp_path):
    folder = tmp_path / "flux"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    single = tmp_path / "flux1-dev.safetensors"
    single.write_bytes(b"x")
    assert resolve_source(str(folder)).kind == "folder"
    s = resolve_source(str(single), base=str(folder))
    assert (s.kind, s.base, s.transformer_file) == ("single-file", str(folder), str(single))
    assert resolve_source(None).kind == "hub"
    with pytest.raises(UsageError):
        resolve_source(str(tmp_path / "missing"))


def test_selftest_cpu_passes_with_wrap_lowering_the_seam(doctor, runner_venv):
    r = doctor("selftest", "--device", "cpu", "--python", str(runner_venv), "--json")
    assert r.rc == 0, r.stderr + r.stdout
    res = json.loads(r.stdout)
    assert res["finite"] and res["dtype"] == "float32" and res["plan_mode"] == "partial"
    assert res["seam_wrap"] < res["seam_nowrap"]


BUILD = '''import sys, torch
from safetensors.torch import save_file
from m3d_doctor.runtime.selftest import build_tiny_pipeline
pipe = build_tiny_pipeline()
pipe.save_pretrained(sys.argv[1])
save_file({k: v.contiguous() for k, v in pipe.transformer.state_dict().items()}, sys.argv[2])
'''


@pytest.fixture(scope="module")
def tiny_flux(runner_venv, tmp_path_factory) -> tuple[Path, Path]:
    from m3d_doctor.runflow import runtime_env

    d = tmp_path_factory.mktemp("tinyflux")
    subprocess.run([str(runner_venv), "-c", BUILD, str(d / "pipe"), str(d / "flux-tiny.safetensors")], check=True,
                   env=runtime_env(), capture_output=True, timeout=300)
    return d / "pipe", d / "flux-tiny.safetensors"


@pytest.mark.parametrize("layout", ["folder", "single-file"])
def test_pano_stage_runs_saved_tiny_flux(doctor, runner_venv, tiny_flux, tmp_path, layout):
    folder, single = tiny_flux
    out = tmp_path / "case"
    ckpt = folder if layout == "folder" else single
    args = ["run", "--stages", "pano", "--prompt", "a lake", "--out", str(out), "--device", "cpu", "--steps", "2",
            "--height", "64", "--width", "256", "--python", str(runner_venv), "--force",
            "--matrix3d-root", str(tmp_path / "none"), "--checkpoint", f"black-forest-labs/FLUX.1-dev={ckpt}"]
    if layout == "single-file":
        args += ["--pano-base", str(folder)]
    r = doctor(*args)
    assert r.rc == 0, r.stderr + (out / "pano.log").read_text()
    assert (out / "pano_img.jpg").stat().st_size > 0 and (out / "prompt.txt").read_text() == "a lake"
    rec = json.loads((out / "run.json").read_text())["stages"]["pano"]
    assert rec["status"] == "done" and rec["result"]["finite"] and rec["peak_bytes"] > 0
    assert ("from_single_file" in rec["plan"]["source"]) == (layout == "single-file")


PANO_I2P = '''import argparse, os
parser = argparse.ArgumentParser()
parser.add_argument("--mode", type=str, default="t2p", choices=["i2p", "t2p"])
parser.add_argument("--prompt", type=str, default=None)
parser.add_argument("--input_image_path", type=str, default="data/x.jpg")
parser.add_argument("--device", type=str, default="cuda:0")
parser.add_argument("--seed", type=int, default=380)
parser.add_argument("--fov", type=float, default=None)
parser.add_argument("--output_path", type=str, default="")
a = parser.parse_args()
assert a.mode == "i2p" and os.path.exists(a.input_image_path)
os.makedirs(a.output_path, exist_ok=True)
open(os.path.join(a.output_path, "pano_img.jpg"), "wb").write(open(a.input_image_path, "rb").read())
open(os.path.join(a.output_path, "prompt.txt"), "w").write("generated prompt")
'''


def test_image_input_is_delegated_to_upstream_i2p(doctor, fake_root, runner_venv, tmp_path):
    (fake_root / upstream.PANO_SCRIPT).write_text(PANO_I2P)
    image = tmp_path / "photo.jpg"
    image.write_bytes(b"jpeg bytes")
    out = tmp_path / "i2p"
    args = ["run", "--image", str(image), "--stages", "pano", "--out", str(out), "--matrix3d-root",
            str(fake_root), "--python", str(runner_venv), "--force", "--device", "cpu", "--seed", "7"]
    dry = doctor(*args, "--dry-run", "--json")
    (stage,) = json.loads(dry.stdout)["stages"]
    assert stage["plan"]["mode"] == "upstream-i2p" and "--mode=i2p" in stage["command"]
    assert "--seed=7" in stage["command"] and f"--input_image_path={image.resolve()}" in stage["command"]
    r = doctor(*args)
    assert r.rc == 0, r.stderr
    assert (out / "pano_img.jpg").read_bytes() == b"jpeg bytes" and (out / "prompt.txt").exists()
    (fake_root / upstream.PANO_SCRIPT).write_text(PANO_I2P.replace('"--input_image_path"', '"--image"'))
    drift = doctor(*args[:6], str(tmp_path / "i2p-2"), *args[7:])
    assert drift.rc == 1 and "no longer accepts --input_image_path" in drift.stderr
