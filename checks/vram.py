"""vram: every GPU through NVML, host memory for offloading, and whether each stage fits, with which plan.

Live numbers (free memory changes): this check reads NVML itself and is never cached. Offloading lives in
host RAM, so RAM, /dev/shm and the cgroup limit are part of the answer. Stage fit comes from `stages.stage_plan`
(the planner, doctor/planner.py) for the budget `gpu_budget.choose_budget` picks: the best visible GPU's free
memory, or `--budget SIZE` to plan for another card; `m3d-doctor run` plans its stages through the same call.
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
from m3d_doctor.gpu_budget import Budget, choose_budget, snapshot_gpus
from m3d_doctor.planner import GiB
from m3d_doctor.stages import split_resolution, stage_plan

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


def usable_host_ram() -> tuple[int, Optional[int]]:
    """Host RAM a run can take now: what is available, capped by the container's cgroup limit (and that limit)."""
    limit = cgroup_memory_limit()
    available = psutil.virtual_memory().available
    return (min(available, limit) if limit else available), limit


class VramCheck(Check):
    name = "vram"
    description = "GPUs (NVML), host RAM and /dev/shm for offloading, and which plan fits each stage"
    order = 80
    needs_live_target = False

    def run(self, ctx: Context) -> list[Finding]:
        split_resolution(ctx.options.extra.get("resolution"))  # a bad --resolution is exit 2 even with no GPU
        snap = nvml.snapshot()
        findings = self._host(ctx)
        budget_override = ctx.options.extra.get("budget")
        gpus = snapshot_gpus(snap)
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
        budget = choose_budget(budget_override, gpus)
        if budget is None or ctx.options.extra.get("plan_stages") is False:
            return findings
        findings += self._stages(ctx, budget)
        return findings

    def _host(self, ctx: Context) -> list[Finding]:
        vm = psutil.virtual_memory()
        out = []
        ev = {"total": vm.total, "available": vm.available}
        usable, limit = usable_host_ram()
        if limit is not None:
            ev["cgroup_limit"] = limit
        need = max((int(s.get("transformer_bytes", 0)) + int(s.get("text_encoder_bytes", 0))
                    for s in ctx.profile.stages.values() if not s.get("host_lazy")), default=0)
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

    def _stages(self, ctx: Context, budget: Budget) -> list[Finding]:
        """One finding per wanted stage, from `stage_plan` (the plan `m3d-doctor run` would use)."""
        out = []
        wanted = ctx.options.extra.get("stages") or list(ctx.profile.stages)
        for name in wanted:
            if name not in ctx.profile.stages:
                continue
            sp = stage_plan(ctx, name, budget=budget, locate=locate)
            plan, ev = sp.plan, sp.evidence()
            out += self._host_for_plan(sp)
            peak = f"{plan.predicted_peak / GiB:.1f} GiB"
            label = f"{name} at {sp.height}x{sp.width}"
            if plan.mode == "resident" and plan.fits:
                out.append(Finding("vram.stage-fits", Severity.OK, f"{label}: fits resident (peak {peak})",
                                   evidence=ev))
            elif plan.fits:
                known = plan.predicted_step_s is not None and not ev["plan"]["slowdown_unknown"]
                slow = f", ~{plan.predicted_slowdown:.2f}x resident" if known else ""
                out.append(Finding(
                    "vram.stage-needs-plan", Severity.INFO,
                    f"{label}: fits with plan '{plan.mode}' "
                    f"({plan.streamed_blocks} blocks streamed, peak {peak}{slow})",
                    cause="not everything fits resident in the budget; m3d-doctor run places it this way "
                          "(never the upstream whole-pipeline .to(device))", evidence=ev))
            else:
                phase, top = max(plan.phase_peaks.items(), key=lambda kv: kv[1], default=("denoise", 0))
                cause = ("activations alone exceed the budget at this resolution" if phase == "denoise" else
                         f"its {phase.replace('_', ' ')} phase alone needs {top / GiB:.1f} GiB (weights that are "
                         "never streamed: a larger GPU, not a lower resolution)")
                out.append(Finding(
                    "vram.stage-does-not-fit", Severity.FAIL,
                    f"{label}: does not fit in {sp.budget / GiB:.1f} GiB even streaming every block (peak {peak}, "
                    "2 GiB kept free for the CUDA context and fragmentation)",
                    cause=cause, evidence=ev,
                    remedy=Remedy("m3d-doctor run --resolution 480 ..." if name == "video" and phase == "denoise"
                                  else "use a lower resolution or a larger GPU" if phase == "denoise"
                                  else "a GPU with more memory")))
        return out

    def _host_for_plan(self, sp: Any) -> list[Finding]:
        """A lazily loaded stage (video) holds its streamed blocks pinned in host RAM: refuse a plan the host
        cannot hold, with the numbers (the kernel would kill the run mid-load otherwise)."""
        need = sp.plan.host_peak
        if not need or not sp.plan.fits:
            return []
        usable, limit = usable_host_ram()
        if usable >= need:
            return []
        return [Finding(
            "vram.host-ram-short", Severity.FAIL,
            f"{sp.stage}: its plan needs {need / GiB:.1f} GiB of host RAM, {usable / GiB:.1f} GiB is usable",
            cause=f"{sp.plan.streamed_blocks} streamed blocks live in pinned host memory, beside the encoders "
                  "while they load; short of it the kernel kills the run",
            evidence={"stage": sp.stage, "host_needed": need, "host_usable": usable, "cgroup_limit": limit,
                      "streamed_blocks": sp.plan.streamed_blocks},
            remedy=Remedy("a pod with more RAM, or a GPU with more memory (fewer blocks streamed)"))]


CHECK = VramCheck()
