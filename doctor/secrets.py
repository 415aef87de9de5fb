"""Secrets stay secret: every byte the doctor writes (stdout, stderr, cache files) passes through `redact`.

The checks already avoid printing tokens (the hf probe returns only the source and last 4 characters); this
is the second line: any known token value that reaches an output anyway is replaced.
"""

from __future__ import annotations

import functools
import io
import os
import re
from pathlib import Path
from typing import TextIO

MASK = "hf_***"
_TOKEN_LIKE = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")


@functools.lru_cache(maxsize=1)
def known_secrets() -> tuple[str, ...]:
    values = {os.environ.get(v, "").strip() for v in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    from .hfcache import hf_home

    for path in (os.environ.get("HF_TOKEN_PATH"), hf_home() / "token"):
        try:
            if path:
                values.add(Path(path).read_text(encoding="utf-8", errors="replace").strip())
        except OSError:
            pass
    return tuple(sorted((v for v in values if len(v) >= 8), key=len, reverse=True))


def redact(text: str) -> str:
    for secret in known_secrets():
        if secret in text:
            text = text.replace(secret, MASK)
    return _TOKEN_LIKE.sub(MASK, text)  # anything shaped like an HF token, known or not


class RedactingStream(io.TextIOBase):
    def __init__(self, inner: TextIO):
        self.inner = inner

    def write(self, s: str) -> int:
        self.inner.write(redact(s))
        return len(s)

    def flush(self) -> None:
        self.inner.flush()

    def isatty(self) -> bool:
        return self.inner.isatty()

    def fileno(self) -> int:
        return self.inner.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.inner, "encoding", "utf-8")
