"""`m3d-doctor report`: the operator's view — disk per mount, GPU/RAM/shm, and the stage-fit table.

The model (`build_report`) is computed once from the disk and vram checks' findings; the three renderers
(table, JSON, Prometheus text exposition for the node-exporter textfile collector) only format it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Callable, TextIO

from . import __version__
from .engine import Report
from .errors import UsageError

SCHEMA = "m3d-doctor/report/v1"


def add_parsers(subparsers: Any, target_options_fn: Callable[[argparse.ArgumentParser], None]) -> None:
    r = subparsers.add_parser("report", help="disk, GPU, RAM and stage fit for operators (table/json/prometheus)")
    target_options_fn(r)
    r.add_argument("--format", choices=["table", "json", "prometheus"], default="table")
    r.add_argument("--output", default=None, metavar="FILE",
                   help="write atomically to FILE (e.g. the node-exporter textfile directory) instead of stdout")
    r.add_argument("--checkpoint", action="append", default=[], metavar="REPO=PATH", help="local model folders")


def _evidence(report: Report, fid: str) -> list[dict[str, Any]]:
    return [f.evidence for r in report.results for f in r.findings if f.id == fid]


def build_report(report: Report, host: str) -> dict[str, Any]:
    mounts = next(iter(_evidence(report, "disk.free-space")), {}).get("mounts", [])
    downloads = next(iter(_evidence(report, "disk.downloads") + _evidence(report, "disk.insufficient-for-downloads")),
                     {})
    gpus = [{k: g.get(k) for k in ("cuda_index", "index", "name", "uuid", "capability", "memory_total",
                                   "memory_used", "memory_free", "mig")} for g in _evidence(report, "vram.gpu")]
    ram = next(iter(_evidence(report, "vram.host-ram") + _evidence(report, "vram.host-ram-low")), {})
    stages = []
    for fid in ("vram.stage-fits", "vram.stage-needs-plan", "vram.stage-does-not-fit"):
        for ev in _evidence(report, fid):
            plan = ev["plan"]
            stages.append({"stage": ev["stage"], "resolution": f"{ev['resolution'][0]}x{ev['resolution'][1]}",
                           "plan": plan["mode"], "fits": plan["fits"], "budget": ev["budget"],
                           "predicted_peak": plan["predicted_peak_bytes"], "streamed_blocks": plan["streamed_blocks"],
                           "predicted_slowdown": plan["predicted_slowdown"], "gpu": ev.get("gpu")})
    counts: dict[str, int] = {}
    for r in report.results:
        for f in r.findings:
            counts[f.severity.value] = counts.get(f.severity.value, 0) + 1
    shm = next(iter(_evidence(report, "vram.shm-small")), {}).get("shm_bytes")
    if shm is None:
        try:
            import psutil

            shm = psutil.disk_usage("/dev/shm").total
        except OSError:
            shm = None
    return {
        "schema": SCHEMA, "doctor_version": __version__, "host": host, "timestamp": int(time.time()),
        "mounts": mounts, "downloads": {k: downloads.get(k) for k in ("needed", "free", "mount") if downloads},
        "gpus": gpus, "nvml": next(iter(_evidence(report, "vram.no-gpu")), {}).get("nvml"),
        "host_memory": {"total": ram.get("total"), "available": ram.get("available"),
                        "cgroup_limit": ram.get("cgroup_limit")}, "shm_bytes": shm,
        "stages": stages, "findings": counts,
    }


def _esc(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def to_prometheus(doc: dict[str, Any]) -> str:
    """Prometheus text exposition format 0.0.4; one sample per line, HELP/TYPE once per family."""
    fams: dict[str, tuple[str, list[str]]] = {}

    def add(metric: str, help_: str, value: Any, **labels: Any) -> None:
        if value is None:
            return
        lab = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
        num = str(int(value)) if float(value).is_integer() else repr(float(value))  # bytes stay exact
        fams.setdefault(metric, (help_, []))[1].append(f"{metric}{{{lab}}} {num}" if lab else f"{metric} {num}")

    host = doc["host"]
    for m in doc["mounts"]:
        roles = ",".join(sorted({h["role"] for h in m.get("holds", [])}))
        add("m3d_disk_free_bytes", "Free bytes on a mount that matters to the pod", m["free"], host=host,
            mount=m["mount"], roles=roles)
        add("m3d_disk_total_bytes", "Size of the mount in bytes", m["total"], host=host, mount=m["mount"], roles=roles)
    if doc["downloads"]:
        add("m3d_models_download_remaining_bytes", "Bytes of the profile's model files not on disk yet",
            doc["downloads"].get("needed"), host=host)
    for g in doc["gpus"]:
        lab = {"host": host, "gpu": g["cuda_index"], "name": g["name"], "uuid": g.get("uuid") or ""}
        add("m3d_gpu_memory_total_bytes", "GPU memory (NVML)", g["memory_total"], **lab)
        add("m3d_gpu_memory_used_bytes", "GPU memory in use (NVML)", g["memory_used"], **lab)
        add("m3d_gpu_memory_free_bytes", "GPU memory free (NVML)", g["memory_free"], **lab)
    add("m3d_host_memory_total_bytes", "Host RAM", doc["host_memory"]["total"], host=host)
    add("m3d_host_memory_available_bytes", "Host RAM available for offloading", doc["host_memory"]["available"],
        host=host)
    add("m3d_host_memory_cgroup_limit_bytes", "cgroup memory limit", doc["host_memory"]["cgroup_limit"], host=host)
    add("m3d_shm_bytes", "Size of /dev/shm", doc["shm_bytes"], host=host)
    for s in doc["stages"]:
        lab = {"host": host, "stage": s["stage"], "resolution": s["resolution"], "plan": s["plan"]}
        add("m3d_stage_fits", "1 if the stage fits the GPU budget with this plan", 1 if s["fits"] else 0, **lab)
        add("m3d_stage_predicted_peak_bytes", "Planner's predicted peak GPU memory", s["predicted_peak"], **lab)
        add("m3d_stage_budget_bytes", "GPU memory budget the stage was planned for", s["budget"], **lab)
    for sev, n in sorted(doc["findings"].items()):
        add("m3d_findings", "Findings of the disk and vram checks by severity", n, host=host, severity=sev)
    add("m3d_report_timestamp_seconds", "When this report was made", doc["timestamp"], host=host)
    lines = []
    for name, (help_, samples) in fams.items():
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", *samples]
    return "\n".join(lines) + "\n"


def to_table(doc: dict[str, Any], stream: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console(file=stream, highlight=False, soft_wrap=True)
    t = Table(title="Disk", title_justify="left")
    for col in ("mount", "free GiB", "total GiB", "holds"):
        t.add_column(col)
    for m in doc["mounts"]:
        t.add_row(m["mount"], f"{m['free'] / 2**30:.1f}", f"{m['total'] / 2**30:.1f}",
                  ", ".join(sorted({h["role"] for h in m.get("holds", [])})))
    c.print(t)
    g = Table(title="GPUs" if doc["gpus"] else f"GPUs: none ({doc.get('nvml') or 'no NVML'})", title_justify="left")
    for col in ("cuda", "name", "free GiB", "total GiB", "MIG"):
        g.add_column(col)
    for x in doc["gpus"]:
        g.add_row(str(x["cuda_index"]), x["name"], f"{x['memory_free'] / 2**30:.1f}",
                  f"{x['memory_total'] / 2**30:.1f}", str(bool(x.get("mig"))))
    c.print(g)
    hm = doc["host_memory"]
    if hm.get("total"):
        c.print(f"Host RAM {hm['available'] / 2**30:.1f} of {hm['total'] / 2**30:.1f} GiB available"
                + (f", /dev/shm {doc['shm_bytes'] / 2**30:.1f} GiB" if doc.get("shm_bytes") else ""))
    s = Table(title="Stages", title_justify="left")
    for col in ("stage", "resolution", "plan", "fits", "peak GiB", "budget GiB", "streamed blocks"):
        s.add_column(col)
    for x in doc["stages"]:
        s.add_row(x["stage"], x["resolution"], x["plan"], "yes" if x["fits"] else "NO",
                  f"{x['predicted_peak'] / 2**30:.1f}", f"{x['budget'] / 2**30:.1f}", str(x["streamed_blocks"]))
    c.print(s)


def write_atomically(path: str, text: str) -> None:
    """The textfile collector must never read a half-written file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".m3d-report-", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def cmd_report(args: argparse.Namespace) -> int:
    import io
    import socket

    from .check import discover_checks
    from .cli import build_context
    from .engine import run_checks

    available = discover_checks()
    checks = [available[n] for n in ("disk", "vram") if n in available]
    ctx = build_context(args, checks)
    report = run_checks(checks, ctx)
    doc = build_report(report, socket.gethostname())
    if args.format == "json":
        text = json.dumps(doc, indent=2) + "\n"
    elif args.format == "prometheus":
        text = to_prometheus(doc)
    else:
        buf = io.StringIO()
        to_table(doc, buf)
        text = buf.getvalue()
    from .secrets import redact

    text = redact(text)
    if args.output:
        try:
            write_atomically(args.output, text)
        except OSError as exc:
            raise UsageError(f"--output {args.output}: cannot write: {exc.strerror or exc}") from None
    else:
        sys.stdout.write(text)
    return 0

