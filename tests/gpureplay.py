"""Recorded NVML answers for GPU cases where no driver exists: tests/fixtures/gpu/h200-torch2.11-cu130.json (a real
H200, recorded through the device tool), replayed with M3D_DOCTOR_NVML_REPLAY, or a card derived from it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable, Optional

from conftest import FIXTURES

REC = json.loads((FIXTURES / "gpu" / "h200-torch2.11-cu130.json").read_text())


def replay(tmp_path: Path, mutate: Optional[Callable[[dict[str, Any]], None]] = None) -> dict[str, str]:
    """The environment that makes the doctor read the recorded H200 (after `mutate(nvml)`, if given)."""
    rec = copy.deepcopy(REC)
    if mutate:
        mutate(rec["nvml"])
    p = tmp_path / "nvml.json"
    p.write_text(json.dumps(rec))
    return {"M3D_DOCTOR_NVML_REPLAY": str(p)}
