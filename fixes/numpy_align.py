"""numpy.align: compiled wheels built for NumPy 1.x beside NumPy 2 (`imports.numpy-abi`).

Preferred: keep NumPy and move each broken wheel to a NumPy-2 build — the first NumPy-2-ready release from
`knowledge.toml [numpy2_ready]`, else whatever newer release the resolver finds beside the installed NumPy
(the import after the install proves it; a wheel that still fails is rolled back). When no newer release
resolves, or the profile (or `--pin`) keeps NumPy below 2, NumPy itself goes below 2 instead. One
transaction, the same machinery as packages.align.
"""

from __future__ import annotations

from typing import Optional

from m3d_doctor import knowledge
from m3d_doctor.context import Context
from m3d_doctor.findings import Finding
from m3d_doctor.fix import Plan
from m3d_doctor.fixes.packages_align import PinnedInstall, Want, parse_pins, with_pins
from m3d_doctor.remedies import distribution_for_module
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version


def numpy2_ready() -> dict[str, str]:
    return {canonicalize_name(k): v for k, v in knowledge.facts().get("numpy2_ready", {}).items()}


class NumpyAlign(PinnedInstall):
    id = "numpy.align"
    description = "NumPy-1 wheels under NumPy 2: upgrade them to NumPy-2 builds, else keep NumPy below 2"

    def plan(self, ctx: Context) -> Plan:
        pins = parse_pins(ctx)
        ctx = with_pins(ctx, pins)
        found = self.run_checks(ctx) if ctx.target.live else []
        broken = self._broken(ctx, self.mine(found))
        if not broken:
            return Plan(self.id, [])
        numpy = ctx.target.dists.get("numpy")
        keep = self._numpy_spec(ctx, pins)
        try:
            installed = Version(numpy.version) if numpy else None
        except InvalidVersion:
            installed = None
        if installed is not None and installed.major >= 2 and keep.contains(installed, prereleases=True):
            wants, notes = self._upgrade(ctx, broken, numpy.version if numpy else "")
            plan = self.plan_install(ctx, wants, pins, found, notes)
            if not plan.blocked or not plan.blocked.startswith("the resolver"):
                return plan
            notes = [f"no NumPy-{installed.major} build of {', '.join(broken)} resolves ({plan.blocked}); "
                     "keeping NumPy below 2 instead"]
        else:
            notes = [f"the profile{' and --pin' if 'numpy' in pins else ''} keep(s) numpy{keep}: NumPy moves, "
                     "the NumPy-1 wheels stay"]
        spec = keep & SpecifierSet("<2") if installed is None or installed.major >= 2 else keep
        wants = {"numpy": Want("numpy", spec, None, sorted({f for fs in broken.values() for f in fs}))}
        return self.plan_install(ctx, wants, pins, found, notes)

    def _broken(self, ctx: Context, findings: list[Finding]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for f in findings:
            module = (f.evidence or {}).get("module")
            if module:
                dist = canonicalize_name(distribution_for_module(ctx, module) or module.split(".")[0])
                out.setdefault(dist, []).append(f.id)
        return out

    def _numpy_spec(self, ctx: Context, pins: dict[str, Requirement]) -> SpecifierSet:
        if "numpy" in pins:
            return pins["numpy"].specifier
        pin = ctx.profile.pin("numpy")
        return pin.spec if pin else SpecifierSet()

    def _upgrade(self, ctx: Context, broken: dict[str, list[str]], numpy: str) -> tuple[dict[str, Want], list[str]]:
        ready = numpy2_ready()
        wants = {"numpy": Want("numpy", SpecifierSet(f"=={numpy}"), None, ["keep numpy"])}
        notes = []
        for dist, fids in broken.items():
            have: Optional[str] = ctx.target.dists[dist].version if dist in ctx.target.dists else None
            if dist in ready:
                spec = SpecifierSet(f">={ready[dist]}")
                notes.append(f"{dist} >= {ready[dist]} is built for NumPy 2 (knowledge.toml numpy2_ready)")
            else:
                spec = SpecifierSet(f">{have}") if have else SpecifierSet()
                notes.append(f"{dist}: no NumPy-2-ready version on record; taking the newest release that resolves "
                             "beside the installed NumPy (the import after the install proves it)")
            wants[dist] = Want(dist, spec, None, list(dict.fromkeys(fids)))
        return wants, notes


FIX = NumpyAlign()
