"""packages.align: the findings whose remedy is a pinned install, fixed by one transactional resolver call.

The plan is data: what must change (name: installed → wanted → resolved), taken from the failing findings
of the packages/imports/torch checks and the profile's pins (`--pin` adds or overrides one), the resolver's
dry run of the exact command, and the risk (risky: the installed set changes). Applying it snapshots what
will change (`doctor/txn.py`), runs the one install (`doctor/installer.py`), then verifies with the checks
again in a fresh context plus an import of every changed package; anything still failing, or anything that
got worse, restores the snapshot. `numpy.align` plans over the same machinery.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shlex
from dataclasses import dataclass, field
from typing import Any, Optional

from m3d_doctor import installer, txn
from m3d_doctor.cache import Cache
from m3d_doctor.check import discover_checks
from m3d_doctor.context import Context
from m3d_doctor.engine import run_checks
from m3d_doctor.errors import DoctorError, UsageError
from m3d_doctor.facts import run_import_probe
from m3d_doctor.findings import Finding, Severity
from m3d_doctor.fix import Action, Fix, Plan, Progress, Risk
from m3d_doctor.profile import PackagePin
from m3d_doctor.remedies import distribution_for_module
from m3d_doctor.target import Target
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

CHECKS = ("packages", "imports", "torch")
NOT_MODULES = {"tests", "test", "testing", "docs", "doc", "examples", "benchmarks", "scripts", "bin", "__pycache__"}


@dataclass
class Want:
    """One distribution the install names: the requirement it must meet, and the findings that ask for it."""

    name: str
    spec: SpecifierSet = field(default_factory=SpecifierSet)
    url: Optional[str] = None
    findings: list[str] = field(default_factory=list)

    @property
    def requirement(self) -> str:
        return f"{self.name} @ {self.url}" if self.url else f"{self.name}{self.spec}"

    def add(self, spec: SpecifierSet, url: Optional[str], finding: str) -> None:
        self.spec &= spec
        self.url = self.url or url
        if finding not in self.findings:
            self.findings.append(finding)


class ChangeAction(Action):
    """An action that is one package change; its JSON form carries the change as fields."""

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), **self.data["change"]}


def parse_pins(ctx: Context) -> dict[str, Requirement]:
    """`--pin SPEC` (repeatable): name → requirement; a pin must say which versions."""
    out: dict[str, Requirement] = {}
    for text in ctx.options.extra.get("pins") or []:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            raise UsageError(f"--pin {text!r}: not a requirement (e.g. 'diffusers==0.34.0')") from None
        if not req.specifier and not req.url:
            raise UsageError(f"--pin {text!r}: give the versions (e.g. '{req.name}==1.2.3' or '{req.name}<2')")
        out[canonicalize_name(req.name)] = req
    return out


def satisfied(ctx: Context, req: Requirement) -> bool:
    have = ctx.target.dists.get(canonicalize_name(req.name))
    if have is None or req.url:
        return False
    try:
        return not req.specifier or req.specifier.contains(Version(have.version), prereleases=True)
    except InvalidVersion:
        return False


def requirements_in(command: Optional[str]) -> list[Requirement]:
    """The requirements of a `... install REQ ...` remedy command (options and their values skipped)."""
    try:
        words = shlex.split(command or "", comments=True)
    except ValueError:
        return []
    if "install" not in words:
        return []
    out, skip = [], False
    for w in words[words.index("install") + 1:]:
        if skip:
            skip = False
        elif w in ("-c", "-r", "-i", "-f", "--constraint", "--requirement", "--index-url", "--extra-index-url",
                   "--find-links", "--python"):
            skip = True
        elif not w.startswith("-"):
            try:
                out.append(Requirement(w))
            except InvalidRequirement:
                continue
    return out


def constraints(ctx: Context, pins: dict[str, Requirement]) -> list[str]:
    """The profile's pins (torch family included), with the `--pin` overrides."""
    lines = {name: pin.requirement for name, pin in ctx.profile.packages.items()}
    fam = ctx.profile.torch
    if fam is not None:
        for name in installer.TORCH_FAMILY:
            version = getattr(fam, name, None)
            if version and name not in lines:
                lines[name] = f"{name}=={version}"
    lines.update({name: str(req) for name, req in pins.items()})
    return [lines[n] for n in sorted(lines)]


def finding_key(f: Finding) -> tuple[str, str]:
    ev = f.evidence or {}
    return f.id, str(ev.get("module") or ev.get("package") or ev.get("attr") or f.title)


def with_pins(ctx: Context, pins: dict[str, Requirement]) -> Context:
    """The same target under the profile with the `--pin` overrides: the checks judge by them for this run."""
    if not pins:
        return ctx
    packages = dict(ctx.profile.packages)
    for name, req in pins.items():
        old = packages.get(name)
        packages[name] = PackagePin(name, req.specifier, old.import_name if old else None, True, f"--pin {req}")
    blob = ctx.profile.digest + "|" + "|".join(str(pins[n]) for n in sorted(pins))
    profile = dataclasses.replace(ctx.profile, packages=packages, digest=hashlib.sha256(blob.encode()).hexdigest()[:16])
    return Context(ctx.target, profile, ctx.options, ctx.cache)


def fresh_context(ctx: Context) -> Context:
    """A new target and a disabled cache: nothing read before the install can answer after it."""
    cache = Cache(ctx.cache.directory, enabled=False)
    target = Target(python=ctx.target.python, cache=cache, probe_timeout=ctx.target.probe_timeout)
    options = dataclasses.replace(ctx.options, use_cache=False, extra=dict(ctx.options.extra))
    return Context(target, ctx.profile, options, cache)


def modules_of(dist_info: str) -> list[str]:
    """Importable top-level names a distribution installed (packages and modules in its RECORD)."""
    site = os.path.dirname(dist_info)
    names = set()
    for path in txn.record_files(dist_info) or []:
        rel = os.path.relpath(path, site)
        if rel.startswith("..") or ".dist-info" in rel or ".data" + os.sep in rel:
            continue
        parts = rel.split(os.sep)
        if len(parts) == 1 and parts[0].endswith((".py", ".so")):
            names.add(parts[0].split(".")[0])
        elif len(parts) == 2 and parts[1] == "__init__.py":
            names.add(parts[0])
    return sorted(n for n in names if n.isidentifier() and n not in NOT_MODULES and not n.startswith("_"))


def import_failures(ctx: Context, modules: list[str]) -> dict[str, str]:
    if not modules:
        return {}
    out = run_import_probe(ctx, {"modules": modules, "names": {}, "attrs": []})
    return {r["module"]: f"{r.get('type')}: {r.get('message', '')[:200]}" for r in out["imports"] if not r.get("ok")}


class PinnedInstall(Fix):
    """Plan requirements as one resolver call and apply it as a transaction; subclasses say what is wanted."""

    def wanted(self, ctx: Context, findings: list[Finding], pins: dict[str, Requirement]) -> dict[str, Want]:
        raise NotImplementedError  # pragma: no cover - interface

    def run_checks(self, ctx: Context) -> list[Finding]:
        available = discover_checks()
        report = run_checks([available[n] for n in CHECKS if n in available], ctx)
        return [f for r in report.results for f in r.findings]

    def mine(self, findings: list[Finding]) -> list[Finding]:
        return [f for f in findings if f.severity in (Severity.FAIL, Severity.WARN) and f.remedy
                and f.remedy.fix_id == self.id]

    def plan(self, ctx: Context) -> Plan:
        pins = parse_pins(ctx)
        ctx = with_pins(ctx, pins)
        found = self.run_checks(ctx) if ctx.target.live else []
        wants = self.wanted(ctx, self.mine(found), pins)
        return self.plan_install(ctx, wants, pins, found)

    def plan_install(self, ctx: Context, wants: dict[str, Want], pins: dict[str, Requirement],
                     found: list[Finding], notes: Optional[list[str]] = None) -> Plan:
        plan = Plan(self.id, [], notes=list(notes or []))
        if not wants:
            return plan
        if not ctx.target.live:
            plan.blocked = "a freeze file describes another machine: nothing here to install into"
            return plan
        python = ctx.target.python
        requested = ctx.options.extra.get("installer")
        try:
            inst = installer.choose(requested, python)
        except UsageError as exc:
            if requested:
                raise
            plan.blocked = str(exc)
            return plan
        self._family_in_step(ctx, wants)
        index = None
        if set(wants) & set(installer.TORCH_FAMILY):
            index, why = installer.torch_index(ctx)
            plan.blocked = why
            if index:
                plan.notes.append(f"torch, torchvision and torchaudio come from {index}")
        lines = constraints(ctx, pins)
        path = self._write_constraints(ctx, lines)
        if lines:
            plan.notes.append(f"constraints ({path}): {', '.join(lines)}")
        reqs = [w.requirement for w in wants.values()]
        argv = inst.install(reqs, path, index)
        installed = {n: d.version for n, d in ctx.target.dists.items()}
        changes: Optional[list[installer.Change]] = None
        if plan.blocked:
            pass
        elif ctx.options.offline:
            plan.notes.append("--offline: not resolved ahead; the exact versions are known after the install")
        else:
            changes, error = installer.resolve(inst, inst.install(reqs, path, index, dry_run=True), installed)
            if error:
                plan.blocked = f"the resolver cannot satisfy {' '.join(reqs)}: {error}"
            elif not changes:
                plan.blocked = (f"the resolver would change nothing for {' '.join(reqs)}: these findings need "
                                "another remedy (see their commands)")
        for c in changes or []:
            w = wants.get(c.name)
            change = {"package": c.name, "installed": c.old, "resolved": c.new,
                      "wanted": w.requirement if w else None, "answers": w.findings if w else []}
            what = (f"{c.name}: {c.old} -> {c.new}" if c.old and c.new else
                    f"{c.name}: install {c.new}" if c.new else f"{c.name}: remove {c.old}")
            why = f" (wanted {w.requirement}; {', '.join(w.findings)})" if w else " (needed by the above)"
            plan.actions.append(ChangeAction(what + why, Risk.RISKY, data={"change": change}))
        if changes is None:
            for w in wants.values():
                have = installed.get(w.name)
                change = {"package": w.name, "installed": have, "resolved": None, "wanted": w.requirement,
                          "answers": w.findings}
                plan.actions.append(ChangeAction(f"{w.name}: {have or 'not installed'} -> {w.requirement} "
                                                 f"({', '.join(w.findings)})", Risk.RISKY, data={"change": change}))
        # without a dry run (--offline) the resolver may change dependencies too: keep every installed
        # package's files (hard links cost nothing), so any of them can be put back without the network
        replace = ([c.name for c in changes if c.old] if changes is not None else list(installed))
        plan.actions.append(Action(
            f"snapshot {len(replace)} installed package(s), install in one {inst.kind} call, verify; "
            "restore the snapshot if anything fails", Risk.RISKY, command=installer.display(argv),
            data={"argv": argv, "installer": inst, "replace": replace, "index": index,
                  "pins": {n: str(r) for n, r in pins.items()},
                  "baseline": sorted({finding_key(f) for f in found
                                      if f.severity in (Severity.FAIL, Severity.WARN)})}))
        return plan

    def _family_in_step(self, ctx: Context, wants: dict[str, Want]) -> None:
        """torch moves with torchvision/torchaudio: the ones installed (or pinned) join the same call."""
        family = installer.TORCH_FAMILY
        if not set(wants) & set(family):
            return
        for name in family:
            pin = ctx.profile.pin(name)
            if name not in wants and (name in ctx.target.dists or (pin and pin.required)):
                wants[name] = Want(name, pin.spec if pin else SpecifierSet(), None, ["torch family"])

    def _write_constraints(self, ctx: Context, lines: list[str]) -> Any:
        text = "".join(f"{ln}\n" for ln in lines)
        d = txn.txn_dir(ctx.cache.directory, ctx.target.interp["prefix"])
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"constraints-{hashlib.sha256(text.encode()).hexdigest()[:12]}.txt"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
        return path

    # -- apply / verify / rollback -------------------------------------------------------------------------

    def apply(self, ctx: Context, plan: Plan, progress: Progress) -> None:
        step = plan.actions[-1].data
        inst: installer.Installer = step["installer"]
        j = txn.begin(ctx, self.id, plan.actions[-1].command or "")
        step["journal"] = j
        sites = txn.install_dirs(ctx.target.interp)
        snap = txn.snapshot(j, sites, step["replace"])
        kept = ", ".join(f"{n} {snap['dists'][n]['version']}" for n in snap["stashed"]) or "nothing to replace"
        progress(f"snapshot of {len(snap['dists'])} distributions in {j.dir} (files kept: {kept})")
        if snap["unstashable"]:
            progress(f"no RECORD for {', '.join(snap['unstashable'])}: restoring them would need the index")
        modules = sorted({m for n in snap["stashed"] for m in modules_of(snap["dists"][n]["dist_info"])})
        step["imports_before"] = import_failures(ctx, modules)
        step["modules_before"] = modules
        j.phase("installing")
        progress(f"running: {plan.actions[-1].command}")
        code, tail = installer.run(step["argv"], pass_fds=[j.lock_fd], watch=sites,
                                   on_start=lambda pid: j.save(installer_pid=pid),
                                   progress=lambda line: progress(f"  {line}"))
        if code != 0:
            raise DoctorError(f"{inst.kind} exited with {code}: {installer.error_summary(tail)}")
        j.phase("verifying")

    def verify(self, ctx: Context, plan: Plan) -> list[Finding]:
        step = plan.actions[-1].data
        j: txn.Journal = step["journal"]
        fresh = with_pins(fresh_context(ctx), {n: Requirement(t) for n, t in step["pins"].items()})
        found = self.run_checks(fresh)
        baseline = {tuple(k) for k in step["baseline"]}
        still = [f for f in found if f.severity is Severity.FAIL and f.remedy and f.remedy.fix_id == self.id]
        still += [f for f in found if f.severity in (Severity.FAIL, Severity.WARN, Severity.ERROR) and f not in still
                  and finding_key(f) not in baseline]  # a check that can no longer run (import hangs) fails it
        for name, text in step["pins"].items():
            req = Requirement(text)
            if not satisfied(fresh, req):
                have = fresh.target.dists.get(name)
                still.append(Finding("packages.pin-unmet", Severity.FAIL,
                                     f"--pin {text}: {name} {have.version if have else 'is not installed'}"))
        sites = j.data["snapshot"]["sites"]
        now = txn.scan(sites)
        before = j.data["snapshot"]["dists"]
        changed = [n for n, d in now.items() if n not in before or before[n]["version"] != d["version"]]
        modules = sorted({m for n in changed for m in modules_of(now[n]["dist_info"])})
        for module, error in import_failures(fresh, modules).items():
            if module in step["modules_before"] and module in step["imports_before"]:
                continue  # it did not import before the install either
            still.append(Finding("imports.broken-by-install", Severity.FAIL,
                                 f"{module} does not import after the install: {error}"))
        if not still:
            j.finish("done")
        return still

    def rollback(self, ctx: Context, plan: Plan, progress: Progress) -> None:
        step = plan.actions[-1].data
        j: Optional[txn.Journal] = step.get("journal")
        if j is None:
            return
        if "snapshot" not in j.data:  # stopped before the snapshot: nothing was changed
            j.finish("rolled-back")
            return
        inst: installer.Installer = step["installer"]

        def network(reqs: list[str]) -> int:  # the torch index too, or a +cuXXX build cannot come back
            argv = inst.install(reqs, None, step.get("index"), no_deps=True)
            return installer.run(argv, progress=lambda line: progress(f"  {line}"))[0]

        progress("restoring the snapshot")
        still = txn.restore(j, network, progress)
        if still:
            j.release()
            raise txn.RestoreIncomplete("the snapshot could not be fully restored (" + "; ".join(still) + "); the "
                                    f"journal is kept in {j.dir}: m3d-doctor fix --yes retries the restore")
        j.finish("rolled-back")
        progress("restored: every distribution is at its version from before the fix")


class PackagesAlign(PinnedInstall):
    id = "packages.align"
    description = "install the profile's pinned versions in one transactional resolver call (risky, restorable)"

    def wanted(self, ctx: Context, findings: list[Finding], pins: dict[str, Requirement]) -> dict[str, Want]:
        wants: dict[str, Want] = {}

        def add(name: str, spec: SpecifierSet, url: Optional[str], finding: str) -> None:
            key = canonicalize_name(name)
            wants.setdefault(key, Want(key)).add(spec, url, finding)

        for f in findings:
            reqs = requirements_in(f.remedy.command if f.remedy else None)
            if not reqs:
                reqs = [Requirement(n) for n in self._names_from_evidence(ctx, f)]
            if f.id == "packages.dependency-missing" and f.evidence.get("requires"):
                with contextlib.suppress(InvalidRequirement):
                    dep = Requirement(f.evidence["requires"])
                    add(dep.name, dep.specifier, dep.url, f.id)
            for r in reqs:
                add(r.name, r.specifier, r.url, f.id)
            if f.id.startswith("imports.") and reqs and all(satisfied(ctx, r) for r in reqs):
                # it meets every requirement and still fails: the installed release itself must go
                for r in reqs:
                    name = canonicalize_name(r.name)
                    if name not in installer.TORCH_FAMILY and name in ctx.target.dists:
                        add(name, SpecifierSet(f"!={ctx.target.dists[name].version}"), None, f.id)
                        break
        for name, req in pins.items():
            if name in wants:
                wants[name].spec, wants[name].url = req.specifier, req.url
                wants[name].findings.append("--pin")
            elif not satisfied(ctx, req):
                wants[name] = Want(name, req.specifier, req.url, ["--pin"])
        return wants

    @staticmethod
    def _names_from_evidence(ctx: Context, f: Finding) -> list[str]:
        ev = f.evidence or {}
        if ev.get("package"):
            return [ev["package"]]
        if ev.get("module"):
            dist = distribution_for_module(ctx, ev["module"])
            return [dist] if dist else []
        return []


FIX = PackagesAlign()
