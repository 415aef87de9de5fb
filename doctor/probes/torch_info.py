# Probe: what the target's torch really is and can do. Python 3.8-compatible; imports torch only.
# Run on its own, or exec'd inside the imports probe (torch already imported there) so that one
# process serves both: `collect()` is the entry point, the script part prints its answer.
import json
import sys
import time

MARKER = "@@M3D-PROBE@@"


def _layer_norm_works(torch, dtype, device):
    try:
        x = torch.randn(2, 8, device=device).to(dtype)
        w = torch.ones(8, device=device, dtype=dtype)
        y = torch.nn.functional.layer_norm(x, (8,), w, None)
        return {"ok": bool(torch.isfinite(y.float()).all().item())}
    except Exception as exc:
        return {"ok": False, "type": type(exc).__name__, "message": str(exc)[:300]}


def collect():
    out = {"ok": False}
    t0 = time.perf_counter()
    try:
        import torch
    except BaseException as exc:
        out["error"] = {"type": type(exc).__name__, "message": str(exc)[:2000]}
        return out
    out["ok"] = True
    out["import_seconds"] = round(time.perf_counter() - t0, 3)
    out["version"] = torch.__version__
    out["cuda"] = getattr(torch.version, "cuda", None)
    out["hip"] = getattr(torch.version, "hip", None)
    out["debug"] = bool(getattr(torch.version, "debug", False))
    try:
        out["arch_flags"] = torch._C._cuda_getArchFlags()  # compile-time list, works without a device
    except Exception:
        out["arch_flags"] = None
    out["cuda_available"] = False
    out["devices"] = []
    try:
        out["cuda_available"] = bool(torch.cuda.is_available())
        if out["cuda_available"]:
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                out["devices"].append({"index": i, "name": p.name, "capability": "%d.%d" % (p.major, p.minor),
                                       "total_bytes": int(p.total_memory)})
            out["cudnn"] = torch.backends.cudnn.version()
    except Exception as exc:
        out["cuda_error"] = {"type": type(exc).__name__, "message": str(exc)[:1000]}
    try:
        out["distributed_available"] = bool(torch.distributed.is_available())
    except Exception:
        out["distributed_available"] = False
    # A real op in each dtype: "LayerNorm half not supported on CPU" is a fact of the build, not of a table.
    ops = {"cpu": {d: _layer_norm_works(torch, getattr(torch, d), "cpu") for d in ("float32", "float16", "bfloat16")}}
    if out["cuda_available"]:
        ops["cuda"] = {d: _layer_norm_works(torch, getattr(torch, d), "cuda") for d in ("float16", "bfloat16")}
    out["dtype_ops"] = ops
    return out


if __name__ == "__main__":
    sys.stdout.write(MARKER + json.dumps(collect()) + "\n")
