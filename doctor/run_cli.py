"""`m3d-doctor run` and `m3d-doctor selftest`: parsers and command functions (registered by doctor/cli.py)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from . import runflow, upstream
from .errors import EXIT_COULD_NOT_RUN, EXIT_FAIL, EXIT_OK, DoctorError, UsageError
from .runflow import STAGES, StageSpec

if TYPE_CHECKING:
    from .stages import StagePlan


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
    r.add_argument("--video-steps", type=int, default=50, help="video denoising steps (upstream: 50)")
    r.add_argument("--angle", type=float, default=0.0, help="video: azimuth of the camera movement (upstream's)")
    r.add_argument("--movement-range", type=float, default=0.6, help="video: relative movement range, 0-0.8")
    r.add_argument("--movement-mode", default="straight", choices=["straight", "s_curve", "l_curve", "r_curve"],
                   help="video: shape of the camera rail")
    r.add_argument("--camera-json", default=None, metavar="FILE", help="video: a predefined camera rail (JSON)")
    r.add_argument("--video-frames", type=int, default=81, help=argparse.SUPPRESS)  # selftests on tiny models
    r.add_argument("--video-size", default=None, help=argparse.SUPPRESS)  # WxH, selftests on tiny models
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
    """`--resolution` (shared with check/gate, see doctor/stages.py) for a run: only the named video/scene
    resolution, 480 or 720 (default 720, upstream's); the panorama size is --height/--width."""
    from .stages import RUN_VIDEO_DEFAULT, VIDEO_RESOLUTIONS

    text = RUN_VIDEO_DEFAULT if value in (None, "") else str(value).strip()
    if text not in VIDEO_RESOLUTIONS:
        raise UsageError(f"--resolution {value}: a run takes 480 or 720 (the video resolution); "
                         "set the panorama size with --height/--width")
    return int(text)


def _stage_plan(ctx: Any, name: str, **kw: Any) -> StagePlan:
    """`stages.stage_plan` with the local weights located as the vram check locates them, so a run plans with
    the numbers `check vram` reports; `kw` as stage_plan's (resolution, hw, budget, gpu, lora_bytes)."""
    from m3d_doctor.checks.checkpoints import locate

    from .stages import stage_plan

    return stage_plan(ctx, name, locate=locate, **kw)


def _pano_plan(args: argparse.Namespace, ctx: Any) -> dict[str, Any]:
    """The panorama plan handed to the runtime: the vram check's plan (`stage_plan`) at --height x --width, in
    strict JSON, with `budget_bytes`; on the CPU everything stays in host memory."""
    if args.device == "cpu":
        return {"mode": "resident", "fits": True, "streamed_indices": [], "vae_tile": None,
                "notes": ["cpu: everything in host memory"]}
    sp = _stage_plan(ctx, "pano", hw=(args.height, args.width))
    return {**sp.plan_dict(), "budget_bytes": sp.budget, "device": _cuda_device(args, sp)}


def _lora(ctx: Any) -> Optional[Path]:
    """The panorama LoRA on disk, or None (the file `stage_plan` sizes the plan with)."""
    from m3d_doctor.checks.checkpoints import locate

    from .stages import stage_lora

    return stage_lora(ctx, "pano", locate)


class MissingInputs(DoctorError):
    """A stage's input files are not there: nothing can run; exit 1 (a failure was found), one line."""

    exit_code = EXIT_FAIL


def _located(ctx: Any, repo: str, path: str, resolution: Optional[str] = None) -> Optional[Path]:
    """Where the checkpoints check finds this profile file (override, HF cache, checkout), or None."""
    from m3d_doctor.checks.checkpoints import locate

    for model in ctx.profile.models:
        if model.repo == repo and (model.resolution in (None, resolution)):
            for f in model.files:
                if f.path == path:
                    return locate(ctx, model, f)[0]
    return None


def video_inputs(ctx: Any, root: Path, res: int) -> upstream.VideoInputs:
    """The files the native video stage reads, each found where the checkpoints check finds it (override, HF
    cache, checkout: so `check` and `run` agree), else upstream's checkout layout. The tokenizer folder is read
    beside the T5 file, as upstream's `fetch_models` reads it."""
    name = str(res)
    repo = f"Wan-AI/Wan2.1-I2V-14B-{res}P"
    base = upstream.VideoInputs.in_checkout(root, res)

    def find(default: Path, found_repo: str, path: str, resolution: Optional[str] = name) -> Path:
        return _located(ctx, found_repo, path, resolution) or default

    shards = tuple(find(d, repo, d.name) for d in base.shards)
    t5 = find(base.t5, repo, upstream.VIDEO_T5)
    lora = find(base.lora, "Skywork/Matrix-3D", f"checkpoints/{Path(upstream.VIDEO_LORA[res]).name}")
    return upstream.VideoInputs(base.root, res, shards, t5, find(base.clip, repo, upstream.VIDEO_CLIP),
                                find(base.vae, repo, upstream.VIDEO_VAE), t5.parent / upstream.VIDEO_TOKENIZER,
                                lora, find(base.moge, "Ruicheng/moge-vitl", "model.pt", None))


def _cuda_device(args: argparse.Namespace, sp: Optional[StagePlan]) -> str:
    """The device a stage runs on: the GPU its plan was made for (the best visible one), by CUDA index."""
    if args.device == "cpu" or sp is None:
        return args.device
    return f"cuda:{int(sp.gpu.get('cuda_index', 0) or 0)}"


def _video_spec(args: argparse.Namespace, ctx: Any, root: Path, stage_dir: Path, res: int) -> StageSpec:
    """The native video stage (m3d_doctor.runtime.video) at `res`, placed by the plan `check vram` reports for
    it (`stage_plan`, one source of truth); on the CPU everything stays in host memory."""
    version = upstream.video_version(root)
    if args.device == "cpu" and upstream.render_needs_cuda(root):
        raise UsageError("--device cpu: the video stage's camera-rail render (code/utils_3dscene/nvrender.py) uses "
                         "nvdiffrast's CUDA rasterizer; run it on a GPU")
    inputs = video_inputs(ctx, root, res)
    sp = None
    if args.device == "cpu":
        plan = {"mode": "resident", "fits": True, "streamed_indices": [], "notes": ["cpu: host memory"]}
    else:
        sp = _stage_plan(ctx, "video", resolution=str(res))
        plan = {**sp.plan_dict(), "budget_bytes": sp.budget}
    plan.update(resolution=res, upstream=version, native=True)
    if version == "later":
        plan["notes"] = [*plan.get("notes", []), "later upstream: the Wan2.1-14B path (--use_5b_model's Wan2.2 "
                         "5B path is not native yet)"]
    missing = inputs.problems()
    if missing:
        plan["missing"] = missing
    cmd = [ctx.target.python, "-m", "m3d_doctor.runtime.video", "run", "--inputs-json",
           json.dumps(inputs.to_dict()), "--plan-json", json.dumps(plan), "--out", str(stage_dir),
           "--seed", str(args.seed), "--steps", str(args.video_steps), "--device", _cuda_device(args, sp),
           "--angle", str(args.angle), "--movement-range", str(args.movement_range),
           "--movement-mode", args.movement_mode,
           "--json-path", str(Path(args.camera_json).expanduser().resolve()) if args.camera_json else "",
           "--frames", str(args.video_frames)]
    if args.video_size:
        cmd += ["--size", args.video_size]
    return StageSpec("video", cmd, Path(args.out).resolve(), runflow.OUTPUTS["video"],
                     env={"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}, plan=plan,
                     json_progress=True, total=args.video_steps)


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
        plan = _pano_plan(args, ctx)
        cmd = [python, "-m", "m3d_doctor.runtime.pano", "--source-json", json.dumps(source.to_dict()),
               "--plan-json", json.dumps(plan), "--prompt", args.prompt, "--out", str(stage_dir),
               "--seed", str(args.seed), "--steps", str(args.steps), "--height", str(args.height),
               "--width", str(args.width), "--device", plan.get("device", args.device)]
        if lora is not None:
            cmd += ["--lora", str(lora)]
        if args.no_wrap:
            cmd.append("--no-wrap")
        spec = StageSpec("pano", cmd, out, runflow.OUTPUTS["pano"], plan={**plan, "source": source.describe(),
                                                                            "lora": str(lora) if lora else None},
                         json_progress=True, total=args.steps)
        specs.append(spec)
    if "video" in stages:
        spec = _video_spec(args, ctx, root, stage_dir, args.resolution)
        if args.resolution == 720:
            retry = _video_spec(args, ctx, root, stage_dir, 480)
            spec.retry_480 = retry if not retry.plan.get("missing") else None
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
    if args.video_steps <= 0 or args.video_frames % 4 != 1:
        raise UsageError("--video-steps must be positive and --video-frames 4k+1 (upstream: 50 steps, 81 frames)")
    if not 0.0 <= args.movement_range <= 0.8:
        raise UsageError(f"--movement-range {args.movement_range}: upstream takes 0 to 0.8")
    if args.camera_json and not Path(args.camera_json).is_file():
        raise UsageError(f"--camera-json {args.camera_json}: no such file")
    _writable_out(Path(args.out))
    args.dtype = None
    ctx = build_context(args, list(discover_checks().values()))
    # the preflight's vram check plans what this run runs: video/scene at the name, the panorama at its size
    ctx.options.extra["resolution"] = str(args.resolution)
    ctx.options.extra["stage_sizes"] = {"pano": (args.height, args.width)}
    specs = build_specs(args, ctx, stages)
    if args.dry_run:
        return _print_dry_run(specs, args.json)
    out = Path(args.out).resolve()
    if "pano" not in stages and "video" in stages:
        lack = [n for n in runflow.OUTPUTS["pano"] if not (out / n).is_file()]
        if lack:
            raise MissingInputs(f"--out {out}: no {' or '.join(lack)} for the video stage (run the pano stage: "
                                "--stages pano,video, or put the panorama and its prompt there)")
    manifest = runflow.Manifest(out) if out.is_dir() else None  # a finished stage needs no inputs any more
    for spec in specs:
        missing = (spec.plan or {}).get("missing")
        if missing and not (manifest is not None and runflow.finished(out, manifest, spec)):
            more = f" (and {len(missing) - 1} more: --dry-run lists them)" if len(missing) > 1 else ""
            raise MissingInputs(f"stage {spec.name} cannot start: {missing[0]}{more}")
    if not args.force:
        if args.device == "cpu":  # nothing is placed on a GPU: its plans are not this run's
            ctx.options.extra["plan_stages"] = False
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
            "python": ctx.target.python, "versions": _versions(ctx), "started": time.time()}
    return runflow.execute(specs, Path(args.out).resolve(), meta, auto_downshift=args.auto_downshift)


def _writable_out(out: Path) -> None:
    """`--out` must be a folder this user can write (or one that can be made): checked before any work, so a
    typo or a read-only volume is one line and exit 2, not a traceback minutes later."""
    import os

    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UsageError(f"--out {out}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: {probe} is not writable by this user")


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
