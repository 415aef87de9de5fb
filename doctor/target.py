"""The environment under diagnosis: a target interpreter (probed in subprocesses) or an exported freeze.

Installed distributions are read from the target's metadata files by path, from the doctor's own
process: reading `*.dist-info/METADATA` imports nothing of the target.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from packaging.utils import canonicalize_name

from . import __version__
from .cache import Cache
from .errors import UsageError
from .probe import run_probe

if sys.version_info >= (3, 10):
    from importlib import metadata as importlib_metadata
else:  # pragma: no cover
    import importlib_metadata


@dataclass(frozen=True)
class InstalledDist:
    name: str  # canonical
    display_name: str
    version: str
    requires: tuple[str, ...] = ()
    location: Optional[str] = None
    installer: Optional[str] = None


@dataclass
class Target:
    """A live interpreter. `interp` comes from the `interp` probe, cached by the interpreter's identity."""

    python: str
    cache: Cache
    probe_timeout: float = 60.0
    _interp: Optional[dict[str, Any]] = field(default=None, repr=False)
    _dists: Optional[dict[str, InstalledDist]] = field(default=None, repr=False)
    _fingerprint: Optional[str] = field(default=None, repr=False)

    live = True

    @property
    def interp(self) -> dict[str, Any]:
        if self._interp is None:
            key = "interp-" + _interpreter_identity(self.python)
            cached = self.cache.get(key)
            if cached is None or not _paths_still_exist(cached):
                cached = run_probe(self.python, "interp", timeout=self.probe_timeout).data
                self.cache.put(key, cached)
            self._interp = cached
        return self._interp

    @property
    def version(self) -> str:
        return self.interp["version"]

    @property
    def markers(self) -> dict[str, str]:
        return self.interp["markers"]

    def site_paths(self) -> list[str]:
        return [p for p in self.interp["path"] if os.path.isdir(p)]

    @property
    def dists(self) -> dict[str, InstalledDist]:
        if self._dists is None:
            self._dists = read_distributions(self.site_paths())
        return self._dists

    def fingerprint(self) -> str:
        """Changes whenever anything importable could have changed: interpreter, installed set, paths."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(__version__.encode())
            h.update(_interpreter_identity(self.python).encode())
            for var in ("PYTHONPATH", "LD_LIBRARY_PATH", "LD_PRELOAD", "CUDA_VISIBLE_DEVICES"):
                h.update(f"{var}={os.environ.get(var, '')}\n".encode())
            for p in self.site_paths():
                h.update(p.encode())
                try:
                    entries = sorted(os.scandir(p), key=lambda e: e.name)
                except OSError:
                    continue
                for e in entries:
                    if e.name.endswith((".dist-info", ".egg-info", ".pth", ".egg-link")):
                        try:
                            h.update(f"{e.name}:{e.stat().st_mtime_ns}\n".encode())
                        except OSError:
                            continue
            self._fingerprint = h.hexdigest()[:24]
        return self._fingerprint

    def site_file(self, *parts: str) -> Optional[Path]:
        """A file inside an importable package, found without importing it (e.g. torch/version.py)."""
        for p in self.site_paths():
            candidate = Path(p, *parts)
            if candidate.exists():
                return candidate
        return None


@dataclass
class FreezeTarget:
    """A `pip freeze` text from another pod: versions only, no interpreter to probe."""

    path: str
    dists: dict[str, InstalledDist]
    live = False
    version: Optional[str] = None
    markers: dict[str, str] = field(default_factory=dict)

    def fingerprint(self) -> str:
        blob = json.dumps(sorted((d.name, d.version) for d in self.dists.values()))
        return "freeze-" + hashlib.sha256(blob.encode()).hexdigest()[:16]

    def site_file(self, *parts: str) -> Optional[Path]:
        return None


_FREEZE_LINE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(==|===|\s@\s)\s*(\S+)")


def parse_freeze(text: str, source: str) -> dict[str, InstalledDist]:
    """Parse `pip freeze` / `pip list --format=freeze` / `uv pip freeze` output.

    Editable and VCS lines (`-e git+...`, `name @ file://...`) are kept with an unknown version so they
    count as installed; comments and options are skipped.
    """
    dists: dict[str, InstalledDist] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-i ", "--", "-f ")):
            continue
        if line.startswith("-e "):
            egg = re.search(r"#egg=([A-Za-z0-9._-]+)", raw)
            if egg:
                name = canonicalize_name(egg.group(1))
                dists[name] = InstalledDist(name, egg.group(1), "")
            continue
        m = _FREEZE_LINE.match(line)
        if not m:
            raise UsageError(f"{source}:{lineno}: not a pip freeze line: {raw.strip()[:80]!r}")
        display, op, value = m.groups()
        name = canonicalize_name(display)
        version = value if op in ("==", "===") else ""
        dists[name] = InstalledDist(name, display, version)
    if not dists:
        raise UsageError(f"{source}: no packages found in the freeze file")
    return dists


def load_freeze(path: str) -> FreezeTarget:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read freeze file: {exc.strerror or exc}") from None
    return FreezeTarget(path=path, dists=parse_freeze(text, path))


def read_distributions(paths: list[str]) -> dict[str, InstalledDist]:
    """Installed distributions on these paths; the first on sys.path wins, as at import time."""
    out: dict[str, InstalledDist] = {}
    for dist in importlib_metadata.distributions(path=paths):
        try:
            meta = dist.metadata
            display = meta["Name"]
        except Exception:  # a broken dist-info: skip it rather than crash the diagnosis
            continue
        if not display:
            continue
        name = canonicalize_name(display)
        if name in out:
            continue
        try:
            installer = (dist.read_text("INSTALLER") or "").strip() or None
        except Exception:
            installer = None
        out[name] = InstalledDist(
            name=name,
            display_name=display,
            version=dist.version or "",
            requires=tuple(dist.requires or ()),
            location=str(getattr(dist, "_path", "") or "") or None,
            installer=installer,
        )
    return out


def _interpreter_identity(python: str) -> str:
    real = os.path.realpath(python)
    try:
        st = os.stat(real)
    except OSError:
        raise UsageError(f"--python {python}: no such interpreter") from None
    if not os.access(real, os.X_OK):
        raise UsageError(f"--python {python}: not executable")
    cfg = Path(python).parent.parent / "pyvenv.cfg"
    cfg_m = cfg.stat().st_mtime_ns if cfg.exists() else 0
    blob = f"{os.path.abspath(python)}|{real}|{st.st_size}|{st.st_mtime_ns}|{cfg_m}|{os.environ.get('PYTHONPATH', '')}"
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _paths_still_exist(interp: dict[str, Any]) -> bool:
    return all(os.path.exists(p) for p in interp.get("path", []) if p.endswith("-packages"))
