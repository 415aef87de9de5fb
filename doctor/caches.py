"""Where the big caches live and where they could live: pip, uv, torch hub and HF caches, the container
disk, and the pod's persistent volume(s).

Cache locations follow each tool's own rules (Linux): PIP_CACHE_DIR, UV_CACHE_DIR, TORCH_HOME, and the HF
variables as huggingface_hub reads them (`hfcache`), else `$XDG_CACHE_HOME/<tool>` or `~/.cache/<tool>`.

Volumes: the profile's `[pod] volumes` are candidates that count only when they are a mount of their own
(on a pod, a folder `/workspace` on the container disk is not persistent). A volume named explicitly —
`m3d-doctor fix --volume PATH`, or the profile's `[pod] volume = "PATH"` — is trusted as given, which is
also how tests name a volume on a single filesystem. `[pod] container_disk` (default "/") names the
container disk the same way.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from . import hfcache
from .mounts import existing_volumes, mount_of


def _xdg_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"))


def pip_cache_dir() -> Path:
    return Path(os.environ["PIP_CACHE_DIR"]).expanduser() if os.environ.get("PIP_CACHE_DIR") else _xdg_cache() / "pip"


def uv_cache_dir() -> Path:
    return Path(os.environ["UV_CACHE_DIR"]).expanduser() if os.environ.get("UV_CACHE_DIR") else _xdg_cache() / "uv"


def torch_home() -> Path:
    return Path(os.environ["TORCH_HOME"]).expanduser() if os.environ.get("TORCH_HOME") else _xdg_cache() / "torch"


def hf_hub_var_set() -> bool:
    """Whether the hub cache is placed by its own variable, so HF_HOME alone does not move it."""
    return any(os.environ.get(v) for v in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"))


def existing_ancestor(path: Path) -> Path:
    """The path itself or its nearest existing parent (where a cache not yet created will land)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(existing_ancestor(path)).free


def mount_for(path: Path) -> str:
    return mount_of(str(existing_ancestor(path))) or "/"


def is_within(path: Path, root: Path) -> bool:
    """Whether `path` (resolved) is `root` (resolved) or below it."""
    p, r = os.path.realpath(path), os.path.realpath(root)
    return p == r or p.startswith(r.rstrip("/") + "/")


@dataclass(frozen=True)
class Pod:
    """The container disk and the persistent volumes, with how to tell which one a path lives on."""

    container_disk: Path
    volumes: tuple[Path, ...]
    explicit: bool  # volumes named by flag or profile: judged by path, not by mount

    def volume_of(self, path: Path) -> Optional[Path]:
        for v in self.volumes:
            if is_within(path, v):
                return v
            if not self.explicit and mount_for(path) == mount_for(v):
                return v
        return None

    def on_container_disk(self, path: Path) -> bool:
        return self.volume_of(path) is None and mount_for(path) == mount_for(self.container_disk)


def pod_layout(pod: dict[str, Any], volume_flag: Optional[str] = None) -> Pod:
    """The pod from the profile's `[pod]` table and `--volume`."""
    container = Path(str(pod.get("container_disk", "/"))).expanduser()
    explicit = volume_flag or pod.get("volume")
    if explicit:
        return Pod(container, (Path(str(explicit)).expanduser(),), True)
    found = existing_volumes([str(v) for v in pod.get("volumes", [])])
    return Pod(container, tuple(Path(v) for v in found), False)


def hf_move_source() -> tuple[Path, bool]:
    """What moving "the HF cache" moves: HF_HOME, or only the hub cache when its own variable puts it
    outside HF_HOME. The flag says whether it is the hub cache alone."""
    home, hub = hfcache.hf_home(), hfcache.hub_cache_dir()
    if hf_hub_var_set() and not is_within(hub, home):
        return hub, True
    return home, False
