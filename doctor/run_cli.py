"""`m3d-doctor run` and `m3d-doctor selftest`: parsers and command functions (registered by doctor/cli.py)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from . import runflow, upstream
from .errors import EXIT_COULD_NOT_RUN, EXIT_FAIL, EXIT_OK, UsageError
from .runflow import STAGES, StageSpec
from .units import parse_size


def add_parsers(sub: Any, target_options: Callable[[argparse.ArgumentParser], None]) -> None:
    r = sub.add_parser("run", help="run Matrix-3D: panorama -> video -> 3D scene, resumable")
    src = r.add_mutually_exclusive_group()
    src.add_argument("--prompt", default=None, help="text -> panorama (native stage)")
    src.add_argument("--image", default=None, help="image -> panorama (delegated to upstream's i2p mode)")
    r.add_argument("--out", required=True, metavar="DIR", help="case folder (upstream's --inout_dir)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--stages", default="pano,video,scene", help="comma list of pano,video,scene")
    r.add_argument("--scene-mode", choices=["opt", "lrm"], default="opt",
                   help="3D stage: optimization (720/480) or feed-forward LRM (480p)")
    r.add_argument("--dry-run", action="store_true", help="print the plan and the exact commands; run nothing")
    r.add_argument("--force", action="store_true", help="run even when preflight finds failures")
    r.add_argument("--auto-downshift", action="store_true", help="retry the video at 480p when 720p runs out of memory")
    r.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    r.add_argument("--steps", type=int, default=50, help="panorama denoising steps")
    r.add_argument("--height", type=int, default=512, help="panorama height")
    r.add_argument("--width", type=int, default=1024, help="panorama width")
    r.add_argument("--pano-base", default=None,
                   help="diffusers folder or repo with FLUX's other components (single-file transformer only)")
    r.add_argument("--no-wrap", action="store_true", help="no seamless 360° wrap in the panorama")
    r.add_argument("--checkpoint", action="append", default=[], metavar="REPO=PATH",
                   help="where a model lives locally (repeatable)")
    r.add_argument("--json", action="store_true", help="--dry-run: print the plan as JSON")
    target_options(r)
    s = sub.add_parser("selftest", help="run the panorama stage's code on a tiny random FLUX pipeline")
    s.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when present")
    s.add_argument("--json", action="store_true")
    target_options(s)


def _stages(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in STAGES]
    if bad or not names:
        raise UsageError(f"--stages {text!r}: choose from {','.join(STAGES)}")
    return [s for s in STAGES if s in names]


def _resolution(value: Optional[str]) -> int:
    """`--resolution` (shared with check/gate) for a run: the video/scene resolution, 480 or 720 (default)."""
    if value in (None, ""):
        return 720
    if str(value) not in ("480", "720"):
        raise UsageError(f"--resolution {value}: a run takes 480 or 720 (the panorama size is --height/--width)")
    return int(value)


def _gpu_count() -> int:
    from .nvml import snapshot

    snap = snapshot()
    return len(snap.get("gpus") or []) if snap.get("available") else 0


def _pano_plan(args: argparse.Namespace, lora: Optional[Path]) -> dict[str, Any]:
    from . import planner, stages

    gpus: list[dict[str, Any]] = []
    if args.device == "cpu":
        return {"mode": "resident", "fits": True, "streamed_indices": [], "vae_tile": None,
                "notes": ["cpu: everything in host memory"]}
    if args.budget:
        budget = parse_size(args.budget, "--budget")  # the same units as every other command
    else:
        from .nvml import snapshot

        gpus = snapshot().get("gpus") or []
        budget = int(gpus[0]["memory_free"]) if gpus else 0
    lora_bytes = lora.stat().st_size if lora and lora.exists() else 0
    device = stages.device_for(gpus[0] if gpus else {}, budget)
    plan = planner.plan_stage(stages.pano_model(lora_bytes), device, args.height, args.width).to_dict()
    plan["budget_bytes"] = budget
    return plan


def _lora(ctx: Any) -> Optional[Path]:
    from m3d_doctor.checks.checkpoints import locate

    for model in ctx.profile.models:
        if model.stage == "pano" and model.layout == "lora":
            for f in model.files:
                path, _where = locate(ctx, model, f)
                if path is not None:
                    return path
    return None


def build_specs(args: argparse.Namespace, ctx: Any, stages: list[str]) -> list[StageSpec]:
    from m3d_doctor.checks.checkpoints import matrix3d_root

    from .pano_sources import FLUX_REPO, resolve_source

    out = Path(args.out).resolve()
    stage_dir = out / ".STAGE"  # replaced by the stage's staging folder at launch
    python = ctx.target.python
    root = matrix3d_root(ctx).resolve()
    specs = []
    if "pano" in stages and args.image:
        image = Path(args.image).expanduser().resolve()
        if not image.is_file():
            raise UsageError(f"--image {args.image}: no such file")
        cmd = upstream.i2p_command(root, python, image, stage_dir, args.seed, args.prompt,
                                   "cpu" if args.device == "cpu" else "cuda:0")
        specs.append(StageSpec("pano", cmd, root, runflow.OUTPUTS["pano"],
                               plan={"mode": "upstream-i2p", "script": upstream.PANO_SCRIPT}))
    elif "pano" in stages:
        if not args.prompt:
            raise UsageError("the pano stage needs --prompt, or --image for upstream's image -> panorama mode")
        source = resolve_source((ctx.options.extra.get("checkpoints") or {}).get(FLUX_REPO), args.pano_base)
        lora = _lora(ctx)
        plan = _pano_plan(args, lora)
        cmd = [python, "-m", "m3d_doctor.runtime.pano", "--source-json", json.dumps(source.to_dict()),
               "--plan-json", json.dumps(plan), "--prompt", args.prompt, "--out", str(stage_dir),
               "--seed", str(args.seed), "--steps", str(args.steps), "--height", str(args.height),
               "--width", str(args.width), "--device", args.device]
        if lora is not None:
            cmd += ["--lora", str(lora)]
        if args.no_wrap:
            cmd.append("--no-wrap")
        spec = StageSpec("pano", cmd, out, runflow.OUTPUTS["pano"], plan={**plan, "source": source.describe(),
                                                                            "lora": str(lora) if lora else None},
                         json_progress=True, total=args.steps)
        specs.append(spec)
    if "video" in stages:
        def video(res: int) -> StageSpec:
            cmd = upstream.video_command(root, stage_dir, res, args.seed, _gpu_count() or 1)
            torchrun = Path(python).parent / "torchrun"
            cmd = ([str(torchrun)] if torchrun.exists() else [python, "-m", "torch.distributed.run"]) + cmd[1:]
            return StageSpec("video", cmd, root, runflow.OUTPUTS["video"],
                             env={"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"},
                             plan={"resolution": res, "nproc_per_node": int(cmd[cmd.index("--nproc_per_node") + 1])})
        spec = video(args.resolution)
        if args.resolution == 720:
            spec.retry_480 = video(480)
        specs.append(spec)
    if "scene" in stages:
        lrm = args.scene_mode == "lrm"
        cmd = upstream.scene_command(root, python, stage_dir, args.resolution, lrm=lrm,
                                     device="cpu" if args.device == "cpu" else None)
        specs.append(StageSpec("scene", cmd, root, runflow.OUTPUTS["scene-lrm" if lrm else "scene"],
                               plan={"resolution": args.resolution, "mode": args.scene_mode}))
    return specs


def cmd_run(args: argparse.Namespace) -> int:
    from .check import discover_checks
    from .cli import build_context

    stages = _stages(args.stages)
    args.resolution = _resolution(args.resolution)
    for flag in ("steps", "height", "width"):
        if getattr(args, flag) <= 0 or (flag != "steps" and getattr(args, flag) % 16):
            raise UsageError(f"--{flag} {getattr(args, flag)}: must be positive" +
                             ("" if flag == "steps" else " and a multiple of 16"))
    args.dtype = None
    ctx = build_context(args, list(discover_checks().values()))
    specs = build_specs(args, ctx, stages)
    if args.dry_run:
        return _print_dry_run(specs, args.json)
    if not args.force:
        bad = runflow.preflight(ctx, stages)
        if bad:
            print(f"m3d-doctor: run refused: {len(bad)} preflight failure(s) (--force to run anyway):",
                  file=sys.stderr)
            for f in bad:
                print(f"  [{f.severity.value}] {f.id}: {f.title}", file=sys.stderr)
            return EXIT_FAIL
    meta = {"seed": args.seed, "inputs": {"prompt": args.prompt, "image": args.image, "stages": stages,
                                          "resolution": args.resolution, "steps": args.steps,
                                          "height": args.height, "width": args.width, "device": args.device},
            "python": ctx.target.python, "versions": _versions(ctx), "started": __import__("time").time()}
    return runflow.execute(specs, Path(args.out).resolve(), meta, auto_downshift=args.auto_downshift)


def _versions(ctx: Any) -> dict[str, Any]:
    try:
        installed = ctx.target.interp.get("distributions") or {}
    except Exception:
        return {}
    return {k: installed.get(k) for k in ("torch", "diffusers", "transformers", "accelerate") if k in installed}


def _print_dry_run(specs: list[StageSpec], as_json: bool) -> int:
    import shlex

    if as_json:
        print(json.dumps({"stages": [{"name": s.name, "cwd": str(s.cwd), "command": s.command, "env": s.env,
                                      "outputs": list(s.outputs), "plan": s.plan} for s in specs]}, indent=1))
        return EXIT_OK
    for s in specs:
        print(f"# {s.name}" + (f"  plan: {json.dumps(s.plan)}" if s.plan else ""))
        env = " ".join(f"{k}={v}" for k, v in s.env.items())
        print(f"(cd {shlex.quote(str(s.cwd))} && {env + ' ' if env else ''}{shlex.join(s.command)})")
    return EXIT_OK


def cmd_selftest(args: argparse.Namespace) -> int:
    from .cli import resolve_python

    python = resolve_python(args.python)
    cmd = [python, "-m", "m3d_doctor.runtime.selftest"] + (["--device", args.device] if args.device else [])
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=runflow.runtime_env(), timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"m3d-doctor: selftest could not run: {exc}", file=sys.stderr)
        return EXIT_COULD_NOT_RUN
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"m3d-doctor: selftest could not run in {python}: {tail}", file=sys.stderr)
        return EXIT_COULD_NOT_RUN
    res = json.loads(lines[-1])
    if args.json:
        print(json.dumps(res, indent=1))
    elif res.get("ok"):
        print(f"selftest passed on {res['device']} ({res['dtype']}, plan {res['plan_mode']} streaming blocks "
              f"{res['streamed_indices']}): {res['total_s']}s, peak {res['peak_bytes'] / 2**20:.0f} MiB, "
              f"seam {res['seam_wrap']} with wrap vs {res['seam_nowrap']} without")
    else:
        print(f"selftest FAILED: {res.get('error') or res}", file=sys.stderr)
    return EXIT_OK if res.get("ok") else EXIT_FAIL
