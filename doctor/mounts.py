"""Which mount a path lives on, and whether the pod has a persistent volume (psutil, no shelling out)."""

from __future__ import annotations

import os
from typing import Optional

import psutil


def mount_of(path: str) -> Optional[str]:
    """The longest mount point that is a prefix of the path's real location."""
    real = os.path.realpath(path)
    best = None
    for part in psutil.disk_partitions(all=True):
        mp = part.mountpoint
        if (real == mp or real.startswith(mp.rstrip("/") + "/")) and (best is None or len(mp) > len(best)):
            best = mp
    return best or "/"


def existing_volumes(candidates: list[str]) -> list[str]:
    """Candidate volume paths that exist and are a mount of their own (not a folder on the container disk)."""
    out = []
    for c in candidates:
        if os.path.isdir(c) and mount_of(c) not in (None, "/") and mount_of(c) != mount_of("/"):
            out.append(c)
    return out
