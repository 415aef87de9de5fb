"""The GPU memory budget a stage is planned for, chosen one way for every command (`check vram`, `gate`,
`report`, `run`): the `--budget` override, else the free memory of the best visible GPU less what the CUDA
context takes outside the allocator. The check and the runner both import it from here, never from each other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

from . import nvml
from .planner import GiB

CONTEXT_BYTES = int(0.5 * GiB)  # CUDA context + cuBLAS workspace: outside the allocator, inside the card


def visible_gpus(snap: dict[str, Any]) -> list[dict[str, Any]]:
    """NVML sees every GPU of the host; CUDA_VISIBLE_DEVICES (indices or UUIDs) says which torch will use,
    renumbered from 0 in that order (each record gains `cuda_index`)."""
    gpus = snap.get("gpus", [])
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is None:
        return [dict(g, cuda_index=g["index"]) for g in gpus]
    out = []
    for cuda_index, token in enumerate(t.strip() for t in cvd.split(",") if t.strip()):
        match = next((g for g in gpus if str(g["index"]) == token or g.get("uuid", "").startswith(token)), None)
        if match is None:
            break  # CUDA stops at the first invalid entry
        out.append(dict(match, cuda_index=cuda_index))
    return out


def snapshot_gpus(snap: Optional[dict[str, Any]] = None) -> list[dict[str, Any]]:
    """The visible GPUs of an NVML snapshot (taken now when not given); [] without a driver."""
    snap = nvml.snapshot() if snap is None else snap
    return visible_gpus(snap) if snap.get("available") else []


@dataclass(frozen=True)
class Budget:
    """What a plan may use: `size` bytes, why (`basis`), and the GPU record the plan is for (speed, PCIe)."""

    size: int
    basis: str
    gpu: dict[str, Any] = field(default_factory=dict)


def choose_budget(override: Optional[int], gpus: list[dict[str, Any]]) -> Optional[Budget]:
    """The `--budget` override (planned for the best visible card's speed, or a nameless "planned card"), else
    the best visible GPU's free memory minus CONTEXT_BYTES; None when there is neither."""
    best = max(gpus, key=lambda g: g["memory_free"], default=None)
    if override is not None:
        return Budget(int(override), "--budget", dict(best or {}, name=(best or {}).get("name", "planned card")))
    if best is None:
        return None
    return Budget(int(best["memory_free"]) - CONTEXT_BYTES, f"free memory of GPU {best['cuda_index']}", best)


def resolve_budget(ctx: Any, snap: Optional[dict[str, Any]] = None) -> Optional[Budget]:
    """`choose_budget` for a Context: its `--budget` (options.extra["budget"], bytes) over NVML's visible GPUs."""
    return choose_budget(ctx.options.extra.get("budget"), snapshot_gpus(snap))
