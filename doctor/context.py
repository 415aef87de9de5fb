"""What a check sees: the target, the profile, the options, and facts shared between checks.

A fact is computed once per run (several checks read the torch probe), and facts that come from probing
the target are cached on disk under the target's fingerprint, so a second run with nothing changed does
not start the interpreter again.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from . import nvml
from .cache import Cache
from .probe import probe_source
from .profile import Profile
from .target import FreezeTarget, Target


@dataclass
class Options:
    offline: bool = False
    verbose: bool = False
    strict: bool = False
    dtype: Optional[str] = None  # the dtype a run will ask for (device check)
    device: Optional[str] = None  # "cuda" | "cpu" | None (whatever is present)
    use_cache: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


class Context:
    def __init__(self, target: Union[Target, FreezeTarget], profile: Profile, options: Options, cache: Cache):
        self.target = target
        self.profile = profile
        self.options = options
        self.cache = cache
        self._facts: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.cache_hits: set[str] = set()

    def video_resolution(self) -> Optional[str]:
        """The named video resolution this run is about: `--resolution 480|720`, else the profile's default."""
        from .stages import split_resolution

        _hw, name = split_resolution(self.options.extra.get("resolution"))
        return name or (str(self.profile.stages.get("video", {}).get("resolution", "")) or None)

    def models(self) -> tuple[Any, ...]:
        """The profile's models this run needs: a model tagged for another video resolution (the 480P and 720P
        repos, their LoRAs) is left out, so checks, downloads and disk plans cover one resolution, as a run does."""
        res = self.video_resolution()
        return tuple(m for m in self.profile.models if m.resolution is None or res is None or m.resolution == res)

    def fact(self, key: str, produce: Callable[[], Any], persist: bool = False, salt: str = "") -> Any:
        """Compute `key` once per run; with `persist`, reuse it across runs while the fingerprint holds."""
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key in self._facts:
                return self._facts[key]
            disk_key = None
            if persist and self.options.use_cache:
                blob = f"{self.target.fingerprint()}|{self.profile.digest}|{salt}"
                disk_key = f"fact-{key}-{hashlib.sha256(blob.encode()).hexdigest()[:20]}"
                hit = self.cache.get(disk_key)
                if hit is not None:
                    self._facts[key] = hit["value"]
                    self.cache_hits.add(key)
                    return hit["value"]
            value = produce()
            if disk_key:
                self.cache.put(disk_key, {"value": value})
            self._facts[key] = value
            return value

    def probe_salt(self, *names: str, extra: Any = None) -> str:
        """Cache salt: the probe sources and inputs, so a changed probe never reuses an old answer."""
        h = hashlib.sha256()
        for n in names:
            h.update(probe_source(n).encode())
        h.update(json.dumps(extra, sort_keys=True, default=str).encode())
        return h.hexdigest()[:16]

    def gpu(self) -> dict[str, Any]:
        """Driver and GPU identity (names, capabilities, totals). Cached while /proc says the driver and the
        visible GPUs are unchanged: nvmlInit can take a second without the persistence daemon. Live memory
        use is not in here; the vram check reads NVML itself."""
        def produce() -> dict[str, Any]:
            if not self.options.use_cache or os.environ.get("M3D_DOCTOR_NVML_REPLAY"):
                return nvml.snapshot()
            key = "nvml-" + hashlib.sha256(nvml.driver_identity().encode()).hexdigest()[:20]
            hit = self.cache.get(key)
            if hit is not None:
                return hit
            snap = nvml.snapshot()
            if snap.get("available"):
                self.cache.put(key, snap)
            return snap
        return self.fact("nvml", produce)
