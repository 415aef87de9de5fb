"""Stage memory models from the profile (`[stages.*]`), refined by local safetensors headers when the
weights are on disk: the planner then works on the real per-block sizes of the files that will load."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from . import knowledge
from .errors import UsageError
from .planner import Device, StageModel
from .safetensors_header import HeaderError, read_header


def resolution(stage: dict[str, Any], text: Optional[str]) -> tuple[int, int]:
    """'512x1024' (HxW) for images; '480'/'720' (named in the profile) for video."""
    value = str(text or stage.get("resolution", ""))
    named = stage.get("resolutions", {})
    if value in named:
        h, w = named[value]
        return int(h), int(w)
    try:
        h, w = (int(x) for x in value.lower().split("x"))
        if h <= 0 or w <= 0 or h % 16 or w % 16:
            raise ValueError
        return h, w
    except ValueError:
        choices = ", ".join(list(named) or ["HxW"])
        raise UsageError(f"--resolution {value!r}: expected {choices} (HxW, positive multiples of 16, "
                         "e.g. 512x1024)") from None


def _header_blocks(files: list[Path], prefixes: list[str]) -> Optional[tuple[list[int], int]]:
    """Per-block bytes (in prefix order, then index order) and the remaining bytes, from safetensors headers."""
    per: dict[tuple[int, int], int] = {}
    other = 0
    for f in files:
        try:
            header = read_header(f)
        except (HeaderError, OSError):
            return None
        for name in header.tensors:
            size = header.tensor_bytes(name)
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
    blocks_cfg = stage.get("blocks", [])
    blocks: list[int] = []
    for b in blocks_cfg:
        blocks += [int(b["bytes"])] * int(b["count"])
    other = int(stage["transformer_bytes"]) - sum(blocks)
    source = "profile"
    if weight_files:
        found = _header_blocks(weight_files, [b["prefix"] for b in blocks_cfg])
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
