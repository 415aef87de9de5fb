"""Stage memory models and plans: one resolution contract and one source of truth for a stage's plan.

The resolution contract (`--resolution`, shared by check, gate, report and run)
------------------------------------------------------------------------------
`--resolution` is one of two forms, and each stage takes only the part that concerns it:

- a named video resolution, `480` or `720`: the video stage (and, in `run`, the scene stage) at that
  resolution; the panorama stage keeps its own size;
- `HxW` (positive multiples of 16, e.g. `512x1024`): the panorama size; the video stage keeps its default.

Any other value is a one-line UsageError (exit 2) naming both forms. A stage whose profile table has named
`resolutions` (`[stages.video]`) takes the named form; the others (`[stages.pano]`) take HxW. Defaults are the
profile's `resolution` of each stage. `run` takes only the named form (default 720, upstream's default): its
panorama size is `--height/--width`, handed to the plan as an explicit size (`stage_plan(hw=...)`, or
`options.extra["stage_sizes"]` for the vram check in the run's preflight).

The plan of a stage
-------------------
`stage_plan` is the only place a stage is planned: the `vram` check (hence `check`, `gate`, `report`, the run's
preflight) and `run` itself call it, so they report the same budget, mode, streamed blocks and peak. The stage
model is the profile's `[stages.*]`, refined by local safetensors headers when the weights are on disk (the
planner then works on the real per-block sizes of the files that will load) and by the LoRA's real size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple, Union

from . import knowledge
from .errors import UsageError
from .gpu_budget import Budget, resolve_budget
from .planner import Device, Plan, StageModel, plan_stage
from .safetensors_header import DTYPE_BYTES, HeaderError, read_header

if TYPE_CHECKING:
    from .context import Context

VIDEO_RESOLUTIONS = ("480", "720")  # upstream's --resolution choices
RUN_VIDEO_DEFAULT = "720"  # upstream's default for a run
FORMS = ("expected a video resolution, 480 or 720 (video and scene stages), or a panorama size HxW "
         "(positive multiples of 16, e.g. 512x1024)")

# where a profile file would load from: checks.checkpoints.locate(ctx, model, file) -> (path or None, where)
Locator = Callable[[Any, Any, Any], Tuple[Optional[Path], str]]


def split_resolution(text: Union[str, int, None]) -> tuple[Optional[tuple[int, int]], Optional[str]]:
    """`--resolution` split by the contract: (panorama (H, W) or None, video name or None); at most one is set,
    both None when the flag was not given. Raises UsageError (one line, both forms) for anything else."""
    value = "" if text is None else str(text).strip()
    if not value:
        return None, None
    if value in VIDEO_RESOLUTIONS:
        return None, value
    return _hxw(value, f"--resolution {value!r}: {FORMS}"), None


def _hxw(value: str, message: str) -> tuple[int, int]:
    """'HxW' as (H, W), both positive multiples of 16; UsageError(message) otherwise."""
    try:
        h, w = (int(x) for x in value.lower().split("x"))
    except ValueError:
        raise UsageError(message) from None
    if h <= 0 or w <= 0 or h % 16 or w % 16:
        raise UsageError(message)
    return h, w


def stage_resolution(stage_name: str, stage: dict[str, Any], text: Union[str, int, None]) -> tuple[int, int]:
    """(H, W) of one stage under the contract: a stage with named `resolutions` takes the video name (else its
    default name), any other stage takes HxW (else its default size). The other form leaves the stage at its
    default. Raises UsageError for a malformed value, or a name this stage's profile does not define."""
    pano_hw, video = split_resolution(text)
    named = stage.get("resolutions") or {}
    default = str(stage.get("resolution", ""))
    if named:
        name = video or default
        if name not in named:
            choices = " or ".join(named)
            raise UsageError(f"--resolution {name!r}: stage {stage_name} takes {choices}")
        h, w = named[name]
        return int(h), int(w)
    return pano_hw or _hxw(default, f"profile [stages.{stage_name}] resolution {default!r}: expected HxW")


def resolution(stage: dict[str, Any], text: Optional[str]) -> tuple[int, int]:
    """(H, W) of a profile stage for a `--resolution` value (the contract's `stage_resolution`)."""
    return stage_resolution(str(stage.get("kind", "stage")), stage, text)


def _header_blocks(files: list[Path], prefixes: list[str],
                   elem_bytes: Optional[int] = None) -> Optional[tuple[list[int], int]]:
    """Per-block bytes (in prefix order, then index order) and the remaining bytes, from safetensors headers; with
    `elem_bytes`, sized as the stage loads them (the Wan shards are fp32 on disk, bf16 once loaded)."""
    per: dict[tuple[int, int], int] = {}
    other = 0
    for f in files:
        try:
            header = read_header(f)
        except (HeaderError, OSError):
            return None
        for name in header.tensors:
            size = header.tensor_bytes(name)
            if elem_bytes:
                size = size // DTYPE_BYTES.get(header.tensors[name].get("dtype", "BF16"), 2) * elem_bytes
            for pi, prefix in enumerate(prefixes):
                if name.startswith(prefix):
                    idx = int(name[len(prefix):].split(".", 1)[0])
                    per[(pi, idx)] = per.get((pi, idx), 0) + size
                    break
            else:
                other += size
    if not per:
        return None
    return [per[k] for k in sorted(per)], other


def stage_model(stage_name: str, stage: dict[str, Any],
                weight_files: Optional[list[Path]] = None) -> tuple[StageModel, str]:
    """The planner's model of a stage from its profile table, with per-block sizes from these safetensors files
    when their headers parse; returns the model and where the sizes came from ("profile" or "safetensors
    headers"). The table's `lora_bytes` is added to the always-resident transformer part."""
    blocks_cfg = stage.get("blocks", [])
    blocks: list[int] = []
    for b in blocks_cfg:
        blocks += [int(b["bytes"])] * int(b["count"])
    other = int(stage["transformer_bytes"]) - sum(blocks)
    source = "profile"
    if weight_files:
        load = stage.get("load_dtype")
        found = _header_blocks(weight_files, [b["prefix"] for b in blocks_cfg],
                               DTYPE_BYTES.get(str(load).upper()) if load else None)
        if found:
            blocks, other = found
            source = "safetensors headers"
    return StageModel(
        name=stage_name, block_bytes=tuple(blocks),
        other_transformer_bytes=max(other, 0) + int(stage.get("lora_bytes", 0)),
        text_encoder_bytes=int(stage.get("text_encoder_bytes", 0)), vae_bytes=int(stage.get("vae_bytes", 0)),
        act_base=int(stage.get("act_base", 0)), act_per_token=float(stage.get("act_per_token", 0)),
        act_per_token2=float(stage.get("act_per_token2", 0)), text_tokens=int(stage.get("text_tokens", 0)),
        patch=int(stage.get("patch", 16)), frames=int(stage.get("frames", 0)),
        temporal_stride=int(stage.get("temporal_stride", 4)),
        flops_per_token=float(stage.get("flops_per_token", 0)),
        attn_flops_coeff=float(stage.get("attn_flops_coeff", 0)),
        encode_phases=tuple((int(e[0]), int(e[1]), float(e[2])) for e in stage.get("encode_phases", ())),
        encode_names=tuple(str(e[3]) for e in stage.get("encode_phases", ()) if len(e) > 3),
        decode_act=int(stage.get("decode_act", 0)), host_lazy=bool(stage.get("host_lazy", False)),
        host_encoder_bytes=int(stage.get("host_encoder_bytes", 0)), host_base=int(stage.get("host_base", 0)),
        alloc_slack_per_token=float(stage.get("alloc_slack_per_token", 0)),
    ), source


def device_for(gpu: dict[str, Any], budget: int) -> Device:
    """Planner device from an NVML GPU record: its speed class and PCIe bandwidth from knowledge.toml."""
    facts = knowledge.facts()
    name = gpu.get("name", "")
    tflops = next((v for k, v in facts.get("gpu_tflops", {}).items() if k.lower() in name.lower()), 0.0)
    gen = str(gpu.get("pcie_gen") or 4)
    bw = float(facts.get("pcie_h2d", {}).get(gen, 25e9))
    return Device(name or "gpu", budget, bw, float(tflops))


def pano_model(lora_bytes: int = 0) -> StageModel:
    """FLUX.1-dev (the embedded profile's `[stages.pano]`), with a LoRA of this size instead of the profile's
    estimate: the runner and the benchmarks plan from the same data as the vram check."""
    from .profile import load_profile

    stage = load_profile().stages["pano"]
    return stage_model("pano", {**stage, "lora_bytes": lora_bytes})[0]


def _is_shard(path: str) -> bool:
    """A transformer weight file: `transformer/*.safetensors`, or a top-level `diffusion_pytorch_model*` shard."""
    top = "/" not in path and path.startswith("diffusion_pytorch_model")
    return path.endswith(".safetensors") and (path.startswith("transformer/") or top)


def stage_weights(ctx: Context, name: str, locate: Locator, resolution: Optional[str] = None) -> list[Path]:
    """Stage `name`'s transformer shards, when every one is on disk; [] otherwise. Their headers give the real
    block sizes. The shards come from the profile model of this stage holding them at this named resolution
    (a model tagged `resolution`, as the video stage's 480P and 720P repos are, counts only at that one)."""
    for model in ctx.profile.models:
        shards = [f for f in model.files if _is_shard(f.path)]
        if model.stage != name or not shards or model.resolution not in (None, resolution):
            continue
        paths = [locate(ctx, model, f)[0] for f in shards]
        return [] if None in paths else [p for p in paths if p is not None]
    return []


def stage_lora(ctx: Context, name: str, locate: Locator) -> Optional[Path]:
    """The first of the stage's LoRA files (profile models with this stage and layout "lora") on disk, or None."""
    for model in ctx.profile.models:
        if model.stage == name and model.layout == "lora":
            for f in model.files:
                path, _where = locate(ctx, model, f)
                if path is not None:
                    return path
    return None


def plan_dict(plan: Plan) -> dict[str, Any]:
    """`Plan.to_dict()` (strict JSON: an unknown slowdown is null, never `Infinity`) with `slowdown_unknown`."""
    d = plan.to_dict()
    d["slowdown_unknown"] = d.get("predicted_slowdown") is None
    return d


@dataclass(frozen=True)
class StagePlan:
    """One stage planned for one budget: what `check vram` reports and what `run` executes."""

    stage: str
    height: int
    width: int
    budget: int  # bytes the plan may use
    budget_basis: str  # "--budget", "free memory of GPU N", or why there is none
    gpu: dict[str, Any]  # the GPU record planned for (name, pcie_gen: speed and bandwidth)
    sizes_from: str  # "profile" or "safetensors headers"
    model: StageModel
    plan: Plan
    lora: Optional[Path] = None  # the stage's LoRA file on disk, when there is one

    def plan_dict(self) -> dict[str, Any]:
        """The plan in strict JSON (see `plan_dict`)."""
        return plan_dict(self.plan)

    def evidence(self) -> dict[str, Any]:
        """The vram check's evidence for this stage (strict JSON)."""
        return {"stage": self.stage, "resolution": [self.height, self.width], "budget": self.budget,
                "budget_basis": self.budget_basis, "gpu": self.gpu.get("name"), "sizes_from": self.sizes_from,
                "plan": self.plan_dict()}


def _budget(ctx: Context, budget: Union[Budget, int, None], gpu: Optional[dict[str, Any]]) -> Budget:
    """The budget of a plan: a resolved Budget as given, bytes as given, else `gpu_budget.resolve_budget`
    (--budget, else the best visible GPU's free memory less CONTEXT_BYTES); 0 when there is no GPU and no
    --budget. `gpu`, when given, is the card planned for."""
    if isinstance(budget, Budget):
        chosen = budget
    elif budget is not None:
        chosen = Budget(int(budget), "given", {"name": "planned card"})
    else:
        chosen = resolve_budget(ctx) or Budget(0, "no visible GPU and no --budget", {})
    return chosen if gpu is None else Budget(chosen.size, chosen.basis, gpu)


def stage_plan(ctx: Context, name: str, *, resolution: Union[str, int, None] = None,
               hw: Optional[tuple[int, int]] = None, budget: Union[Budget, int, None] = None,
               gpu: Optional[dict[str, Any]] = None, lora_bytes: Optional[int] = None,
               locate: Optional[Locator] = None) -> StagePlan:
    """Plan the profile's stage `name`, the one way every command does.

    Size: `hw` (H, W) when given, else `ctx.options.extra["stage_sizes"][name]` (run's --height/--width), else
    `stage_resolution` of `resolution` (default: the context's `--resolution`). Budget: see `_budget`, resolved
    once here. Model: the profile's table; with `locate` (checks.checkpoints.locate), the headers of the local
    transformer shards and the real size of the stage's LoRA refine it; `lora_bytes` overrides the LoRA size.
    Raises UsageError for a stage the profile lacks or a resolution outside the contract."""
    stage = ctx.profile.stages.get(name)
    if stage is None:
        raise UsageError(f"stage {name}: the profile has stages {', '.join(ctx.profile.stages) or 'none'}")
    if hw is None:
        hw = (ctx.options.extra.get("stage_sizes") or {}).get(name)
    text = ctx.options.extra.get("resolution") if resolution is None else resolution
    video_name = (split_resolution(text)[1] or str(stage.get("resolution", ""))) if stage.get("resolutions") else None
    if hw is None:
        hw = stage_resolution(name, stage, text)
    h, w = int(hw[0]), int(hw[1])
    chosen = _budget(ctx, budget, gpu)
    lora = stage_lora(ctx, name, locate) if locate is not None else None
    if lora_bytes is None and lora is not None:
        lora_bytes = lora.stat().st_size
    table = stage if lora_bytes is None else {**stage, "lora_bytes": int(lora_bytes)}
    weights = stage_weights(ctx, name, locate, video_name) if locate is not None else None
    model, source = stage_model(name, table, weights)
    plan = plan_stage(model, device_for(chosen.gpu, chosen.size), h, w)
    return StagePlan(name, h, w, chosen.size, chosen.basis, dict(chosen.gpu), source, model, plan, lora)
