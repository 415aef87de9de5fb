"""Read-only access to `knowledge.toml`: facts with sources, not `if` chains in the checks."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any, Optional

from packaging.version import InvalidVersion, Version

from .toml_compat import loads


@functools.lru_cache(maxsize=1)
def facts() -> dict[str, Any]:
    return loads(resources.files("m3d_doctor").joinpath("knowledge.toml").read_text(encoding="utf-8"))


def driver_tuple(version: str) -> tuple[int, ...]:
    """NVIDIA driver versions are dotted integers ("580.65.06"), not PEP 440: compare as tuples."""
    out = []
    for part in version.strip().split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def nominal_driver_floor(cuda: str) -> Optional[str]:
    return facts()["cuda_driver_nominal"].get(cuda)


def family_driver_floor(cuda: str) -> Optional[str]:
    return facts()["cuda_driver_family_floor"].get(cuda.split(".")[0])


def max_cuda_for_driver(driver: str) -> Optional[str]:
    """The newest toolkit whose nominal floor this driver meets."""
    best = None
    d = driver_tuple(driver)
    for cuda, floor in facts()["cuda_driver_nominal"].items():
        if d >= driver_tuple(floor) and (best is None or Version(cuda) > Version(best)):
            best = cuda
    return best


def expected_torchvision_minor(torch_version: str) -> Optional[int]:
    try:
        v = Version(torch_version)
    except InvalidVersion:
        return None
    return v.minor + facts()["torch_family"]["torchvision_minor_offset"] if v.major == 2 else None


def torchaudio_has_stable_abi(torchaudio_version: str) -> bool:
    try:
        return Version(torchaudio_version).release >= Version(
            facts()["torch_family"]["torchaudio_stable_abi_from"]).release
    except InvalidVersion:
        return False


def gpu_name_hint(capability: str) -> str:
    return facts()["gpu_names"].get(capability, "")


def arch_runs(capability: str, arch_flags: list[str]) -> bool:
    """Does a build with these `sm_XY`/`compute_XY` entries run on a GPU of this compute capability?"""
    major, minor = (int(x) for x in capability.split("."))
    for flag in arch_flags:
        kind, _, num = flag.partition("_")
        digits = "".join(ch for ch in num if ch.isdigit())
        if len(digits) < 2:
            continue
        fmaj, fmin = int(digits[:-1]), int(digits[-1])
        if kind == "sm" and fmaj == major and fmin <= minor and not num.endswith("a"):
            return True
        if kind == "sm" and num.endswith("a") and (fmaj, fmin) == (major, minor):
            return True
        if kind == "compute" and (fmaj, fmin) <= (major, minor):
            return True
    return False
