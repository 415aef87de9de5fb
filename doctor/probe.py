"""The one way the doctor runs code in the target interpreter: a probe script in a subprocess.

Probes live in `m3d_doctor/probes/`, are plain Python compatible with 3.8, import nothing from the doctor,
and print one JSON document on their last stdout line after a marker. The doctor's own process never
imports the stack it diagnoses.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from typing import Any, Optional, Sequence

from .errors import ProbeError

MARKER = "@@M3D-PROBE@@"
DEFAULT_TIMEOUT_S = 60.0


@dataclass
class ProbeOutput:
    data: Any
    stderr: str
    returncode: int
    partial: bool = False  # the process died before printing its final document


def _run_streaming(cmd: list[str], stdin: Optional[str], timeout: float, cwd: str,
                   env: dict[str, str]) -> subprocess.CompletedProcess:
    """Like subprocess.run, but the child's stderr (progress bars) reaches the user as it comes — through
    redaction, split on line and carriage-return boundaries so a token is never cut in two."""
    import sys
    import threading

    from .secrets import redact

    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                            env=env)

    def relay() -> None:
        assert proc.stderr is not None
        pending = b""
        while True:
            chunk = os.read(proc.stderr.fileno(), 65536)
            if not chunk:
                break
            pending += chunk
            cut = max(pending.rfind(b"\n"), pending.rfind(b"\r"))
            if cut >= 0 or len(pending) > 65536:
                cut = cut if cut >= 0 else len(pending) - 1
                sys.stderr.write(redact(pending[: cut + 1].decode("utf-8", "replace")))
                sys.stderr.flush()
                pending = pending[cut + 1:]
        if pending:
            sys.stderr.write(redact(pending.decode("utf-8", "replace")))

    t = threading.Thread(target=relay, daemon=True)
    t.start()
    try:
        assert proc.stdin is not None and proc.stdout is not None
        if stdin:
            proc.stdin.write(stdin.encode())
        proc.stdin.close()
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            data = proc.stdout.read()
            rc = proc.wait()
        finally:
            timer.cancel()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    t.join(timeout=5)
    return subprocess.CompletedProcess(cmd, rc, data.decode("utf-8", "replace"), "")


def probe_source(name: str) -> str:
    return resources.files("m3d_doctor.probes").joinpath(f"{name}.py").read_text(encoding="utf-8")


def run_probe(
    python: str,
    name: str,
    args: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT_S,
    env: Optional[dict[str, str]] = None,
    stdin: Optional[str] = None,
    allow_partial: bool = False,
    stream_stderr: bool = False,
) -> ProbeOutput:
    """Run probe `name` under `python`; return its JSON answer.

    The probe runs from an empty working directory so that a file in the caller's cwd cannot shadow a
    module. Lines before the marker are progress records (JSON lines) and are returned in `data` as a
    list under "progress" when the process dies early, so a segfaulting import is still attributable.
    """
    source = probe_source(name)
    run_env = dict(os.environ if env is None else env)
    run_env.setdefault("PYTHONIOENCODING", "utf-8")
    run_env["PYTHONDONTWRITEBYTECODE"] = "1"
    with tempfile.TemporaryDirectory(prefix="m3d-probe-") as cwd:
        try:
            if stream_stderr:
                proc = _run_streaming([python, "-c", source, *args], stdin, timeout, cwd, run_env)
            else:
                proc = subprocess.run(
                    [python, "-c", source, *args],
                    input=stdin,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    cwd=cwd,
                    env=run_env,
                    errors="replace",
                )
        except subprocess.TimeoutExpired as exc:
            raise ProbeError(f"probe '{name}' timed out after {timeout:.0f}s under {python}") from exc
        except OSError as exc:
            raise ProbeError(f"cannot run the target interpreter {python}: {exc.strerror or exc}") from exc
    out = proc.stdout
    if MARKER in out:
        payload = out.rsplit(MARKER, 1)[1].strip()
        try:
            return ProbeOutput(json.loads(payload), proc.stderr, proc.returncode)
        except ValueError as exc:
            raise ProbeError(f"probe '{name}' answered something that is not JSON") from exc
    progress = []
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                progress.append(json.loads(line))
            except ValueError:
                continue
    if allow_partial and (progress or proc.returncode != 0):
        return ProbeOutput({"progress": progress}, proc.stderr, proc.returncode, partial=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [""]
        raise ProbeError(f"probe '{name}' failed (exit {proc.returncode}) under {python}: {tail[0][:300]}")
    raise ProbeError(f"probe '{name}' printed no answer (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
