"""disk.clean-caches: delete what `doctor.reclaim` lists — re-creatable cache content only.

The plan names every path with its bytes; `apply` deletes exactly those paths, each re-checked just before
deletion to resolve inside a cache root of the current environment (a symlink that leads out of a cache
is refused, never followed), and an interrupted download that came back to life is left alone.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

from m3d_doctor import caches, du, reclaim
from m3d_doctor.context import Context
from m3d_doctor.findings import Finding, Severity
from m3d_doctor.fix import Action, Fix, Plan, Progress, Risk


def _allowed(path: Path, root: str) -> str | None:
    """Why `path` must not be deleted now (None: it may)."""
    roots = {str(r) for r in reclaim.cache_roots().values()}
    if root not in roots:
        return f"{root} is no longer a cache root of this environment"
    if reclaim.unsafe_root(Path(root)):
        return reclaim.unsafe_root(Path(root))
    if not caches.is_within(path, Path(root)) or not caches.is_within(path.parent, Path(root)):
        return f"{path} resolves outside {root}"
    return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


class CleanCaches(Fix):
    id = "disk.clean-caches"
    description = "delete pip/uv caches, detached HF revisions and stale interrupted downloads"

    def plan(self, ctx: Context) -> Plan:
        found = reclaim.scan()
        actions = [Action(
            description=item.description + (" (size partly measured)" if item.partial else ""),
            risk=Risk.DESTRUCTIVE,
            command="rm -rf " + " ".join(shlex.quote(str(p)) for p in item.paths),
            bytes=-item.bytes,
            paths=[str(p) for p in item.paths],
            data={"root": str(item.root), "kind": item.kind},
        ) for item in found.items]
        notes = [f"left alone: {why}" for why in found.skipped]
        if actions:
            notes.insert(0, f"frees {du.human(found.total)} in {len(actions)} item(s); everything deleted is "
                            "re-downloaded or re-built on demand")
        return Plan(self.id, actions, notes=notes)

    def apply(self, ctx: Context, plan: Plan, progress: Progress) -> None:
        for action in plan.actions:
            for raw in action.paths:
                path = Path(raw)
                if not os.path.lexists(path):
                    continue
                why = _allowed(path, action.data["root"])
                if why:
                    action.data.setdefault("refused", []).append(raw)
                    progress(f"refused {raw}: {why}")
                    continue
                if action.data["kind"] == "hf-incomplete" and not reclaim.is_stale(path):
                    action.data.setdefault("in_use", []).append(raw)
                    progress(f"left {raw}: written in the last minutes (a download is running)")
                    continue
                _remove(path)
            progress(f"removed {action.description} ({du.human(-(action.bytes or 0))})")
        if ctx is not None:
            ctx.cache.put("du-memo", {})  # sizes remembered by the disk check are stale now

    def verify(self, ctx: Context, plan: Plan) -> list[Finding]:
        still = []
        for action in plan.actions:
            in_use = set(action.data.get("in_use", []))
            for raw in action.paths:
                if raw not in in_use and os.path.lexists(raw):
                    still.append(Finding("disk.clean-caches.not-removed", Severity.FAIL, f"{raw} is still there",
                                         evidence={"path": raw, "refused": raw in action.data.get("refused", [])}))
        return still

    def rollback(self, ctx: Context, plan: Plan, progress: Progress) -> None:
        progress("deleted cache content cannot be restored; nothing was deleted outside the plan")


FIX = CleanCaches()
