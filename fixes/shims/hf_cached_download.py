"""The hf-cached-download shim: `huggingface_hub.cached_download` on the hub's current download API.

Wheel contents: `m3d_shim_hf_cached_download.pth` (one `import` line), the hook package (`sources/attach_hook.py`
filled in for huggingface_hub/cached_download) and `m3d_shim_hf_cached_download/cached_download.py`
(`sources/cached_download.py`: the URL parsing and the keyword mapping onto hf_hub_download).
"""

from __future__ import annotations

from ._source import hook_shim_files

PACKAGE = "m3d_shim_hf_cached_download"


def files() -> dict[str, str]:
    return hook_shim_files(PACKAGE, "huggingface_hub", "cached_download", "cached_download", "cached_download.py")


VERIFY = """
import importlib.util
from huggingface_hub import cached_download
try:
    cached_download("https://example.invalid/not-a-hub-file", legacy_cache_layout=True)
except ValueError:
    pass
else:
    raise AssertionError("cached_download accepted a URL that is not a Hub file")
if importlib.util.find_spec("diffusers") is not None:
    try:
        import diffusers.utils.dynamic_modules_utils  # the module that imports cached_download (diffusers <= 0.28)
    except ImportError as exc:
        if "cached_download" in str(exc):
            raise
"""
