"""GPU facts from NVML (nvidia-ml-py), read in the doctor's own process: NVML is not the stack we check.

`snapshot()` returns plain data. A recorded snapshot (JSON written by `m3d-doctor check --json` on a real
GPU machine, or by `record_snapshot`) can stand in where no driver exists: M3D_DOCTOR_NVML_REPLAY=FILE.
"""

from __future__ import annotations

import json
import os
from typing import Any


def _s(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def driver_identity() -> str:
    """What changes when the driver or the visible GPUs change, read from /proc without starting NVML."""
    parts = [os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")]
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8") as fh:
            parts.append(fh.readline().strip())
        parts.extend(sorted(os.listdir("/proc/driver/nvidia/gpus")))
    except OSError:
        parts.append("no-proc-driver")
    return "|".join(parts)


def snapshot() -> dict[str, Any]:
    replay = os.environ.get("M3D_DOCTOR_NVML_REPLAY")
    if replay:
        with open(replay, encoding="utf-8") as fh:
            data = json.load(fh)
        return data.get("nvml", data)
    try:
        import pynvml
    except ImportError:
        return {"available": False, "reason": "nvidia-ml-py is not installed"}
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded / NoPermission
        return {"available": False, "reason": f"no NVIDIA driver: {_s(str(exc))}"}
    try:
        out: dict[str, Any] = {"available": True}
        out["driver_version"] = _s(pynvml.nvmlSystemGetDriverVersion())
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()  # e.g. 13000
        out["cuda_driver_version"] = f"{cuda // 1000}.{(cuda % 1000) // 10}"
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            gpu: dict[str, Any] = {
                "index": i,
                "name": _s(pynvml.nvmlDeviceGetName(h)),
                "uuid": _s(pynvml.nvmlDeviceGetUUID(h)),
                "capability": f"{major}.{minor}",
                "memory_total": int(mem.total),
                "memory_used": int(mem.used),
                "memory_free": int(mem.free),
            }
            try:  # idle links downclock: the maximum generation is what a transfer gets
                gpu["pcie_gen"] = int(pynvml.nvmlDeviceGetMaxPcieLinkGeneration(h))
                gpu["pcie_width"] = int(pynvml.nvmlDeviceGetMaxPcieLinkWidth(h))
            except Exception:
                gpu["pcie_gen"] = None
            try:
                current, _pending = pynvml.nvmlDeviceGetMigMode(h)
                gpu["mig"] = bool(current)
            except Exception:
                gpu["mig"] = None
            try:
                procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
                gpu["processes"] = [
                    {"pid": int(p.pid), "used_bytes": int(p.usedGpuMemory or 0)} for p in procs
                ]
            except Exception:
                gpu["processes"] = None
            gpus.append(gpu)
        out["gpus"] = gpus
        return out
    except Exception as exc:
        return {"available": False, "reason": f"NVML query failed: {_s(str(exc))}"}
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
