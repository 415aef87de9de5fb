"""The torch-xpu shim: `torch.xpu` meaning "no XPU" for torch < 2.3, attached by an import hook.

Wheel contents: `m3d_shim_torch_xpu.pth` (one `import` line), the hook package `m3d_shim_torch_xpu`
(`sources/attach_hook.py` filled in for torch/xpu) and `m3d_shim_torch_xpu/xpu.py` (`sources/torch_xpu.py`,
whose docstring lists what every function does and why).
"""

from __future__ import annotations

from ._source import hook_shim_files

PACKAGE = "m3d_shim_torch_xpu"


def files() -> dict[str, str]:
    return hook_shim_files(PACKAGE, "torch", "xpu", "xpu", "torch_xpu.py")


VERIFY = """
import torch
import torch.xpu
from torch.xpu import device_count, is_available
assert is_available() is False and device_count() == 0 and torch.xpu.is_initialized() is False
torch.xpu.empty_cache()
torch.xpu.manual_seed_all(0)
"""
