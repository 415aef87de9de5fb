"""The planner on known component sizes, and its predictions against peaks measured on a GPU.

The measured runs are benchmarks/results/run3-partial (NVIDIA H200, torch 2.11.0+cu130, diffusers 0.42.1,
2026-11-26, FLUX.1-dev-sized random weights, allocator capped with set_per_process_memory_fraction).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from m3d_doctor.planner import Device, GiB, choose_streamed, denoise_peak, plan_stage, spread_indices
from m3d_doctor.profile import load_profile
from m3d_doctor.stages import device_for, resolution, stage_model
from m3d_doctor.stages import pano_model as planner_flux

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "run3-partial"
PROFILE = load_profile()
PANO, _ = stage_model("pano", PROFILE.stages["pano"])
VIDEO, _ = stage_model("video", PROFILE.stages["video"])


def h100(budget_gib: float) -> Device:
    return Device("H100", int(budget_gib * GiB), 50e9, 420)


def test_flux_sizes_match_the_real_model():
    assert len(PANO.block_bytes) == 57
    assert PANO.transformer_bytes == 23802816640 + 400000000  # + the LoRA estimate
    assert sum(PANO.block_bytes) == 19 * 679662592 + 38 * 283183616
    assert PANO.tokens(512, 1024) == 2560 and PANO.tokens(1024, 2048) == 8704
    assert VIDEO.tokens(480, 960) == 37_800 and VIDEO.tokens(720, 1440) == 85_050  # upstream-video-3d §0


def test_a_large_card_runs_everything_resident():
    plan = plan_stage(PANO, h100(139), 1024, 2048)
    assert plan.mode == "resident" and plan.fits and plan.streamed_blocks == 0


@pytest.mark.parametrize("hw", [(512, 1024), (1024, 2048)])
def test_a_24_gib_card_gets_partial_residency_under_22_gib(hw):
    plan = plan_stage(PANO, h100(24), *hw)
    assert plan.mode == "partial" and plan.fits
    assert plan.predicted_peak <= 22 * GiB
    assert 0 < plan.streamed_blocks < 12  # a few blocks, not everything
    assert plan.predicted_slowdown <= 1.1


def test_streamed_blocks_come_from_the_smallest_class_spread_out():
    blocks = list(PANO.block_bytes)
    idx = choose_streamed(blocks, 6)
    assert all(i >= 19 for i in idx)  # single blocks (smaller) first
    gaps = [b - a for a, b in zip(idx, idx[1:])]
    assert max(gaps) - min(gaps) <= 1
    assert spread_indices(10, 0) == [] and spread_indices(3, 5) == [0, 1, 2]


def test_never_the_upstream_whole_pipeline_on_the_gpu():
    """Upstream's .to(device) puts ~31.4 GiB on the card; no plan ever holds text encoders with the DiT."""
    for budget in (12, 24, 32, 48):
        plan = plan_stage(PANO, h100(budget), 512, 1024)
        assert plan.phase_peaks["encode"] < PANO.text_encoder_bytes + 1 * GiB
        assert plan.predicted_peak <= (budget - 2) * GiB


def test_video_fits_24_gib_with_streaming_at_both_resolutions():
    """The measured Wan2.1 model (linear activations with the stage's chunked RoPE, allocator slack, sequential
    encoders, merged LoRA): on a 24 GiB card 480p keeps 20 blocks resident and 720p 13, under the 2 GiB margin."""
    p480 = plan_stage(VIDEO, h100(24), 480, 960)
    p720 = plan_stage(VIDEO, h100(24), 720, 1440)
    assert (p480.mode, p480.streamed_blocks) == ("partial", 20) and p480.fits
    assert (p720.mode, p720.streamed_blocks) == ("partial", 27) and p720.fits
    for p in (p480, p720):
        assert p.predicted_peak <= 22 * GiB
        assert p.phase_peaks["encode_text"] < 11.5 * GiB  # T5 alone: CLIP and the DiT are never beside it
        assert p.host_peak is not None and p.host_peak <= 32 * GiB


def test_video_refuses_rather_than_plan_an_offload_mode_the_native_stage_lacks():
    p = plan_stage(VIDEO, h100(8), 720, 1440)
    assert p.mode == "does-not-fit" and not p.fits
    assert p.to_dict()["predicted_slowdown"] is None  # strict JSON: no Infinity


def measured_runs():
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("r*.json"))]
    return [r for r in runs if r.get("ok") and r["plan"] == "partial"]


def stage_runs():
    """The runner's own pano stage (VAE on the GPU during denoising), benchmarks/results/pano-stage-run1."""
    runs = [json.loads(p.read_text()) for p in sorted((RESULTS.parent / "pano-stage-run1").glob("p*.json"))]
    return [r for r in runs if r.get("ok") and r["plan"] == "partial"]


def within_target(predicted: float, measured: float) -> bool:
    """Target: within ±5 % (or ±0.5 GiB) of the measured peak, never under by more than 0.3 GiB."""
    return abs(predicted - measured) <= max(0.05 * measured, 0.5 * GiB) and predicted >= measured - 0.3 * GiB


@pytest.mark.parametrize("run", measured_runs(), ids=lambda r: f"{r['cap_gib']}GiB-{r['height']}x{r['width']}")
def test_predicted_peak_is_within_target_of_the_measured_one(run):
    bare, _ = stage_model("pano", {**PROFILE.stages["pano"], "lora_bytes": 0})  # the benchmark loads no LoRA
    predicted = denoise_peak(bare, run["planner"]["streamed_indices"], run["height"], run["width"],
                             vae_resident=False)  # benchmarks/flux_plans.py decodes after denoising
    assert within_target(predicted, run["peak_alloc_gib"] * GiB)


@pytest.mark.parametrize("run", stage_runs(), ids=lambda r: f"stage-{r['cap_gib']}GiB-{r['height']}x{r['width']}")
def test_predicted_peak_of_the_runners_stage_is_within_target(run):
    bare, _ = stage_model("pano", {**PROFILE.stages["pano"], "lora_bytes": 0})
    predicted = denoise_peak(bare, run["stage_plan"]["streamed_indices"], run["height"], run["width"])
    assert within_target(predicted, run["peak_alloc_gib"] * GiB)


def test_the_24_gib_plan_now_keeps_the_stage_under_22_gib():
    for h, w in ((512, 1024), (1024, 2048)):
        plan = plan_stage(planner_flux(), Device("H200", 24 * GiB, 55e9, 420), h, w)
        assert plan.phase_peaks["denoise"] <= 22 * GiB - 0.2 * GiB or plan.predicted_peak <= 22 * GiB


def test_measured_partial_runs_meet_the_speed_and_peak_targets():
    base = {(r["height"], r["width"]): r["step_s_median"]
            for p in sorted(RESULTS.parent.glob("run*/r*.json"))
            for r in [json.loads(p.read_text())] if r.get("ok") and r["plan"] == "resident" and not r["cap_gib"]}
    runs = {(r["cap_gib"], r["height"]): r for r in measured_runs()}
    fast_base_512 = min(v for (h, w), v in base.items() if h == 512)
    assert runs[(24.0, 512)]["step_s_median"] / fast_base_512 <= 1.25
    assert runs[(24.0, 1024)]["step_s_median"] / base[(1024, 2048)] <= 1.10
    assert runs[(12.0, 1024)]["step_s_median"] / base[(1024, 2048)] <= 1.6
    assert runs[(24.0, 512)]["peak_alloc_gib"] <= 22 and runs[(24.0, 1024)]["peak_alloc_gib"] <= 22


def test_resolution_parsing():
    assert resolution(PROFILE.stages["video"], "720") == (720, 1440)  # Matrix-3D's panoramas are 2:1
    assert resolution(PROFILE.stages["pano"], "1024x2048") == (1024, 2048)
    from m3d_doctor.errors import UsageError
    with pytest.raises(UsageError):
        resolution(PROFILE.stages["pano"], "big")


def test_device_speed_comes_from_the_knowledge_table():
    d = device_for({"name": "NVIDIA GeForce RTX 4090", "pcie_gen": 4}, 24 * GiB)
    assert d.tflops == 70 and d.h2d_bytes_per_s == 25e9


def video_runs():
    """The native video stage's DiT phase at full size on an H200 (benchmarks/video_stage.py, run4: chunked RoPE,
    expandable segments, every placement bit-equal to upstream's resident output)."""
    doc = json.loads((RESULTS.parent / "video-stage-h200" / "run4-chunked-rope.json").read_text())
    return [r for r in doc["runs"] if r["placement"] != "resident-upstream" and r.get("seconds_per_forward")]


@pytest.mark.parametrize("run", video_runs(), ids=lambda r: f"video-{r['res']}p-{r['placement']}")
def test_video_predicted_peaks_are_within_target_of_the_measured_ones(run):
    h, w = {480: (480, 960), 720: (720, 1440)}[run["res"]]
    streamed = list(range(run.get("plan", {}).get("streamed_blocks", 0)))
    allocated = denoise_peak(VIDEO, streamed, h, w)
    assert within_target(allocated, run["peak_allocated_gib"] * GiB)
    assert within_target(allocated + VIDEO.alloc_slack(h, w), run["peak_reserved_gib"] * GiB)
    assert run["equal_to_resident"] and run["x_resident"] <= 1.03


def test_video_plans_keep_reserved_memory_under_22_gib_on_a_24_gib_card():
    for h, w in ((480, 960), (720, 1440)):
        p = plan_stage(VIDEO, h100(24), h, w)
        assert p.fits and p.predicted_reserved <= 22 * GiB


def test_fp32_shards_are_planned_at_the_dtype_the_stage_loads(tmp_path):
    """The Wan shards are fp32 on disk; the stage holds bf16: header sizes are halved, not taken as they are."""
    import numpy as np
    from safetensors.numpy import save_file

    f = tmp_path / "diffusion_pytorch_model-00001-of-00007.safetensors"
    save_file({"blocks.0.w": np.zeros((64, 64), np.float32), "blocks.1.w": np.zeros((64, 64), np.float32),
               "head.w": np.zeros((8, 64), np.float32)}, str(f))
    model, source = stage_model("video", PROFILE.stages["video"], [f])
    assert source == "safetensors headers"
    assert model.block_bytes == (64 * 64 * 2, 64 * 64 * 2) and model.other_transformer_bytes == 8 * 64 * 2
