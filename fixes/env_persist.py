"""env.persist: the env check's `export VAR=value` remedies, written durably into the doctor's block of a
shell profile file (`doctor/shellenv.py`: $M3D_DOCTOR_PROFILE_FILE, /etc/profile.d/m3d-doctor.sh where
writable, else ~/.profile). Safe: only lines between the doctor's markers change; setting the same values
again changes nothing; deleting the marked block removes them. New shells see them; the current one needs
the printed `export`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from m3d_doctor import shellenv
from m3d_doctor.check import discover_checks
from m3d_doctor.context import Context
from m3d_doctor.findings import Finding, Severity
from m3d_doctor.fix import Action, Fix, Plan, Progress, Risk

_EXPORT = re.compile(r"^export ([A-Za-z_][A-Za-z0-9_]*)=(\S+)$")


def exports_wanted(ctx: Context) -> dict[str, tuple[str, list[str]]]:
    """VAR → (value, finding ids) from the env findings whose remedy is env.persist."""
    out: dict[str, tuple[str, list[str]]] = {}
    for f in discover_checks()["env"].run(ctx):
        if f.severity not in (Severity.FAIL, Severity.WARN) or not f.remedy or f.remedy.fix_id != "env.persist":
            continue
        m = _EXPORT.match((f.remedy.command or "").strip())
        if m:
            value, ids = out.get(m.group(1), (m.group(2), []))
            out[m.group(1)] = (value, [*ids, f.id])
    return out


class EnvPersist(Fix):
    id = "env.persist"
    description = "write the recommended environment variables into a shell profile file (safe, idempotent)"

    def plan(self, ctx: Context) -> Plan:
        wanted = exports_wanted(ctx)
        path = shellenv.profile_file()
        have = shellenv.read_exports(path)
        todo = {var: value for var, (value, _ids) in wanted.items() if have.get(var) != value}
        plan = Plan(self.id, [])
        for var, value in todo.items():
            plan.actions.append(Action(f"export {var}={value} in {path} ({', '.join(wanted[var][1])})", Risk.SAFE,
                                       command=shellenv.export_command(path, {var: value}), paths=[str(path)],
                                       data={"var": var, "value": value}))
        if todo:
            plan.notes.append(f"new shells read {path}; in this shell run: "
                              + "; ".join(f"export {k}={v}" for k, v in todo.items()))
        return plan

    def apply(self, ctx: Context, plan: Plan, progress: Progress) -> None:
        path = shellenv.profile_file()
        try:
            before: Optional[str] = path.read_text()
        except FileNotFoundError:
            before = None
        plan.actions[0].data["before"] = before
        values = {a.data["var"]: a.data["value"] for a in plan.actions}
        shellenv.set_exports(path, values)
        progress(f"wrote {', '.join(values)} to {path}")

    def verify(self, ctx: Context, plan: Plan) -> list[Finding]:
        have = shellenv.read_exports(shellenv.profile_file())
        return [Finding("env.not-persisted", Severity.FAIL, f"{a.data['var']} is not in the profile file")
                for a in plan.actions if have.get(a.data["var"]) != a.data["value"]]

    def rollback(self, ctx: Context, plan: Plan, progress: Progress) -> None:
        if not plan.actions or "before" not in plan.actions[0].data:
            return
        path = shellenv.profile_file()
        before = plan.actions[0].data["before"]
        if before is None:
            Path(path).unlink(missing_ok=True)
        else:
            tmp = path.with_name(path.name + ".m3d-tmp")
            tmp.write_text(before)
            tmp.replace(path)
        progress(f"restored {path}")


FIX = EnvPersist()
