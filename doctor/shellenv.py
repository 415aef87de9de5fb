"""Durable environment variables: `export` lines in a block the doctor owns, so a new shell (and the next
pod start on the same volume-backed home) sees them.

The file is $M3D_DOCTOR_PROFILE_FILE if set (tests), else /etc/profile.d/m3d-doctor.sh where writable
(every login shell), else ~/.profile. The doctor only ever edits the lines between its markers; writing
the same variable twice replaces its line, so re-running a fix changes nothing.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

BEGIN = "# >>> m3d-doctor >>>"
END = "# <<< m3d-doctor <<<"
_EXPORT = re.compile(r"^export ([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def profile_file() -> Path:
    if os.environ.get("M3D_DOCTOR_PROFILE_FILE"):
        return Path(os.environ["M3D_DOCTOR_PROFILE_FILE"]).expanduser()
    system = Path("/etc/profile.d")
    if system.is_dir() and os.access(system, os.W_OK):
        return system / "m3d-doctor.sh"
    return Path.home() / ".profile"


def _split(text: str) -> tuple[str, list[str], str]:
    lines = text.splitlines(keepends=True)
    try:
        start = next(i for i, ln in enumerate(lines) if ln.rstrip("\n") == BEGIN)
        end = next(i for i in range(start + 1, len(lines)) if lines[i].rstrip("\n") == END)
    except StopIteration:
        sep = "" if not text or text.endswith("\n") else "\n"
        return text + sep, [], ""
    return "".join(lines[:start]), [ln.rstrip("\n") for ln in lines[start + 1:end]], "".join(lines[end + 1:])


def read_exports(path: Path) -> dict[str, str]:
    """The variables the doctor's block sets (values unquoted)."""
    try:
        _, block, _ = _split(path.read_text())
    except OSError:
        return {}
    out = {}
    for line in block:
        m = _EXPORT.match(line)
        if m:
            parts = shlex.split(m.group(2))
            out[m.group(1)] = parts[0] if parts else ""
    return out


def set_exports(path: Path, values: dict[str, str]) -> None:
    """Set `export VAR=value` lines in the doctor's block of `path`, creating file and block as needed;
    written to a temporary file and renamed, so a crash never leaves half a profile."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = ""
    head, block, tail = _split(text)
    lines, done = [], set()
    for line in block:  # replace in place, so setting the same values again leaves the text unchanged
        m = _EXPORT.match(line)
        if m and m.group(1) in values:
            if m.group(1) not in done:
                lines.append(f"export {m.group(1)}={shlex.quote(values[m.group(1)])}")
                done.add(m.group(1))
            continue
        lines.append(line)
    lines += [f"export {k}={shlex.quote(v)}" for k, v in values.items() if k not in done]
    new = head + "\n".join([BEGIN, *lines, END]) + "\n" + tail
    if new == text:
        return
    path = Path(os.path.realpath(path))  # a dotfile symlinked elsewhere stays a symlink
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".m3d-tmp")
    tmp.write_text(new)
    if path.exists():
        os.chmod(tmp, path.stat().st_mode & 0o7777)
    os.replace(tmp, path)


def export_command(path: Path, values: dict[str, str]) -> str:
    """What a person would type to do the same (without the doctor's block)."""
    return " && ".join(f"echo {shlex.quote(f'export {k}={shlex.quote(v)}')} >> {shlex.quote(str(path))}"
                       for k, v in values.items())
