"""Video stage (panorama -> panoramic video), native, run in the target interpreter:
`<python> -m m3d_doctor.runtime.video run --inputs-json ... --plan-json ... --out DIR --resolution 480|720`.

It runs the user's own Matrix-3D code — the vendored `diffsynth` (`WanVideoPipeline` with the fork's
`cond_video`/`cond_mask` conditioning, `ModelManager`, upstream's LoRA merge), `utils_3dscene.nvrender` for the
camera-rail render, MoGe, and the `TextVideoDataset` read-back of `code/panoramic_image_to_video.py` — imported
from the checkout, never copied. What changes is only *where* tensors live (upstream: the whole 14B DiT resident,
40-60 GB of VRAM, 100-134 GB of host RAM while loading; modelscope, xfuser and torch.distributed even on one GPU):

1. `condition` (a child process, so its GPU memory is returned to the driver before any model is placed): the
   panorama resized to 2048x1024 as `moge.png`, MoGe through `sys.executable` (exit code and outputs checked),
   the rail render, and every file upstream writes under `condition/` (the 3D stage reads them).
2. `generate`: CLIP (fp32), T5 and the VAE loaded by upstream's `ModelManager`; the DiT built on the meta device
   from upstream's own key-hash -> config table and filled tensor by tensor from the safetensors shards
   (fp32 -> bf16, as upstream's `.to(dtype)`), block by block, each block's LoRA merged with upstream's
   `GeneralLoRAFromPeft.load` as soon as the block is complete. Resident blocks go to the GPU as they are built;
   streamed blocks stay in host memory and `PartialResidency` copies them into pinned buffers.
   `pipe.load_models_to_device` is replaced on the instance, so upstream's unmodified `__call__` drives the
   planner's phases: T5 alone; then CLIP + VAE (T5 dropped); then the DiT (CLIP dropped, DiT materialised per
   plan, SDPA's math backend disabled); then the VAE alone for the tiled decode (DiT dropped).
3. Outputs exactly where upstream writes them: `generated/generated.mp4`, `pano_video.mp4`, `pano_video_cam.json`.

stdout carries JSON lines only (`phase`, `progress`, `done`); everything else goes to stderr (the stage log).
Same modules, dtypes, kernels and order as upstream, so the frames equal upstream's on the same GPU.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import types
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch
from m3d_doctor.upstream import VIDEO_SCRIPT, VideoInputs, render_needs_cuda

PROMPT_SUFFIX = (" The video is of high quality, and the view is very clear. High quality, masterpiece, best quality, "
                 "highres, ultra-detailed, fantastic.")  # upstream L328
NEGATIVE_PROMPT = "The video is not of a high quality, it has a low resolution. Distortion. strange artifacts."
TARGET_WH = {480: (960, 480), 720: (1440, 720)}  # upstream L318: (width, height)
COND_SIZE = (2048, 1024)  # upstream L231: the panorama MoGe and the rail render work on
CONDITION_FILES = ("condition/rendered_rgb.mp4", "condition/rendered_mask.mp4", "condition/firstframe_rgb.png",
                   "condition/firstframe_depth.exr", "condition/firstframe_mask.png", "condition/cameras.npz")
OUTPUTS = ("pano_video.mp4", "pano_video_cam.json", "generated/generated.mp4", *CONDITION_FILES)


class StageInputError(Exception):
    """Bad input found by the stage itself: one line on stderr, exit 2, nothing written that looks finished."""


def emit(event: str, **data: Any) -> None:
    print(json.dumps({"event": event, **data}), flush=True)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _cv2():
    os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")  # upstream L4: depth maps are EXR
    import cv2

    return cv2


def write_video(frames: list[np.ndarray], path: Path, fps: int) -> None:
    """What upstream's `pipeline_utils_3dscene.write_video` does (cv2, mp4v), without importing that module
    (it pulls pyrender and libGL in for this one function)."""
    cv2 = _cv2()
    h, w = frames[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
        out.write(np.ascontiguousarray(f))
    out.release()
    if not path.is_file() or path.stat().st_size == 0:
        raise RuntimeError(f"could not write {path} (OpenCV without an mp4v encoder?)")


# --------------------------------------------------------------------------- conditioning (upstream L231-275)

def run_moge(inputs: VideoInputs, image: Path, case: Path, device: str) -> tuple[Path, Path]:
    """MoGe as upstream runs it, but with this interpreter and with its exit code and outputs checked."""
    cmd = [sys.executable, "scripts/infer_panorama.py", "--input", str(image), "--output", str(case),
           "--pretrained", str(inputs.moge), "--device", device, "--threshold", "0.03", "--maps", "--ply"]
    env = dict(os.environ, OPENCV_IO_ENABLE_OPENEXR="1")
    log(f"$ (cd {inputs.root / 'code/MoGe'} && {' '.join(cmd)})")
    p = subprocess.run(cmd, cwd=inputs.root / "code" / "MoGe", env=env, stdout=sys.stderr, stderr=sys.stderr)
    depth, mask = case / "moge" / "depth.exr", case / "moge" / "mask.png"
    if p.returncode != 0:
        raise RuntimeError(f"MoGe failed with exit code {p.returncode} (its output is above in this log)")
    missing = [str(x) for x in (depth, mask) if not x.is_file()]
    if missing:
        raise RuntimeError(f"MoGe exited 0 but did not write {', '.join(missing)}")
    return depth, mask


def condition(inputs: VideoInputs, case: Path, device: str, angle: float, movement_range: float,
              movement_mode: str, json_path: str, frames: int) -> None:
    """Upstream L231-275 on one device: moge.png, MoGe, the rail render, the condition files."""
    cv2 = _cv2()
    _import_paths(inputs.root)
    from utils_3dscene.nvrender import load_rail, perform_camera_movement_with_cam_input

    if json_path and not os.path.isfile(json_path):
        raise StageInputError(f"--camera-json {json_path}: no such file")
    src = cv2.imread(str(case / "pano_img.jpg"), cv2.IMREAD_UNCHANGED)
    if src is None:
        raise StageInputError(f"{case / 'pano_img.jpg'}: missing or unreadable (run the pano stage first)")
    panorama = cv2.resize(src, COND_SIZE, interpolation=cv2.INTER_AREA)
    image = case / "moge.png"
    cv2.imwrite(str(image), panorama)
    emit("phase", name="moge")
    depth_path, mask_path = run_moge(inputs, image, case, device)
    depth = cv2.imread(str(depth_path), cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
    mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)[:, :] > 127
    depth[~mask] = 2.0 * depth[mask].max()
    emit("phase", name="render")
    pano_t = (torch.from_numpy(panorama).float() / 255.0).to(device)
    depth_t = torch.from_numpy(depth).float().to(device)
    mask_t = torch.from_numpy(mask).bool().to(device)
    rail = load_rail(json_path) if json_path else None
    rgb, rmask, rts, ff_rgb, ff_depth, angle = perform_camera_movement_with_cam_input(
        pano_t, depth_t, angle=angle, movement_ratio=movement_range, frame_size=frames, preset_rail=rail,
        mode=movement_mode)
    cond = case / "condition"
    cond.mkdir(parents=True, exist_ok=True)
    rgb_np = (rgb.cpu().numpy() * 255.0).astype(np.uint8)
    mask_np = (rmask.float()[:, :, :, None].repeat(1, 1, 1, 3).cpu().numpy() * 255.0).astype(np.uint8)
    write_video(list(rgb_np), cond / "rendered_rgb.mp4", 12)
    write_video(list(mask_np), cond / "rendered_mask.mp4", 12)
    w = ff_rgb.shape[1]
    q = int(angle / 360.0 * w + w // 2) % w
    mask_t = torch.cat([mask_t[:, q:], mask_t[:, :q]], dim=1)
    mask_t = torch.cat([mask_t[:, w // 2:], mask_t[:, :w // 2]], dim=1)
    cv2.imwrite(str(cond / "firstframe_rgb.png"), (ff_rgb.cpu().numpy() * 255.0).astype(np.uint8))
    cv2.imwrite(str(cond / "firstframe_depth.exr"), ff_depth.cpu().numpy())
    cv2.imwrite(str(cond / "firstframe_mask.png"), mask_t.cpu().numpy().astype(np.uint8) * 255)
    np.savez(cond / "cameras.npz", rts.cpu().numpy())
    missing = [f for f in CONDITION_FILES if not (case / f).is_file()]
    if missing:
        raise RuntimeError(f"conditioning did not write {', '.join(missing)}")


# --------------------------------------------------------------------------- the checkout's code

def _import_paths(root: Path) -> None:
    """The checkout's `code/` and its vendored DiffSynth first on sys.path (upstream appends
    `./DiffSynth-Studio` relative to the CWD, which only works when diffsynth is also pip-installed)."""
    for p in (root / "code" / "DiffSynth-Studio", root / "code"):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))


def import_diffsynth(root: Path) -> types.SimpleNamespace:
    """Upstream's vendored diffsynth. Two import-only gaps are bridged, in this process alone: `modelscope`
    (imported at module top by `models/downloader.py`, never called by this stage: a stub that refuses to
    download) and transformers >= 5, which moved `PretrainedConfig` out of `transformers.modeling_utils`
    (imported at diffsynth import by `models/stepvideo_text_encoder.py`): an alias to the same class."""
    _import_paths(root)
    try:
        import modelscope  # noqa: F401
    except ImportError:
        stub = types.ModuleType("modelscope")

        def snapshot_download(*a: Any, **k: Any) -> None:
            raise RuntimeError("m3d-doctor's video stage never downloads through modelscope")

        stub.snapshot_download = snapshot_download
        sys.modules["modelscope"] = stub
    try:
        import transformers.modeling_utils as mu

        if not hasattr(mu, "PretrainedConfig"):
            from transformers import PretrainedConfig

            mu.PretrainedConfig = PretrainedConfig
    except ImportError:
        pass
    import diffsynth
    from diffsynth.configs.model_config import model_loader_configs
    from diffsynth.models.lora import GeneralLoRAFromPeft
    from diffsynth.models.utils import hash_state_dict_keys, init_weights_on_device, load_state_dict

    where = Path(diffsynth.__file__).resolve()
    if root.resolve() not in where.parents:
        log(f"warning: diffsynth imported from {where}, not from the checkout {root}")
    return types.SimpleNamespace(ModelManager=diffsynth.ModelManager, WanVideoPipeline=diffsynth.WanVideoPipeline,
                                 configs=model_loader_configs, GeneralLoRAFromPeft=GeneralLoRAFromPeft,
                                 hash_state_dict_keys=hash_state_dict_keys,
                                 init_weights_on_device=init_weights_on_device, load_state_dict=load_state_dict)


def text_video_dataset(root: Path) -> tuple[type, float]:
    """`TextVideoDataset` and `MASK_RATIO` from the checkout's `panoramic_image_to_video.py`, executed alone:
    importing the script runs its top-level imports (modelscope, xfuser, pyrender for `write_video`), which the
    stage does not need. The read-back keeps upstream's quirks (the (w, h) resize, the mp4v round trip)."""
    path = root / VIDEO_SCRIPT
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    keep = [n for n in tree.body if (isinstance(n, ast.ClassDef) and n.name == "TextVideoDataset") or
            (isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "MASK_RATIO" for t in n.targets))]
    if len(keep) != 2:
        raise StageInputError(f"{path}: no TextVideoDataset class or MASK_RATIO (upstream changed; update the "
                              "checkout or m3d-doctor)")
    import imageio
    from einops import rearrange
    from PIL import Image

    try:
        import torchvision
        from torchvision.transforms import v2
    except ImportError:  # a checkout whose dataset needs no torchvision (the test fake) still runs
        torchvision, v2 = None, None
    ns: dict[str, Any] = {"torch": torch, "np": np, "imageio": imageio, "Image": Image, "rearrange": rearrange,
                          "v2": v2, "torchvision": torchvision, "__name__": "panoramic_image_to_video"}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), ns)
    return ns["TextVideoDataset"], float(ns["MASK_RATIO"])


# --------------------------------------------------------------------------- the DiT, lazily

def _shard_index(shards: Iterable[Path]) -> tuple[dict[str, Path], dict[str, torch.Tensor]]:
    """Which shard holds each tensor, and meta tensors of the right shapes (for upstream's key+shape hash):
    only headers are read."""
    from safetensors import safe_open

    where: dict[str, Path] = {}
    meta: dict[str, torch.Tensor] = {}
    for f in shards:
        with safe_open(str(f), framework="pt", device="cpu") as h:
            for k in h.keys():  # noqa: SIM118 - safe_open is not iterable
                where[k] = f
                meta[k] = torch.empty(h.get_slice(k).get_shape(), device="meta")
    return where, meta


def dit_config(ds: types.SimpleNamespace, meta: dict[str, torch.Tensor]) -> tuple[type, dict[str, Any]]:
    """The DiT class and constructor config through upstream's own detection: the key+shape hash in
    `model_loader_configs`, then the class's `state_dict_converter().from_civitai` (which maps the hash to a
    config), as `ModelManager.load_model` would — without reading a byte of weights."""
    digest = ds.hash_state_dict_keys(meta, with_shape=True)
    for _keys, keys_shape, names, classes, resource_kind in ds.configs:
        if keys_shape == digest and names[0] == "wan_video_dit":
            conv = classes[0].state_dict_converter()
            result = conv.from_civitai(meta) if resource_kind == "civitai" else conv.from_diffusers(meta)
            config = result[1] if isinstance(result, tuple) else {}
            return classes[0], config
    raise StageInputError(f"the DiT shards are not a model upstream's loader recognises (key hash {digest}); "
                          "expected Wan2.1-I2V-14B")


class LazyDiT:
    """The DiT on the meta device, materialised block by block from the shards, LoRA merged per block."""

    def __init__(self, ds: types.SimpleNamespace, inputs: VideoInputs, dtype: torch.dtype):
        self.ds, self.dtype = ds, dtype
        self.where, meta = _shard_index(inputs.shards)
        cls, config = dit_config(ds, meta)
        with ds.init_weights_on_device():
            self.model = cls(**config)
        self.model.eval()
        self.lora = self._split_lora(ds.load_state_dict(str(inputs.lora)))
        self.blocks_done = 0

    def _owner(self, key: str) -> str:
        parts = key.split(".")
        return ".".join(parts[:2]) if parts[0] == "blocks" else parts[0]

    def _split_lora(self, sd: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """LoRA tensors by the module they patch (`blocks.{i}` or a top-level child), prefix stripped, after
        upstream's own match (every target must be a parameter of the DiT, or upstream would not load it)."""
        if self.ds.GeneralLoRAFromPeft().match(self.model, sd) is None:
            raise StageInputError("the panoramic-video LoRA does not match this DiT's parameters (a LoRA for "
                                  "another model?)")
        out: dict[str, dict[str, torch.Tensor]] = {}
        for k, v in sd.items():
            key = k[len("diffusion_model."):] if k.startswith("diffusion_model.") else k
            owner = self._owner(key)
            out.setdefault(owner, {})[key[len(owner) + 1:]] = v
        return out

    def _load(self, owner: str, module: torch.nn.Module, device: torch.device) -> None:
        """Fill `module` (named `owner` in the DiT) from the shards, on `device`, then merge its LoRA."""
        from safetensors import safe_open

        prefix = owner + "."
        keys = [k for k in self.where if k.startswith(prefix)]
        by_file: dict[Path, list[str]] = {}
        for k in keys:
            by_file.setdefault(self.where[k], []).append(k)
        sd = {}
        for f, ks in by_file.items():
            with safe_open(str(f), framework="pt", device="cpu") as h:
                for k in ks:
                    sd[k[len(prefix):]] = h.get_tensor(k).to(self.dtype).to(device)
        try:
            module.load_state_dict(sd, strict=True, assign=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[1:2] or [str(exc)[:200]]
            raise StageInputError(f"the DiT shards do not hold {owner} as upstream's model defines it (a missing "
                                  f"or truncated shard?): {first[0].strip()}") from None
        for m in module.modules():  # upstream's model.to(dtype) converts floating buffers too
            for name, b in list(m._buffers.items()):
                if b is not None and b.is_floating_point():
                    m._buffers[name] = b.to(self.dtype)
        patch = self.lora.get(owner)
        if patch:
            self.ds.GeneralLoRAFromPeft().load(module, patch, alpha=1.0)

    def materialise(self, device: torch.device, streamed: set[int]) -> None:
        """Non-block modules and resident blocks on `device`, streamed blocks in host memory."""
        dit = self.model
        for name, child in dit.named_children():
            if name != "blocks":
                self._load(name, child, device)
        for i, block in enumerate(dit.blocks):
            self._load(f"blocks.{i}", block, torch.device("cpu") if i in streamed else device)
            self.blocks_done = i + 1
        self.lora = {}  # merged: its host copy is not needed any more
        leftover = [n for n, p in dit.named_parameters() if p.is_meta]
        if leftover:
            raise StageInputError(f"the DiT shards lack {len(leftover)} tensors (first: {leftover[0]})")


# --------------------------------------------------------------------------- placement at upstream's phases

class Phases:
    """Replaces `pipe.load_models_to_device` on the instance: upstream's `__call__` calls it at each phase
    boundary (text encoder, image encoder + VAE, DiT, VAE, nothing), and this places what the plan says."""

    def __init__(self, pipe: Any, dit: LazyDiT, plan: dict[str, Any], device: torch.device):
        self.pipe, self.dit, self.plan, self.device = pipe, dit, plan, device
        self.streamed = set(plan.get("streamed_indices") or [])
        self.residency: Any = None
        self.guard: Any = None
        self.current = "start"
        self.peaks: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def _close_phase(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[self.current] = round(self.seconds.get(self.current, 0.0) + now - self._t, 3)
        self._t = now
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peaks[self.current] = max(self.peaks.get(self.current, 0),
                                           int(torch.cuda.max_memory_allocated(self.device)))
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        self.current = name
        emit("phase", name=name)

    def _drop(self, attr: str) -> None:
        """Free a model used for the last time (its host copy too: it is never needed again in this run)."""
        model = getattr(self.pipe, attr, None)
        if model is None:
            return
        model.to("meta")
        if attr == "text_encoder":
            self.pipe.prompter.text_encoder = None

    def __call__(self, names: list[str] = ()) -> None:  # noqa: B006 - upstream's signature
        """Free what the finished phase used for the last time, record its peak, then place the next phase."""
        names = list(names)
        dev = self.device
        if "text_encoder" in names:
            self._close_phase("text_encoder")
            self.pipe.text_encoder.to(dev)
        elif "image_encoder" in names:
            self._drop("text_encoder")
            self._close_phase("image_encoder")
            self.pipe.image_encoder.to(dev)
            self.pipe.vae.to(dev)
        elif "dit" in names:
            self._drop("image_encoder")
            self._close_phase("load_dit")
            self.pipe.vae.to(dev)  # the planner keeps the VAE on the GPU while denoising
            self.dit.materialise(dev, self.streamed)
            self.residency = place_dit(self.dit.model, self.streamed, dev)
            self._close_phase("denoise")
            self.guard = no_math_attention(dev)
            self.guard.__enter__()
        elif names == ["vae"]:
            if self.guard is not None:
                self.guard.__exit__(None, None, None)
                self.guard = None
            if self.residency is not None:
                self.residency.remove()
                self.residency = None  # its pinned host buffers and GPU slots go with it
            self._drop("dit")
            self._close_phase("decode")
            self.pipe.vae.to(dev)
        else:
            self._close_phase("end")

ROPE_CHUNK = 4096  # tokens per slice of the float64 RoPE temporaries (2 x 0.17 GB at 4096 tokens)


def install_chunked_rope(module: types.ModuleType) -> Callable[[], None]:
    """Replace `module.rope_apply` (upstream's `models/wan_video_dit.py`, resolved at call time by
    `SelfAttention.forward`) with the same function applied to slices of the sequence, written into one bf16
    output. RoPE is element-wise along the sequence, so every output element is computed by the same code from
    the same inputs (bit-identical; the benchmark checks it on the GPU), while the float64 copy and the complex
    product that dominate upstream's block peak (2 x 3.5 GB at 720p) shrink to one slice. Returns the undo."""
    orig = module.rope_apply
    if getattr(orig, "_m3d_chunked", False):
        return lambda: None

    def rope_apply(x: torch.Tensor, freqs: torch.Tensor, num_heads: int) -> torch.Tensor:
        n = x.shape[1]
        if n <= ROPE_CHUNK:
            return orig(x, freqs, num_heads)
        out = torch.empty_like(x)
        for i in range(0, n, ROPE_CHUNK):
            out[:, i:i + ROPE_CHUNK] = orig(x[:, i:i + ROPE_CHUNK], freqs[i:i + ROPE_CHUNK], num_heads)
        return out

    rope_apply._m3d_chunked = True  # type: ignore[attr-defined]
    module.rope_apply = rope_apply

    def undo() -> None:
        module.rope_apply = orig
    return undo


def place_dit(dit: torch.nn.Module, streamed: set[int], device: torch.device) -> Any:
    """The DiT per plan: every non-block module and the resident blocks on `device`, the streamed blocks in
    pinned host memory behind `PartialResidency` (two GPU slots, prefetched on a side stream). Returns the
    residency (None when nothing streams). The benchmark places its in-memory model through this same call."""
    for name, child in dit.named_children():
        if name != "blocks":
            child.to(device)
    for i, block in enumerate(dit.blocks):
        if i not in streamed:
            block.to(device)
    if not streamed:
        return None
    from m3d_doctor.runtime.residency import PartialResidency

    return PartialResidency(dit.blocks, sorted(streamed), device).apply()


def no_math_attention(device: torch.device) -> Any:
    """SDPA without its math backend while denoising: a fallback there materialises N x N scores (160 GiB at
    480p, DiffSynth-Studio#462). Flash, memory-efficient and cuDNN attention compute the same function."""
    if device.type != "cuda":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION])


def progress(total_hint: int) -> Callable[[Any], Iterator[Any]]:
    """A `progress_bar_cmd` for upstream's denoise loop: one JSON progress line after each step."""
    def wrap(items: Any) -> Iterator[Any]:
        n = len(items) if hasattr(items, "__len__") else total_hint
        for i, item in enumerate(items):
            yield item
            emit("progress", step=i + 1, total=n)
    return wrap


def build_pipeline(ds: types.SimpleNamespace, inputs: VideoInputs, device: torch.device,
                   dtype: torch.dtype) -> tuple[Any, LazyDiT]:
    """Upstream L280-312 without the DiT's state dict: CLIP (fp32), T5 and VAE through `ModelManager`, the DiT
    registered in the manager as upstream's loader would have, but still on the meta device."""
    mm = ds.ModelManager(torch_dtype=dtype, device="cpu")
    mm.load_models([str(inputs.clip)], torch_dtype=torch.float32)  # upstream: "Image Encoder is loaded with float32"
    mm.load_models([str(inputs.t5), str(inputs.vae)])
    found = set(mm.model_name)
    for need, path in (("wan_video_image_encoder", inputs.clip), ("wan_video_text_encoder", inputs.t5),
                       ("wan_video_vae", inputs.vae)):
        if need not in found:
            raise StageInputError(f"{path}: upstream's ModelManager did not recognise it as {need} (a truncated "
                                  "or different file: re-download it)")
    dit = LazyDiT(ds, inputs, dtype)
    install_chunked_rope(sys.modules[type(dit.model).__module__])
    mm.model.append(dit.model)
    mm.model_path.append([str(s) for s in inputs.shards])
    mm.model_name.append("wan_video_dit")
    # the tokenizer folder must sit beside the T5 file (fetch_models reads dirname(t5)/google/umt5-xxl)
    pipe = ds.WanVideoPipeline.from_model_manager(mm, torch_dtype=dtype, device=str(device), use_usp=False)
    mm.model.clear()  # the pipeline holds the models now; dropping one must free it
    return pipe, dit


def condition_arrays(root: Path, case: Path, prompt: str, width: int, height: int,
                     frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Upstream L321-325: the condition videos read back through its dataset class, as float arrays."""
    dataset_cls, _ratio = text_video_dataset(root)
    cond = case / "condition"
    dset = dataset_cls(vid_path=str(cond / "rendered_rgb.mp4"), mask_path=str(cond / "rendered_mask.mp4"),
                       text=prompt, height=height, width=width, max_num_frames=frames, num_frames=frames)
    cases = dset[0]
    if cases is None or cases.get("masked_video") is None:
        raise RuntimeError(f"the condition videos in {cond} hold fewer than {frames} frames")
    cond_video = ((cases["masked_video"].permute(1, 2, 3, 0) + 1.0) / 2.0 * 255.0).cpu().numpy()
    cond_mask = ((cases["mask_video"].permute(1, 2, 3, 0) + 1.0) / 2.0 * 255.0).cpu().numpy()
    return cond_video, cond_mask


def denoise_video(inputs: VideoInputs, case: Path, plan: dict[str, Any], device: torch.device, seed: int,
                  steps: int, frames: int, size: Optional[tuple[int, int]] = None) -> tuple[list[Any], dict[str, Any]]:
    """Upstream L280-338 with the planner's placement: the frames (PIL images) and what the phases measured.
    `size` (width, height) replaces upstream's fixed 960x480 / 1440x720 only for selftests on tiny models."""
    dtype = torch.bfloat16
    width, height = size or TARGET_WH[inputs.resolution]
    prompt = (case / "prompt.txt").read_text(encoding="utf-8")
    cond_video, cond_mask = condition_arrays(inputs.root, case, prompt, width, height, frames)
    emit("phase", name="load")
    ds = import_diffsynth(inputs.root)
    pipe, dit = build_pipeline(ds, inputs, device, dtype)
    phases = Phases(pipe, dit, plan, device)
    pipe.load_models_to_device = phases
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    video = pipe(prompt=prompt + PROMPT_SUFFIX, negative_prompt=NEGATIVE_PROMPT, cfg_scale=5.0, num_frames=frames,
                 num_inference_steps=steps, seed=seed, tiled=True, height=height, width=width,
                 cond_video=cond_video, cond_mask=cond_mask, progress_bar_cmd=progress(steps))
    frames_np = np.stack([np.asarray(f) for f in video])
    return video, {"frames": len(video), "size": [height, width], "phase_peaks": phases.peaks,
                   "phase_seconds": phases.seconds, "streamed_indices": sorted(phases.streamed),
                   "frame_mean": round(float(frames_np.mean()), 4), "finite": bool(np.isfinite(frames_np).all()),
                   "frames_sha256": hashlib.sha256(frames_np.tobytes()).hexdigest()}


def write_outputs(case: Path, video: list[Any]) -> None:
    """Upstream L339-359: generated/generated.mp4 (BGR, 24 fps), its copy pano_video.mp4 and the cameras as
    pano_video_cam.json; the two top-level files appear complete or not at all."""
    gen = case / "generated"
    gen.mkdir(parents=True, exist_ok=True)
    write_video([np.array(f)[:, :, ::-1] for f in video], gen / "generated.mp4", 24)
    rts = np.load(case / "condition" / "cameras.npz")["arr_0"]
    tmp = case / ".pano_video_cam.json.tmp"
    tmp.write_text(json.dumps(rts.tolist(), indent=4))
    shutil.copyfile(gen / "generated.mp4", case / ".pano_video.mp4.tmp")
    os.replace(case / ".pano_video.mp4.tmp", case / "pano_video.mp4")
    os.replace(tmp, case / "pano_video_cam.json")


def generate(inputs: VideoInputs, case: Path, plan: dict[str, Any], device: torch.device, seed: int, steps: int,
             frames: int, size: Optional[tuple[int, int]] = None) -> dict[str, Any]:
    video, info = denoise_video(inputs, case, plan, device, seed, steps, frames, size)
    write_outputs(case, video)
    return info


def host_peak_bytes() -> int:
    """Peak resident host memory of this process and of its finished children (Linux: KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return int(max(own, kids)) * 1024


# --------------------------------------------------------------------------- command line

def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="m3d_doctor.runtime.video")
    ap.add_argument("phase", choices=["run", "condition", "generate"])
    ap.add_argument("--inputs-json", required=True, help="upstream.VideoInputs.to_dict()")
    ap.add_argument("--plan-json", default="{}")
    ap.add_argument("--out", required=True, help="the case folder (pano_img.jpg, prompt.txt in; outputs out)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--angle", type=float, default=0.0)
    ap.add_argument("--movement-range", type=float, default=0.6)
    ap.add_argument("--movement-mode", default="straight")
    ap.add_argument("--json-path", default="")
    ap.add_argument("--size", default=None, help=argparse.SUPPRESS)  # WxH: selftests on tiny models only
    return ap


def _child_args(a: argparse.Namespace, phase: str) -> list[str]:
    return [sys.executable, "-m", "m3d_doctor.runtime.video", phase, "--inputs-json", a.inputs_json,
            "--plan-json", a.plan_json, "--out", a.out, "--seed", str(a.seed), "--steps", str(a.steps),
            "--frames", str(a.frames), "--device", a.device, "--angle", str(a.angle),
            "--movement-range", str(a.movement_range), "--movement-mode", a.movement_mode,
            "--json-path", a.json_path] + (["--size", a.size] if a.size else [])


def main(argv: Optional[list[str]] = None) -> int:
    a = _parser().parse_args(argv)
    inputs = VideoInputs.from_dict(json.loads(a.inputs_json))
    case = Path(a.out)
    device = torch.device(a.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if a.frames % 4 != 1:
        print(f"m3d-doctor: error: --frames {a.frames}: must be 4k+1 (upstream uses 81)", file=sys.stderr)
        return 2
    try:
        problems = inputs.problems()
        if problems:
            raise StageInputError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        missing = [n for n in ("pano_img.jpg", "prompt.txt") if not (case / n).is_file()]
        if missing:
            raise StageInputError(f"{case}: no {' or '.join(missing)} (the pano stage writes them; run it first)")
        if device.type != "cuda" and a.phase != "generate" and render_needs_cuda(inputs.root):
            raise StageInputError("the camera-rail render (code/utils_3dscene/nvrender.py) uses nvdiffrast's CUDA "
                                  "rasterizer: the video stage needs a GPU (--device cuda)")
        t0 = time.perf_counter()
        if a.phase == "condition":
            condition(inputs, case, str(device), a.angle, a.movement_range, a.movement_mode, a.json_path, a.frames)
            return 0
        if a.phase == "run":
            emit("phase", name="condition")
            p = subprocess.run(_child_args(a, "condition"))  # its own process: its GPU memory is returned
            if p.returncode != 0:
                return p.returncode
        cond_s = time.perf_counter() - t0
        size = tuple(int(x) for x in a.size.lower().split("x")) if a.size else None
        result = generate(inputs, case, json.loads(a.plan_json), device, a.seed, a.steps, a.frames, size)
        peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0
        peaks = result.get("phase_peaks", {})
        emit("done", outputs=list(OUTPUTS), seconds=round(time.perf_counter() - t0, 3),
             condition_s=round(cond_s, 3), peak_bytes=max([peak, *peaks.values()]),
             host_peak_bytes=host_peak_bytes(), **result)
        return 0
    except StageInputError as exc:
        print(f"m3d-doctor: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
