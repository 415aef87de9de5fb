"""device: the device and dtype a run will use, proven by a real op in the target's torch.

The field report's CPU fallback in float16 crashed in LayerNorm: the probe runs layer_norm in each dtype
on each device, so the finding reflects the installed build, not a version table.
"""

from __future__ import annotations

from m3d_doctor import nvml
from m3d_doctor.check import Check
from m3d_doctor.context import Context
from m3d_doctor.facts import torch_info
from m3d_doctor.findings import Finding, Remedy, Severity


class DeviceCheck(Check):
    name = "device"
    description = "device and dtype a run will use, and that the dtype's ops work there"
    order = 60

    def cache_key(self, ctx: Context) -> str:
        return f"{ctx.options.device}|{ctx.options.dtype}|{nvml.driver_identity()}"

    def run(self, ctx: Context) -> list[Finding]:
        info = torch_info(ctx)
        if not info.get("ok"):
            err = info.get("error") or {}
            return [Finding("device.no-torch", Severity.SKIP, "torch does not import: device check skipped",
                            cause=f"{err.get('type')}: {err.get('message')}")]
        gpu = ctx.gpu()
        cuda = bool(info.get("cuda_available"))
        device = ctx.options.device or ("cuda" if cuda else "cpu")
        dtype = ctx.options.dtype or ("bfloat16" if device == "cuda" else "float32")
        ev = {"device": device, "dtype": dtype, "torch_cuda_available": cuda,
              "nvidia_gpus": len(gpu.get("gpus", [])) if gpu.get("available") else 0}
        if device == "cuda" and not cuda:
            return [Finding("device.cuda-unavailable", Severity.FAIL, "a CUDA run was asked for, torch sees no GPU",
                            cause=(info.get("cuda_error") or {}).get("message", "torch.cuda.is_available() is False"),
                            evidence=ev)]
        ops = (info.get("dtype_ops") or {}).get(device, {})
        result = ops.get(dtype)
        if result is not None and not result.get("ok"):
            good = "float32" if device == "cpu" else next((d for d, r in ops.items() if r.get("ok")), "float32")
            return [Finding(
                f"device.{device}-{dtype}-unsupported", Severity.FAIL,
                f"{dtype} layer_norm fails on {device} in this torch: use {good}",
                cause=f"{result.get('type')}: {result.get('message')}"
                + (" — CPU kernels for half precision are incomplete; run the CPU path in float32"
                   if device == "cpu" else ""),
                evidence={**ev, "error": result},
                remedy=Remedy(f"m3d-doctor run --device {device} --dtype {good}", None,
                              note=f"torch_dtype=torch.{good}"),
            )]
        if device == "cpu" and dtype in ("float16", "bfloat16"):
            return [Finding("device.cpu-low-precision", Severity.WARN,
                            f"{dtype} on CPU works in this torch but is slow and partial; use float32",
                            cause="CPU half-precision kernels are partial and slow",
                            evidence=ev, remedy=Remedy("m3d-doctor run --device cpu --dtype float32"))]
        return [Finding("device.ok", Severity.OK, f"{device} {dtype}", evidence=ev)]


CHECK = DeviceCheck()
