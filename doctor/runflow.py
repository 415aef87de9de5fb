"""`m3d-doctor run`: preflight, then the stages (pano natively, video and scene through upstream), each with
a progress display, its own log and a manifest; resumable.

A stage runs in `<out>/.partial-<stage>/` (links to what `<out>` already holds, so upstream scripts that read
and write their `--inout_dir` see the whole case); only when it exits 0 and its outputs exist are its new
entries moved into `<out>` and `run.json` marks it done. A stage is finished only when both hold, so an
interrupted stage leaves nothing that looks finished, and a re-run skips exactly the finished stages.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from . import __version__, upstream
from .errors import EXIT_COULD_NOT_RUN, EXIT_FAIL, EXIT_OK, DoctorError
from .findings import Finding, Severity
from .secrets import redact

STAGES = ("pano", "video", "scene")
# what each stage must leave in the case folder before it counts as done; the video stage's list is everything
# upstream's video script writes that the 3D stage reads (condition/*, generated/generated.mp4)
OUTPUTS = {"pano": ("pano_img.jpg", "prompt.txt"),
           "video": ("pano_video.mp4", "pano_video_cam.json", "generated/generated.mp4", "condition/rendered_rgb.mp4",
                     "condition/rendered_mask.mp4", "condition/firstframe_rgb.png", "condition/firstframe_depth.exr",
                     "condition/firstframe_mask.png", "condition/cameras.npz"),
           "scene": ("generated_3dgs_opt.ply",), "scene-lrm": ("lrm",)}


class StageFailed(DoctorError):
    exit_code = EXIT_FAIL


def preflight(ctx: Any, stages: list[str]) -> list[Finding]:
    """The gate for the requested stages: the gate's checks (network ones skipped), quick disk measuring, and
    the vram check planning exactly these stages; the failing findings that concern them."""
    from .check import discover_checks
    from .engine import run_checks
    from .gate import GATE_CHECKS

    available = discover_checks()
    checks = [available[n] for n in GATE_CHECKS if n in available
              and not getattr(available[n], "needs_network", False)]
    ctx.options.extra["quick"] = True
    ctx.options.extra["stages"] = [s for s in stages if s in ctx.profile.stages] or None
    report = run_checks(checks, ctx)
    bad = (Severity.FAIL, Severity.ERROR)
    return [f for r in report.results for f in r.findings if f.severity in bad and _concerns(f, stages)]


def _concerns(f: Finding, stages: list[str]) -> bool:
    stage = (f.evidence or {}).get("stage")
    return stage is None or stage in stages


def runtime_env(base: Optional[dict[str, str]] = None) -> dict[str, str]:
    """Environment for `<target python> -m m3d_doctor.runtime.X`: the doctor's package importable as
    `m3d_doctor` (its source folder may be named otherwise: a link under the cache makes the name)."""
    from .cache import default_cache_dir

    pkg = Path(__file__).resolve().parent
    if pkg.name == "m3d_doctor":
        entry = pkg.parent
    else:
        entry = default_cache_dir() / "pythonpath"
        entry.mkdir(parents=True, exist_ok=True)
        link = entry / "m3d_doctor"
        if not (link.is_symlink() and Path(os.readlink(link)) == pkg):
            tmp = entry / f".m3d_doctor.{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(pkg)
            os.replace(tmp, link)
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(entry), env.get("PYTHONPATH")]))
    return env


@dataclass
class StageSpec:
    name: str
    command: list[str]
    cwd: Path
    outputs: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)  # additions
    plan: Optional[dict[str, Any]] = None
    json_progress: bool = False
    total: Optional[int] = None
    retry_480: Optional[StageSpec] = None


class Manifest:
    """`<out>/run.json`, rewritten atomically after every change."""

    def __init__(self, out: Path):
        self.path = out / "run.json"
        self.data: dict[str, Any] = {"doctor": __version__, "stages": {}}
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                pass
            self.data.setdefault("stages", {})

    def save(self) -> None:
        tmp = self.path.with_name(".run.json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"].setdefault(name, {})


def finished(out: Path, manifest: Manifest, spec: StageSpec) -> bool:
    rec = manifest.data["stages"].get(spec.name, {})
    return rec.get("status") == "done" and all((out / o).exists() for o in spec.outputs)


def _stage_dir(out: Path, name: str) -> Path:
    """A fresh staging folder holding links to what `<out>` has (a leftover from an interrupted run goes)."""
    work = out / f".partial-{name}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for entry in out.iterdir():
        if not entry.name.startswith(".") and entry.name != "run.json" and not entry.name.endswith(".log"):
            (work / entry.name).symlink_to(entry.resolve())
    return work


def _promote(work: Path, out: Path) -> None:
    """Move the stage's new entries (not the links) into `<out>`, then drop the staging folder."""
    for entry in work.iterdir():
        if entry.is_symlink():
            continue
        dest = out / entry.name
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        os.replace(entry, dest)
    shutil.rmtree(work, ignore_errors=True)


def _substitute(cmd: list[str], work: Path, out: Path) -> list[str]:
    return [c.replace(str(out / ".STAGE"), str(work)) for c in cmd]


def run_stage(spec: StageSpec, out: Path, manifest: Manifest, progress: Any = None) -> dict[str, Any]:
    """Run one stage in its staging folder; raises StageFailed (with an OOM diagnosis when that is why)."""
    work = _stage_dir(out, spec.name)
    cmd = _substitute(spec.command, work, out)
    log_path = out / f"{spec.name}.log"
    rec = manifest.stage(spec.name)
    rec.clear()
    rec.update(status="running", command=shlex.join(cmd), cwd=str(spec.cwd), log=log_path.name,
               plan=spec.plan, started=time.time())
    manifest.save()
    env = runtime_env()
    env.update(spec.env)
    task = progress.add_task(spec.name, total=spec.total) if progress is not None else None
    t0 = time.perf_counter()
    result: dict[str, Any] = {}
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"$ (cd {shlex.quote(str(spec.cwd))} && {shlex.join(cmd)})\n")
        log.flush()
        try:
            # stderr joins stdout so every line passes through redact() on its way into the log
            proc = subprocess.Popen(cmd, cwd=spec.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, errors="replace")
        except OSError as exc:
            raise DoctorError(f"stage {spec.name}: cannot start {cmd[0]}: {exc.strerror}") from None
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                event = _event(line) if spec.json_progress else None
                if event is None:
                    log.write(redact(line))
                    log.flush()
                    continue
                if event.get("event") == "progress" and task is not None:
                    progress.update(task, completed=event.get("step"), total=event.get("total"))
                elif event.get("event") == "done":
                    result = event
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    if rc == 0 and all((work / o).exists() for o in spec.outputs):
        _promote(work, out)
        rec.update(status="done", outputs=list(spec.outputs), finished=time.time(), peak_bytes=result.get("peak_bytes"),
                   result={k: v for k, v in result.items() if k != "event"} or None)
        manifest.save()
        if task is not None:
            progress.update(task, completed=spec.total or 1, total=spec.total or 1)
        return rec
    text = log_path.read_text(encoding="utf-8", errors="replace")
    oom = upstream.is_oom(text)
    rec.update(status="failed", rc=rc, oom=oom)
    manifest.save()
    shutil.rmtree(work, ignore_errors=True)
    if rc == 0:
        missing = [o for o in spec.outputs if not (work / o).exists()]
        raise StageFailed(f"stage {spec.name} exited 0 but did not write {', '.join(missing)} (see {log_path})")
    if oom:
        raise StageFailed(f"stage {spec.name} ran out of GPU memory (see {log_path}); " + _oom_advice(spec))
    raise StageFailed(f"stage {spec.name} failed with exit code {rc} (see {log_path})")


def _oom_advice(spec: StageSpec) -> str:
    if spec.name == "video" and spec.retry_480 is not None:
        return "480p needs about half the activation memory of 720p: rerun with --resolution 480 or --auto-downshift"
    if spec.name == "pano":
        return "rerun with a smaller --budget so the planner streams more blocks (see --dry-run for the plan)"
    return "free GPU memory (nvidia-smi) or use a larger GPU"


def _event(line: str) -> Optional[dict[str, Any]]:
    if not line.startswith("{"):
        return None
    try:
        ev = json.loads(line)
    except ValueError:
        return None
    return ev if isinstance(ev, dict) and "event" in ev else None


def execute(specs: list[StageSpec], out: Path, meta: dict[str, Any], auto_downshift: bool = False,
            show_progress: bool = True) -> int:
    """Run the specs in order, skipping finished ones; returns the exit code (StageFailed propagates)."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out)
    manifest.data.update(meta)
    manifest.save()
    progress = None
    if show_progress:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=Console(stderr=True))
        progress.start()
    try:
        for spec in specs:
            if finished(out, manifest, spec):
                print(f"{spec.name}: already done, skipped", file=sys.stderr)
                continue
            try:
                run_stage(spec, out, manifest, progress)
            except StageFailed:
                retry = spec.retry_480
                if not (auto_downshift and retry is not None and manifest.stage(spec.name).get("oom")):
                    raise
                print(f"{spec.name}: out of memory at 720p, retrying at 480p (--auto-downshift)", file=sys.stderr)
                run_stage(retry, out, manifest, progress)
                manifest.stage(spec.name)["downshifted_to"] = 480
                manifest.save()
            print(f"{spec.name}: done", file=sys.stderr)
    finally:
        if progress is not None:
            progress.stop()
    manifest.data["finished"] = time.time()
    manifest.save()
    return EXIT_OK


__all__ = ["EXIT_COULD_NOT_RUN", "STAGES", "StageSpec", "execute", "preflight", "runtime_env", "upstream"]
