"""What PartialResidency's pinned host buffers cost: host RSS growth against the streamed bytes (the planner
counts each block's buffer at the next power of two, `planner.pinned_bytes`, as torch's host allocator rounds),
streamed output equal to resident, and the per-forward ratio. Eight 0.75 GiB blocks (bf16 Linear stacks), one
GPU. Not yet run: written for the next GPU session (see the README's video-stage notes).

    python3 benchmarks/residency_pinned_check.py   # one JSON line
"""

from __future__ import annotations

import json
import sys
import time

import torch
from video_stage import GiB, _doctor_importable, rss  # noqa: E402 - the same folder

_doctor_importable()
from m3d_doctor.runtime.residency import PartialResidency  # noqa: E402


def block() -> torch.nn.Module:
    return torch.nn.Sequential(*[torch.nn.Linear(5120, 5120, bias=False) for _ in range(15)]).to(torch.bfloat16)


def main() -> int:
    dev = torch.device("cuda")
    torch.manual_seed(0)
    blocks = [block() for _ in range(8)]
    x = torch.randn(16384, 5120, device=dev, dtype=torch.bfloat16)

    def fwd() -> tuple[float, torch.Tensor]:
        y = x
        torch.cuda.synchronize()
        t = time.perf_counter()
        for b in blocks:
            y = torch.tanh(b(y))
        torch.cuda.synchronize()
        return time.perf_counter() - t, y

    host = {id(p): p.data for b in blocks for p in b.parameters()}
    for b in blocks:
        b.to(dev)
    fwd()
    t_res, ref = fwd()
    for b in blocks:
        for p in b.parameters():
            p.data = host[id(p)]
    torch.cuda.empty_cache()
    before = rss()
    res = PartialResidency(blocks, list(range(8)), dev).apply()
    pinned_rss = rss() - before
    fwd()
    t_str, out = fwd()
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "equal": bool(torch.equal(out, ref)), "x_resident": round(t_str / t_res, 3),
                      "streamed_gib": round(res.streamed_bytes / GiB, 3), "rss_growth_gib": round(pinned_rss / GiB, 3),
                      "host_is_pinned": bool(res._items[0].host.is_pinned())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
