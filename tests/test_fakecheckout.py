"""The fake Matrix-3D checkout (tests/fakecheckout.py) works the way upstream's video stage uses it.

In a cached venv with torch 2.13 CPU: the tiny checkpoints load through ModelManager exactly as upstream's
panoramic_image_to_video.py loads the real ones (CLIP fp32, then [7 shards], T5, VAE, then the LoRA), and
WanVideoPipeline runs the cond_video/cond_mask path with upstream's phase order; the fake MoGe CLI, nvrender and
TextVideoDataset make the conditioning chain. The doctor's own readers (m3d_doctor.upstream) accept the layout.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import build_venv
from fakecheckout import VIDEO_RUNNER_STEPS, VIDEO_SCRIPT, make_checkout, make_weights, write_case, write_import_stubs
from m3d_doctor.upstream import VideoInputs, video_version

pytestmark = pytest.mark.venv


@pytest.fixture(scope="module")
def python() -> Path:
    return build_venv("video-runner", VIDEO_RUNNER_STEPS)


@pytest.fixture(scope="module")
def checkout(python, tmp_path_factory) -> tuple[Path, dict]:
    root = make_checkout(tmp_path_factory.mktemp("fake") / "Matrix-3D")
    return root, make_weights(python, root, resolution=480)


def run(python: Path, code: str, *args: str, env: dict | None = None, timeout: float = 300) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "M3D_", "FAKE_"))}
    e.update(env or {}, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([str(python), "-c", code, *args], capture_output=True, text=True, env=e, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


PIPELINE = r"""
import json, sys
import numpy as np, torch
root = sys.argv[1]
sys.path.insert(0, root + "/code/DiffSynth-Studio")
from diffsynth import ModelManager, WanVideoPipeline
from diffsynth.models.utils import load_state_dict
d = root + "/checkpoints/Wan-AI/Wan2.1-I2V-14B-480P"
shards = [f"{d}/diffusion_pytorch_model-0000{i}-of-00007.safetensors" for i in range(1, 8)]
mm = ModelManager(torch_dtype=torch.bfloat16, device="cpu")
mm.load_models([d + "/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"], torch_dtype=torch.float32)
mm.load_models([shards, d + "/models_t5_umt5-xxl-enc-bf16.pth", d + "/Wan2.1_VAE.pth"])
torch.save({"unknown.weight": torch.zeros(2, 2)}, sys.argv[2])
mm.load_models([sys.argv[2]])  # not a known model: "We cannot detect the model type", nothing loaded
mm.load_lora(root + "/checkpoints/Wan-AI/wan_lora/pano_video_gen_480p.ckpt", lora_alpha=1.0)

raw = {}
for s in shards:
    raw.update(load_state_dict(s))
lora = torch.load(root + "/checkpoints/Wan-AI/wan_lora/pano_video_gen_480p.ckpt", weights_only=True)
dit = mm.fetch_model("wan_video_dit")
W = dit.state_dict()["blocks.1.cross_attn.o.weight"]
expect = raw["blocks.1.cross_attn.o.weight"].bfloat16() + (lora["blocks.1.cross_attn.o.lora_B.default.weight"]
         @ lora["blocks.1.cross_attn.o.lora_A.default.weight"])
untouched = torch.equal(dit.state_dict()["head.head.weight"], raw["head.head.weight"].bfloat16())

pipe = WanVideoPipeline.from_model_manager(mm, device="cpu")
pipe.enable_vram_management(num_persistent_param_in_dit=None)
phases, blocks = [], []
hook = pipe.load_models_to_device
pipe.load_models_to_device = lambda names=(): (phases.append(list(names)), hook(names))[1]
for i, block in enumerate(pipe.dit.blocks):
    block.register_forward_hook(lambda m, a, o, i=i: blocks.append(i))
ids, mask = pipe.prompter.tokenizer("A quiet street.", return_mask=True, add_special_tokens=True)

T, H, Wd = 9, 96, 192
rng = np.random.default_rng(0)
cond_video = rng.uniform(0, 255, (T, H, Wd, 3)).astype(np.float32)
cond_mask = np.where(rng.uniform(size=(T, H, Wd, 1)) > 0.3, 255.0, 0.0).repeat(3, -1).astype(np.float32)
frames = pipe(prompt="A quiet street.", negative_prompt="low quality", cfg_scale=5.0, num_frames=T,
              num_inference_steps=2, seed=0, tiled=True, height=H, width=Wd, cond_video=cond_video, cond_mask=cond_mask)
arr = np.stack([np.asarray(f) for f in frames])
print(json.dumps({
    "names": mm.model_name, "dtypes": [str(next(m.parameters()).dtype) for m in mm.model],
    "lora_err": float((W.float() - expect.float()).abs().max()), "lora_delta": float((W.float() - raw["blocks.1.cross_attn.o.weight"]).abs().max()),
    "untouched": untouched, "freqs_is_tuple": isinstance(pipe.dit.freqs, tuple), "buffers": [n for n, _ in pipe.dit.named_buffers()],
    "tokens": list(ids.shape), "mask_sum": int(mask.sum()), "phases": phases, "blocks": blocks,
    "frames": len(frames), "size": list(frames[0].size), "dtype": str(arr.dtype), "finite_std": float(arr.std()),
}))
"""


def test_tiny_weights_load_like_upstream_and_the_pipeline_keeps_upstreams_phase_order(python, checkout, tmp_path):
    root, info = checkout
    assert info["dit_config"]["in_dim"] == 36 and info["dit_config"]["num_layers"] == 2
    r = run(python, PIPELINE, str(root), str(tmp_path / "unknown.pth"))
    assert r["names"] == ["wan_video_image_encoder", "wan_video_dit", "wan_video_text_encoder", "wan_video_vae"]
    assert r["dtypes"] == ["torch.float32", "torch.bfloat16", "torch.bfloat16", "torch.bfloat16"]
    assert r["lora_delta"] > 1e-4 and r["lora_err"] < 2e-2 and r["untouched"]  # merged in bf16, head left alone
    assert r["freqs_is_tuple"] and r["buffers"] == []
    assert r["tokens"] == [1, 512] and r["mask_sum"] == 5  # "a quiet street ." + </s>
    assert r["phases"] == [["text_encoder"], ["image_encoder", "vae"], ["dit", "motion_controller", "vace"],
                           ["vae"], []]
    assert r["blocks"] == [0, 1] * 4  # 2 steps x (positive, negative), blocks called as modules
    assert r["frames"] == 9 and r["size"] == [192, 96] and r["dtype"] == "uint8" and r["finite_std"] > 0


CONDITIONING = r"""
import ast, json, os, subprocess, sys
os.environ["OPENCV_IO_ENABLE_OPENEXR"] = "1"
import cv2, imageio, numpy as np, torch
from einops import rearrange
from PIL import Image
root, case = sys.argv[1], sys.argv[2]
sys.path.insert(0, root + "/code")
from utils_3dscene.nvrender import perform_camera_movement_with_cam_input
from utils_3dscene.pipeline_utils_3dscene import write_video

pano = cv2.imread(case + "/pano_img.jpg", cv2.IMREAD_UNCHANGED)
cv2.imwrite(case + "/moge.png", pano)
moge = subprocess.run([sys.executable, "scripts/infer_panorama.py", "--input", case + "/moge.png", "--output", case,
                       "--pretrained", root + "/checkpoints/moge/model.pt", "--device", "cpu", "--threshold", "0.03",
                       "--maps", "--ply"], cwd=root + "/code/MoGe", capture_output=True, text=True)
depth = cv2.imread(case + "/moge/depth.exr", cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
mask = cv2.imread(case + "/moge/mask.png", cv2.IMREAD_UNCHANGED) > 127
depth[~mask] = 2.0 * depth[mask].max()
rgbs, masks, Rts, ff_rgb, ff_depth, angle = perform_camera_movement_with_cam_input(
    torch.from_numpy(pano).float() / 255.0, torch.from_numpy(depth).float(), angle=90.0, movement_ratio=0.6,
    frame_size=9, preset_rail=None, mode="straight")
cond = case + "/condition"
os.makedirs(cond, exist_ok=True)
write_video((rgbs.numpy() * 255).astype(np.uint8), cond + "/rendered_rgb.mp4", 12)
write_video((masks.float()[..., None].repeat(1, 1, 1, 3).numpy() * 255).astype(np.uint8), cond + "/rendered_mask.mp4", 12)

# The dataset class and MASK_RATIO, taken out of the script with ast and run in the namespace the native stage gives.
tree = ast.parse(open(root + "/code/panoramic_image_to_video.py").read())
keep = [n for n in tree.body if (isinstance(n, ast.ClassDef) and n.name == "TextVideoDataset")
        or (isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "MASK_RATIO" for t in n.targets))]
ns = {"torch": torch, "np": np, "imageio": imageio, "Image": Image, "rearrange": rearrange, "v2": None, "torchvision": None}
exec(compile(ast.Module(body=keep, type_ignores=[]), "panoramic_image_to_video.py", "exec"), ns)
data = ns["TextVideoDataset"](cond + "/rendered_rgb.mp4", cond + "/rendered_mask.mp4", "a street",
                              max_num_frames=9, num_frames=9, height=96, width=192)[0]
holes = data["mask_video"] < 0
print(json.dumps({
    "moge_rc": moge.returncode, "moge_files": sorted(os.listdir(case + "/moge")), "depth": [list(depth.shape), str(depth.dtype)],
    "mask_frac": float(mask.mean()), "rgbs": [list(rgbs.shape), str(rgbs.dtype), float(rgbs.min()), float(rgbs.max())],
    "masks": [list(masks.shape), str(masks.dtype)], "first_full": bool(masks[0].all()), "hole_frac": float(1 - masks[1:].float().mean()),
    "Rts": list(Rts.shape), "Rt0_identity": bool(torch.allclose(Rts[0], torch.eye(4), atol=1e-6)), "tz_last": float(Rts[-1, 2, 3]),
    "ff": [list(ff_rgb.shape), list(ff_depth.shape)], "angle": angle,
    "keys": sorted(data), "video": list(data["video"].shape), "range": [float(data["video"].min()), float(data["video"].max())],
    "holes_black": bool((data["masked_video"][holes] == -1).all()), "holes": float(holes.float().mean()),
}))
"""


def test_moge_nvrender_and_the_dataset_make_the_conditioning_chain(python, checkout, tmp_path):
    root, _ = checkout
    case = write_case(python, tmp_path / "case", size=(256, 128))
    r = run(python, CONDITIONING, str(root), str(case))
    assert r["moge_rc"] == 0
    assert {"depth.exr", "mask.png", "points.exr", "image.jpg", "mesh.ply"} <= set(r["moge_files"])
    assert r["depth"] == [[128, 256], "float32"] and 0.8 < r["mask_frac"] < 0.9  # the top eighth is sky
    assert r["rgbs"][:2] == [[9, 128, 256, 3], "torch.float32"] and r["rgbs"][2] >= 0.0 and r["rgbs"][3] <= 1.0
    assert r["masks"] == [[9, 128, 256], "torch.bool"] and r["first_full"] and 0.0 < r["hole_frac"] < 0.9
    assert r["Rts"] == [9, 4, 4] and r["Rt0_identity"] and r["tz_last"] < 0  # moving forward (world-to-camera)
    assert r["ff"] == [[128, 256, 3], [128, 256]] and r["angle"] == 90.0
    assert r["keys"] == ["mask_video", "masked_video", "path", "text", "video"]
    assert r["video"] == [3, 9, 96, 192] and r["range"][0] >= -1.0 and r["range"][1] <= 1.0
    assert r["holes_black"] and r["holes"] > 0


def test_moge_cli_failure_modes(python, checkout, tmp_path):
    root, _ = checkout
    case = write_case(python, tmp_path / "case", size=(128, 64))
    cmd = [str(python), "scripts/infer_panorama.py", "--input", str(case / "pano_img.jpg"), "--output", str(case),
           "--pretrained", str(root / "checkpoints/moge/model.pt"), "--device", "cpu", "--maps"]

    def moge(*extra: str, **env: str) -> subprocess.CompletedProcess:
        e = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_")}
        return subprocess.run(cmd + list(extra), cwd=root / "code/MoGe", capture_output=True, text=True,
                              env={**e, **env}, timeout=120)

    assert moge(FAKE_MOGE_FAIL="1").returncode == 1 and not (case / "pano_img").exists()
    assert moge(FAKE_MOGE_SILENT_FAIL="1").returncode == 0 and not (case / "pano_img").exists()
    p = moge("--pretrained", str(root / "checkpoints/moge/missing.pt"))
    assert p.returncode == 1 and "missing.pt" in p.stderr and not (case / "pano_img").exists()
    assert moge().returncode == 0 and (case / "pano_img" / "depth.exr").is_file()


def test_the_fake_video_script_runs_upstreams_flow_under_torchrun(python, checkout, tmp_path):
    """Delegated mode: the script itself, with modelscope/xfuser/torchvision stubbed, 5 frames, 1 step, on CPU."""
    root, _ = checkout
    case = write_case(python, tmp_path / "case", size=(512, 256))
    stubs = write_import_stubs(tmp_path / "stubs")
    e = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "M3D_", "FAKE_"))}
    e.update(PATH=f"{python.parent}{os.pathsep}{e.get('PATH', '')}", PYTHONDONTWRITEBYTECODE="1",
             PYTHONPATH=f"{stubs}{os.pathsep}{root / 'code/DiffSynth-Studio'}", FAKE_M3D_FRAMES="5", FAKE_M3D_STEPS="1")
    proc = subprocess.run([str(python.parent / "torchrun"), "--standalone", "--nproc_per_node", "1", VIDEO_SCRIPT,
                           "--inout_dir", str(case), "--resolution", "480", "--angle", "30"],
                          cwd=root, capture_output=True, text=True, env=e, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for rel in ("moge/depth.exr", "moge/mask.png", "condition/rendered_rgb.mp4", "condition/rendered_mask.mp4",
                "condition/firstframe_rgb.png", "condition/firstframe_depth.exr", "condition/firstframe_mask.png",
                "condition/cameras.npz", "generated/generated.mp4", "pano_video.mp4"):
        assert (case / rel).is_file(), rel
    cams = json.loads((case / "pano_video_cam.json").read_text())
    assert len(cams) == 5 and all(len(m) == 4 and len(m[0]) == 4 for m in cams)


ALLOWED = {"torch", "np", "imageio", "Image", "rearrange", "v2", "torchvision", "MASK_RATIO", "self"}


LOAD_720 = r"""
import json, sys, torch
root = sys.argv[1]
sys.path.insert(0, root + "/code/DiffSynth-Studio")
from diffsynth import ModelManager
d = root + "/checkpoints/Wan-AI/Wan2.1-I2V-14B-720P"
mm = ModelManager(torch_dtype=torch.bfloat16, device="cpu")
mm.load_models([[f"{d}/diffusion_pytorch_model-0000{i}-of-00007.safetensors" for i in range(1, 8)]])
before = mm.model[0].blocks[0].self_attn.q.weight.clone()
mm.load_lora(root + "/checkpoints/Wan-AI/wan_lora/pano_video_gen_720p.bin", lora_alpha=1.0)
print(json.dumps({"names": mm.model_name, "changed": not torch.equal(before, mm.model[0].blocks[0].self_attn.q.weight)}))
"""


def test_the_doctor_reads_the_fake_checkout_like_a_real_one(python, checkout, tmp_path):
    root, _ = checkout
    assert video_version(root) == "980959f"
    assert video_version(make_checkout(tmp_path / "later", version="later")) == "later"
    assert VideoInputs.in_checkout(root, 480).problems() == []
    assert any("720P" in p for p in VideoInputs.in_checkout(root, 720).problems())
    make_weights(python, root, resolution=720)  # adds the 720P folder and the .bin LoRA beside the 480p files
    assert VideoInputs.in_checkout(root, 720).problems() == []
    assert run(python, LOAD_720, str(root)) == {"names": ["wan_video_dit"], "changed": True}
    # The dataset class uses only the names the native stage puts in its namespace (plus builtins and locals).
    tree = ast.parse((root / VIDEO_SCRIPT).read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TextVideoDataset")
    bound = {a.arg for n in ast.walk(cls) if isinstance(n, ast.arguments) for a in n.args + n.kwonlyargs}
    bound |= {n.id for n in ast.walk(cls) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    loaded = {n.id for n in ast.walk(cls) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    assert loaded - bound - ALLOWED - set(dir(builtins)) == set()
