"""The memory planner: for a stage, a resolution and a GPU budget, the fastest placement that fits.

Pure arithmetic (no torch): the `vram` check, `gate` and the runner call it in the doctor's process. A
model of each stage comes from component sizes (safetensors headers when present, profile data
otherwise), activations as a function of tokens, allocator and context overhead; the plans, fastest first:

1. `resident`: everything the phase needs on the GPU.
2. `partial`: as many transformer blocks resident as fit; the rest streamed from pinned host memory on a
   side stream ahead of use (doctor.runtime.residency). Slowdown ≈ transfer time not hidden by compute.
3. `group-offload`: diffusers' block-level group offload with CUDA streams (two blocks in flight).
4. `sequential`: diffusers' leaf-level offload (~1 GiB; very slow).

Text encoders run on the GPU and are offloaded after encoding; the VAE decodes with a tile size that fits
beside what stays resident. The upstream pattern (`pipe.to(device)` then offload) is never proposed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

GiB = 1024**3


@dataclass(frozen=True)
class StageModel:
    """What a denoising stage holds: a transformer of ordered blocks, text encoders, a VAE, and activations."""

    name: str
    block_bytes: tuple[int, ...]  # transformer blocks in execution order (storage dtype)
    other_transformer_bytes: int  # embedders, norms, projections: always resident
    text_encoder_bytes: int  # all text encoders together (encode phase)
    vae_bytes: int
    act_base: int  # transformer activation bytes independent of tokens
    act_per_token: float  # transformer activation bytes per token (img + txt)
    act_per_token2: float = 0.0  # bytes per token² (attention-like growth; video stages)
    text_tokens: int = 512
    frames: int = 0  # video: frames generated (0 = image)
    temporal_stride: int = 4  # video VAE: frames per latent frame after the first
    patch: int = 16  # pixels per token side (VAE 8x, 2x2 patchify)
    encode_act: int = int(0.5 * GiB)  # text-encoder activations (512 tokens)
    vae_act_per_pixel: float = 2.4 * GiB / (1024 * 1024)  # decode transient per output pixel of a tile
    flops_per_token: float = 0.0  # linear FLOPs per token per step (attention added from tokens)
    attn_flops_coeff: float = 0.0  # attention FLOPs = coeff * tokens^2
    # Video stage (Matrix-3D's native Wan stage): encoders run in sequential phases, never co-resident; each is
    # (weights on the GPU, activation bytes, activation bytes per video pixel of the conditioning video).
    encode_phases: tuple[tuple[int, int, float], ...] = ()
    encode_names: tuple[str, ...] = ()  # one per encode phase, for plans and findings ("encode_text", ...)
    decode_act: int = 0  # > 0: the decode transient is this constant (a fixed tile), the transformer freed
    host_lazy: bool = False  # weights are materialised lazily: host RAM = encoders, then the streamed blocks
    host_encoder_bytes: int = 0  # what the encoders hold in host RAM while loading (file transients included)
    host_base: int = 0  # the process itself (torch, CUDA context, page tables)
    # caching-allocator slack above the allocated peak while denoising, bytes per token (reserved - allocated,
    # with expandable_segments): a plan must fit reserved memory, or the allocator frees and re-maps under the
    # cap every forward (measured: 720p at 0.2 GiB of headroom ran 1.10x resident, at 2 GiB 1.00x)
    alloc_slack_per_token: float = 0.0

    @property
    def transformer_bytes(self) -> int:
        return sum(self.block_bytes) + self.other_transformer_bytes

    def tokens(self, height: int, width: int) -> int:
        per_frame = (height // self.patch) * (width // self.patch)
        latent_frames = 1 + (self.frames - 1) // self.temporal_stride if self.frames else 1
        return per_frame * latent_frames + self.text_tokens

    def activations(self, height: int, width: int) -> int:
        n = self.tokens(height, width)
        return int(self.act_base + self.act_per_token * n + self.act_per_token2 * n * n)

    def alloc_slack(self, height: int, width: int) -> int:
        return int(self.alloc_slack_per_token * self.tokens(height, width))

    def encode_peaks(self, height: int, width: int) -> list[int]:
        """GPU bytes of each sequential encode phase (video), or of the single one (image stages)."""
        if not self.encode_phases:
            return [self.text_encoder_bytes + self.encode_act]
        pixels = height * width * max(self.frames, 1)
        return [int(w + a + per_px * pixels) for w, a, per_px in self.encode_phases]

    def step_flops(self, height: int, width: int) -> float:
        n = self.tokens(height, width)
        return self.flops_per_token * n + self.attn_flops_coeff * n * n


@dataclass(frozen=True)
class Device:
    name: str
    budget_bytes: int  # what the allocator may use for this run (free memory or a cap), before the margin
    h2d_bytes_per_s: float  # pinned host -> device bandwidth
    tflops: float  # effective bf16 throughput on this workload (per-step time = flops / this)


@dataclass
class Plan:
    mode: str  # resident | partial | group-offload | sequential | does-not-fit
    fits: bool
    streamed_blocks: int = 0
    resident_blocks: int = 0
    streamed_indices: list[int] = field(default_factory=list)
    vae_tile: Optional[int] = None  # pixels; None = the VAE's default (no tiling at <= 1024 px)
    predicted_peak: int = 0  # allocated bytes, the largest phase
    phase_peaks: dict[str, int] = field(default_factory=dict)
    predicted_step_s: Optional[float] = None
    predicted_slowdown: float = 1.0
    notes: list[str] = field(default_factory=list)
    host_peak: Optional[int] = None  # host RAM the plan needs (lazily loaded stages), bytes
    predicted_reserved: int = 0  # the allocator's reserved peak (allocated + slack): what must fit the budget

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "fits": self.fits, "streamed_blocks": self.streamed_blocks,
                "streamed_indices": self.streamed_indices,
                "resident_blocks": self.resident_blocks, "vae_tile": self.vae_tile,
                "predicted_peak_bytes": self.predicted_peak,
                "predicted_peak_gib": round(self.predicted_peak / GiB, 2),
                "predicted_reserved_gib": round(self.predicted_reserved / GiB, 2),
                "phase_peaks_gib": {k: round(v / GiB, 2) for k, v in self.phase_peaks.items()},
                "predicted_step_s": None if self.predicted_step_s is None else round(self.predicted_step_s, 4),
                # strict JSON: an unknown (infinite) slowdown is null, never `Infinity`
                "predicted_slowdown": (round(self.predicted_slowdown, 3) if math.isfinite(self.predicted_slowdown)
                                       else None),
                "host_peak_bytes": self.host_peak,
                "host_peak_gib": None if self.host_peak is None else round(self.host_peak / GiB, 2),
                "notes": self.notes}


SAFETY_MARGIN = 2 * GiB  # CUDA context (~0.5 GiB, outside the allocator) and fragmentation headroom
SLOTS = 2


def _vae_phase(model: StageModel, height: int, width: int, resident: int, budget: int) -> tuple[int, Optional[int]]:
    """Peak of the decode phase and the VAE tile size that keeps it inside the budget."""
    def peak(tile: Optional[int]) -> int:
        th = min(height, tile or 1024) if max(height, width) > 1024 or tile else height
        tw = min(width, tile or 1024) if max(height, width) > 1024 or tile else width
        return resident + model.vae_bytes + int(model.vae_act_per_pixel * th * tw)
    for tile in (None, 512, 256):
        if peak(tile) <= budget:
            return peak(tile), tile
    return peak(256), 256


def plan_stage(model: StageModel, device: Device, height: int, width: int,
               margin: int = SAFETY_MARGIN) -> Plan:
    budget = device.budget_bytes - margin
    act = model.activations(height, width)
    slack = model.alloc_slack(height, width)
    flops = model.step_flops(height, width)
    compute_s = flops / (device.tflops * 1e12) if device.tflops and flops else None
    encode = model.encode_peaks(height, width)
    notes = []
    if not model.encode_phases and encode[0] > budget:
        notes.append("text encoders do not fit: encode on the CPU (slower prompt encoding, same result)")
        encode = [0]
    encode_names = (["encode"] if len(encode) == 1 else list(model.encode_names)
                    or [f"encode_{i + 1}" for i in range(len(encode))])

    def finish(plan: Plan, resident_weights: int, extra: int) -> Plan:
        denoise = resident_weights + extra + act + model.vae_bytes  # the VAE waits on the GPU for the decode
        if model.decode_act:  # the transformer is dropped before a fixed-tile decode
            decode, tile = model.vae_bytes + model.decode_act, None
        else:
            decode, tile = _vae_phase(model, height, width, resident_weights + extra, budget)
        plan.vae_tile = tile
        plan.phase_peaks = {**dict(zip(encode_names, encode)), "denoise": denoise, "decode": decode}
        plan.predicted_peak = max(plan.phase_peaks.values())
        plan.predicted_reserved = max(plan.predicted_peak, denoise + slack)
        plan.fits = plan.predicted_reserved <= budget
        plan.notes = notes + plan.notes
        if model.host_lazy:
            # PartialResidency pins one buffer per streamed block, and torch rounds each up to a power of two
            streamed = sum(pinned_bytes(model.block_bytes[i]) for i in plan.streamed_indices)
            block = max(model.block_bytes, default=0)
            plan.host_peak = model.host_base + max(model.host_encoder_bytes,
                                                   streamed + model.vae_bytes + 2 * block)
        return plan

    blocks = list(model.block_bytes)
    total = model.transformer_bytes
    if total + act + slack <= budget:
        p = finish(Plan("resident", True, resident_blocks=len(blocks), predicted_step_s=compute_s), total, 0)
        if p.fits:
            return p
    # partial residency: stream the fewest blocks (smallest size class first, evenly spread) that fit
    slot = max(blocks)
    for n in range(1, len(blocks) + 1):
        idx = choose_streamed(blocks, n)
        streamed_bytes = sum(blocks[i] for i in idx)
        slot = max(blocks[i] for i in idx)
        resident = total - streamed_bytes
        if resident + SLOTS * slot + act + slack > budget:
            continue
        step = None
        slowdown = 1.0
        if compute_s:
            transfer_s = streamed_bytes / device.h2d_bytes_per_s
            step = max(compute_s, transfer_s) * 1.02  # hooks and event waits
            slowdown = step / compute_s
        p = finish(Plan("partial", True, streamed_blocks=n, resident_blocks=len(blocks) - n, streamed_indices=idx,
                        predicted_step_s=step, predicted_slowdown=slowdown), resident, SLOTS * slot)
        if p.fits:
            return p
    if model.host_lazy:  # the native video stage places resident/partial only: nothing slower exists there
        p = finish(Plan("does-not-fit", False, streamed_blocks=len(blocks), streamed_indices=list(range(len(blocks))),
                        predicted_slowdown=math.inf), model.other_transformer_bytes, SLOTS * max(blocks))
        p.mode, p.fits = "does-not-fit", False
        return p
    # nothing resident but two blocks in flight
    slot = max(blocks)
    other = model.other_transformer_bytes
    if other + 2 * slot + act <= budget:
        step = None
        slowdown = 1.0
        if compute_s:
            step = max(compute_s, (total - other) / device.h2d_bytes_per_s) * 1.1
            slowdown = step / compute_s
        p = finish(Plan("group-offload", True, streamed_blocks=len(blocks), predicted_step_s=step,
                        predicted_slowdown=slowdown,
                        notes=["diffusers group offload, block level, use_stream=True"]), other, 2 * slot)
        if p.fits:
            return p
    p = finish(Plan("sequential", True, streamed_blocks=len(blocks), predicted_slowdown=math.inf,
                    notes=["diffusers enable_sequential_cpu_offload: very slow"]), 0, int(0.2 * GiB))
    if not p.fits:
        p.mode = "does-not-fit"
    return p


def pinned_bytes(size: int) -> int:
    """What a pinned host buffer of `size` bytes costs: torch's CachingHostAllocator rounds it up to a power of
    two (one 0.75 GiB Wan block per buffer pinned 1 GiB each on the H200: a third more host RAM)."""
    return 1 << max(size - 1, 0).bit_length() if size > 0 else 0


def denoise_peak(model: StageModel, streamed: list[int], height: int, width: int, vae_resident: bool = True) -> int:
    """Predicted allocator peak while denoising with these blocks streamed (two staging slots)."""
    blocks = model.block_bytes
    slot = max((blocks[i] for i in streamed), default=0)
    resident = model.transformer_bytes - sum(blocks[i] for i in streamed)
    return (resident + (SLOTS * slot if streamed else 0) + model.activations(height, width)
            + (model.vae_bytes if vae_resident else 0))


def spread_indices(n_total: int, n_streamed: int) -> list[int]:
    """`n_streamed` positions evenly spaced over `n_total` (never position 0: the first prefetch gets a head
    start while the first blocks compute)."""
    if n_streamed <= 0:
        return []
    if n_streamed >= n_total:
        return list(range(n_total))
    step = n_total / n_streamed
    return sorted({min(n_total - 1, int(step * (i + 0.5))) for i in range(n_streamed)})


def choose_streamed(blocks: list[int], n: int) -> list[int]:
    """Which `n` blocks to stream: the smallest size class first (small staging slots), each class's picks
    spread evenly through it so every copy has compute to hide behind."""
    classes: dict[int, list[int]] = {}
    for i, b in enumerate(blocks):
        classes.setdefault(b, []).append(i)
    out: list[int] = []
    left = n
    for size in sorted(classes):
        members = classes[size]
        take = min(left, len(members))
        out += [members[j] for j in spread_indices(len(members), take)]
        left -= take
        if left == 0:
            break
    return sorted(out)
