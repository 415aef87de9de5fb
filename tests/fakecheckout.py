"""A fake SkyworkAI/Matrix-3D checkout for tests: upstream's file layout and interfaces, tiny torch models.

The tree lives in tests/fixtures/fake_matrix3d/ (no upstream code: written from the interfaces). Tests copy it,
so they can break the copy:

    root = make_checkout(tmp_path / "Matrix-3D")                 # the 980959f layout
    root = make_checkout(tmp_path / "Matrix-3D", version="later")  # + --enable_vram_management, --use_5b_model
    info = make_weights(python, root, resolution=480)           # tiny checkpoints under root/checkpoints/
    case = write_case(python, tmp_path / "case")                # pano_img.jpg + prompt.txt
    stubs = write_import_stubs(tmp_path / "stubs")              # modelscope, xfuser, torchvision stand-ins

`python` is a target interpreter with the packages in VIDEO_RUNNER_STEPS (torch CPU, numpy, safetensors,
opencv-python-headless, imageio, imageio-ffmpeg, pillow, einops). This module imports no torch: the test
process has none.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Optional

from conftest import LOCAL_TORCH

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "fake_matrix3d"
WEIGHTS_SCRIPT = FIXTURE / "make_tiny_weights.py"
VIDEO_SCRIPT = "code/panoramic_image_to_video.py"
# opencv < 5: the 5.0 wheels are built without OpenEXR (getBuildInformation: "OpenEXR: NO"), so MoGe's
# depth.exr can be neither written nor read; 4.14.0.94 has it (with OPENCV_IO_ENABLE_OPENEXR=1).
VIDEO_RUNNER_STEPS = [[LOCAL_TORCH, "numpy", "safetensors", "opencv-python-headless<5", "imageio", "imageio-ffmpeg",
                       "pillow", "einops"]]
VERSIONS = ("980959f", "later")
_LATER_OPTIONS = (
    '    parser.add_argument("--use_5b_model", action="store_true", help="use the Wan2.2 TI2V-5B model")\n'
    '    parser.add_argument("--enable_vram_management", action="store_true", help="low-VRAM mode")\n'
)
_NOT_COPIED = ("make_tiny_weights.py", "ruff.toml", "__pycache__", "*.pyc")


def _env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "M3D_", "FAKE_"))}
    e["PYTHONDONTWRITEBYTECODE"] = "1"
    return e


def make_checkout(dest: Path, version: str = "980959f") -> Path:
    """Copy the fake checkout to `dest` (which must not exist) and return it. version="later" adds upstream's
    later options (--enable_vram_management, --use_5b_model; both store_true) to the video script."""
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, not {version!r}")
    dest = Path(dest)
    shutil.copytree(FIXTURE, dest, ignore=shutil.ignore_patterns(*_NOT_COPIED))
    if version == "later":
        script = dest / VIDEO_SCRIPT
        text = script.read_text()
        anchor = "    args = parser.parse_args()\n"
        assert text.count(anchor) == 1, "the fake video script's argparse block changed"
        script.write_text(text.replace(anchor, _LATER_OPTIONS + anchor))
    return dest


def make_weights(python: Path, root: Path, resolution: int = 480, timeout: float = 300) -> dict[str, Any]:
    """Run WEIGHTS_SCRIPT with `python` for `root`; returns its JSON line (tiny configs, hashes, files)."""
    proc = subprocess.run([str(python), str(WEIGHTS_SCRIPT), "--root", str(root), "--resolution", str(resolution)],
                          capture_output=True, text=True, timeout=timeout, env=_env())
    if proc.returncode != 0:
        raise RuntimeError(f"make_tiny_weights.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


_PANORAMA = r"""
import sys
import cv2
import numpy as np

path, width, height, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(seed)
v = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
u = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
sky = np.array([235, 190, 120], np.float32) * (1 - 0.4 * v)  # BGR
ground = np.array([60, 110, 90], np.float32) * (0.6 + 0.4 * v)
img = np.where(v < 0.5, sky, ground) * np.ones_like(u)
for _ in range(12):  # buildings on the horizon
    x0 = int(rng.uniform(0, width)); w = int(rng.uniform(width / 40, width / 12)); h = int(rng.uniform(0.05, 0.3) * height)
    img[height // 2 - h:height // 2, x0:x0 + w] = rng.uniform(40, 220, 3)
img += rng.normal(0, 4, img.shape)
ok = cv2.imwrite(path, np.clip(img, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 92])
sys.exit(0 if ok else 1)
"""


def write_case(python: Path, case_dir: Path, prompt: str = "A quiet city street under a blue sky.",
               size: tuple[int, int] = (512, 256), seed: int = 0, timeout: float = 120,
               env: Optional[dict[str, str]] = None) -> Path:
    """A case folder as upstream's video stage reads it: pano_img.jpg (a synthetic 2:1 panorama of `size`
    (width, height), drawn with cv2 by `python`) and prompt.txt. Returns the folder."""
    case_dir = Path(case_dir)
    case_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([str(python), "-c", _PANORAMA, str(case_dir / "pano_img.jpg"), str(size[0]), str(size[1]),
                           str(seed)], capture_output=True, text=True, timeout=timeout, env={**_env(), **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"writing the test panorama failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    (case_dir / "prompt.txt").write_text(prompt, encoding="utf-8")
    return case_dir


_STUBS = {
    "modelscope/__init__.py": "def snapshot_download(model_id, local_dir=None, **kwargs):\n    return local_dir\n",
    "xfuser/__init__.py": "",
    "xfuser/core/__init__.py": "",
    "xfuser/core/distributed.py": ("def init_distributed_environment(rank=0, world_size=1, **kwargs):\n    pass\n\n\n"
                                   "def initialize_model_parallel(**kwargs):\n    pass\n\n\n"
                                   "def get_sequence_parallel_world_size():\n    return 1\n"),
    "torchvision/__init__.py": "",
    "torchvision/transforms/__init__.py": "v2 = None\n",
}


def write_import_stubs(dest: Path) -> Path:
    """A folder to put first on PYTHONPATH so the fake video script itself can run (delegated mode): no-op
    modelscope.snapshot_download (no network), no-op xfuser.core.distributed, and an empty torchvision (the
    test venv has none; the fake dataset does not use it). Returns the folder."""
    dest = Path(dest)
    for rel, text in _STUBS.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text(text)
    return dest
