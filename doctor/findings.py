"""The data every check returns: findings with a stable id, a severity and a remedy.

Checks build these and renderers print them; nothing here renders or computes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Optional


class Severity(str, enum.Enum):
    OK = "ok"
    INFO = "info"
    SKIP = "skip"
    WARN = "warn"
    FAIL = "fail"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {
    Severity.OK: 0,
    Severity.INFO: 1,
    Severity.SKIP: 2,
    Severity.WARN: 3,
    Severity.FAIL: 4,
    Severity.ERROR: 5,
}


@dataclass(frozen=True)
class Remedy:
    """How to fix a finding: the exact command a person can run, and the fix plugin that applies it.

    This is the one way a fix is described; `fix_id` names an entry of the `m3d_doctor.fixes` group.
    """

    command: Optional[str] = None
    fix_id: Optional[str] = None
    note: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        return {"command": self.command, "fix_id": self.fix_id, "note": self.note}


@dataclass(frozen=True)
class Finding:
    id: str  # "<check>.<problem>", stable across releases
    severity: Severity
    title: str
    cause: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    remedy: Optional[Remedy] = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "severity": self.severity.value,
            "title": self.title,
            "cause": self.cause,
            "evidence": self.evidence,
            "remedy": self.remedy.to_dict() if self.remedy else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        remedy = data.get("remedy")
        return cls(
            id=data["id"],
            severity=Severity(data["severity"]),
            title=data["title"],
            cause=data.get("cause", ""),
            evidence=dict(data.get("evidence") or {}),
            remedy=Remedy(**remedy) if remedy else None,
        )


@dataclass
class CheckResult:
    """One check's outcome: its findings, how long it took, and whether it came from the cache."""

    name: str
    description: str
    findings: list[Finding]
    duration_s: float = 0.0
    cached: bool = False

    @property
    def severity(self) -> Severity:
        if not self.findings:
            return Severity.OK
        return max((f.severity for f in self.findings), key=lambda s: s.rank)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "status": self.severity.value,
            "duration_s": round(self.duration_s, 4),
            "cached": self.cached,
            "findings": [f.to_dict() for f in self.findings],
        }
