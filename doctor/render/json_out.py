"""The JSON document, on stdout, nothing else there."""

from __future__ import annotations

import json
from typing import Any, TextIO


def render(doc: dict[str, Any], stream: TextIO) -> None:
    stream.write(json.dumps(doc, indent=2, default=str) + "\n")
