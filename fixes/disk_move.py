"""disk.move-hf-cache: move the HF cache onto the persistent volume and point HF_HOME there for good.

Never loses data, and resumes: a journal (`<dest parent>/.m3d-move-<name>.json`) records the phase before
each one starts — copying (per file into `*.m3d-part`, then renamed, so a file at the destination is
either whole or absent; symlinks are copied as symlinks, HF snapshots being relative links into blobs),
verifying (every size and every symlink target), switching (HF_HOME persisted, the source renamed aside,
a symlink to the destination put in its place, the old folder removed), done. Until the switch the
source is untouched; from it on the destination is complete and verified. Re-running the fix resumes at
the journal's phase, skipping files already copied whole.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from m3d_doctor import caches, du, hfcache, reclaim, shellenv
from m3d_doctor.context import Context
from m3d_doctor.errors import DoctorError
from m3d_doctor.findings import Finding, Severity
from m3d_doctor.fix import Action, Fix, Plan, Progress, Risk

CRASH_HOOK = "M3D_DOCTOR_TEST_CRASH_AFTER"  # tests: die (exit 137) once this many entries are copied
PART = ".m3d-part"
OLD = ".m3d-old"


def journal_path(dst: Path) -> Path:
    return dst.parent / f".m3d-move-{dst.name}.json"


def read_journal(path: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_journal(path: Path, data: dict[str, Any]) -> None:
    """Atomically, and flushed to disk: the journal is what a resumed run trusts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump({**data, "updated": time.time()}, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def walk(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of everything below `root`, symlinks not followed, parents before children."""
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(root / rel if rel else root) as it:
            for e in sorted(it, key=lambda e: e.name):
                child = f"{rel}/{e.name}" if rel else e.name
                st = e.stat(follow_symlinks=False)
                yield child, st
                if stat.S_ISDIR(st.st_mode):
                    stack.append(child)


def copy_tree(src: Path, dst: Path, progress: Progress) -> tuple[int, int]:
    """Copy what is not already whole at `dst`; returns (files copied, files already there)."""
    crash_after = int(os.environ.get(CRASH_HOOK) or 0)
    dst.mkdir(parents=True, exist_ok=True)
    copied = skipped = 0
    last = time.monotonic()
    for rel, st in walk(src):
        s, d = src / rel, dst / rel
        if stat.S_ISDIR(st.st_mode):
            if d.is_symlink() or (d.exists() and not d.is_dir()):
                d.unlink()
            d.mkdir(exist_ok=True)
        elif stat.S_ISLNK(st.st_mode):
            target = os.readlink(s)
            if d.is_symlink() and os.readlink(d) == target:
                skipped += 1
                continue
            if os.path.lexists(d):
                d.unlink()
            os.symlink(target, d)
            copied += 1
        elif stat.S_ISREG(st.st_mode):
            try:
                have = d.lstat()
                if stat.S_ISREG(have.st_mode) and have.st_size == st.st_size and have.st_mtime_ns == st.st_mtime_ns:
                    skipped += 1
                    continue
            except FileNotFoundError:
                pass
            part = d.with_name(d.name + PART)
            shutil.copy2(s, part, follow_symlinks=False)
            os.replace(part, d)
            copied += 1
            if crash_after and copied >= crash_after:
                os._exit(137)
        if time.monotonic() - last > 2:
            progress(f"copied {copied} entries ({skipped} already there)")
            last = time.monotonic()
    return copied, skipped


def compare(src: Path, dst: Path) -> tuple[list[str], dict[str, int]]:
    """Differences between the trees (sizes, symlink targets, kinds), and what `src` holds."""
    problems: list[str] = []
    counts = {"files": 0, "symlinks": 0, "bytes": 0}
    for rel, st in walk(src):
        try:
            have = (dst / rel).lstat()
        except FileNotFoundError:
            problems.append(f"{rel}: missing")
            continue
        if stat.S_ISDIR(st.st_mode):
            if not stat.S_ISDIR(have.st_mode):
                problems.append(f"{rel}: not a folder")
        elif stat.S_ISLNK(st.st_mode):
            counts["symlinks"] += 1
            if not stat.S_ISLNK(have.st_mode) or os.readlink(dst / rel) != os.readlink(src / rel):
                problems.append(f"{rel}: symlink target differs")
        elif stat.S_ISREG(st.st_mode):
            counts["files"] += 1
            counts["bytes"] += st.st_size
            if not stat.S_ISREG(have.st_mode) or have.st_size != st.st_size:
                problems.append(f"{rel}: size {have.st_size} != {st.st_size}")
    return problems, counts


def tally(root: Path) -> dict[str, int]:
    counts = {"files": 0, "symlinks": 0, "bytes": 0}
    for _rel, st in walk(root):
        if stat.S_ISLNK(st.st_mode):
            counts["symlinks"] += 1
        elif stat.S_ISREG(st.st_mode):
            counts["files"] += 1
            counts["bytes"] += st.st_size
    return counts


def _q(p: Any) -> str:
    return shlex.quote(str(p))


class MoveHfCache(Fix):
    id = "disk.move-hf-cache"
    description = "move the HF cache onto the persistent volume and set HF_HOME there durably"

    def plan(self, ctx: Context) -> Plan:
        pod = caches.pod_layout(ctx.profile.raw.get("pod", {}), ctx.options.extra.get("volume"))
        if not pod.volumes:
            return Plan(self.id, [], blocked="no persistent volume found (none of the profile's [pod] volumes is "
                                             "a mount of its own): name one with --volume PATH")
        volume = pod.volumes[0]
        if not volume.is_dir():
            return Plan(self.id, [], blocked=f"the volume {volume} does not exist or is not a folder")
        source, hub_only = caches.hf_move_source()
        dst_home = volume / ".cache" / "huggingface"
        dst = dst_home / "hub" if hub_only else dst_home
        journal = journal_path(dst)
        state = read_journal(journal)
        notes = []
        if state and state.get("state") not in (None, "done"):
            src, dst = Path(state["src"]), Path(state["dst"])
            exports = state["exports"]
            notes.append(f"resuming an interrupted move (journal {journal}: phase {state['state']})")
        else:
            src = Path(os.path.realpath(source))
            why = reclaim.unsafe_root(src)
            if why:  # HF_HOME=$HOME (or /) must never be moved and deleted as if it were a cache
                return Plan(self.id, [], blocked=why)
            # hub only (HF_HUB_CACHE outside HF_HOME): HF_HOME stays, or the token file would be left behind
            exports = {"HF_HUB_CACHE": str(dst)} if hub_only else {"HF_HOME": str(dst_home)}
            if not hub_only and caches.hf_hub_var_set():  # set inside HF_HOME: same place, moved
                rel = os.path.relpath(os.path.realpath(hfcache.hub_cache_dir()), src)
                exports["HF_HUB_CACHE"] = str(dst_home / rel)
            if pod.volume_of(src) is not None:
                return self._persist_only(src, hub_only, volume)
            if caches.is_within(dst, src):
                return Plan(self.id, [], blocked=f"the volume {volume} is inside the HF cache {src}")
            if dst.exists() and any(dst.iterdir()):
                return Plan(self.id, [], blocked=f"{dst} already exists and is not empty (and no move journal is "
                                                 f"there): set HF_HOME={dst_home} yourself, or empty it first")
        profile = shellenv.profile_file()
        data = {"src": str(src), "dst": str(dst), "journal": str(journal), "exports": exports,
                "profile_file": str(profile)}
        persist = Action(f"set {', '.join(f'{k}={v}' for k, v in exports.items())} in {profile}", Risk.SAFE,
                         shellenv.export_command(profile, exports), paths=[str(profile)])
        old = src.with_name(src.name + OLD)
        switch = Action(f"replace {src} with a symlink to {dst}, then remove the old folder", Risk.RISKY,
                        f"mv {_q(src)} {_q(old)} && ln -s {_q(dst)} {_q(src)} && rm -rf {_q(old)}",
                        paths=[str(src)])
        if state and state.get("state") in ("verifying", "switching"):
            return Plan(self.id, [Action(f"finish the move {src} -> {dst} from phase {state['state']}", Risk.RISKY,
                                         None, paths=[str(src), str(dst)], data=data), persist, switch],
                        notes=notes)
        if not src.is_dir() or src.is_symlink():
            return Plan(self.id, [Action(f"create {dst}", Risk.SAFE, f"mkdir -p {_q(dst)}", paths=[str(dst)],
                                         data=data), persist],
                        notes=notes + [f"no HF cache at {src} yet: nothing to move"])
        busy = self._downloading(src, hub_only)
        if busy:
            return Plan(self.id, [], blocked=f"a download is writing to the cache ({busy}); wait for it to end")
        use = du.disk_usage(src)
        need = use.apparent - (du.disk_usage(dst).apparent if dst.exists() else 0)
        free = caches.free_bytes(volume)
        if need > free:
            return Plan(self.id, [], blocked=f"the volume {volume} has {free} bytes free; the cache needs {need}")
        switch.bytes = -use.bytes
        actions = [
            Action(f"copy {src} to {dst} ({use.files} files and links), symlinks kept as symlinks; journal {journal}",
                   Risk.RISKY, f"mkdir -p {_q(dst)} && cp -a {_q(src)}/. {_q(dst)}/", bytes=need,
                   paths=[str(src), str(dst)], data=data),
            Action("check every file's size and every symlink's target at the destination", Risk.SAFE,
                   f"diff -rq --no-dereference {_q(src)} {_q(dst)}", paths=[str(dst)]),
            persist,
            switch,
        ]
        notes.append(f"a new shell (or `. {profile}`) sees the new HF_HOME; running jobs keep working through "
                     "the symlink")
        return Plan(self.id, actions, notes=notes)

    def _persist_only(self, src: Path, hub_only: bool, volume: Path) -> Plan:
        """The cache is on the volume already: only make sure a new shell finds it there."""
        profile = shellenv.profile_file()
        var = "HF_HUB_CACHE" if hub_only else "HF_HOME"
        note = [f"the HF cache ({src}) is already on the volume {volume}"]
        for have in (shellenv.read_exports(profile).get(var), os.environ.get(var)):
            if have and os.path.realpath(have) == str(src):
                return Plan(self.id, [], notes=note)
        exports = {var: str(src)}
        return Plan(self.id, [Action(f"set {var}={src} in {profile}", Risk.SAFE,
                                     shellenv.export_command(profile, exports), paths=[str(profile)],
                                     data={"exports": exports, "profile_file": str(profile)})], notes=note)

    @staticmethod
    def _downloading(src: Path, hub_only: bool) -> Optional[str]:
        for repo in hfcache.scan(src if hub_only else src / "hub"):
            for blob in repo.incomplete:
                if not reclaim.is_stale(blob):
                    return str(blob)
        return None

    def apply(self, ctx: Context, plan: Plan, progress: Progress) -> None:
        if ctx is not None:
            ctx.cache.put("du-memo", {})  # what lives where changes: forget remembered sizes
        data = plan.actions[0].data
        profile = Path(data["profile_file"])
        if "src" not in data:  # already on the volume: only the export
            shellenv.set_exports(profile, data["exports"])
            return
        src, dst, journal = Path(data["src"]), Path(data["dst"]), Path(data["journal"])
        state = read_journal(journal) or {}
        phase = state.get("state") if state.get("state") != "done" else None
        record = {k: data[k] for k in ("src", "dst", "exports")}
        if (not src.is_dir() or src.is_symlink()) and phase != "switching":  # nothing to move
            dst.mkdir(parents=True, exist_ok=True)
            shellenv.set_exports(profile, data["exports"])
            write_journal(journal, {**record, "state": "done", **tally(dst)})
            return
        if phase in (None, "copying"):
            write_journal(journal, {**record, "state": "copying"})
            progress(f"copying {src} -> {dst}")
            copied, already = copy_tree(src, dst, progress)
            progress(f"copied {copied} entries ({already} already there)")
            phase = "verifying"
        if phase == "verifying":
            write_journal(journal, {**record, "state": "verifying"})
            problems, counts = compare(src, dst)
            if problems:
                write_journal(journal, {**record, "state": "copying"})
                raise DoctorError(f"the copy at {dst} differs from {src}: {'; '.join(problems[:3])} "
                                  "(re-run the fix to copy again; the source is untouched)")
            progress(f"verified {counts['files']} files, {counts['symlinks']} symlinks, {counts['bytes']} bytes")
            state = {**record, "state": "switching", **counts}
            write_journal(journal, state)
            phase = "switching"
        if phase == "switching":
            shellenv.set_exports(profile, data["exports"])
            old = src.with_name(src.name + OLD)
            if src.is_dir() and not src.is_symlink():
                os.rename(src, old)
            if not os.path.lexists(src):
                os.symlink(dst, src)
            if old.exists():
                shutil.rmtree(old)
            write_journal(journal, {**state, "state": "done"})
            progress(f"{src} now links to {dst}; HF_HOME set in {profile}")

    def verify(self, ctx: Context, plan: Plan) -> list[Finding]:
        data = plan.actions[0].data
        profile = Path(data["profile_file"])
        out = []
        have = shellenv.read_exports(profile)
        for var, value in data["exports"].items():
            if have.get(var) != value:
                out.append(Finding("disk.move-hf-cache.not-persisted", Severity.FAIL,
                                   f"{var}={value} is not in {profile}", evidence={"file": str(profile)}))
        if "src" not in data:
            return out
        src, dst, journal = Path(data["src"]), Path(data["dst"]), Path(data["journal"])
        state = read_journal(journal) or {}
        if state.get("state") != "done":
            out.append(Finding("disk.move-hf-cache.unfinished", Severity.FAIL,
                               f"the move journal {journal} says {state.get('state')!r}, not done"))
            return out
        if os.path.lexists(src) and os.path.realpath(src) != os.path.realpath(dst):
            out.append(Finding("disk.move-hf-cache.source-not-linked", Severity.FAIL,
                               f"{src} does not lead to {dst}"))
        if "files" in state:
            now = tally(dst)
            if any(now[k] < state[k] for k in ("files", "symlinks")) or now["bytes"] < state["bytes"]:
                out.append(Finding("disk.move-hf-cache.incomplete", Severity.FAIL,
                                   f"{dst} holds less than was verified", evidence={"now": now, "verified":
                                   {k: state[k] for k in ("files", "symlinks", "bytes")}}))
        return out

    def rollback(self, ctx: Context, plan: Plan, progress: Progress) -> None:
        progress("nothing undone: until the switch the source is untouched, after it the destination is the "
                 "complete, verified copy; re-run the fix to resume from its journal")


FIX = MoveHfCache()
