"""What a fix is: plan → confirm → apply → verify (→ roll back). One way to describe a fix.

A fix plugin (entry-point group `m3d_doctor.fixes`) turns the situation into a `Plan` of `Action`s, each
with its risk class and the exact shell command a person could run instead. Planning never changes
anything; `apply` runs only after confirmation (`--yes`, or an answer on a TTY); `verify` re-checks, and
a fix that can undo itself does so when verification fails.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from .findings import Finding

if TYPE_CHECKING:
    from .context import Context


class Risk(str, enum.Enum):
    SAFE = "safe"  # adds or re-creates; nothing the user made is lost (env var, download, shim)
    RISKY = "risky"  # changes the installed set; restorable from a snapshot
    DESTRUCTIVE = "destructive"  # deletes data (caches only); needs --yes, never a TTY "y"

    @property
    def rank(self) -> int:
        return {"safe": 0, "risky": 1, "destructive": 2}[self.value]


@dataclass
class Action:
    description: str
    risk: Risk
    command: Optional[str] = None  # what a person would type to do the same
    bytes: Optional[int] = None  # bytes freed (negative) or written (positive), when known
    paths: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # what `apply` needs; not shown

    def to_dict(self) -> dict[str, Any]:
        return {"description": self.description, "risk": self.risk.value, "command": self.command,
                "bytes": self.bytes, "paths": self.paths}


@dataclass
class Plan:
    fix_id: str
    actions: list[Action]
    notes: list[str] = field(default_factory=list)
    blocked: Optional[str] = None  # why this fix cannot run now (e.g. not enough disk)
    findings: list[str] = field(default_factory=list)  # the finding ids it answers

    @property
    def risk(self) -> Risk:
        return max((a.risk for a in self.actions), key=lambda r: r.rank, default=Risk.SAFE)

    def to_dict(self) -> dict[str, Any]:
        return {"fix_id": self.fix_id, "risk": self.risk.value, "blocked": self.blocked,
                "findings": self.findings, "notes": self.notes, "actions": [a.to_dict() for a in self.actions]}


Progress = Callable[[str], None]


class Fix:
    """Subclass and set `id`/`description`; implement `plan`, `apply`, and `verify` where it can be checked."""

    id: str = ""
    description: str = ""

    def plan(self, ctx: Context) -> Plan:  # pragma: no cover - interface
        raise NotImplementedError

    def apply(self, ctx: Context, plan: Plan, progress: Progress) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def verify(self, ctx: Context, plan: Plan) -> list[Finding]:
        """Findings still wrong after `apply` (empty: verified)."""
        return []

    def rollback(self, ctx: Context, plan: Plan, progress: Progress) -> None:
        """Undo `apply` after a failed verification, where the fix can."""
