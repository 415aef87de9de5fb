"""`m3d-doctor run`'s panorama stage code (doctor/runtime/pano.py: place + generate, wrap on) on a
FLUX.1-dev-sized pipeline with random weights: per-step time and peak under the planner's 24 GiB plan
against the resident placement, in separate processes. Text encoders are full size (T5-XXL encoder,
CLIP-L); tokenizers are tiny local ones (no hub). Run by benchmarks/run_pano_stage.sh on a GPU.

    python benchmarks/pano_stage.py --plan partial --cap-gib 24 --height 512 --width 1024 --out r.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback

import torch

GiB = 1024**3


def build(seed: int = 0):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from m3d_doctor.runtime.selftest import _tokenizers
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_tok, _, t5_tok, _ = _tokenizers()
    t5_tok.model_max_length = 512
    torch.manual_seed(seed)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                          num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                          projection_dim=768, bos_token_id=3, eos_token_id=4, pad_token_id=4))
        te2 = T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_layers=24,
                                      num_heads=64, feed_forward_proj="gated-gelu", decoder_start_token_id=0,
                                      pad_token_id=0, eos_token_id=1))
        tr = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                                    attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                    pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                            up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512],
                            layers_per_block=2, latent_channels=16, sample_size=1024, scaling_factor=0.3611,
                            shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)
    torch.set_default_dtype(torch.float32)
    with torch.no_grad():
        for m in (te, te2, tr):
            for p in m.parameters():
                p.normal_(0.0, 0.02)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=te, tokenizer=clip_tok,
                        text_encoder_2=te2, tokenizer_2=t5_tok, transformer=tr)
    for m in (te, te2, tr, vae):
        m.eval().requires_grad_(False)
    return pipe


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan", choices=["resident", "partial"], required=True)
    ap.add_argument("--cap-gib", type=float, default=None)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    from m3d_doctor import planner, stages
    from m3d_doctor.runtime import pano

    res = {"plan": a.plan, "cap_gib": a.cap_gib, "height": a.height, "width": a.width, "steps": a.steps,
           "device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    try:
        import diffusers

        res["diffusers"] = diffusers.__version__
        pipe = build()
        pipe.to("cpu")  # the harness made random weights on the GPU; the stage starts from host memory
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(0).total_memory
        if a.cap_gib:
            torch.cuda.set_per_process_memory_fraction(a.cap_gib * GiB / total)
        device = torch.device("cuda")
        if a.plan == "partial":
            dev = planner.Device("bench", int(a.cap_gib * GiB), 50e9, 420)
            plan = planner.plan_stage(stages.pano_model(), dev, a.height, a.width).to_dict()
        else:
            plan = {"mode": "resident"}
        res["stage_plan"] = plan
        torch.cuda.reset_peak_memory_stats()
        pano.place(pipe, plan, device)
        stamps: list[float] = []

        def on_step(i: int, n: int) -> None:
            torch.cuda.synchronize()
            stamps.append(time.perf_counter())

        t0 = time.perf_counter()
        img = pano.generate(pipe, "a panorama of a mountain lake", device, plan, height=a.height, width=a.width,
                            steps=a.steps, seed=0, wrap=True, on_step=on_step)
        res["stage_s"] = round(time.perf_counter() - t0, 3)
        steps = [b - c for c, b in zip(stamps, stamps[1:])]
        res["step_s_median"] = round(statistics.median(steps), 4)
        res["peak_alloc_gib"] = round(torch.cuda.max_memory_allocated() / GiB, 3)
        res["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GiB, 3)
        res["seam_metric"] = round(pano.seam_metric(img), 4)
        res["finite"] = bool(__import__("numpy").isfinite(img).all())
        res["ok"] = True
    except torch.cuda.OutOfMemoryError as exc:
        res.update(ok=False, oom=str(exc).splitlines()[0][:300],
                   peak_alloc_gib=round(torch.cuda.max_memory_allocated() / GiB, 3))
    except Exception as exc:
        res.update(ok=False, error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc()[-2500:])
    with open(a.out, "w") as fh:
        json.dump(res, fh, indent=1)
    print(json.dumps({k: v for k, v in res.items() if k not in ("trace", "stage_plan")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
