"""The pod image's build manifest (/etc/m3d-doctor/build.json): what the image was built from and what it held.

Written once at build time (`python -m m3d_doctor.buildinfo ...` with the image's venv python, so the
installed set is the venv's); read by the `image` check to tell a stale or since-modified image from a current
one. It holds versions and hashes only, never a token or an environment dump.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from packaging.utils import canonicalize_name

from . import __version__

SCHEMA = "m3d-doctor/build/v1"
DEFAULT_PATH = "/etc/m3d-doctor/build.json"
MANIFEST_ENV = "M3D_DOCTOR_BUILD_MANIFEST"  # another path (tests, images that keep it elsewhere)


def manifest_path() -> Path:
    return Path(os.environ.get(MANIFEST_ENV) or DEFAULT_PATH)


def installed_here() -> dict[str, str]:
    """canonical name -> version of every distribution this interpreter sees (a `pip freeze` as data)."""
    if sys.version_info >= (3, 10):
        from importlib import metadata
    else:  # pragma: no cover
        import importlib_metadata as metadata
    out: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            out.setdefault(canonicalize_name(name), dist.version)
    return dict(sorted(out.items()))


def build_manifest(lock_file: str, git_commit: str, build_date: str, base_image: str,
                   image: str = "") -> dict[str, Any]:
    from .lock import parse_lock, pins_sha256

    text = Path(lock_file).read_text(encoding="utf-8")
    _, lines = parse_lock(text, lock_file)
    return {"schema": SCHEMA, "doctor_version": __version__, "lock_sha256": pins_sha256(lines),
            "lock_pins": len(lines), "git_commit": git_commit or "unknown", "build_date": build_date,
            "base_image": base_image, "image": image,
            "python": ".".join(map(str, sys.version_info[:3])), "installed": installed_here()}


def read_manifest(path: Optional[Path] = None) -> Optional[dict[str, Any]]:
    """The manifest, or None when there is none; an unreadable one raises ValueError with the reason."""
    path = path or manifest_path()
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable build manifest: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not an m3d-doctor build manifest (schema {SCHEMA})")
    return doc


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m m3d_doctor.buildinfo", description="write the image build manifest")
    p.add_argument("--lock", required=True, help="the lock file the image installed")
    p.add_argument("--output", default=DEFAULT_PATH)
    p.add_argument("--git-commit", default="unknown")
    p.add_argument("--build-date", default="")
    p.add_argument("--base-image", default="")
    p.add_argument("--image", default="", help="the image name it is meant to be pushed as")
    a = p.parse_args(argv)
    doc = build_manifest(a.lock, a.git_commit, a.build_date, a.base_image, a.image)
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"build manifest: {out} (lock-sha256 {doc['lock_sha256'][:16]}, {len(doc['installed'])} distributions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
