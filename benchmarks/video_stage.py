"""The native video stage's DiT phase at full size, side by side with its baselines, on one GPU.

    python3 benchmarks/video_stage.py --root CHECKOUT --out results.json [--res 480,720] [--forwards 2]

CHECKOUT is a Matrix-3D checkout (only its vendored `code/DiffSynth-Studio/diffsynth` is used; for the device
run it is copied from a fetched checkout into an ignored folder, never committed). With random weights of the
real sizes — Wan2.1-I2V-14B's DiT (40 blocks of 0.81 GB bf16), the
real Wan VAE kept on the GPU as the stage keeps it — and upstream's own `model_fn_wan_video` (the denoising
forward its `__call__` runs twice per step) on 21 latent frames at 480x960 and 720x1440, it times one forward
(median of `--forwards` after a warm-up) for each placement, in one process:

* `resident-upstream`: the whole DiT on the GPU (upstream's `num_persistent_param_in_dit=None`), upstream's
  code exactly, no cap: the reference for speed and for the output;
* `resident`: the same with the stage's one exact change to upstream's math, RoPE in sequence slices
  (`install_chunked_rope`), which the remaining placements use too;
* `plan-24GiB` / `plan-16GiB`: the planner's plan for that budget, placed by the runtime's own code
  (`m3d_doctor.runtime.video.place_dit`: PartialResidency for the streamed blocks), the allocator capped at
  the budget with `torch.cuda.set_per_process_memory_fraction`;
* `diffsynth-0`: DiffSynth's own low-VRAM mode (`enable_vram_management` with `max_num_param=0`, the later
  upstream's `--enable_vram_management`), no cap.

Per-forward time is per-step time / 2 (CFG runs two forwards with the same blocks). It records the peak
allocated and reserved bytes, the planner's prediction for the same placement, host RSS after placement, and
whether each output equals the resident output bitwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

GiB = 1024**3
I2V_14B = dict(dim=5120, in_dim=36, ffn_dim=13824, out_dim=16, text_dim=4096, freq_dim=256, eps=1e-6,
               patch_size=(1, 2, 2), num_heads=40, num_layers=40, has_image_input=True)
SIZES = {480: (480, 960), 720: (720, 1440)}


def _doctor_importable() -> None:
    here = Path(__file__).resolve().parent.parent
    link = Path("/tmp/m3d-bench-path/m3d_doctor")
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(here / "doctor")
    sys.path.insert(0, str(link.parent))


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def random_dit(WanModel, init_weights_on_device) -> torch.nn.Module:
    """The I2V-14B DiT with random bf16 weights in (pageable) host memory (32.8 GB, never an fp32 copy):
    parameters on meta as upstream's loader builds them, then each one allocated in bf16 and drawn on the GPU."""
    with init_weights_on_device():
        dit = WanModel(**I2V_14B)
    g = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for m in dit.modules():
            for name, p in list(m._parameters.items()):
                if p is None:
                    continue
                data = torch.randn(p.shape, generator=g, device="cuda", dtype=torch.float32).mul_(0.02)
                m._parameters[name] = torch.nn.Parameter(data.to(torch.bfloat16).cpu(), requires_grad=False)
    return dit.eval()


def inputs(res: int, device: torch.device) -> dict:
    h, w = SIZES[res]
    g = torch.Generator(device=device).manual_seed(1)
    bf = torch.bfloat16
    return {"x": torch.randn(1, 16, 21, h // 8, w // 8, generator=g, device=device).to(bf),
            "y": torch.randn(1, 20, 21, h // 8, w // 8, generator=g, device=device).to(bf),
            "context": torch.randn(1, 512, 4096, generator=g, device=device).to(bf),
            "clip_feature": torch.randn(1, 257, 1280, generator=g, device=device).to(bf),
            "timestep": torch.tensor([500.0], device=device, dtype=bf)}


def time_forwards(model_fn, dit, inp: dict, n: int) -> tuple[float, torch.Tensor]:
    from m3d_doctor.runtime.video import no_math_attention

    out = None
    times = []
    with torch.no_grad(), no_math_attention(torch.device("cuda")):
        for i in range(n + 1):
            torch.cuda.synchronize()
            t = time.perf_counter()
            out = model_fn(dit, x=inp["x"], timestep=inp["timestep"], context=inp["context"],
                           clip_feature=inp["clip_feature"], y=inp["y"])
            torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t)
    return statistics.median(times), out


def plan_for(budget: int, res: int) -> dict:
    from m3d_doctor import planner, stages
    from m3d_doctor.profile import load_profile

    model = stages.stage_model("video", load_profile().stages["video"])[0]
    h, w = SIZES[res]
    dev = planner.Device("H200 capped", budget, 53e9, 540.0)  # the measured pinned copy rate and block rate here
    return planner.plan_stage(model, dev, h, w).to_dict()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True, help="a Matrix-3D checkout (its code/DiffSynth-Studio/diffsynth is used)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--res", default="480,720")
    ap.add_argument("--forwards", type=int, default=2)
    ap.add_argument("--placements", default="resident-upstream,resident,plan-24GiB,plan-16GiB,diffsynth-0")
    a = ap.parse_args()
    _doctor_importable()
    from m3d_doctor.runtime import video

    ds = video.import_diffsynth(Path(a.root).resolve())
    from diffsynth.models.utils import init_weights_on_device
    from diffsynth.models.wan_video_dit import RMSNorm, WanModel
    from diffsynth.models.wan_video_vae import WanVideoVAE
    from diffsynth.pipelines.wan_video import model_fn_wan_video
    from diffsynth.vram_management import AutoWrappedLinear, AutoWrappedModule, enable_vram_management

    del ds
    dev = torch.device("cuda", 0)
    total = torch.cuda.get_device_properties(dev).total_memory
    t0 = time.perf_counter()
    dit = random_dit(WanModel, init_weights_on_device)
    with init_weights_on_device():
        vae = WanVideoVAE(z_dim=16)
    vae = vae.to_empty(device=dev).to(torch.bfloat16)
    build_s = time.perf_counter() - t0
    results = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__,
               "date": datetime.date.today().isoformat(), "build_s": round(build_s, 1), "runs": []}
    host_model = {n: p.data for n, p in dit.named_parameters()}  # the pageable host copy, reused per placement
    order = [(int(r), p) for p in a.placements.split(",") if p != "diffsynth-0" for r in a.res.split(",")]
    order.sort(key=lambda rp: rp[0])  # per resolution: resident first (the reference), then the plans
    if "diffsynth-0" in a.placements:  # last: its wrappers replace the DiT's modules for good
        order += [(int(r), "diffsynth-0") for r in a.res.split(",")]
    refs: dict[int, torch.Tensor] = {}
    wrapped = False
    dit_module = sys.modules[WanModel.__module__]
    undo_rope = None
    for res, placement in order:
        if placement == "resident-upstream":  # upstream's code exactly: the reference for speed and output
            if undo_rope is not None:
                undo_rope()
                undo_rope = None
        elif undo_rope is None:  # what the stage runs: RoPE in sequence slices (runtime.video.install_chunked_rope)
            undo_rope = video.install_chunked_rope(dit_module)
        inp = inputs(res, dev)
        for n, p in dit.named_parameters():
            if not wrapped:
                p.data = host_model[n]
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(1.0, dev)
        plan = None
        residency = None
        if placement.startswith("plan-"):
            budget = int(float(placement[5:-3]) * GiB)
            plan = plan_for(budget, res)
            if not plan["fits"]:  # the planner refuses it: so does the stage (and the gate)
                rec = {"res": res, "placement": placement, "seconds_per_forward": None, "refused": True,
                       "plan": {k: plan[k] for k in ("mode", "predicted_peak_gib", "predicted_reserved_gib")}}
                results["runs"].append(rec)
                print(json.dumps(rec), flush=True)
                continue
            torch.cuda.set_per_process_memory_fraction(budget / total, dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base_alloc = torch.cuda.memory_allocated(dev)
        t = time.perf_counter()
        if placement in ("resident", "resident-upstream"):
            dit.to(dev)
        elif placement == "diffsynth-0":
            if not wrapped:
                cfg = dict(offload_dtype=torch.bfloat16, offload_device="cpu", onload_dtype=torch.bfloat16,
                           onload_device="cpu", computation_dtype=torch.bfloat16, computation_device=dev)
                enable_vram_management(dit, module_map={torch.nn.Linear: AutoWrappedLinear,
                                                        torch.nn.Conv3d: AutoWrappedModule,
                                                        torch.nn.LayerNorm: AutoWrappedModule,
                                                        RMSNorm: AutoWrappedModule},
                                       module_config=cfg, max_num_param=0, overflow_module_config=cfg)
                wrapped = True
        else:
            residency = video.place_dit(dit, set(plan["streamed_indices"]), dev)
        place_s = time.perf_counter() - t
        host = rss()
        try:
            per_fwd, out = time_forwards(model_fn_wan_video, dit, inp, a.forwards)
            err = None
        except torch.OutOfMemoryError as exc:
            per_fwd, out, err = None, None, str(exc).splitlines()[0]
        rec = {"res": res, "placement": placement, "seconds_per_forward": per_fwd and round(per_fwd, 4),
               "place_s": round(place_s, 2),
               "peak_allocated_gib": round(torch.cuda.max_memory_allocated(dev) / GiB, 3),
               "peak_reserved_gib": round(torch.cuda.max_memory_reserved(dev) / GiB, 3),
               "before_placement_gib": round(base_alloc / GiB, 3),
               "host_rss_gib_after_placement": round(host / GiB, 2), "error": err}
        if plan is not None:
            rec["plan"] = {k: plan[k] for k in ("mode", "streamed_blocks", "predicted_peak_gib",
                                                  "predicted_reserved_gib", "phase_peaks_gib", "host_peak_gib")}
            rec["pinned_gib"] = round(residency.streamed_bytes / GiB, 2) if residency else 0.0
        if out is not None:
            if placement == "resident-upstream" or (placement == "resident" and res not in refs):
                refs[res] = out.float().cpu()
            if res in refs:
                rec["equal_to_resident"] = bool(torch.equal(out.float().cpu(), refs[res]))
        results["runs"].append(rec)
        print(json.dumps(rec), flush=True)
        if residency is not None:
            residency.remove()
        residency = None
        if not wrapped:  # back to the host copy (the GPU tensors go with their last references)
            for n, p in dit.named_parameters():
                p.data = host_model[n]
        out = None
        torch.cuda.empty_cache()
    base = {r["res"]: r["seconds_per_forward"] for r in results["runs"] if r["placement"] == "resident"}
    base.update({r["res"]: r["seconds_per_forward"] for r in results["runs"] if r["placement"] == "resident-upstream"})
    for r in results["runs"]:
        if r["seconds_per_forward"] and base.get(r["res"]):
            r["x_resident"] = round(r["seconds_per_forward"] / base[r["res"]], 3)
    Path(a.out).write_text(json.dumps(results, indent=1))
    print(json.dumps({"summary": [(r["res"], r["placement"], r.get("x_resident"), r.get("peak_reserved_gib"),
                                   r.get("equal_to_resident")) for r in results["runs"]]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
