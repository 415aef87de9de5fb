"""Issue #10: the native video stage (m3d_doctor.runtime.video) through the real command line, on a fake
Matrix-3D checkout with upstream's interfaces and real tiny torch models (tests/fakecheckout.py: CI cannot hold
upstream's code). The proof against the real checkout is benchmarks/video_upstream_tiny.py (CPU, bit-equal to
upstream's own flow) and benchmarks/video_stage.py (H200, full size); their results are in benchmarks/results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import build_venv
from fakecheckout import VIDEO_RUNNER_STEPS, make_checkout, make_weights, write_case
from m3d_doctor import runflow
from test_resolution_contract import RTX4090, replay, strict_json

pytestmark = pytest.mark.venv
TINY = ["--video-frames", "9", "--video-size", "192x96", "--video-steps", "2"]


@pytest.fixture(scope="module")
def video_venv() -> Path:
    return build_venv("video-runner", VIDEO_RUNNER_STEPS)


@pytest.fixture(scope="module")
def built(video_venv, tmp_path_factory) -> Path:
    """A fake checkout with tiny weights for both resolutions, built once (tests copy it to break it)."""
    root = make_checkout(tmp_path_factory.mktemp("m3d") / "Matrix-3D")
    make_weights(video_venv, root, resolution=480)
    make_weights(video_venv, root, resolution=720)
    return root


@pytest.fixture
def checkout(built, tmp_path) -> Path:
    dest = tmp_path / "Matrix-3D"
    shutil.copytree(built, dest, symlinks=True)
    return dest


@pytest.fixture
def case(video_venv, tmp_path) -> Path:
    return write_case(video_venv, tmp_path / "case")


def _args(root: Path, out: Path, python: Path, *extra: str) -> list[str]:
    return ["run", "--stages", "video", "--out", str(out), "--matrix3d-root", str(root), "--python", str(python),
            "--device", "cpu", "--force", *TINY, *extra]


def test_video_stage_runs_end_to_end_and_resumes(doctor, checkout, case, video_venv):
    r = doctor(*_args(checkout, case, video_venv, "--resolution", "480"), timeout=600)
    assert r.rc == 0, r.stderr[-3000:]
    for name in runflow.OUTPUTS["video"]:  # everything the 3D stage reads, where upstream writes it
        assert (case / name).is_file(), name
    assert json.loads((case / "pano_video_cam.json").read_text())  # the rail's cameras
    rec = json.loads((case / "run.json").read_text())["stages"]["video"]
    assert rec["status"] == "done" and rec["plan"]["native"] and rec["plan"]["upstream"] == "980959f"
    result = rec["result"]
    assert result["frames"] == 9 and result["finite"]
    # upstream's phases, in its order, each placed by the stage
    assert list(result["phase_seconds"])[1:] == ["text_encoder", "image_encoder", "load_dit", "denoise", "decode"]
    log = (case / "video.log").read_text()
    assert "scripts/infer_panorama.py" in log and sys.executable not in log  # MoGe ran with the target's python
    assert str(video_venv) in log or os.path.realpath(video_venv) in log or "bin/python" in log
    again = doctor(*_args(checkout, case, video_venv, "--resolution", "480"))
    assert again.rc == 0 and "video: already done, skipped" in again.stderr


def test_streamed_blocks_give_the_resident_frames(checkout, case, video_venv, tmp_path):
    """The runtime itself, twice on the same conditioning: block 1 streamed through PartialResidency, then all
    resident; the frames are bitwise the same (sha256 of the decoded frames)."""
    from m3d_doctor.upstream import VideoInputs

    inputs = json.dumps(VideoInputs.in_checkout(checkout, 480).to_dict())
    env = runflow.runtime_env()
    base = [str(video_venv), "-m", "m3d_doctor.runtime.video", "run", "--inputs-json", inputs, "--device", "cpu",
            "--steps", "2", "--frames", "9", "--size", "192x96"]
    digests = []
    for i, plan in enumerate(({"mode": "partial", "streamed_indices": [1]}, {"mode": "resident"})):
        out = tmp_path / f"case{i}"
        shutil.copytree(case, out)
        p = subprocess.run([*base, "--out", str(out), "--plan-json", json.dumps(plan)], capture_output=True,
                           text=True, env=env, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        done = [json.loads(x) for x in p.stdout.splitlines() if '"done"' in x][-1]
        assert done["streamed_indices"] == plan.get("streamed_indices", [])
        digests.append(done["frames_sha256"])
        assert [json.loads(x)["step"] for x in p.stdout.splitlines() if '"progress"' in x] == [1, 2]
    assert digests[0] == digests[1]


@pytest.mark.parametrize("breakage, expected", [
    (lambda r: shutil.rmtree(r / "code/DiffSynth-Studio"), "vendored diffsynth"),
    (lambda r: (r / "checkpoints/Wan-AI/Wan2.1-I2V-14B-480P/diffusion_pytorch_model-00003-of-00007.safetensors")
     .unlink(), "diffusion_pytorch_model-00003-of-00007.safetensors"),
    (lambda r: shutil.rmtree(r / "checkpoints/Wan-AI/Wan2.1-I2V-14B-480P/google"), "umT5 tokenizer"),
    (lambda r: (r / "checkpoints/moge/model.pt").unlink(), "MoGe checkpoint"),
    (lambda r: (r / "checkpoints/Wan-AI/wan_lora/pano_video_gen_480p.ckpt").unlink(), "--resolution 720"),
], ids=["no-diffsynth", "missing-shard", "no-tokenizer", "no-moge", "lora-for-720-only"])
def test_missing_inputs_are_one_line_naming_the_file_and_the_fix(doctor, checkout, case, video_venv, breakage,
                                                                  expected):
    breakage(checkout)
    r = doctor(*_args(checkout, case, video_venv, "--resolution", "480"))
    assert r.rc == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "stage video cannot start" in lines[0] and expected in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not (case / "run.json").exists()  # nothing started, nothing written


def test_an_unwritable_out_is_a_usage_error(doctor, checkout, video_venv, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: permissions are not enforced")
        r = doctor(*_args(checkout, ro / "case", video_venv))
        assert r.rc == 2 and "not writable" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    finally:
        ro.chmod(0o700)


def test_an_out_that_is_a_file_is_a_usage_error(doctor, checkout, video_venv, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    r = doctor(*_args(checkout, f / "case", video_venv))
    assert r.rc == 2 and "is not a folder" in r.stderr


def test_moge_failure_fails_the_stage_and_leaves_nothing_that_looks_done(doctor, checkout, case, video_venv):
    r = doctor(*_args(checkout, case, video_venv, "--resolution", "480"), env={"FAKE_MOGE_FAIL": "1"})
    assert r.rc == 1 and "stage video failed" in r.stderr
    assert "MoGe failed with exit code" in (case / "video.log").read_text()
    assert not (case / "pano_video.mp4").exists() and not (case / "condition").exists()
    assert json.loads((case / "run.json").read_text())["stages"]["video"]["status"] == "failed"


def test_moge_that_exits_0_without_output_is_caught(doctor, checkout, case, video_venv):
    r = doctor(*_args(checkout, case, video_venv, "--resolution", "480"), env={"FAKE_MOGE_SILENT_FAIL": "1"})
    assert r.rc == 1
    assert "MoGe exited 0 but did not write" in (case / "video.log").read_text()


@pytest.mark.parametrize("weights", ["tiny-on-disk", "none"])
def test_dry_run_video_plan_is_the_vram_checks_plan_on_a_24gb_pod(doctor, checkout, case, video_venv, tmp_path,
                                                                   weights):
    """One source of truth: on a replayed 24 GB card (no --force, budget = free memory) the plan the dry run
    hands the video stage is the plan `check vram` reports, at both resolutions — sized from the local shards'
    headers when they are there (the tiny ones fit resident), from the profile otherwise (a streaming plan)."""
    if weights == "none":
        shutil.rmtree(checkout / "checkpoints")
    env = replay(tmp_path, RTX4090)
    for res in ("480", "720"):
        args = ["run", "--stages", "video", "--out", str(case), "--matrix3d-root", str(checkout), "--python",
                str(video_venv), "--resolution", res, "--dry-run", "--json"]
        dry = doctor(*args, env=env)
        assert dry.rc == 0, dry.stderr
        (stage,) = strict_json(dry.stdout)["stages"]
        chk = doctor("check", "vram", "--stage", "video", "--resolution", res, "--matrix3d-root", str(checkout),
                     "--json", env=env)
        (f,) = chk.findings("vram.stage-needs-plan") + chk.findings("vram.stage-fits")
        ours, theirs = stage["plan"], f["evidence"]["plan"]
        for key in ("mode", "streamed_indices", "predicted_peak_bytes", "host_peak_bytes"):
            assert ours[key] == theirs[key], key
        assert ours["fits"] and ours["resolution"] == int(res)
        assert ours["mode"] == ("resident" if weights == "tiny-on-disk" else "partial")
        assert bool(ours.get("missing")) == (weights == "none")  # the dry run says what a real run would lack
        cmd = stage["command"]
        assert cmd[1:4] == ["-m", "m3d_doctor.runtime.video", "run"]
        assert "torchrun" not in " ".join(cmd) and "modelscope" not in " ".join(cmd)


def test_later_upstream_is_detected_and_runs_the_14b_path(doctor, built, case, video_venv, tmp_path):
    root = make_checkout(tmp_path / "later", version="later")
    shutil.rmtree(root / "checkpoints", ignore_errors=True)
    shutil.copytree(built / "checkpoints", root / "checkpoints", symlinks=True)
    dry = doctor(*_args(root, case, video_venv, "--resolution", "480", "--dry-run", "--json"))
    (stage,) = json.loads(dry.stdout)["stages"]
    assert stage["plan"]["upstream"] == "later" and any("5B" in n for n in stage["plan"]["notes"])


def test_a_checkout_missing_an_option_the_stage_mirrors_is_refused(doctor, checkout, case, video_venv):
    script = checkout / "code/panoramic_image_to_video.py"
    script.write_text(script.read_text().replace('"--movement_mode"', '"--rail_mode"'))
    r = doctor(*_args(checkout, case, video_venv, "--resolution", "480"))
    assert r.rc == 1 and "--movement_mode" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_the_video_stage_without_a_panorama_is_refused_up_front(doctor, checkout, video_venv, tmp_path):
    out = tmp_path / "empty-case"
    out.mkdir()
    (out / "pano_img.jpg").write_bytes(b"jpg")
    r = doctor(*_args(checkout, out, video_venv, "--resolution", "480"))
    assert r.rc == 1 and "no prompt.txt" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_cpu_is_refused_when_the_checkouts_render_is_cuda_only(doctor, checkout, case, video_venv):
    render = checkout / "code/utils_3dscene/nvrender.py"
    render.write_text(render.read_text() + "\n# upstream: glctx = dr.RasterizeCudaContext()\n")
    r = doctor(*_args(checkout, case, video_venv, "--resolution", "480"))
    assert r.rc == 2 and "CUDA rasterizer" in r.stderr and not (case / "run.json").exists()


def test_a_missing_camera_json_is_a_usage_error(doctor, checkout, case, video_venv, tmp_path):
    r = doctor(*_args(checkout, case, video_venv, "--camera-json", str(tmp_path / "nope.json")))
    assert r.rc == 2 and "--camera-json" in r.stderr


def test_a_video_only_run_is_not_refused_for_the_panorama_models(doctor, checkout, case, video_venv, tmp_path):
    """Preflight weighs what concerns the stages it runs: with FLUX.1-dev nowhere on disk, a video-only run's
    refusal (there are other failures on this CPU-only machine) never names the pano stage's checkpoints."""
    args = [a for a in _args(checkout, case, video_venv, "--resolution", "480") if a not in ("--force",)]
    r = doctor(*args, "--offline", env=replay(tmp_path, RTX4090))
    assert "black-forest-labs/FLUX.1-dev" not in r.stderr and "Skywork/Matrix-3D: 1 of 1" not in r.stderr
    assert "checkpoints.missing" not in r.stderr or "Wan-AI" in r.stderr
