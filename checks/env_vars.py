"""env: environment variables that decide memory behaviour and where the big caches land."""

from __future__ import annotations

import os
from pathlib import Path

from m3d_doctor import caches, hfcache
from m3d_doctor.check import Check
from m3d_doctor.context import Context
from m3d_doctor.findings import Finding, Remedy, Severity


class EnvCheck(Check):
    name = "env"
    description = "allocator settings and where HF_HOME / the pip cache live"
    order = 50
    needs_live_target = False

    def run(self, ctx: Context) -> list[Finding]:
        findings: list[Finding] = []
        for var, rule in ctx.profile.env.items():
            want = rule.get("want", "")
            have = os.environ.get(var)
            for alias in [a.strip() for a in rule.get("misspellings", "").split(",") if a.strip()]:
                if alias in os.environ and not have:
                    findings.append(Finding(
                        "env.misspelled", Severity.WARN, f"{alias} is set but nothing reads it; the name is {var}",
                        cause=rule.get("why", ""), evidence={"set": alias, "value": os.environ[alias]},
                        remedy=Remedy(f"export {var}={want}", "env.persist"),
                    ))
            if have is None or want not in have:
                findings.append(Finding(
                    f"env.{rule.get('id', var.lower())}", Severity.WARN,
                    f"{var} is {'unset' if have is None else repr(have)}; recommended: {want}",
                    cause=rule.get("why", ""), evidence={"variable": var, "value": have, "recommended": want,
                                                         "source": rule.get("source", "")},
                    remedy=Remedy(f"export {var}={want}", "env.persist"),
                ))
        pod = caches.pod_layout({"volumes": ctx.profile.raw.get("pod", {}).get("volumes", [])})
        volumes = [str(v) for v in pod.volumes]
        locations = {"HF_HOME": str(hfcache.hf_home()), "PIP_CACHE_DIR": str(caches.pip_cache_dir())}
        for var, path in locations.items():
            where = caches.mount_for(Path(path))
            ev = {"variable": var, "path": path, "mount": where, "volumes": volumes}
            if volumes and pod.volume_of(Path(path)) is None:
                target = os.path.join(volumes[0], ".cache", "huggingface" if var == "HF_HOME" else "pip")
                findings.append(Finding(
                    "env.cache-on-container-disk", Severity.WARN,
                    f"{var} ({path}) is on the container disk while a volume exists at {volumes[0]}",
                    cause="model downloads and wheels fill the container disk (the field report's 60 GB pod) "
                          "and are lost with the pod",
                    evidence=ev,
                    remedy=Remedy(f"export {var}={target}",
                                  "disk.move-hf-cache" if var == "HF_HOME" else "env.persist"),
                ))
            else:
                findings.append(Finding(f"env.{var.lower()}", Severity.INFO, f"{var}: {path} (mount {where})",
                                        evidence=ev))
        return findings


CHECK = EnvCheck()
