"""Runs checks: concurrently, each bounded in time; a crash or timeout becomes an `error` result."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass

from . import __version__
from .check import Check
from .context import Context
from .errors import EXIT_COULD_NOT_RUN, EXIT_FAIL, EXIT_OK, DoctorError, ProbeError, UsageError
from .findings import CheckResult, Finding, Severity


@dataclass
class Report:
    results: list[CheckResult]
    fingerprint: str
    duration_s: float

    def exit_code(self, strict: bool = False) -> int:
        """0 healthy (warnings allowed unless strict), 1 failure found, 3 a check could not run."""
        sev = [f.severity for r in self.results for f in r.findings]
        if Severity.FAIL in sev:
            return EXIT_FAIL
        if Severity.ERROR in sev:
            return EXIT_COULD_NOT_RUN
        if strict and Severity.WARN in sev:
            return EXIT_FAIL
        return EXIT_OK


def _skip(check: Check, reason: str, why: str) -> list[Finding]:
    return [Finding(id=f"{check.name}.skipped", severity=Severity.SKIP, title=f"skipped: {reason}",
                    cause=why)]


def _run_one(check: Check, ctx: Context) -> list[Finding]:
    if ctx.options.offline and check.needs_network:
        return _skip(check, "--offline", "this check needs the network and --offline was given")
    if not ctx.target.live and check.needs_live_target:
        return _skip(check, "judging a freeze file",
                     "this check needs a live interpreter; a freeze file only holds versions")
    findings = list(check.run(ctx))
    if not findings:
        findings = [Finding(id=f"{check.name}.ok", severity=Severity.OK, title="no problem found")]
    return findings


def _result_key(check: Check, ctx: Context) -> str | None:
    if not ctx.options.use_cache or not ctx.target.live:
        return None
    extra = check.cache_key(ctx) if hasattr(check, "cache_key") else None
    if extra is None:
        return None
    blob = "|".join([__version__, check.name, type(check).__module__, ctx.target.fingerprint(),
                     ctx.profile.digest, extra])
    return f"result-{check.name}-{hashlib.sha256(blob.encode()).hexdigest()[:20]}"


def _error(check: Check, problem: str, title: str, cause: str) -> list[Finding]:
    return [Finding(id=f"{check.name}.{problem}", severity=Severity.ERROR, title=title, cause=cause)]


class _Job(threading.Thread):
    """A daemon thread per check: a hung check can be abandoned without blocking the doctor's exit."""

    def __init__(self, check: Check, ctx: Context):
        super().__init__(name=f"m3d-check-{check.name}", daemon=True)
        self.check, self.ctx = check, ctx
        self.findings: list[Finding] | None = None
        self.exc: BaseException | None = None
        self.cached = False
        self.started_at = time.perf_counter()

    def run(self) -> None:
        try:
            key = _result_key(self.check, self.ctx)
            hit = self.ctx.cache.get(key) if key else None
            if hit is not None:
                self.findings = [Finding.from_dict(f) for f in hit]
                self.cached = True
                return
            self.findings = _run_one(self.check, self.ctx)
            if key and not any(f.severity in (Severity.ERROR, Severity.SKIP) for f in self.findings):
                self.ctx.cache.put(key, [f.to_dict() for f in self.findings])
        except BaseException as exc:
            self.exc = exc


def run_checks(checks: list[Check], ctx: Context) -> Report:
    t0 = time.perf_counter()
    jobs = [_Job(c, ctx) for c in checks]
    for job in jobs:
        job.started_at = time.perf_counter()
        job.start()
    results = []
    for job in jobs:
        check = job.check
        job.join(max(check.timeout_s - (time.perf_counter() - job.started_at), 0.01))
        if job.is_alive():
            findings = _error(check, "timeout", f"did not finish within {check.timeout_s:.0f}s",
                              "the check was abandoned; the others still ran")
        elif job.exc is not None:
            exc = job.exc
            if isinstance(exc, UsageError):
                raise exc  # bad input reaches the user as one line and exit 2, whichever check met it
            if isinstance(exc, (ProbeError, DoctorError)):
                findings = _error(check, "could-not-run", "could not run", str(exc))
            else:  # a check's own bug: report it, keep the others
                findings = _error(check, "crashed", "crashed", f"{type(exc).__name__}: {exc}")
        else:
            findings = job.findings or []
        results.append(CheckResult(
            name=check.name,
            description=getattr(check, "description", ""),
            findings=findings,
            duration_s=time.perf_counter() - job.started_at,
            cached=job.cached,
        ))
    return Report(results, ctx.target.fingerprint(), time.perf_counter() - t0)
