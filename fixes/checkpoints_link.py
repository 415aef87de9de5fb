"""checkpoints.link: put each file where the upstream generator reads it, as a symlink to where it is.

Answers `checkpoints.lora-path-mismatch` (Matrix-3D's downloader and generator disagree on the LoRA's
path and name). Adds links only; rollback removes exactly the links it made.
"""

from __future__ import annotations

import os
from pathlib import Path

from m3d_doctor.checks.checkpoints import CHECK as CHECKPOINTS
from m3d_doctor.context import Context
from m3d_doctor.findings import Finding
from m3d_doctor.fix import Action, Fix, Plan, Progress, Risk


class CheckpointsLink(Fix):
    id = "checkpoints.link"
    description = "symlink checkpoints to the paths Matrix-3D's generators read"

    def plan(self, ctx: Context) -> Plan:
        plan = Plan(self.id, [])
        for f in CHECKPOINTS.run(ctx):
            if f.id != "checkpoints.lora-path-mismatch":
                continue
            actual, expected = f.evidence["actual"], f.evidence["expected"]
            plan.actions.append(Action(f"link {expected} -> {actual}", Risk.SAFE,
                                       command=f.remedy.command if f.remedy else None,
                                       paths=[expected], data={"actual": actual, "expected": expected}))
        return plan

    def apply(self, ctx: Context, plan: Plan, progress: Progress) -> None:
        for a in plan.actions:
            expected = Path(a.data["expected"])
            if expected.exists() or expected.is_symlink():
                continue  # never replace a file someone put there
            expected.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(a.data["actual"], expected)
            a.data["made"] = True
            progress(f"linked {expected}")

    def verify(self, ctx: Context, plan: Plan) -> list[Finding]:
        return [f for f in CHECKPOINTS.run(ctx) if f.id == "checkpoints.lora-path-mismatch"]

    def rollback(self, ctx: Context, plan: Plan, progress: Progress) -> None:
        for a in plan.actions:
            expected = Path(a.data["expected"])
            if a.data.get("made") and expected.is_symlink():
                expected.unlink()
                progress(f"removed {expected}")


FIX = CheckpointsLink()
