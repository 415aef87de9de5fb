"""A small JSON cache on disk, keyed by fingerprints: a second run with nothing changed reuses probes."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

from .secrets import redact


def default_cache_dir() -> Path:
    if os.environ.get("M3D_DOCTOR_CACHE_DIR"):
        return Path(os.environ["M3D_DOCTOR_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "m3d-doctor"


class Cache:
    def __init__(self, directory: Optional[Path] = None, enabled: bool = True):
        self.directory = directory or default_cache_dir()
        self.enabled = enabled

    def _path(self, key: str) -> Path:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in key)
        return self.directory / f"{safe}.json"

    def get(self, key: str) -> Optional[Any]:
        if not self.enabled:
            return None
        try:
            return json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def put(self, key: str, value: Any) -> None:
        """Atomic write; a cache that cannot be written is silently skipped (read-only home, full disk)."""
        if not self.enabled:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(redact(json.dumps(value)))
            os.replace(tmp, self._path(key))
        except OSError:
            return
