"""Facts several checks share, gathered once per run (and cached across runs where they come from probes)."""

from __future__ import annotations

import re
from typing import Any, Optional

from .context import Context
from .probe import run_probe


def torch_info(ctx: Context) -> dict[str, Any]:
    """The `torch_info` probe's answer: version, CUDA build, arch list, devices, dtype ops that work."""

    def produce() -> dict[str, Any]:
        if "torch" not in ctx.target.dists:
            return {"ok": False, "error": {"type": "ModuleNotFoundError", "message": "torch is not installed"}}
        return run_probe(ctx.target.python, "torch_info", timeout=ctx.target.probe_timeout).data

    return ctx.fact("torch_info", produce, persist=True, salt=ctx.probe_salt("torch_info"))


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
