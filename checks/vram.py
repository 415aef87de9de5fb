"""vram: every GPU through NVML, host memory for offloading, and whether each stage fits, with which plan.

Live numbers (free memory changes): this check reads NVML itself and is never cached. Offloading lives in
host RAM, so RAM, /dev/shm and the cgroup limit are part of the answer. Stage fit comes from the planner
(doctor/planner.py) for the budget of the best visible GPU, or `--budget SIZE` to plan for another card.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import psutil
from m3d_doctor import nvml
from m3d_doctor.check import Check
from m3d_doctor.checks.checkpoints import locate
from m3d_doctor.context import Context
from m3d_doctor.findings import Finding, Remedy, Severity
from m3d_doctor.planner import GiB, plan_stage
from m3d_doctor.stages import device_for, resolution, stage_model

CONTEXT_BYTES = int(0.5 * GiB)  # CUDA context + cuBLAS workspace: outside the allocator, inside the card
FOREIGN_MIN = 1 * GiB


def cgroup_memory_limit() -> Optional[int]:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw and raw != "max" and int(raw) < (1 << 60):
            return int(raw)
    return None


def visible_gpus(snap: dict[str, Any]) -> list[dict[str, Any]]:
    """NVML sees every GPU of the host; CUDA_VISIBLE_DEVICES (indices or UUIDs) says which torch will use,
    renumbered from 0 in that order."""
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


class VramCheck(Check):
    name = "vram"
    description = "GPUs (NVML), host RAM and /dev/shm for offloading, and which plan fits each stage"
    order = 80
    needs_live_target = False

    def run(self, ctx: Context) -> list[Finding]:
        snap = nvml.snapshot()
        findings = self._host(ctx)
        budget_override = ctx.options.extra.get("budget")
        gpus = visible_gpus(snap) if snap.get("available") else []
        if not snap.get("available"):
            findings.insert(0, Finding("vram.no-gpu", Severity.SKIP if budget_override is None else Severity.INFO,
                                       "no NVIDIA driver: GPU memory not measured",
                                       cause=snap.get("reason", ""), evidence={"nvml": snap.get("reason")}))
        for g in gpus:
            findings += self._gpu(g)
        if snap.get("available") and not gpus:
            findings.append(Finding("vram.none-visible", Severity.FAIL,
                                    "CUDA_VISIBLE_DEVICES hides every GPU NVML sees",
                                    evidence={"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                              "gpus": [g["index"] for g in snap.get("gpus", [])]}))
        best = max(gpus, key=lambda g: g["memory_free"], default=None)
        if budget_override is not None:
            budget, gpu = int(budget_override), dict(best or {}, name=(best or {}).get("name", "planned card"))
            basis = "--budget"
        elif best is not None:
            budget, gpu, basis = best["memory_free"] - CONTEXT_BYTES, best, f"free memory of GPU {best['cuda_index']}"
        else:
            return findings
        findings += self._stages(ctx, gpu, budget, basis)
        return findings

    def _host(self, ctx: Context) -> list[Finding]:
        vm = psutil.virtual_memory()
        out = []
        ev = {"total": vm.total, "available": vm.available}
        limit = cgroup_memory_limit()
        if limit is not None:
            ev["cgroup_limit"] = limit
        usable = min(vm.available, limit) if limit else vm.available
        need = max((int(s.get("transformer_bytes", 0)) + int(s.get("text_encoder_bytes", 0))
                    for s in ctx.profile.stages.values()), default=0)
        if need and usable < need:
            out.append(Finding(
                "vram.host-ram-low", Severity.WARN,
                f"{usable / GiB:.0f} GiB of host RAM usable; offloading a stage holds up to {need / GiB:.0f} GiB there",
                cause="streamed and offloaded weights live in (pinned) host memory; short of it, the kernel kills "
                      "the run or swaps", evidence={**ev, "needed": need}))
        else:
            out.append(Finding("vram.host-ram", Severity.INFO, f"host RAM {vm.available / GiB:.0f} GiB available"
                               + (f" (cgroup limit {limit / GiB:.0f} GiB)" if limit else ""), evidence=ev))
        try:
            shm = psutil.disk_usage("/dev/shm").total
            if shm < 1 * GiB:
                out.append(Finding(
                    "vram.shm-small", Severity.WARN, f"/dev/shm is {shm / 2**20:.0f} MiB",
                    cause="torchrun and data loaders share tensors through /dev/shm; Docker's default 64 MiB makes "
                          "them fail with bus errors", evidence={"shm_bytes": shm},
                    remedy=Remedy("docker run --shm-size=16g ...  # or the pod template's shared memory setting")))
        except OSError:
            pass
        return out

    def _gpu(self, g: dict[str, Any]) -> list[Finding]:
        procs = g.get("processes")
        ev = {k: g.get(k) for k in ("index", "cuda_index", "name", "uuid", "capability", "memory_total",
                                    "memory_used", "memory_free", "mig", "processes", "pcie_gen")}
        out = [Finding("vram.gpu", Severity.INFO,
                       f"GPU {g['cuda_index']} {g['name']} (sm_{g['capability'].replace('.', '')}): "
                       f"{g['memory_free'] / GiB:.1f} of {g['memory_total'] / GiB:.1f} GiB free", evidence=ev)]
        if g.get("mig"):
            out.append(Finding("vram.mig", Severity.WARN, f"GPU {g['cuda_index']} is in MIG mode",
                               cause="a MIG slice has only its own share of memory; plan for the slice, not the card",
                               evidence=ev))
        held = sum(p.get("used_bytes", 0) for p in procs or [])
        if g["memory_used"] - held > FOREIGN_MIN and not procs:
            out.append(Finding(
                "vram.foreign-usage", Severity.WARN,
                f"GPU {g['cuda_index']}: {(g['memory_used'] - held) / GiB:.1f} GiB used by processes this container "
                "cannot see", cause="another container or a host process holds the memory (NVML lists no pid "
                "from inside a container); the plan uses what is free", evidence=ev))
        return out

    def _stages(self, ctx: Context, gpu: dict[str, Any], budget: int, basis: str) -> list[Finding]:
        out = []
        wanted = ctx.options.extra.get("stages") or list(ctx.profile.stages)
        for name in wanted:
            stage = ctx.profile.stages.get(name)
            if stage is None:
                continue
            files = self._weights(ctx, stage)
            model, source = stage_model(name, stage, files)
            h, w = resolution(stage, ctx.options.extra.get("resolution") if name == "pano" or
                              str(ctx.options.extra.get("resolution", "")).isdigit() else None)
            device = device_for(gpu, budget)
            plan = plan_stage(model, device, h, w)
            ev = {"stage": name, "resolution": [h, w], "budget": budget, "budget_basis": basis,
                  "gpu": gpu.get("name"), "sizes_from": source, "plan": plan.to_dict()}
            peak = f"{plan.predicted_peak / GiB:.1f} GiB"
            label = f"{name} at {h}x{w}"
            if plan.mode == "resident" and plan.fits:
                out.append(Finding("vram.stage-fits", Severity.OK, f"{label}: fits resident (peak {peak})",
                                   evidence=ev))
            elif plan.fits:
                known = plan.predicted_step_s is not None and plan.predicted_slowdown != float("inf")
                slow = f", ~{plan.predicted_slowdown:.2f}x resident" if known else ""
                out.append(Finding(
                    "vram.stage-needs-plan", Severity.INFO,
                    f"{label}: fits with plan '{plan.mode}' "
                    f"({plan.streamed_blocks} blocks streamed, peak {peak}{slow})",
                    cause="not everything fits resident in the budget; m3d-doctor run places it this way "
                          "(never the upstream whole-pipeline .to(device))", evidence=ev))
            else:
                out.append(Finding(
                    "vram.stage-does-not-fit", Severity.FAIL,
                    f"{label}: does not fit in {budget / GiB:.1f} GiB even streaming every block (peak {peak})",
                    cause="activations alone exceed the budget at this resolution", evidence=ev,
                    remedy=Remedy("m3d-doctor run --resolution 480 ..." if name == "video" else
                                  "use a lower resolution or a larger GPU")))
        return out

    def _weights(self, ctx: Context, stage: dict[str, Any]) -> list[Path]:
        """The stage's transformer shards, if on disk: their headers give the real block sizes."""
        out = []
        for model in ctx.profile.models:
            if model.repo != stage.get("model"):
                continue
            for f in model.files:
                weights = "transformer/" in f.path or "diffusion_pytorch_model" in f.path
                if f.path.endswith(".safetensors") and weights:
                    path, _ = locate(ctx, model, f)
                    if path is None:
                        return []
                    out.append(path)
        return out


CHECK = VramCheck()
