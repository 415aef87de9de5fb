"""Disk usage of large trees, fast and bounded: what `du -sx` says, without hanging on a 100 GB cache.

Real usage is `st_blocks * 512` (sparse files and filesystem blocks as the disk sees them); every inode is
counted once per `Seen` set (hardlinks, and HF blobs reached twice); symlinks are never followed (HF
snapshots are symlinks into `blobs/`); other mounts below the root are skipped. Iterative `os.scandir`,
so depth is bounded by memory, not the recursion limit. Past its deadline a walk stops and says `partial`.
`freeable` is what deleting the tree would give back: a file with another hard link elsewhere (uv links
its cache into every venv) frees nothing.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from typing import Iterable, Optional

from . import units

Seen = set[tuple[int, int]]  # (st_dev, st_ino) already counted


@dataclass
class Usage:
    bytes: int = 0  # allocated bytes (st_blocks * 512)
    apparent: int = 0  # st_size sum (what a copy writes)
    freeable: int = 0  # allocated bytes of folders and of files with a single link
    files: int = 0  # non-directory entries
    partial: bool = False  # the time budget ran out before the walk finished
    errors: int = 0  # entries that could not be read

    def add(self, other: Usage) -> None:
        self.bytes += other.bytes
        self.apparent += other.apparent
        self.freeable += other.freeable
        self.files += other.files
        self.partial = self.partial or other.partial
        self.errors += other.errors


class Deadline:
    """A monotonic time budget shared by several walks."""

    def __init__(self, seconds: Optional[float]):
        self.at = None if seconds is None else time.monotonic() + seconds

    def passed(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at


def _count(st: os.stat_result, usage: Usage, seen: Seen) -> None:
    key = (st.st_dev, st.st_ino)
    if key in seen:
        return
    seen.add(key)
    allocated = getattr(st, "st_blocks", 0) * 512
    usage.bytes += allocated
    usage.apparent += st.st_size
    if stat.S_ISDIR(st.st_mode):
        usage.freeable += allocated
    else:
        usage.files += 1
        if st.st_nlink <= 1:
            usage.freeable += allocated


def disk_usage(path: str | os.PathLike[str], deadline: Optional[Deadline] = None,
               seen: Optional[Seen] = None, one_filesystem: bool = True) -> Usage:
    """Usage of `path` (file, symlink or tree). A missing path is zero; a symlink counts as itself."""
    deadline = deadline or Deadline(None)
    seen = set() if seen is None else seen
    usage = Usage()
    try:
        root = os.lstat(path)
    except OSError:
        return usage
    _count(root, usage, seen)
    if not stat.S_ISDIR(root.st_mode):
        return usage
    stack = [os.fspath(path)]
    checked = 0
    while stack:
        if deadline.passed():
            usage.partial = True
            break
        current = stack.pop()
        try:
            it = os.scandir(current)
        except OSError:
            usage.errors += 1
            continue
        with it:
            for entry in it:
                checked += 1
                if checked % 512 == 0 and deadline.passed():
                    usage.partial = True
                    break
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    usage.errors += 1
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if one_filesystem and st.st_dev != root.st_dev:
                        continue  # a mount below the root: not this filesystem's usage
                    stack.append(entry.path)
                _count(st, usage, seen)
        if usage.partial:
            break
    return usage


human = units.human  # one formatter for the whole doctor


def total_usage(paths: Iterable[str | os.PathLike[str]], deadline: Optional[Deadline] = None,
                seen: Optional[Seen] = None) -> Usage:
    """Usage of several paths together, each inode once."""
    seen = set() if seen is None else seen
    total = Usage()
    for p in paths:
        total.add(disk_usage(p, deadline, seen))
    return total


class Meter:
    """Usage per path for one run, each tree walked once however many findings ask about it.

    `remembered` (from `export()` of an earlier run) lets a repeated `check` reuse sizes measured less than
    `ttl` seconds ago: cache sizes drift slowly, and walking 300k files each time would make every warm run
    cost seconds. Free space is never remembered (it comes from statvfs, live).
    """

    def __init__(self, deadline: Optional[Deadline] = None, remembered: Optional[dict[str, list]] = None,
                 ttl: float = 0.0):
        self.deadline = deadline or Deadline(None)
        self._memo: dict[str, Usage] = {}
        self._measured: dict[str, float] = {}
        now = time.time()
        for key, row in (remembered or {}).items():
            if ttl > 0 and now - row[-1] < ttl:
                self._memo[key] = Usage(*row[:-1])
                self._measured[key] = row[-1]

    def export(self) -> dict[str, list]:
        """Complete measurements with their time, for the next run."""
        now = time.time()
        return {k: [u.bytes, u.apparent, u.freeable, u.files, u.partial, u.errors, self._measured.get(k, now)]
                for k, u in self._memo.items() if not u.partial}

    @property
    def oldest(self) -> Optional[float]:
        return min(self._measured.values(), default=None)

    def usage(self, path: str | os.PathLike[str]) -> Usage:
        key = os.path.abspath(path)
        if key not in self._memo:
            self._memo[key] = disk_usage(path, self.deadline)
        return self._memo[key]

    def tree(self, root: str | os.PathLike[str]) -> Usage:
        """Usage of `root`, measured child by child so a later `usage(child)` is free."""
        key = os.path.abspath(root)
        if key in self._memo:
            return self._memo[key]
        seen: Seen = set()
        total = Usage()
        try:
            st = os.lstat(root)
        except OSError:
            return total
        _count(st, total, seen)
        if stat.S_ISDIR(st.st_mode):
            try:
                with os.scandir(root) as it:
                    children = [e.path for e in it]
            except OSError:
                total.errors += 1
                children = []
            for child in children:
                ck = os.path.abspath(child)
                if ck not in self._memo:
                    self._memo[ck] = disk_usage(child, self.deadline, seen)
                total.add(self._memo[ck])
        self._memo[key] = total
        return total
