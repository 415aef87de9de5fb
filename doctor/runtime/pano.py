"""Panorama stage (text -> 360° panorama) with diffusers' FluxPipeline, run in the target interpreter:
`<python> -m m3d_doctor.runtime.pano --source-json ... --plan-json ... --prompt ... --out DIR`.

Placement follows the planner's plan and never moves the whole pipeline first: the VAE goes to the GPU
(tiled per plan.vae_tile), the transformer is resident / partially resident (PartialResidency on the plan's
streamed_indices) / group-offloaded / sequentially offloaded, and the text encoders visit the GPU only to
encode. Prompts are encoded here (`pipe.encode_prompt(device=...)`) and passed as embeddings, and the
pipeline's `_execution_device` is checked to be the compute device before denoising: with the VAE on the
GPU, DiffusionPipeline.device reports it (0.42: the first non-CPU component; 0.34: the first component, the
VAE), and the offload modes answer through their hooks.

Seamless wrap: after every step the packed latents are unpacked to (C, h, w), the left and right column
bands are pulled together linearly so the seam is continuous, and repacked; decoding pads the latents
circularly by a few columns and crops, so the VAE sees the wrapped neighbours at both edges. `seam_metric`
measures the result. Progress goes to stdout as JSON lines; everything else to stderr (the stage log).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from m3d_doctor.pano_sources import PanoSource

BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")


def emit(event: str, **data: Any) -> None:
    print(json.dumps({"event": event, **data}), flush=True)


def dtype_for(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_pipeline(source: PanoSource, dtype: torch.dtype):
    from diffusers import FluxPipeline, FluxTransformer2DModel

    if source.kind == "single-file":
        transformer = FluxTransformer2DModel.from_single_file(source.transformer_file, config=source.base,
                                                              subfolder="transformer", torch_dtype=dtype)
        return FluxPipeline.from_pretrained(source.base, transformer=transformer, torch_dtype=dtype)
    return FluxPipeline.from_pretrained(source.base, torch_dtype=dtype)


def place(pipe, plan: dict[str, Any], device: torch.device) -> None:
    """The VAE (tiled per plan) now; the transformer once the prompt is encoded (`place_transformer`), so the
    text encoders and the resident blocks are never on the GPU together — the planner's phases."""
    pipe._m3d_plan, pipe._m3d_device, pipe._m3d_residency = plan, device, None
    if plan.get("mode", "resident") == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
        pipe._m3d_placed = True
        return
    pipe._m3d_placed = False
    pipe.vae.to(device)
    tile = plan.get("vae_tile")
    if tile:
        pipe.vae.enable_tiling()
        pipe.vae.tile_sample_min_size = tile
        pipe.vae.tile_latent_min_size = tile // 8


def place_transformer(pipe) -> Any:
    """The transformer per plan.mode; returns the PartialResidency (partial) or None."""
    plan, device = pipe._m3d_plan, pipe._m3d_device
    mode = plan.get("mode", "resident")
    pipe._m3d_placed = True
    tr = pipe.transformer
    if mode == "resident":
        tr.to(device)
        return None
    if mode == "group-offload":
        tr.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                                offload_type="block_level", num_blocks_per_group=1, use_stream=device.type == "cuda")
        return None
    from m3d_doctor.runtime.residency import PartialResidency

    for name, mod in tr.named_children():
        if name not in BLOCK_LISTS:
            mod.to(device)
    for name, buf in tr.named_buffers(recurse=False):
        tr._buffers[name] = buf.to(device)
    blocks = [b for name in BLOCK_LISTS for b in getattr(tr, name)]
    pipe._m3d_residency = PartialResidency(blocks, list(plan.get("streamed_indices", [])), device).apply()
    return pipe._m3d_residency


def encode(pipe, prompt: str, device: torch.device, max_seq: int, plan: dict[str, Any]):
    """Text encoders on the compute device for encoding, then back to the CPU (their memory is the
    transformer's during denoising)."""
    visit = plan.get("mode") != "sequential"
    encoders = [pipe.text_encoder, pipe.text_encoder_2]
    if visit:
        for e in encoders:
            e.to(device)
    with torch.no_grad():
        embeds, pooled, _ids = pipe.encode_prompt(prompt=prompt, prompt_2=None, device=device,
                                                  max_sequence_length=max_seq)
    if visit:
        for e in encoders:
            e.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return embeds, pooled


def wrap_latents(latents: torch.Tensor, height: int, width: int, vae_scale: int, band: int) -> torch.Tensor:
    """Pull the left and right `band` latent columns together so column w-1 meets column 0 (packed in/out)."""
    from diffusers import FluxPipeline

    b, _, packed_c = latents.shape
    x = FluxPipeline._unpack_latents(latents, height, width, vae_scale)  # (B, C, h, w)
    band = max(1, min(band, x.shape[-1] // 4))
    d = x[..., :1] - x[..., -1:]  # the jump across the seam
    ramp = torch.arange(1, band + 1, device=x.device, dtype=x.dtype) / band
    x = x.clone()
    x[..., -band:] += 0.5 * d * ramp  # right band rises to the midpoint
    x[..., :band] -= 0.5 * d * ramp.flip(0)  # left band falls to it
    return FluxPipeline._pack_latents(x, b, packed_c // 4, x.shape[-2], x.shape[-1])


def decode(pipe, latents: torch.Tensor, height: int, width: int, wrap: bool, pad: int = 4) -> np.ndarray:
    """Unpacked latents -> image (H, W, 3) in [0, 1]; with wrap, circular latent padding then a crop."""
    x = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
    x = x / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
    pad = min(pad, x.shape[-1] // 2) if wrap else 0
    if pad:
        x = torch.cat([x[..., -pad:], x, x[..., :pad]], dim=-1)
    vae_device = next(pipe.vae.parameters()).device
    with torch.no_grad():
        img = pipe.vae.decode(x.to(vae_device, pipe.vae.dtype), return_dict=False)[0]
    if pad:
        px = pad * pipe.vae_scale_factor
        img = img[..., px:-px]
    return ((img[0].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy()


def generate(pipe, prompt: str, device: torch.device, plan: dict[str, Any], *, height: int, width: int,
             steps: int, seed: int, wrap: bool = True, guidance: float = 3.5, max_seq: int = 512,
             band: int = 4, on_step: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
    """The stage's whole computation on already-placed components: encode, denoise (wrapping), decode."""
    embeds, pooled = encode(pipe, prompt, device, max_seq, plan)
    if not getattr(pipe, "_m3d_placed", True):
        place_transformer(pipe)
    if pipe._execution_device.type != device.type:
        raise RuntimeError(f"pipeline would execute on {pipe._execution_device}, not {device}: placement bug")

    def callback(p, i: int, t: Any, kw: dict[str, Any]) -> dict[str, Any]:
        if on_step:
            on_step(i + 1, steps)
        if wrap:
            return {"latents": wrap_latents(kw["latents"], height, width, pipe.vae_scale_factor, band)}
        return {}

    gen = torch.Generator("cpu").manual_seed(seed)
    with torch.no_grad():
        latents = pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=height, width=width,
                       num_inference_steps=steps, guidance_scale=guidance, generator=gen, output_type="latent",
                       max_sequence_length=max_seq, callback_on_step_end=callback,
                       callback_on_step_end_tensor_inputs=["latents"], return_dict=False)[0]
    return decode(pipe, latents, height, width, wrap)


def seam_metric(img: np.ndarray) -> float:
    """Mean |last column - first column| over the mean |column j+1 - column j| elsewhere: 1.0 means the seam
    looks like any other column boundary; above 1 it shows, below 1 it is smoother than the image."""
    x = np.asarray(img, dtype=np.float64)
    seam = np.abs(x[:, -1] - x[:, 0]).mean()
    inner = np.abs(np.diff(x, axis=1)).mean()
    return float(seam / inner) if inner > 0 else float("inf")


def write_outputs(out: Path, img: np.ndarray, prompt: str) -> list[str]:
    """`pano_img.jpg` and `prompt.txt` as upstream step 2 reads them, each written under a temporary name and
    renamed when complete."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".pano_img.jpg.tmp"
    Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)).save(tmp, format="JPEG", quality=95)
    os.replace(tmp, out / "pano_img.jpg")
    tmp = out / ".prompt.txt.tmp"
    tmp.write_text(prompt, encoding="utf-8")
    os.replace(tmp, out / "prompt.txt")
    return ["pano_img.jpg", "prompt.txt"]


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # host RSS (Linux: KiB)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="m3d_doctor.runtime.pano")
    ap.add_argument("--source-json", required=True)
    ap.add_argument("--plan-json", default="{}")
    ap.add_argument("--lora", default=None)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--guidance", type=float, default=3.5)
    ap.add_argument("--no-wrap", action="store_true")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    plan = json.loads(a.plan_json)
    t0 = time.perf_counter()
    emit("phase", name="load")
    pipe = load_pipeline(PanoSource.from_dict(json.loads(a.source_json)), dtype_for(device))
    if a.lora:
        pipe.load_lora_weights(a.lora)
    else:
        print("warning: no panorama LoRA: plain FLUX output", file=sys.stderr)
    emit("phase", name="place", mode=plan.get("mode", "resident"))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    place(pipe, plan, device)
    emit("phase", name="denoise", total=a.steps)
    t1 = time.perf_counter()
    img = generate(pipe, a.prompt, device, plan, height=a.height, width=a.width, steps=a.steps, seed=a.seed,
                   wrap=not a.no_wrap, guidance=a.guidance,
                   on_step=lambda i, n: emit("progress", step=i, total=n))
    outputs = write_outputs(Path(a.out), img, a.prompt)
    emit("done", outputs=outputs, seconds=round(time.perf_counter() - t0, 3),
         denoise_decode_s=round(time.perf_counter() - t1, 3), peak_bytes=peak_bytes(device),
         seam_metric=round(seam_metric(img), 4), finite=bool(np.isfinite(img).all()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
