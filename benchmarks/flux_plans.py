"""FLUX.1-dev-sized random-weight transformer: per-step time and peak memory of each placement plan.

One process per (plan, cap, resolution); `run_flux_plans.sh` runs them side by side with the resident
baseline and `summarize_flux_plans.py` prints the ratios. No hub access: configs are the public FLUX.1-dev
values (anchors-vram §2.2); weights are N(0, 0.02) in bf16, identical in every process (same seed, same ops),
so outputs can be compared across plans.

    python benchmarks/flux_plans.py --plan partial --cap-gib 24 --height 1024 --width 2048 --out r.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback

import torch

GiB = 1024**3
FLUX_CFG = dict(patch_size=1, in_channels=64, out_channels=None, num_layers=19, num_single_layers=38,
                attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
VAE_CFG = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
               up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512],
               layers_per_block=2, latent_channels=16, sample_size=1024, scaling_factor=0.3611,
               shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False, force_upcast=True,
               mid_block_add_attention=True)


def h2d_bandwidth() -> float:
    src = torch.empty(1 * GiB, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty_like(src, device="cuda")
    dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(3):
        dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize()
    bw = 3 * GiB / (time.perf_counter() - t0)
    del src, dst
    return bw


def build_transformer():
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = FluxTransformer2DModel(**FLUX_CFG)
    torch.set_default_dtype(torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    return model.eval().requires_grad_(False)


def inputs(height: int, width: int):
    g = torch.Generator("cuda").manual_seed(1)
    n_img = (height // 16) * (width // 16)
    dev, dt = "cuda", torch.bfloat16
    ids = torch.zeros(height // 16, width // 16, 3, device=dev)
    ids[..., 1] += torch.arange(height // 16, device=dev)[:, None]
    ids[..., 2] += torch.arange(width // 16, device=dev)[None, :]
    return dict(
        hidden_states=torch.randn(1, n_img, 64, generator=g, device=dev, dtype=dt),
        encoder_hidden_states=torch.randn(1, 512, 4096, generator=g, device=dev, dtype=dt),
        pooled_projections=torch.randn(1, 768, generator=g, device=dev, dtype=dt),
        timestep=torch.tensor([0.5], device=dev, dtype=dt),
        guidance=torch.tensor([3.5], device=dev, dtype=dt),
        img_ids=ids.reshape(-1, 3).to(dt), txt_ids=torch.zeros(512, 3, device=dev, dtype=dt),
        return_dict=False,
    )


def time_steps(model, kwargs, warmup: int, steps: int) -> tuple[list[float], torch.Tensor]:
    out = None
    times = []
    for i in range(warmup + steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        with torch.no_grad():
            out = model(**kwargs)[0]
        end.record()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end) / 1000)
    return times, out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan", choices=["resident", "partial", "group-offload"], required=True)
    ap.add_argument("--cap-gib", type=float, default=None)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--tflops", type=float, default=420.0, help="effective bf16 rate for the planner's time model")
    ap.add_argument("--vae", action="store_true", help="also measure the VAE decode phase beside what stays resident")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    from m3d_doctor import planner, stages
    from m3d_doctor.runtime.residency import PartialResidency

    res = {"plan": a.plan, "cap_gib": a.cap_gib, "height": a.height, "width": a.width,
           "device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    try:
        import diffusers
        res["diffusers"] = diffusers.__version__
        bw = h2d_bandwidth()
        res["h2d_gb_s"] = round(bw / 1e9, 1)
        model = build_transformer()
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        res["transformer_gib"] = round(weights / GiB, 3)
        kwargs = inputs(a.height, a.width)
        blocks = list(model.transformer_blocks) + list(model.single_transformer_blocks)
        block_bytes = tuple(sum(p.numel() * p.element_size() for p in b.parameters()) for b in blocks)
        stage = stages.pano_model()
        stage = planner.StageModel(**{**stage.__dict__, "block_bytes": block_bytes,
                                      "other_transformer_bytes": weights - sum(block_bytes)})
        total = torch.cuda.get_device_properties(0).total_memory
        if a.plan != "resident" or a.cap_gib:
            model.to("cpu")
            torch.cuda.empty_cache()
        if a.cap_gib:
            torch.cuda.set_per_process_memory_fraction(a.cap_gib * GiB / total)
        torch.cuda.reset_peak_memory_stats()
        base_alloc = torch.cuda.memory_allocated()  # the inputs
        t0 = time.perf_counter()
        if a.plan == "resident":
            model.to("cuda")
        elif a.plan == "partial":
            device = planner.Device("bench", int((a.cap_gib or total / GiB) * GiB), bw, a.tflops)
            plan = planner.plan_stage(stage, device, a.height, a.width)
            res["planner"] = plan.to_dict()
            for name, mod in model.named_children():
                if name not in ("transformer_blocks", "single_transformer_blocks"):
                    mod.to("cuda")
            pr = PartialResidency(blocks, plan.streamed_indices, torch.device("cuda")).apply()
            res["streamed_gib"] = round(pr.streamed_bytes / GiB, 3)
            res["slot_gib"] = round(pr.slot_bytes / GiB, 3)
        else:
            model.enable_group_offload(torch.device("cuda"), offload_type="block_level", num_blocks_per_group=1,
                                       use_stream=True)
        torch.cuda.synchronize()
        res["placement_s"] = round(time.perf_counter() - t0, 3)
        res["after_placement_gib"] = round((torch.cuda.memory_allocated() - base_alloc) / GiB, 3)
        times, out = time_steps(model, kwargs, a.warmup, a.steps)
        res["step_s_median"] = round(statistics.median(times), 4)
        res["step_s_all"] = [round(t, 4) for t in times]
        res["peak_alloc_gib"] = round(torch.cuda.max_memory_allocated() / GiB, 3)
        res["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GiB, 3)
        res["act_gib"] = round((torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()) / GiB, 3)
        o = out.float()
        res["output_checksum"] = [float(o.abs().mean()), float(o[0, :4, :4].sum())]
        res["finite"] = bool(torch.isfinite(o).all())
        if a.vae:
            from diffusers import AutoencoderKL

            del out, o
            torch.cuda.empty_cache()
            torch.manual_seed(2)
            vae = AutoencoderKL(**VAE_CFG).to("cuda", torch.bfloat16).eval()
            tile = res.get("planner", {}).get("vae_tile")
            if tile or max(a.height, a.width) > 1024:
                vae.enable_tiling()
                if tile:
                    vae.tile_sample_min_size = tile
                    vae.tile_latent_min_size = tile // 8
            lat = torch.randn(1, 16, a.height // 8, a.width // 8, device="cuda", dtype=torch.bfloat16)
            torch.cuda.reset_peak_memory_stats()
            with torch.no_grad():
                img = vae.decode(lat).sample
            torch.cuda.synchronize()
            res["decode_peak_alloc_gib"] = round(torch.cuda.max_memory_allocated() / GiB, 3)
            res["decode_shape"] = list(img.shape)
        res["ok"] = True
    except torch.cuda.OutOfMemoryError as exc:
        res["ok"] = False
        res["oom"] = str(exc).splitlines()[0][:300]
        res["peak_alloc_gib"] = round(torch.cuda.max_memory_allocated() / GiB, 3)
    except Exception as exc:
        res["ok"] = False
        res["error"] = f"{type(exc).__name__}: {exc}"
        res["trace"] = traceback.format_exc()[-2000:]
    with open(a.out, "w") as fh:
        json.dump(res, fh, indent=1)
    print(json.dumps({k: v for k, v in res.items() if k not in ("trace", "step_s_all", "planner")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
