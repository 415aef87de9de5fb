"""`torch.xpu` for a torch that predates it (< 2.3): exactly "no XPU present", installed by m3d-doctor.

Part of the m3d-shim-torch-xpu distribution; attached as `torch.xpu` (and `sys.modules["torch.xpu"]`) by its
import hook only when torch has no `xpu` of its own. diffusers and transformers touch `torch.xpu` at import
time or behind `is_available()` guards; a torch older than 2.3 cannot have an XPU, so the faithful answer is
the one a torch >= 2.3 built without XPU gives. Each function below does what torch 2.13.0+cpu's torch.xpu
does (measured by calling every one of them, not copied):

  is_available() -> False; device_count() -> 0; is_initialized() -> False; _is_compiled() -> False
  is_bf16_supported(), is_tf32_supported() -> False; get_arch_list() -> []; get_gencode_flags() -> ""
  empty_cache(), manual_seed(s), manual_seed_all(s), seed(), seed_all(), set_rng_state(...),
      set_rng_state_all(...) -> None (no-ops: torch queues them for an initialisation that never comes)
  get_rng_state_all() -> []; default_generators -> ()
  memory_allocated(), max_memory_allocated(), memory_reserved(), max_memory_reserved() -> 0; memory_stats() -> {}
  init(), synchronize(), current_device(), set_device(d), get_device_name(), get_device_properties(),
      get_device_capability(), current_stream(), get_rng_state(), initial_seed(), mem_get_info()
      -> raise AssertionError("Torch not compiled with XPU enabled")
  with device(i): -> raises NotImplementedError("PyTorch was compiled without XPU support")
  Stream(), Event() -> raise RuntimeError("Tried to instantiate dummy base class ...")

Everything else torch.xpu has (graphs, memory pools, telemetry) is absent: an AttributeError is the honest
answer for features that cannot work here.
"""

import collections
import sys

__m3d_shim__ = "torch-xpu"

_NOT_COMPILED = "Torch not compiled with XPU enabled"


def _no_xpu(*args, **kwargs):
    raise AssertionError(_NOT_COMPILED)


def is_available():
    return False


def device_count():
    return 0


def is_initialized():
    return False


def _is_compiled():
    return False


def is_bf16_supported(including_emulation=True):
    return False


def is_tf32_supported():
    return False


def get_arch_list():
    return []


def get_gencode_flags():
    return ""


def empty_cache():
    return None


def manual_seed(seed):
    int(seed)  # torch converts first: a seed that is not an integer fails here too
    return None


def manual_seed_all(seed):
    int(seed)
    return None


def seed():
    return None


def seed_all():
    return None


def set_rng_state(new_state, device="xpu"):
    return None


def set_rng_state_all(new_states):
    return None


def get_rng_state_all():
    return []


default_generators = ()


def memory_allocated(device=None):
    return 0


def max_memory_allocated(device=None):
    return 0


def memory_reserved(device=None):
    return 0


def max_memory_reserved(device=None):
    return 0


def memory_stats(device=None):
    return collections.OrderedDict()


def init():
    _no_xpu()


def _lazy_init():
    _no_xpu()


def synchronize(device=None):
    _no_xpu()


def current_device():
    _no_xpu()


def set_device(device):
    _no_xpu()


def get_device_name(device=None):
    _no_xpu()


def get_device_properties(device=None):
    _no_xpu()


def get_device_capability(device=None):
    _no_xpu()


def current_stream(device=None):
    _no_xpu()


def get_rng_state(device="xpu"):
    _no_xpu()


def initial_seed():
    _no_xpu()


def mem_get_info(device=None):
    _no_xpu()


class device:
    """Context manager that would switch the XPU device; entering it fails as it does in torch."""

    def __init__(self, device):
        self.idx = device
        self.prev_idx = -1

    def __enter__(self):
        raise NotImplementedError("PyTorch was compiled without XPU support")

    def __exit__(self, *exc):
        return False


class Stream:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("Tried to instantiate dummy base class Stream")


class Event:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("Tried to instantiate dummy base class Event")


def attach(torch_module):
    """Called by the import hook once torch has loaded and has no xpu of its own."""
    this = sys.modules[__name__]
    torch_module.xpu = this
    sys.modules.setdefault(torch_module.__name__ + ".xpu", this)
