"""Facts several checks share, gathered once per run (and cached across runs where they come from probes)."""

from __future__ import annotations

import json
import re
from typing import Any, Optional

from .context import Context
from .probe import probe_source, run_probe


def torch_info(ctx: Context) -> dict[str, Any]:
    """The `torch_info` probe's answer: version, CUDA build, arch list, devices, dtype ops that work."""

    if ctx.options.extra.get("imports_selected") and "torch" in ctx.target.dists:
        shared = imports_probe(ctx).get("torch_info")
        if shared is not None:
            return shared

    def produce() -> dict[str, Any]:
        if "torch" not in ctx.target.dists:
            return {"ok": False, "error": {"type": "ModuleNotFoundError", "message": "torch is not installed"}}
        return run_probe(ctx.target.python, "torch_info", timeout=ctx.target.probe_timeout).data

    return ctx.fact("torch_info", produce, persist=True, salt=ctx.probe_salt("torch_info"))


MAX_RESUMES = 5


def run_import_probe(ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
    """All modules in one process; after a hard crash, mark the culprit and go on with the rest."""
    imports: list[dict[str, Any]] = []
    attrs: list[dict[str, Any]] = []
    skip: list[str] = []
    extra: dict[str, Any] = {}
    for _ in range(MAX_RESUMES + 1):
        req = dict(request, skip=skip)
        out = run_probe(ctx.target.python, "imports", stdin=json.dumps(req), timeout=ctx.target.probe_timeout,
                        allow_partial=True)
        if not out.partial:
            imports += out.data["imports"]
            attrs = out.data["attrs"]
            if "torch_info" in out.data:
                extra["torch_info"] = out.data["torch_info"]
            break
        done = [p for p in out.data["progress"] if "module" in p]
        imports += done
        started = [p["started"] for p in out.data["progress"] if "started" in p]
        finished = {p["module"] for p in done}
        culprit = next((m for m in reversed(started) if m not in finished), None)
        skip += [p["module"] for p in done]
        if culprit is None:
            break
        imports.append({"module": culprit, "ok": False, "type": "Crash",
                        "message": f"the interpreter died while importing {culprit} (exit {out.returncode})",
                        "stderr": out.stderr[-3000:], "crashed": True})
        skip.append(culprit)
    return {"imports": imports, "attrs": attrs, **extra}


def imports_probe(ctx: Context) -> dict[str, Any]:
    """The profile's modules imported in one target process, which also answers the torch_info questions."""
    request = {
        "modules": [r.module for r in ctx.profile.imports],
        "names": {r.module: list(r.names) for r in ctx.profile.imports if r.names},
        "attrs": [a.attr for a in ctx.profile.attrs],
    }
    salt = ctx.probe_salt("imports", "torch_info", extra=request)
    request["torch_info_source"] = probe_source("torch_info")
    return ctx.fact("imports_probe", lambda: run_import_probe(ctx, request), persist=True, salt=salt)


_ASSIGN = re.compile(r"^(\w+)\s*(?::\s*[^=]+)?=\s*(.+)$")


def read_version_py(ctx: Context, package: str) -> Optional[dict[str, Any]]:
    """`<package>/version.py` read as text (torch writes `cuda = '12.6'` there): no import needed."""
    path = ctx.target.site_file(package, "version.py")
    if path is None:
        return None
    out: dict[str, Any] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _ASSIGN.match(line.strip())
        if not m:
            continue
        key, value = m.group(1), m.group(2).strip()
        if value == "None":
            out[key] = None
        elif value[:1] in "'\"" and value[-1:] == value[:1]:
            out[key] = value[1:-1]
    return out
