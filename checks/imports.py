"""imports: every module the profile needs really imports in the target, and failures are classified.

One probe process imports everything (bounded in time); a module that kills the interpreter is recorded as
crashed and the probe resumes after it. The root cause comes from the rules in `knowledge.toml`
(`import_failures`), not from `if` chains here.
"""

from __future__ import annotations

import re
import shlex
import string
from pathlib import Path
from typing import Any

from m3d_doctor import knowledge
from m3d_doctor.check import Check
from m3d_doctor.checks.torch_stack import _torch_pin_of
from m3d_doctor.context import Context
from m3d_doctor.facts import imports_probe
from m3d_doctor.findings import Finding, Remedy, Severity
from m3d_doctor.remedies import distribution_for_module, install, pip


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return "?"


def fmt(template: str, values: dict[str, Any]) -> str:
    return string.Formatter().vformat(template, (), _Blank(values))


def _installed(ctx: Context, dist: str | None) -> str:
    if not dist:
        return "?"
    d = ctx.target.dists.get(dist)
    return d.version if d else "not installed"


def _values(ctx: Context, rec: dict[str, Any], groups: dict[str, str]) -> dict[str, Any]:
    module = rec["module"]
    dist = distribution_for_module(ctx, module) or module.split(".")[0]
    v: dict[str, Any] = {
        "module": module,
        "distribution": dist,
        "pip": pip(ctx),
        "numpy": _installed(ctx, "numpy"),
        "torch": _installed(ctx, "torch"),
        "torch_expected": "?",
        "known": "",
        **groups,
    }
    v["align_command"] = install(ctx, [dist])
    if "source" in groups:
        src_dist = distribution_for_module(ctx, groups["source"]) or groups["source"].split(".")[0]
        v["source_version"] = _installed(ctx, src_dist)
        for rn in knowledge.facts().get("removed_names", []):
            if rn["name"] == groups.get("name") and groups["source"].startswith(rn["source_module"]):
                v["known"] = f"{rn['explain']} {rn['ref']}"
                v["align_command"] = install(ctx, [rn["consumer"], src_dist])
    if "requirement" in groups:
        m = re.match(r"[\w.-]+", groups["requirement"])
        if m:
            v["align_command"] = install(ctx, [dist, m.group(0)])
    if "missing" in groups:
        missing = groups["missing"]
        top = missing.split(".")[0]
        mdist = distribution_for_module(ctx, top)
        if top == module.split(".")[0] and mdist is None or (mdist and mdist not in ctx.target.dists):
            v["missing_cause"] = (f"the distribution that provides '{top}' ({mdist or top}) is not installed")
            v["install_missing"] = install(ctx, [mdist or top])
        elif mdist and "." in missing:
            v["missing_cause"] = (f"{mdist} {_installed(ctx, mdist)} is installed but has no '{missing}': "
                                  f"{module} relies on an API that release removed or does not have yet")
            v["install_missing"] = install(ctx, [dist, mdist])
        else:
            v["missing_cause"] = f"{module} imports '{missing}', which is not installed"
            v["install_missing"] = install(ctx, [mdist or top])
    owner = ctx.target.dists.get(dist)
    torch_req = _torch_pin_of(owner.requires) if owner else None
    if torch_req is not None:  # a torch extension package: it and the torch family move together
        v["torch_expected"] = str(torch_req.specifier)
        family = ["torch", "torchvision", "torchaudio"]
        v["align_command"] = install(ctx, family if dist in family else [*family, dist])
    return v


def classify(ctx: Context, rec: dict[str, Any]) -> Finding:
    texts = {
        "type": rec.get("type", ""),
        "message": rec.get("message", ""),
        "stderr": "\n".join([*rec.get("causes", []), rec.get("stderr", "")]),
    }
    if rec.get("names"):  # the module imported but a name it must provide did not resolve (lazy modules)
        first = rec["names"][0]
        texts = {"type": first["type"], "message": first["message"], "stderr": rec.get("stderr", "")}
    blob = "\n".join(texts.values())
    for rule in knowledge.facts()["import_failures"]:
        groups: dict[str, str] = {}
        matched = True
        for field in ("type", "message", "stderr"):
            if field in rule:
                m = re.search(rule[field], texts[field])
                if not m:
                    matched = False
                    break
                groups.update({k: v for k, v in m.groupdict().items() if v})
        if matched and "any_text" in rule:
            m = re.search(rule["any_text"], blob)
            matched = bool(m)
            if m:
                groups.update({k: v for k, v in m.groupdict().items() if v})
        if not matched:
            continue
        values = _values(ctx, rec, groups)
        return Finding(
            f"imports.{rule['id']}", Severity.FAIL, fmt(rule["title"], values),
            cause=fmt(rule["cause"], values),
            evidence=_evidence(rec, texts),
            remedy=Remedy(fmt(rule["remedy"], values), rule.get("fix_id"), note=rule.get("source")),
        )
    if rec.get("crashed"):
        return Finding("imports.crashed", Severity.FAIL, f"{rec['module']}: the interpreter crashed on import",
                       cause="a compiled extension crashed the process (segfault/abort); often an ABI mismatch "
                             "(NumPy 2, another torch)", evidence=_evidence(rec, texts))
    return Finding("imports.failed", Severity.FAIL, f"{rec['module']}: {texts['type']}: {texts['message'][:120]}",
                   cause="an import failed for a reason the doctor does not classify; the evidence has the "
                         "traceback", evidence=_evidence(rec, texts))


def _evidence(rec: dict[str, Any], texts: dict[str, str]) -> dict[str, Any]:
    ev = {"module": rec["module"], "exception": texts["type"], "message": texts["message"][:1000]}
    if texts["stderr"].strip():
        err = texts["stderr"].strip()
        ev["stderr"] = err if len(err) <= 1600 else f"{err[:800]}\n…\n{err[-800:]}"  # banners come first
    if rec.get("trace"):
        ev["traceback_tail"] = rec["trace"].strip().splitlines()[-4:]
    return ev


STUB_FILES = ("sitecustomize.py", "usercustomize.py")


def stub_findings(ctx: Context) -> list[Finding]:
    """sitecustomize stubs (the field report's `torch.xpu`, `cached_download`, …) make imports pass while the
    features behind them are missing: read the files on the target's path (never import them) and name them."""
    out = []
    patterns = knowledge.facts().get("stub_patterns", [])
    for directory in ctx.target.site_paths():
        for name in STUB_FILES:
            path = Path(directory, name)
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            hits = [p for p in patterns if re.search(p["regex"], text)]
            if not hits:
                continue
            out.append(Finding(
                "imports.sitecustomize-stubs", Severity.WARN,
                f"{path} stubs {', '.join(p['name'] for p in hits)}",
                cause="stubs loaded at every interpreter start make imports succeed while the features behind them "
                      "are missing (the field report's pods); this check cannot tell a stub from the real thing "
                      "once they are loaded. Instead: " + "; ".join(p["instead"] for p in hits),
                evidence={"file": str(path), "stubs": [p["name"] for p in hits]},
                remedy=Remedy(f"mv {shlex.quote(str(path))} {shlex.quote(str(path))}.disabled && m3d-doctor check",
                              note="then let `m3d-doctor fix` align versions or install faithful shims"),
            ))
    return out


def _torch_attr_since(attr: str) -> str | None:
    for entry in knowledge.facts().get("torch_attrs", []):
        if entry["attr"] == attr:
            return entry["since"]
    return None


class ImportsCheck(Check):
    name = "imports"
    description = "every module the profile needs really imports; failures classified by root cause"
    order = 40

    def cache_key(self, ctx: Context) -> str:
        return ""

    def run(self, ctx: Context) -> list[Finding]:
        result = imports_probe(ctx)
        optional = {r.module for r in ctx.profile.imports if r.optional}
        by_module = {r.module: r for r in ctx.profile.imports}
        findings: list[Finding] = []
        ok_modules = []
        for rec in result["imports"]:
            if rec.get("ok"):
                ok_modules.append(rec["module"])
                continue
            f = classify(ctx, rec)
            req = by_module.get(rec["module"])
            if req is not None and req.remedy and f.id == "imports.module-missing":
                named = req.remedy.split()[2] if req.remedy.startswith("m3d-doctor fix ") else None
                f = Finding(f.id, f.severity, f.title, f"{f.cause}. {req.why}".strip(". ") + ".", f.evidence,
                            Remedy(req.remedy, named or (f.remedy.fix_id if f.remedy else None), note=req.why))
            if rec["module"] in optional:
                f = Finding(f.id, Severity.WARN, f.title + " (optional)", f.cause, f.evidence, f.remedy)
            findings.append(f)
        attr_reqs = {a.attr: a for a in ctx.profile.attrs}
        for rec in result["attrs"]:
            if rec.get("ok") or rec.get("type") != "AttributeError":
                continue  # a module that failed to import is already reported above
            req = attr_reqs.get(rec["attr"])
            since = _torch_attr_since(rec["attr"])
            torch_v = _installed(ctx, "torch")
            cause = (req.why if req and req.why else f"the stack calls {rec['attr']}")
            if since:
                cause += f"; it exists from torch {since}, torch {torch_v} is installed"
            findings.append(Finding(
                "imports.attr-missing", Severity.FAIL, f"{rec['attr']} is missing (needed by "
                f"{req.needed_by if req and req.needed_by else 'the stack'})",
                cause=cause,
                evidence={"attr": rec["attr"], "message": rec.get("message"), "torch": torch_v, "since": since},
                remedy=Remedy(req.remedy or install(ctx, ["torch", "torchvision", "torchaudio"]) if req
                              else install(ctx, ["torch", "torchvision", "torchaudio"]), "packages.align"),
            ))
        findings += stub_findings(ctx)
        if not findings:
            findings.append(Finding("imports.ok", Severity.OK, f"{len(ok_modules)} modules import",
                                    evidence={"modules": ok_modules}))
        return findings


CHECK = ImportsCheck()
