"""What a check is, and how checks are found: the `m3d_doctor.checks` entry-point group.

Built-in checks register in this project's own pyproject exactly as a third-party plugin would, so a
plugin distribution adds a check with no edit here. An entry point may name a `Check` instance or a
class to instantiate.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from .errors import UsageError
from .findings import Finding

if sys.version_info >= (3, 10):
    from importlib.metadata import entry_points
else:  # pragma: no cover
    from importlib_metadata import entry_points

if TYPE_CHECKING:
    from .context import Context

CHECK_GROUP = "m3d_doctor.checks"
FIX_GROUP = "m3d_doctor.fixes"


class Check:
    """Subclass and set the attributes; `run` returns findings and renders nothing."""

    name: str = ""
    description: str = ""
    needs_network: bool = False  # skipped with --offline
    needs_live_target: bool = True  # skipped when judging a --freeze file
    timeout_s: float = 120.0
    order: int = 100  # display and run order; built-ins use 10..90, plugins default after them

    def run(self, ctx: Context) -> list[Finding]:  # pragma: no cover - interface
        raise NotImplementedError

    def cache_key(self, ctx: Context) -> str | None:
        """What, beside the target's fingerprint and the profile, the findings depend on; None = never cache.

        A check whose findings are a pure function of the installed environment returns "" and is not run
        again until the fingerprint changes (a pod restart with nothing changed passes in milliseconds).
        """
        return None


class BrokenPlugin(Check):
    """Stands in for an entry point that fails to load, so the failure is reported, not fatal."""

    needs_live_target = False

    def __init__(self, name: str, error: BaseException):
        self.name = name
        self.description = f"plugin {name} (failed to load)"
        self.error = error

    def run(self, ctx: Context) -> list[Finding]:
        raise RuntimeError(f"the plugin could not be loaded: {type(self.error).__name__}: {self.error}")


def _load_group(group: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for ep in entry_points(group=group):
        if ep.name in found:
            continue
        try:
            obj = ep.load()
            if isinstance(obj, type):
                obj = obj()
        except Exception as exc:  # a broken third-party plugin must not take the doctor down
            obj = BrokenPlugin(ep.name, exc) if group == CHECK_GROUP else None
        if obj is not None:
            if not getattr(obj, "name", None):
                obj.name = ep.name
            found[ep.name] = obj
    return found


def discover_checks() -> dict[str, Check]:
    found = _load_group(CHECK_GROUP)
    return dict(sorted(found.items(), key=lambda kv: (getattr(kv[1], "order", 100), kv[0])))


def discover_fixes() -> dict[str, Any]:
    return _load_group(FIX_GROUP)


def select_checks(available: dict[str, Check], names: list[str]) -> list[Check]:
    if not names:
        return list(available.values())
    unknown = [n for n in names if n not in available]
    if unknown:
        raise UsageError(
            f"unknown check {', '.join(unknown)} (available: {', '.join(sorted(available))})"
        )
    return [available[n] for n in dict.fromkeys(names)]

