"""shims.<name>: install one compatibility shim (see `fixes/shims`) into the target, verify it, or take it out.

Plan: refuse unless every condition of the shim holds in the target (decided by the `shims` probe: a real
pytorch3d, a real torch.xpu, a real cached_download are never shadowed). Apply: build the shim's wheel and
install it with the target's pip. Verify: import through the real import path in a fresh target process.
Rollback: uninstall it, which leaves the target's files exactly as they were.
"""

from __future__ import annotations

import json
from typing import Any

from m3d_doctor.context import Context
from m3d_doctor.findings import Finding, Severity
from m3d_doctor.fix import Action, Fix, Plan, Progress, Risk
from m3d_doctor.probe import run_probe
from m3d_doctor.target import read_distributions
from packaging.utils import canonicalize_name

from .shims import SHIMS, Condition, Shim
from .shims import install as shim_install


def probe_shim(ctx: Context, conditions: tuple[Condition, ...] = (), verify: str | None = None) -> dict[str, Any]:
    request = {"conditions": [c.to_dict() for c in conditions], "verify": verify}
    return run_probe(ctx.target.python, "shims", stdin=json.dumps(request), timeout=ctx.target.probe_timeout).data


def installed_version(ctx: Context, dist: str) -> str | None:
    """From the metadata files on disk, read afresh (the target's cached list predates any install)."""
    found = read_distributions(ctx.target.site_paths()).get(canonicalize_name(dist))
    return found.version if found else None


class ShimFix(Fix):
    def __init__(self, name: str):
        self.shim: Shim = SHIMS[name]
        self.id = f"shims.{name}"
        self.description = f"install the {self.shim.dist} shim: {self.shim.brief}"

    def plan(self, ctx: Context) -> Plan:
        shim = self.shim
        plan = Plan(self.id, [])
        if not getattr(ctx.target, "live", False):
            plan.blocked = "shims are installed into a live interpreter (--python), not a freeze file"
            return plan
        have = installed_version(ctx, shim.dist)
        if have is not None:
            plan.notes.append(f"{shim.dist} {have} is already installed (`m3d-doctor shims` lists it)")
            return plan
        answer = probe_shim(ctx, shim.needed)
        refusals = [f"{c.refusal} ({r['detail']})" for c, r in zip(shim.needed, answer["conditions"])
                    if not r["holds"]]
        if not answer["pip"]:
            refusals.append("the target has no pip to install the shim with (python -m ensurepip)")
        if refusals:
            plan.blocked = "; ".join(refusals)
            return plan
        plan.notes += [f"why: {shim.why} {shim.sources}",
                       f"unnecessary {shim.unnecessary_when}; remove with `m3d-doctor fix --undo shims`",
                       "seen in the target: " + "; ".join(r["detail"] for r in answer["conditions"])]
        plan.actions.append(Action(f"install {shim.dist} {shim.version}: {shim.provides}", Risk.SAFE,
                                   command=shim_install.install_command(ctx.target.python, shim),
                                   data={"dist": shim.dist}))
        return plan

    def apply(self, ctx: Context, plan: Plan, progress: Progress) -> None:
        for action in plan.actions:
            shim_install.install(ctx.target.python, self.shim)
            action.data["installed"] = True
            progress(f"installed {self.shim.dist} {self.shim.version}")

    def verify(self, ctx: Context, plan: Plan) -> list[Finding]:
        shim = self.shim
        if installed_version(ctx, shim.dist) != shim.version:
            return [Finding("shims.not-installed", Severity.FAIL, f"{shim.dist} is not listed by the target's pip")]
        result = probe_shim(ctx, verify=shim.verify)["verify"]
        if result["ok"]:
            return []
        return [Finding("shims.verify-failed", Severity.FAIL, f"{shim.dist}: {result['error']}",
                        evidence={"traceback_tail": result.get("traceback_tail", [])})]

    def rollback(self, ctx: Context, plan: Plan, progress: Progress) -> None:
        if any(a.data.get("installed") for a in plan.actions):
            shim_install.uninstall(ctx.target.python, self.shim.dist)
            progress(f"uninstalled {self.shim.dist}")


PYTORCH3D_TRANSFORMS = ShimFix("pytorch3d-transforms")
TORCH_XPU = ShimFix("torch-xpu")
HF_CACHED_DOWNLOAD = ShimFix("hf-cached-download")
