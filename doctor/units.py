"""Sizes on the command line: binary (GiB, MiB) or decimal (GB, MB) units, as people write them."""

from __future__ import annotations

import re

from .errors import UsageError

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str, flag: str = "size") -> int:
    """'20GiB' -> 21474836480, '80GB' -> 80000000000, '512M' -> 512000000; bare numbers are bytes."""
    m = _SIZE.match(text or "")
    if not m or m.group(2).lower() not in _UNITS:
        raise UsageError(f"{flag} {text!r}: expected a size such as 20GiB, 80GB or 512MiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def human(n: int) -> str:
    """A size for a title (evidence always carries the integer bytes)."""
    sign, size = "-" if n < 0 else "", float(abs(n))
    if size < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024:
            return f"{sign}{size:.1f} {unit}"
    return f"{sign}{size / 1024:.1f} TiB"
