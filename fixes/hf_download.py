"""hf.download: fetch the profile's missing model files into the HF cache with huggingface_hub.

Resumable (the hub continues `.incomplete` blobs), with the hub's own progress bars, and only after the
disk check's arithmetic says the files fit on the mount the cache is on.
"""

from __future__ import annotations

import json
import shlex

from m3d_doctor import caches, hfcache
from m3d_doctor.checks.checkpoints import locate
from m3d_doctor.checks.hf import hub_python
from m3d_doctor.context import Context
from m3d_doctor.errors import DoctorError
from m3d_doctor.findings import Finding, Severity
from m3d_doctor.fix import Action, Fix, Plan, Progress, Risk
from m3d_doctor.probe import run_probe

HEADROOM = 1.05  # a download must fit with 5 % to spare


class HfDownload(Fix):
    id = "hf.download"
    description = "download the profile's missing model files into the HF cache (resumable)"

    def _missing(self, ctx: Context) -> dict[str, list]:
        out: dict[str, list] = {}
        for model in ctx.models():
            for f in model.files:
                path, _where = locate(ctx, model, f)
                if path is None:
                    out.setdefault(model.repo, []).append(f)
        return out

    def plan(self, ctx: Context) -> Plan:
        missing = self._missing(ctx)
        plan = Plan(self.id, [])
        if not missing:
            return plan
        cache = hfcache.hub_cache_dir()
        need = sum(f.size or 0 for files in missing.values() for f in files)
        free = caches.free_bytes(cache)
        for repo, files in missing.items():
            size = sum(f.size or 0 for f in files)
            plan.actions.append(Action(
                f"download {len(files)} file(s) of {repo} into {cache}", Risk.SAFE,
                command=f"hf download {repo} " + " ".join(shlex.quote(f.path) for f in files[:5])
                + (" ..." if len(files) > 5 else ""),
                bytes=size, data={"repo": repo, "files": [f.path for f in files]}))
        if need * HEADROOM > free:
            plan.blocked = (f"needs {need / 1e9:.1f} GB (+5 %), {free / 1e9:.1f} GB free on the mount of {cache}: "
                            "free space first (m3d-doctor fix disk.clean-caches) or move the cache to the volume "
                            "(m3d-doctor fix disk.move-hf-cache)")
        if hub_python(ctx) is None:
            plan.blocked = "huggingface_hub is not installed in the target or here (pip install 'm3d-doctor[hf]')"
        if any(f.size is None for files in missing.values() for f in files):
            plan.notes.append("some files have no size in the profile; the total is a lower bound")
        return plan

    def apply(self, ctx: Context, plan: Plan, progress: Progress) -> None:
        python = hub_python(ctx)
        files = [{"repo": a.data["repo"], "file": f} for a in plan.actions for f in a.data["files"]]
        progress(f"downloading {len(files)} file(s) with {python}")
        out = run_probe(python, "hf_download", stdin=json.dumps({"files": files}), timeout=7 * 24 * 3600,
                        stream_stderr=True)
        if out.data.get("error"):
            raise DoctorError(f"hf.download: {out.data['error']}")
        failed = [f for f in out.data["files"] if not f.get("ok")]
        for f in failed:
            progress(f"{f['repo']}/{f['file']}: {f['error']}")
        if failed:
            raise DoctorError(f"hf.download: {len(failed)} file(s) failed (see above; gated repos need access)")

    def verify(self, ctx: Context, plan: Plan) -> list[Finding]:
        still = self._missing(ctx)
        return [Finding("checkpoints.missing", Severity.FAIL, f"{repo}: {len(files)} file(s) still missing")
                for repo, files in still.items()]


FIX = HfDownload()
