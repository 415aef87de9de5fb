"""packages: installed distributions against the profile's pins, and requirement conflicts like `pip check`.

Read from metadata files, never by running pip. Local version tags (`2.7.1+cu126`) compare as PEP 440 says:
`==2.7.1` accepts `2.7.1+cu126`.
"""

from __future__ import annotations

from m3d_doctor.check import Check
from m3d_doctor.context import Context
from m3d_doctor.findings import Finding, Remedy, Severity
from m3d_doctor.remedies import install
from packaging.markers import UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version


def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


class PackagesCheck(Check):
    name = "packages"
    description = "installed distributions vs the profile's pins, and requirement conflicts"
    order = 20
    needs_live_target = False

    def cache_key(self, ctx: Context) -> str:
        return ""

    def run(self, ctx: Context) -> list[Finding]:
        dists = ctx.target.dists
        findings: list[Finding] = []
        ok = 0
        for pin in ctx.profile.packages.values():
            have = dists.get(pin.name)
            if have is None:
                if pin.required:
                    findings.append(Finding(
                        "packages.missing", Severity.FAIL, f"{pin.name} is not installed (profile: {pin.spec})",
                        cause=pin.why or f"the profile needs {pin.name}{pin.spec}",
                        evidence={"package": pin.name, "wanted": str(pin.spec)},
                        remedy=Remedy(install(ctx, [pin.name]), "packages.align"),
                    ))
                continue
            v = _version(have.version)
            if not have.version:
                ok += 1  # editable / VCS install: present, version unknown
                continue
            if v is None or not pin.spec.contains(v, prereleases=True):
                findings.append(Finding(
                    "packages.wrong-version", Severity.FAIL,
                    f"{pin.name} {have.version} installed, profile wants {pin.spec}",
                    cause=pin.why or f"the profile's set was resolved with {pin.name}{pin.spec}",
                    evidence={"package": pin.name, "installed": have.version, "wanted": str(pin.spec)},
                    remedy=Remedy(install(ctx, [pin.name]), "packages.align"),
                ))
            else:
                ok += 1
        findings.extend(self._conflicts(ctx))
        if not any(f.severity in (Severity.FAIL, Severity.WARN) for f in findings):
            findings.insert(0, Finding("packages.ok", Severity.OK,
                                       f"{ok} pinned packages match; no requirement conflicts",
                                       evidence={"installed": len(dists)}))
        return findings

    def _conflicts(self, ctx: Context) -> list[Finding]:
        dists = ctx.target.dists
        markers = dict(ctx.target.markers or {})
        profile_names = set(ctx.profile.packages)
        out = []
        for dist in dists.values():
            for text in dist.requires:
                try:
                    req = Requirement(text)
                except InvalidRequirement:
                    continue
                if req.marker is not None:
                    if not markers:
                        continue
                    try:
                        if not req.marker.evaluate({**markers, "extra": ""}):
                            continue
                    except UndefinedEnvironmentName:
                        continue
                dep = canonicalize_name(req.name)
                have = dists.get(dep)
                involved = dep in profile_names or dist.name in profile_names
                if have is None:
                    out.append(Finding(
                        "packages.dependency-missing", Severity.FAIL if involved else Severity.WARN,
                        f"{dist.name} {dist.version} requires {req}, which is not installed",
                        cause=f"{dist.name} declares {req}; importing it may fail",
                        evidence={"package": dist.name, "requires": str(req)},
                        remedy=Remedy(install(ctx, [dep]), "packages.align"),
                    ))
                    continue
                v = _version(have.version)
                if v is not None and req.specifier and not req.specifier.contains(v, prereleases=True):
                    out.append(Finding(
                        "packages.conflict", Severity.FAIL if involved else Severity.WARN,
                        f"{dist.name} {dist.version} requires {req}, but {dep} {have.version} is installed",
                        cause="pip does not re-check packages installed earlier when a later install changes a "
                              "dependency; this pair was installed out of step",
                        evidence={"package": dist.name, "version": dist.version, "requires": str(req),
                                  "installed": f"{dep}=={have.version}"},
                        remedy=Remedy(install(ctx, [dist.name, dep]), "packages.align"),
                    ))
        return out


CHECK = PackagesCheck()
