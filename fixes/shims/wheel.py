"""Building a shim's wheel: a real distribution pip can install, list and uninstall.

A py3-none-any wheel (PEP 427) with METADATA (Summary: what it shims and when it becomes unnecessary), WHEEL,
the shim's own description `m3d_shim.json`, and a RECORD of sha256 hashes, so `pip uninstall` removes exactly
what `pip install` put there. Built deterministically (fixed timestamps, sorted entries): the same shim
version always gives the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zipfile
from pathlib import Path

from m3d_doctor import __version__

from . import INFO_FILE, Shim

_EPOCH = (1980, 1, 1, 0, 0, 0)


def wheel_filename(shim: Shim) -> str:
    """As PEP 427 spells it: '-' in the distribution name becomes '_'."""
    return f"{shim.dist.replace('-', '_')}-{shim.version}-py3-none-any.whl"


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def metadata(shim: Shim) -> str:
    body = (f"{shim.provides}.\n\nWhy: {shim.why}.\n\nUnnecessary {shim.unnecessary_when}.\n\n"
            f"Installed by m3d-doctor {__version__}; remove with `python -m pip uninstall {shim.dist}` or "
            "`m3d-doctor fix --undo shims`.\n")
    return (f"Metadata-Version: 2.1\nName: {shim.dist}\nVersion: {shim.version}\nSummary: {shim.summary}\n"
            "License: Apache-2.0\nRequires-Python: >=3.8\nDescription-Content-Type: text/plain\n\n" + body)


def wheel_contents(name: str, version: str, files: dict[str, str], metadata_text: str,
                   extra_info: dict[str, str] | None = None) -> dict[str, bytes]:
    """Every file of a purelib wheel of distribution `name`, dist-info included, RECORD last."""
    info = f"{name.replace('-', '_')}-{version}.dist-info"
    out = {path: text.encode() for path, text in sorted(files.items())}
    out[f"{info}/METADATA"] = metadata_text.encode()
    out[f"{info}/WHEEL"] = (f"Wheel-Version: 1.0\nGenerator: m3d-doctor ({__version__})\nRoot-Is-Purelib: true\n"
                            "Tag: py3-none-any\n").encode()
    for fname, text in (extra_info or {}).items():
        out[f"{info}/{fname}"] = text.encode()
    record = "".join(f"{p},{record_hash(d)},{len(d)}\n" for p, d in out.items()) + f"{info}/RECORD,,\n"
    out[f"{info}/RECORD"] = record.encode()
    return out


def write_wheel(path: Path, contents: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in contents.items():
            zi = zipfile.ZipInfo(name, date_time=_EPOCH)
            zi.external_attr = 0o644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, data)
    return path


def shim_wheel_contents(shim: Shim) -> dict[str, bytes]:
    info = json.dumps({**shim.info(), "doctor_version": __version__}, indent=2) + "\n"
    return wheel_contents(shim.dist, shim.version, shim.files(), metadata(shim), {INFO_FILE: info})


def build_wheel(shim: Shim, directory: Path) -> Path:
    """The shim's wheel in `directory`, named as pip expects."""
    return write_wheel(Path(directory) / wheel_filename(shim), shim_wheel_contents(shim))
