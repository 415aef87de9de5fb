"""Transactions around an install: snapshot what will change, journal each phase, restore exactly.

The snapshot keeps the *installed files* of every distribution the install will replace or remove (each
file its RECORD lists), hard-linked into the journal directory (copied when that is another filesystem).
That is what a restore must put back, editable installs and local builds included, and it needs no network.
pip and uv both unlink a file before writing its replacement, so the linked inodes survive the install.
A distribution without a RECORD cannot be kept that way; its restore reinstalls the exact version with
`--no-deps`, which needs the index (the journal says so).

The journal (`<cache>/txn-<target>/journal.json`, written atomically) records the phase: planned →
snapshotted → installing → verifying → done | rolled-back. A journal left in between by a killed doctor is
restored by the next `m3d-doctor fix` before anything else. A lock file in the same directory is held by the
doctor and inherited by the installer, so an installer that outlives a killed doctor is never raced.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from packaging.utils import canonicalize_name

from .errors import EXIT_COULD_NOT_RUN, DoctorError

if TYPE_CHECKING:
    from .context import Context

UNFINISHED = ("snapshotted", "installing", "verifying", "restoring")
Say = Callable[[str], None]


class TxnBusy(DoctorError):
    exit_code = EXIT_COULD_NOT_RUN


class RestoreIncomplete(DoctorError):
    exit_code = EXIT_COULD_NOT_RUN


def txn_dir(cache_dir: Path, prefix: str) -> Path:
    """One journal per environment (its sys.prefix), however its interpreter is spelled on the command line."""
    return cache_dir / f"txn-{hashlib.sha256(os.path.realpath(prefix).encode()).hexdigest()[:16]}"


def install_dirs(interp: dict[str, Any]) -> list[str]:
    """Where installers write packages: purelib and platlib (one directory in a venv)."""
    return list(dict.fromkeys(p for p in (interp.get("purelib"), interp.get("platlib")) if p and os.path.isdir(p)))


# -- reading the installed set -------------------------------------------------------------------------------

def scan(sites: Iterable[str]) -> dict[str, dict[str, Any]]:
    """name → {version, dist_info, direct_url}: every *.dist-info in these directories (first one wins)."""
    out: dict[str, dict[str, Any]] = {}
    for site in sites:
        try:
            entries = sorted(os.listdir(site))
        except OSError:
            continue
        for entry in entries:
            if not entry.endswith(".dist-info") or entry.startswith("~"):  # ~name: pip's uninstall stash
                continue
            info = os.path.join(site, entry)
            meta = _metadata(info)
            if meta is None:
                continue
            name, version = meta
            if name in out:
                continue
            direct = None
            with contextlib.suppress(OSError, ValueError):
                direct = json.loads(Path(info, "direct_url.json").read_text(encoding="utf-8"))
            out[name] = {"version": version, "dist_info": info, "direct_url": direct}
    return out


def _metadata(info: str) -> Optional[tuple[str, str]]:
    name = version = None
    try:
        with open(os.path.join(info, "METADATA"), encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                if key == "Name":
                    name = value.strip()
                elif key == "Version":
                    version = value.strip()
    except OSError:
        return None
    return (canonicalize_name(name), version or "") if name else None


def record_files(dist_info: str) -> Optional[list[str]]:
    """Absolute paths of every file a distribution installed (its RECORD plus its dist-info), or None."""
    site = os.path.dirname(dist_info)
    try:
        with open(os.path.join(dist_info, "RECORD"), encoding="utf-8", newline="") as fh:
            rows = [row[0] for row in csv.reader(fh) if row]
    except OSError:
        return None
    files = {os.path.normpath(os.path.join(site, r)) for r in rows}
    for root, _dirs, names in os.walk(dist_info):
        files.update(os.path.join(root, n) for n in names)
    return sorted(files)


def _top(site: str, path: str) -> Optional[str]:
    rel = os.path.relpath(path, site)
    return None if rel.startswith("..") else os.path.join(site, rel.split(os.sep, 1)[0])


# -- the journal -------------------------------------------------------------------------------------------

class Journal:
    """One transaction's directory: journal.json, the stash of files, and the lock."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.path = directory / "journal.json"
        self.data: dict[str, Any] = {}
        self._lock: Optional[Any] = None

    @staticmethod
    def read(directory: Path) -> Optional[dict[str, Any]]:
        try:
            return json.loads((directory / "journal.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    @property
    def stash(self) -> Path:
        """Where the kept files are: beside the journal, or beside site-packages when that is another
        filesystem (hard links need the same one; copying torch onto a small container disk would not do)."""
        return Path(self.data.get("stash") or self.dir / "stash")

    def lock(self) -> None:
        """Refuses while another doctor, or an installer a killed doctor left running, holds it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fh = open(self.dir / "lock", "a+")  # noqa: SIM115 - held for the transaction's lifetime
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            pid = (Journal.read(self.dir) or {}).get("installer_pid")
            raise TxnBusy(f"an install into this environment is still running (installer pid {pid}); "
                          "run m3d-doctor fix again when it has exited") from None
        self._lock = fh

    @property
    def lock_fd(self) -> int:
        assert self._lock is not None
        return self._lock.fileno()

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def save(self, **fields: Any) -> None:
        """Atomically (and durably) replace journal.json with the updated record."""
        self.data.update(fields, updated=time.time())
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self.data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def phase(self, phase: str) -> None:
        self.save(phase=phase)

    def finish(self, phase: str) -> None:
        """done / rolled-back: the stash is no longer needed; the journal stays as a record."""
        self.save(phase=phase)
        shutil.rmtree(self.stash, ignore_errors=True)
        self.release()


def begin(ctx: Context, fix_id: str, command: str) -> Journal:
    python = ctx.target.python
    j = Journal(txn_dir(ctx.cache.directory, ctx.target.interp["prefix"]))
    j.lock()
    old = Journal.read(j.dir)
    if old and old.get("phase") in UNFINISHED:
        j.release()
        raise TxnBusy(f"an earlier fix left an unfinished transaction in {j.dir}; run m3d-doctor fix --yes to "
                      "restore it first")
    for leftover in {str(j.dir / "stash"), (old or {}).get("stash") or ""} - {""}:
        shutil.rmtree(leftover, ignore_errors=True)
    j.data = {"version": 1, "target": python, "fix_id": fix_id, "created": time.time(), "pid": os.getpid(),
              "command": command, "installer_pid": None}
    j.phase("planned")
    return j


def snapshot(j: Journal, sites: list[str], replace: Iterable[str]) -> dict[str, Any]:
    """Record the whole installed set and keep the files of the distributions that `replace` names."""
    j.save(stash=str(_stash_dir(j.dir, sites)))
    dists = scan(sites)
    owners: dict[str, set[str]] = {}
    files: dict[str, Optional[list[str]]] = {}
    for name, d in dists.items():
        files[name] = record_files(d["dist_info"])
        site = os.path.dirname(d["dist_info"])
        for f in files[name] or []:
            top = _top(site, f)
            if top:
                owners.setdefault(top, set()).add(name)
    stashed: dict[str, Any] = {}
    unstashable = []
    for name in sorted(set(replace) & set(dists)):
        if files[name] is None:
            unstashable.append(name)
            continue
        exclusive = sorted(t for t, who in owners.items() if who == {name} and os.path.isdir(t)
                           and not os.path.islink(t))
        present = set(files[name] or [])  # and whatever appeared in its own directories since (bytecode, caches)
        for top in exclusive:
            for root, dirs, names in os.walk(top):
                present.update(os.path.join(root, n) for n in names)
                present.update(os.path.join(root, d) for d in dirs if os.path.islink(os.path.join(root, d)))
        kept = [f for f in sorted(present) if _keep(f, j.stash)]
        stashed[name] = {"files": kept, "exclusive": exclusive}
    snap = {"sites": sites, "listing": {s: sorted(os.listdir(s)) for s in sites},
            "dists": dists, "stashed": stashed, "unstashable": unstashable}
    j.save(snapshot=snap, phase="snapshotted")
    return snap


def _stash_dir(journal_dir: Path, sites: list[str]) -> Path:
    default = journal_dir / "stash"
    try:
        if not sites or os.stat(journal_dir).st_dev == os.stat(sites[0]).st_dev:
            return default
        near = Path(os.path.dirname(sites[0])) / f".m3d-doctor-{journal_dir.name}"
        near.mkdir(exist_ok=True)
        return near
    except OSError:
        return default


def _stash_path(stash: Path, path: str) -> Path:
    return stash / "files" / path.lstrip(os.sep)


def _keep(path: str, stash: Path) -> bool:
    """Hard-link (else copy) one installed file into the stash; False when it does not exist."""
    dest = _stash_path(stash, path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        if os.path.islink(path):
            os.symlink(os.readlink(path), dest)
            return True
        if not os.path.isfile(path):
            return False
        try:
            os.link(path, dest)
        except OSError:  # another filesystem, or links not allowed: copy
            shutil.copy2(path, dest)
        return True
    except FileExistsError:
        return True


# -- restoring -----------------------------------------------------------------------------------------------

def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _installer_artefact(entry: str, touched: set[str]) -> bool:
    """A new site-packages entry an installer made: pip's `~name` stash, a `.dist-info`/`.data` folder, or a
    package/module named after a distribution the transaction was changing. Anything else is someone's."""
    if entry.startswith("~") or entry.endswith((".dist-info", ".data", ".egg-info")):
        return True
    stem = _norm(entry.split(".")[0] if not entry.endswith(".py") else entry[:-3])
    return stem in touched or any(t.startswith(stem + "_") or stem.startswith(t) for t in touched if len(t) > 2)


def restore(j: Journal, installer_for_network: Optional[Callable[[list[str]], int]], say: Say) -> list[str]:
    """Put the snapshot back; returns what still differs (empty: the installed set is exactly as it was).

    Idempotent, so an interrupted restore is simply run again.
    """
    snap = j.data["snapshot"]
    sites: list[str] = snap["sites"]
    want: dict[str, dict[str, Any]] = snap["dists"]
    stashed: dict[str, Any] = snap["stashed"]
    j.phase("restoring")
    now = scan(sites)
    for name, d in now.items():  # 1. what the install added or replaced goes, by its own RECORD
        if name not in want or want[name]["version"] != d["version"] or d["dist_info"] != want[name]["dist_info"]:
            _remove_dist(d["dist_info"])
            say(f"removed {name} {d['version']}")
    touched = {_norm(n) for n in [*want, *now, *(j.data.get("packages") or [])]}
    for site in sites:  # 2. leftovers of an interrupted installer, and only those: pip's ~name stashes,
        before = set(snap["listing"].get(site, []))  # metadata folders, and half-written packages it touched
        for entry in sorted(set(os.listdir(site)) - before):
            if not _installer_artefact(entry, touched):
                say(f"kept {os.path.join(site, entry)} (not the installer's)")
                continue
            _rm(os.path.join(site, entry))
            say(f"removed leftover {os.path.join(site, entry)}")
    for name, kept in stashed.items():  # 3. the kept files go back; nothing else stays in their directories
        keep = set(kept["files"])
        for top in kept["exclusive"]:
            _prune(top, keep)
        for path in kept["files"]:
            _put_back(_stash_path(j.stash, path), path)
        say(f"restored {name} {want[name]['version']}")
    current = scan(sites)
    missing = [n for n, d in want.items() if n not in current or current[n]["version"] != d["version"]]
    if missing and installer_for_network is not None:  # 4. no files kept: reinstall the exact versions
        reqs = [_requirement(n, want[n]) for n in missing]
        say(f"reinstalling from the index (no files were kept): {' '.join(reqs)}")
        installer_for_network(reqs)
        current = scan(sites)
    return diff(want, current)


def diff(want: dict[str, dict[str, Any]], have: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for n in sorted(set(want) | set(have)):
        a, b = want.get(n, {}).get("version"), have.get(n, {}).get("version")
        if a != b:
            out.append(f"{n}: {a or 'absent'} before, {b or 'absent'} now")
    return out


def _requirement(name: str, d: dict[str, Any]) -> str:
    direct = d.get("direct_url") or {}
    if direct.get("url") and not (direct.get("dir_info") or {}).get("editable"):
        return f"{name} @ {direct['url']}"
    return f"{name}=={d['version']}"


def _remove_dist(dist_info: str) -> None:
    for f in record_files(dist_info) or []:
        if os.path.islink(f) or os.path.isfile(f):
            with contextlib.suppress(OSError):
                os.unlink(f)
                _rmdirs(os.path.dirname(f))
    _rm(dist_info)


def _rm(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        with contextlib.suppress(OSError):
            os.unlink(path)


def _rmdirs(d: str) -> None:
    """Remove now-empty directories upwards (never a site directory itself: it is never empty)."""
    with contextlib.suppress(OSError):
        while d and not os.listdir(d):
            os.rmdir(d)
            d = os.path.dirname(d)


def _prune(top: str, keep: set[str]) -> None:
    if not os.path.isdir(top) or os.path.islink(top):
        if os.path.lexists(top) and top not in keep:
            _rm(top)
        return
    for root, dirs, names in os.walk(top, topdown=False):
        for n in names:
            p = os.path.join(root, n)
            if p not in keep:
                with contextlib.suppress(OSError):
                    os.unlink(p)
        for n in dirs:
            p = os.path.join(root, n)
            if os.path.islink(p) and p not in keep:
                os.unlink(p)
            elif os.path.isdir(p) and not os.listdir(p):
                os.rmdir(p)


def _put_back(src: Path, path: str) -> None:
    if os.path.islink(src):
        _rm(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.symlink(os.readlink(src), path)
        return
    with contextlib.suppress(OSError):
        if os.path.samefile(src, path):
            return
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.link(src, path)
    except OSError:
        shutil.copy2(src, path)


# -- recovery at the start of `fix` ----------------------------------------------------------------------------

def recover_unfinished(ctx: Context, args: Any, say: Say) -> None:
    """A journal a killed or interrupted fix left behind: restore its snapshot before planning anything."""
    if not getattr(ctx.target, "live", False):
        return None
    directory = txn_dir(ctx.cache.directory, ctx.target.interp["prefix"])
    data = Journal.read(directory)
    if not data or data.get("phase") not in UNFINISHED or "snapshot" not in data:
        return None
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(data.get("created", 0)))
    say(f"an interrupted fix ({data.get('fix_id')}, started {when}, stopped while {data['phase']}) left "
        f"{ctx.target.python} unverified")
    if getattr(args, "dry_run", False):
        say("  m3d-doctor fix --yes restores the snapshot it took first")
        return None
    if not getattr(args, "yes", False) and (
            not sys.stdin.isatty() or input("restore that snapshot now? [y/N] ").strip().lower() not in ("y", "yes")):
        say("  not restored (pass --yes to restore it)")
        return None
    from .fixflow import fix_lock
    from .installer import choose

    j = Journal(directory)
    with fix_lock(ctx):
        j.lock()
        j.data = data

        def network(reqs: list[str]) -> int:
            inst = choose(ctx.options.extra.get("installer"), ctx.target.python)
            from .installer import run

            code, _ = run(inst.install(reqs, no_deps=True), progress=lambda line: say(f"    {line}"))
            return code

        still = restore(j, network, lambda m: say(f"  {m}"))
        if still:
            j.release()  # the stash stays for another attempt
        else:
            j.finish("rolled-back")
    if still:
        raise RestoreIncomplete("the snapshot could not be fully restored: " + "; ".join(still) + f"; the journal "
                                f"is kept in {directory}: m3d-doctor fix --yes retries")
    say("  restored: the installed set is as it was before that fix")
    ctx.target._dists = None
    ctx.target._fingerprint = None
