"""What can be deleted to free disk without losing anything a run needs, item by item.

Only re-creatable cache content: pip's HTTP and wheel caches and self-check state, uv's cache buckets,
HF revisions no ref points to (their snapshot and the blobs only they use), and `.incomplete` HF blobs
untouched for `STALE_INCOMPLETE_S` (a running download keeps writing its blob). The `disk` check reports
the total and the `disk.clean-caches` fix deletes exactly these items, so both read this one list.
"""

from __future__ import annotations

import fnmatch
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from . import caches, du, hfcache

STALE_INCOMPLETE_S = 600
PIP_ENTRIES = ("http", "http-v2", "wheels", "selfcheck", "selfcheck.json")  # pip's own names, exactly
UV_BUCKET = re.compile(r"^[a-z][a-z0-9-]*-v\d+$")  # archive-v0, wheels-v5, sdists-v9, simple-v16, ...


@dataclass
class Item:
    kind: str  # pip | uv | hf-detached | hf-incomplete
    description: str
    root: Path  # the cache root every path must stay inside
    paths: list[Path]
    bytes: int
    partial: bool = False


@dataclass
class Reclaimable:
    items: list[Item] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # why something that looked deletable is left alone

    @property
    def total(self) -> int:
        return sum(i.bytes for i in self.items)

    def by_kind(self) -> dict[str, int]:
        out = {"pip": 0, "uv": 0, "hf-detached": 0, "hf-incomplete": 0}
        for i in self.items:
            out[i.kind] += i.bytes
        return out


def cache_roots() -> dict[str, Path]:
    """The roots deletion is allowed under, from the current environment."""
    return {"pip": caches.pip_cache_dir(), "uv": caches.uv_cache_dir(), "hf": hfcache.hub_cache_dir()}


def unsafe_root(root: Path) -> Optional[str]:
    """Why a configured cache root must not be cleaned (it is `/`, the home folder, or above it)."""
    real = os.path.realpath(root)
    home = os.path.realpath(os.path.expanduser("~"))
    if real == "/" or real == home or home.startswith(real.rstrip("/") + "/"):
        return f"{root} is {real}, not a cache folder"
    return None


def _entries(root: Path, keep: Callable[[str], bool]) -> tuple[list[Path], list[str]]:
    out, skipped = [], []
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return out, skipped
    for name in names:
        if not keep(name):
            continue
        p = root / name
        if not caches.is_within(p, root):
            skipped.append(f"{p} points outside {root}")
            continue
        out.append(p)
    return out, skipped


def scan(meter: Optional[du.Meter] = None, now: Optional[float] = None) -> Reclaimable:
    """Bytes are what deleting frees (`Usage.freeable`): a uv cache file hard-linked into a venv frees nothing."""
    now = time.time() if now is None else now
    meter = meter or du.Meter()
    result = Reclaimable()
    roots = cache_roots()
    for kind, keep in (("pip", lambda n: any(fnmatch.fnmatch(n, pat) for pat in PIP_ENTRIES)),
                       ("uv", lambda n: bool(UV_BUCKET.match(n)))):
        root = roots[kind]
        if not root.is_dir():
            continue
        why = unsafe_root(root)
        if why:
            result.skipped.append(why)
            continue
        entries, skipped = _entries(root, keep)
        result.skipped += skipped
        for p in entries:
            use = meter.usage(p)
            if use.files == 0:
                continue  # an empty folder frees nothing worth listing
            result.items.append(Item(kind, f"{kind} cache: {p.name}", root, [p], use.freeable, use.partial))
    hub = roots["hf"]
    for repo in hfcache.scan(hub):
        blobs = repo.detached_blobs()
        for rev in repo.detached:
            snap = repo.path / "snapshots" / rev.commit
            paths = [snap, *sorted(blobs.get(rev.commit, ()))]
            use = du.total_usage(paths, meter.deadline)
            result.items.append(Item("hf-detached", f"{repo.repo_id}: detached revision {rev.commit[:12]}",
                                     hub, paths, use.freeable, use.partial))
        for blob in repo.incomplete:
            try:
                st = blob.lstat()
            except OSError:
                continue
            if now - st.st_mtime < STALE_INCOMPLETE_S:
                result.skipped.append(f"{blob} was written in the last {STALE_INCOMPLETE_S // 60} minutes "
                                      "(a download may be running)")
                continue
            result.items.append(Item("hf-incomplete", f"{repo.repo_id}: interrupted download {blob.name[:16]}…",
                                     hub, [blob], getattr(st, "st_blocks", 0) * 512 if st.st_nlink <= 1 else 0))
    return result


def is_stale(path: Path, now: Optional[float] = None) -> bool:
    try:
        return (time.time() if now is None else now) - path.lstat().st_mtime >= STALE_INCOMPLETE_S
    except OSError:
        return False
