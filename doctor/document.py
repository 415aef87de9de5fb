"""The versioned JSON document of a check run (schema in `schema/check-v1.json`, documented in README)."""

from __future__ import annotations

from typing import Any, Optional

from . import __version__
from .engine import Report
from .findings import Severity

SCHEMA_ID = "m3d-doctor/check/v1"


def build_document(report: Report, profile: Any, target: Any, exit_code: int,
                   cache_hits: Optional[list[str]] = None) -> dict[str, Any]:
    counts = {s.value: 0 for s in Severity}
    for r in report.results:
        counts[r.severity.value] += 1
    return {
        "schema": SCHEMA_ID,
        "doctor_version": __version__,
        "profile": {"name": profile.name, "source": profile.source, "digest": profile.digest},
        "target": {
            "python": getattr(target, "python", None),
            "version": target.version,
            "freeze": getattr(target, "path", None) if not target.live else None,
            "fingerprint": report.fingerprint,
        },
        "summary": {
            "exit_code": exit_code,
            "status": _status(exit_code),
            "checks": counts,
            "duration_s": round(report.duration_s, 4),
            "cached_facts": sorted(cache_hits or []),
        },
        "checks": [r.to_dict() for r in report.results],
    }


def _status(code: int) -> str:
    return {0: "healthy", 1: "failures", 3: "incomplete"}.get(code, "error")
