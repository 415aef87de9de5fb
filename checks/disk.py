"""disk: is there room for what is still to download, is the container disk filling up, what fills it, and
what can be freed — the field report's 60 GB container disk filled with wheels, pip/HF caches and weights.

Every size in evidence is an integer count of bytes; usage is allocated blocks (`doctor.du`), measured
within a time budget (`[pod] du_budget_s`, default 20) after which the numbers are marked partial.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Any

from m3d_doctor import caches, du, hfcache, reclaim
from m3d_doctor.check import Check
from m3d_doctor.checks.checkpoints import locate, matrix3d_root
from m3d_doctor.context import Context
from m3d_doctor.findings import Finding, Remedy, Severity

GIB = 1 << 30
CLEAN = "m3d-doctor fix disk.clean-caches --yes"


gib = du.human


def move_command(volume: Path) -> str:
    return f"m3d-doctor fix disk.move-hf-cache --volume {shlex.quote(str(volume))}"


class DiskCheck(Check):
    name = "disk"
    description = "room for the model downloads; container disk free space; what fills it and what can be freed"
    order = 75
    needs_live_target = False
    needs_network = False

    def run(self, ctx: Context) -> list[Finding]:
        cfg = ctx.profile.raw.get("pod", {})
        pod = caches.pod_layout(cfg, ctx.options.extra.get("volume"))
        quick = bool(ctx.options.extra.get("quick"))  # gate: free space and downloads, no deep measuring
        ttl = float(cfg.get("du_ttl_s", 300))  # sizes measured less than 5 minutes ago are reused
        memo_key = "du-memo"
        meter = du.Meter(du.Deadline(0.2 if quick else float(cfg.get("du_budget_s", 20))),
                         remembered=ctx.cache.get(memo_key) if ctx.options.use_cache else None, ttl=ttl)
        hub = hfcache.hub_cache_dir()
        rec = reclaim.scan(meter)
        findings: list[Finding] = []
        short = self._downloads(ctx, pod, hub, rec, findings)
        low = self._container(cfg, pod, rec, findings)
        findings += self._misplaced(pod, meter)
        if rec.total > 0:
            big = rec.total >= float(cfg.get("reclaim_warn_gib", 5)) * GIB
            findings.append(Finding(
                "disk.reclaimable", Severity.WARN if (big or short or low) else Severity.INFO,
                f"{gib(rec.total)} of caches can be deleted safely ({len(rec.items)} item(s))",
                cause="pip/uv caches, HF revisions no ref points to, and interrupted downloads untouched for "
                      f"{reclaim.STALE_INCOMPLETE_S // 60} minutes are re-created or re-downloaded on demand",
                evidence={"bytes": rec.total, "by_kind": rec.by_kind(), "items": len(rec.items),
                          "partial": any(i.partial for i in rec.items), "skipped": rec.skipped},
                remedy=Remedy(CLEAN, "disk.clean-caches"),
            ))
        findings.append(self._free_space(ctx, pod, hub))
        if not quick:
            findings.append(self._top_consumers(ctx, cfg, hub, meter))
            if ctx.options.use_cache:
                ctx.cache.put(memo_key, meter.export())
        return findings

    # -- room for downloads -------------------------------------------------------------------------------
    def _downloads(self, ctx: Context, pod: caches.Pod, hub: Path, rec: reclaim.Reclaimable,
                   findings: list[Finding]) -> bool:
        needed, unknown, present, per_repo = 0, [], 0, {}
        seen: set[tuple[str, str]] = set()
        unlisted = [m.repo for m in ctx.models() if not m.files]
        for model in ctx.models():
            for f in model.files:
                if (model.repo, f.path) in seen:
                    continue
                seen.add((model.repo, f.path))
                if locate(ctx, model, f)[0] is not None:
                    present += 1
                elif f.size is None:
                    unknown.append(f"{model.repo}/{f.path}")
                else:
                    needed += f.size
                    per_repo[model.repo] = per_repo.get(model.repo, 0) + f.size
        if not seen:
            return False
        free = caches.free_bytes(hub)
        ev: dict[str, Any] = {"needed": needed, "free": free, "hf_cache": str(hub), "mount": caches.mount_for(hub),
                              "files_present": present, "files_missing": len(seen) - present,
                              "unknown_size_files": len(unknown), "by_repo": per_repo,
                              "models_without_file_list": unlisted}
        if unknown:
            ev["unknown_size"] = unknown
        more = f" (+{len(unknown)} file(s) of unknown size)" if unknown else ""
        if needed <= free:
            findings.append(Finding(
                "disk.downloads", Severity.INFO,
                f"{gib(needed)} still to download{more}; {gib(free)} free where the HF cache is",
                cause="files of unknown size are not counted" if unknown else "", evidence=ev))
            return False
        ev["shortfall"] = needed - free
        findings.append(Finding(
            "disk.insufficient-for-downloads", Severity.FAIL,
            f"{gib(needed)} still to download{more} but only {gib(free)} free on {ev['mount']} "
            f"(short by {gib(needed - free)})",
            cause=f"the HF cache ({hub}) is on a disk too small for the profile's models: the download "
                  "fails part-way and leaves the disk full" + ("; files of unknown size are not counted"
                                                               if unknown else ""),
            evidence=ev, remedy=self._room_remedy(pod, hub, needed, free, rec)))
        return True

    def _room_remedy(self, pod: caches.Pod, hub: Path, needed: int, free: int,
                     rec: reclaim.Reclaimable) -> Remedy:
        source, _ = caches.hf_move_source()
        moving = du.disk_usage(source, du.Deadline(5)).apparent
        for v in pod.volumes:
            if pod.volume_of(hub) != v and caches.free_bytes(v) >= needed + moving:
                return Remedy(move_command(v), "disk.move-hf-cache",
                              f"the volume {v} has {gib(caches.free_bytes(v))} free")
        if rec.total and free + rec.total >= needed:
            return Remedy(CLEAN, "disk.clean-caches", "deleting re-creatable caches frees enough")
        return Remedy(None, None, f"free {gib(needed - free)} on {caches.mount_for(hub)}, or attach a volume with "
                                  f"{gib(needed + moving)} free and run: m3d-doctor fix disk.move-hf-cache "
                                  "--volume PATH")

    # -- container disk -----------------------------------------------------------------------------------
    def _container(self, cfg: dict[str, Any], pod: caches.Pod, rec: reclaim.Reclaimable,
                   findings: list[Finding]) -> bool:
        floor = int(float(cfg.get("min_free_container_gib", 10)) * GIB)
        free = caches.free_bytes(pod.container_disk)
        if free >= floor:
            return False
        remedy = Remedy(CLEAN, "disk.clean-caches") if rec.total else None
        findings.append(Finding(
            "disk.container-low", Severity.WARN,
            f"only {gib(free)} free on the container disk ({pod.container_disk}); want at least {gib(floor)}",
            cause="pip installs, compiled extensions and temporary files fail with 'No space left on device' "
                  "long before a model download notices",
            evidence={"path": str(pod.container_disk), "mount": caches.mount_for(pod.container_disk),
                      "free": free, "min_free": floor, "reclaimable": rec.total},
            remedy=remedy))
        return True

    def _misplaced(self, pod: caches.Pod, meter: du.Meter) -> list[Finding]:
        if not pod.volumes:
            return []
        out = []
        volume = pod.volumes[0]
        hf_source, _ = caches.hf_move_source()
        places = [("hf", "HF_HOME", hf_source), ("pip", "PIP_CACHE_DIR", caches.pip_cache_dir()),
                  ("uv", "UV_CACHE_DIR", caches.uv_cache_dir()), ("torch", "TORCH_HOME", caches.torch_home())]
        for name, var, path in places:
            if not pod.on_container_disk(path) or (name != "hf" and not path.exists()):
                continue
            use = meter.tree(path)
            if name == "hf":
                remedy = Remedy(move_command(volume), "disk.move-hf-cache")
            else:
                remedy = Remedy(f"export {var}={shlex.quote(str(volume / '.cache' / name))}", None,
                                "and delete or move the old folder")
            out.append(Finding(
                "disk.cache-on-container-disk", Severity.WARN,
                f"the {name} cache ({path}) is on the container disk while a volume exists at {volume}",
                cause="what lands there fills the container disk and is lost with the pod; the volume persists",
                evidence={"cache": name, "variable": var, "path": str(path), "bytes": use.bytes,
                          "partial": use.partial, "mount": caches.mount_for(path), "volume": str(volume)},
                remedy=remedy))
        return out

    # -- what is where ------------------------------------------------------------------------------------
    def _free_space(self, ctx: Context, pod: caches.Pod, hub: Path) -> Finding:
        roles: list[tuple[str, Path]] = [("container_disk", pod.container_disk)]
        roles += [("volume", v) for v in pod.volumes]
        roles += [("hf_cache", hub), ("pip_cache", caches.pip_cache_dir())]
        if ctx.target.live:
            roles += [("site_packages", Path(p)) for p in ctx.target.site_paths()
                      if p.rstrip("/").endswith(("site-packages", "dist-packages"))]
        mounts: dict[str, dict[str, Any]] = {}
        for role, path in roles:
            mp = caches.mount_for(path)
            if mp not in mounts:
                usage = _disk_usage(path)
                mounts[mp] = {"mount": mp, "free": usage[2], "total": usage[0], "used": usage[1], "holds": []}
            mounts[mp]["holds"].append({"role": role, "path": str(path)})
        listed = sorted(mounts.values(), key=lambda m: m["free"])
        tightest = listed[0]
        return Finding("disk.free-space", Severity.INFO,
                       f"{len(listed)} mount(s); least free: {tightest['mount']} with {gib(tightest['free'])}",
                       evidence={"mounts": listed})

    def _top_consumers(self, ctx: Context, cfg: dict[str, Any], hub: Path, meter: du.Meter) -> Finding:
        rows: list[dict[str, Any]] = []
        partial = False
        for repo in hfcache.scan(hub):
            use = meter.usage(repo.path)
            partial |= use.partial
            revisions = []
            for rev in repo.revisions:
                blobs = repo.blobs_of(rev)
                revisions.append({"commit": rev.commit, "refs": sorted(rev.refs), "detached": not rev.refs,
                                  "bytes": du.total_usage(sorted(blobs)).bytes, "files": len(rev.files)})
            incomplete = du.total_usage(repo.incomplete)
            rows.append({"kind": f"hf-{repo.repo_type}", "name": repo.repo_id, "path": str(repo.path),
                         "bytes": use.bytes, "revisions": sorted(revisions, key=lambda r: -r["bytes"]),
                         "incomplete": len(repo.incomplete), "incomplete_bytes": incomplete.bytes})
        others = [("hf-xet", "HF xet chunk cache", hfcache.hf_home() / "xet"),
                  ("pip-cache", "pip cache", caches.pip_cache_dir()), ("uv-cache", "uv cache", caches.uv_cache_dir()),
                  ("torch-hub", "torch hub cache", caches.torch_home())]
        for out in cfg.get("outputs", []):
            p = Path(str(out)).expanduser()
            others.append(("outputs", str(out), p if p.is_absolute() else matrix3d_root(ctx) / p))
        for kind, name, path in others:
            if not path.exists():
                continue
            use = meter.tree(path)
            partial |= use.partial
            rows.append({"kind": kind, "name": name, "path": str(path), "bytes": use.bytes})
        rows.sort(key=lambda r: (-r["bytes"], r["name"]))
        title = (f"largest: {rows[0]['name']} ({gib(rows[0]['bytes'])}) of {len(rows)} measured"
                 if rows else "no caches found")
        if partial:
            title += " (partial: the measuring time budget ran out)"
        return Finding("disk.top-consumers", Severity.INFO, title,
                       evidence={"consumers": rows, "bytes": sum(r["bytes"] for r in rows), "partial": partial})


def _disk_usage(path: Path) -> tuple[int, int, int]:
    return tuple(shutil.disk_usage(caches.existing_ancestor(path)))  # total, used, free


CHECK = DiskCheck()
