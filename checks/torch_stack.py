"""torch: the torch family in step, the CUDA build against the driver, the build's archs against the GPUs.

Versions and the CUDA build come from metadata and `torch/version.py` (no import); the arch list and the
devices torch sees come from the `torch_info` probe in the target interpreter; the driver and GPUs from NVML.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from m3d_doctor import knowledge, nvml
from m3d_doctor.check import Check
from m3d_doctor.context import Context
from m3d_doctor.facts import read_version_py, torch_info
from m3d_doctor.findings import Finding, Remedy, Severity
from m3d_doctor.remedies import install
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version


def _v(text: Optional[str]) -> Optional[Version]:
    try:
        return Version(text) if text else None
    except InvalidVersion:
        return None


def _torch_pin_of(requires: tuple[str, ...]) -> Optional[Requirement]:
    for text in requires:
        try:
            req = Requirement(text)
        except Exception:
            continue
        if req.marker is not None and "extra" in str(req.marker):
            continue  # diffusers' `torch>=1.4; extra == "torch"` is an option, not a build pin
        if canonicalize_name(req.name) == "torch" and any(s.operator in ("==", "===") for s in req.specifier):
            return req
    return None


def companion_findings(ctx: Context, torch_version: str) -> list[Finding]:
    """torchvision / torchaudio built for another torch than the one installed."""
    out = []
    tv = _v(torch_version)
    for comp in ("torchvision", "torchaudio"):
        dist = ctx.target.dists.get(comp)
        if dist is None or tv is None:
            continue
        req = _torch_pin_of(dist.requires)
        built_for: Optional[str] = None
        mismatch = False
        if req is not None:
            mismatch = not req.specifier.contains(tv, prereleases=True)
            built_for = str(req.specifier)
        elif comp == "torchaudio" and knowledge.torchaudio_has_stable_abi(dist.version):
            mismatch = tv.release < (2, 11)
            built_for = ">=2.11 (stable ABI)"
        elif comp == "torchaudio":
            cv = _v(dist.version)
            mismatch = cv is not None and cv.release[:2] != tv.release[:2]
            built_for = f"=={cv.base_version}" if cv else None
        else:
            cv = _v(dist.version)
            expected_minor = knowledge.expected_torchvision_minor(torch_version)
            mismatch = cv is not None and expected_minor is not None and cv.minor != expected_minor
            built_for = f"2.{cv.minor - 15}.x" if cv else None
        tag_c, tag_t = _local_cuda(dist.version), _local_cuda(torch_version)
        if mismatch:
            out.append(Finding(
                f"torch.{comp}-mismatch", Severity.FAIL,
                f"{comp} {dist.version} is built for torch {built_for}, torch {torch_version} is installed",
                cause=f"{comp} wheels link against one torch release; beside another torch its compiled ops fail "
                      "to load (undefined symbol, or 'operator ... does not exist'). It was probably installed "
                      "with --no-deps or before torch was changed.",
                evidence={"package": comp, "version": dist.version, "built_for_torch": built_for,
                          "torch": torch_version},
                remedy=Remedy(install(ctx, ["torch", "torchvision", "torchaudio"]), "packages.align"),
            ))
        elif tag_c and tag_t and tag_c != tag_t:
            out.append(Finding(
                f"torch.{comp}-variant-mismatch", Severity.WARN,
                f"{comp} {dist.version} and torch {torch_version} come from different CUDA indexes",
                cause="mixing +cuXXX builds works only while both CUDA runtimes load; install the family from "
                      "one index",
                evidence={"package": comp, "version": dist.version, "torch": torch_version},
                remedy=Remedy(install(ctx, ["torch", "torchvision", "torchaudio"]), "packages.align"),
            ))
    return out


def _local_cuda(version: str) -> Optional[str]:
    v = _v(version)
    return v.local if v is not None and v.local and v.local.startswith(("cu", "rocm", "cpu")) else None


def choose_variant(ctx: Context, gpu: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The profile's first CUDA variant whose driver floor and arch list suit every GPU present."""
    fam = ctx.profile.torch
    if fam is None or not fam.variants:
        return None
    driver = gpu.get("driver_version") if gpu.get("available") else None
    caps = [g["capability"] for g in gpu.get("gpus", [])] if gpu.get("available") else []
    for var in fam.variants:
        if driver and knowledge.driver_tuple(driver) < knowledge.driver_tuple(var.min_driver):
            continue
        if caps and not all(knowledge.arch_runs(c, list(var.archs)) for c in caps):
            continue
        return {"name": var.name, "cuda": var.cuda, "index_url": var.index_url, "min_driver": var.min_driver}
    return None


def driver_findings(torch_version: str, build_cuda: Optional[str], gpu: dict[str, Any]) -> list[Finding]:
    if not gpu.get("available"):
        return [Finding("torch.no-driver", Severity.SKIP, "no NVIDIA driver: CUDA build checks skipped",
                        cause=gpu.get("reason", ""), evidence={"nvml": gpu.get("reason")})]
    driver = gpu["driver_version"]
    ev = {"torch": torch_version, "torch_cuda": build_cuda, "driver": driver,
          "driver_max_cuda": gpu.get("cuda_driver_version")}
    if build_cuda is None:
        return [Finding(
            "torch.cpu-build-on-gpu", Severity.FAIL,
            f"torch {torch_version} is a CPU-only build on a machine with {len(gpu.get('gpus', []))} NVIDIA GPU(s)",
            cause="a CPU wheel (or a +cpu index) was installed; everything would run on the CPU",
            evidence=ev,
        )]
    nominal = knowledge.nominal_driver_floor(build_cuda)
    family = knowledge.family_driver_floor(build_cuda)
    d = knowledge.driver_tuple(driver)
    if family and d < knowledge.driver_tuple(family):
        return [Finding(
            "torch.driver-too-old", Severity.FAIL,
            f"torch built for CUDA {build_cuda} needs driver >= {family}; the driver is {driver}",
            cause=f"a CUDA {build_cuda.split('.')[0]}.x build needs a driver of that family's floor (minor-version "
                  f"compatibility); this driver supports CUDA up to {gpu.get('cuda_driver_version')}",
            evidence={**ev, "needed": family},
        )]
    if nominal and d < knowledge.driver_tuple(nominal):
        return [Finding(
            "torch.driver-minor-compat", Severity.WARN,
            f"driver {driver} is below CUDA {build_cuda}'s nominal {nominal}: runs under minor-version compatibility",
            cause="kernels JIT-compiled from newer PTX (Triton, torch.compile) can fail with "
                  "cudaErrorUnsupportedPtxVersion",
            evidence={**ev, "nominal": nominal},
        )]
    return [Finding("torch.driver-ok", Severity.OK, f"CUDA {build_cuda} build on driver {driver}", evidence=ev)]


def arch_findings(info: dict[str, Any], gpu: dict[str, Any]) -> list[Finding]:
    flags = (info.get("arch_flags") or "").split()
    if not gpu.get("available") or not flags:
        return []
    out = []
    for g in gpu.get("gpus", []):
        cap = g["capability"]
        if not knowledge.arch_runs(cap, flags):
            out.append(Finding(
                "torch.arch-unsupported", Severity.FAIL,
                f"GPU {g['index']} {g['name']} (sm_{cap.replace('.', '')}) is not in this torch build's arch list",
                cause="kernels fail with 'no kernel image is available for execution on the device'; "
                      f"{knowledge.gpu_name_hint(cap) or 'this GPU'} needs a build that lists its arch",
                evidence={"gpu": g["name"], "capability": cap, "arch_flags": flags},
            ))
    return out


class TorchCheck(Check):
    name = "torch"
    description = "torch family in step; CUDA build vs driver; arch list vs GPUs"
    order = 30

    def cache_key(self, ctx: Context) -> str:
        return nvml.driver_identity() + os.environ.get("M3D_DOCTOR_NVML_REPLAY", "")

    def run(self, ctx: Context) -> list[Finding]:
        torch_dist = ctx.target.dists.get("torch")
        if torch_dist is None and ctx.profile.torch is None and ctx.profile.pin("torch") is None:
            return [Finding("torch.not-needed", Severity.SKIP, "the profile does not use torch")]
        if torch_dist is None:
            pin = ctx.profile.pin("torch")
            return [Finding("torch.missing", Severity.FAIL, "torch is not installed",
                            cause="every stage of the profile needs torch",
                            remedy=Remedy(install(ctx, ["torch", "torchvision", "torchaudio"]), "packages.align")
                            if pin else None)]
        findings = companion_findings(ctx, torch_dist.version)
        gpu = ctx.gpu()
        variant = ctx.fact("torch_variant", lambda: choose_variant(ctx, gpu))
        vpy = read_version_py(ctx, "torch") or {}
        build_cuda = vpy.get("cuda")
        findings += driver_findings(torch_dist.version, build_cuda, gpu)
        info = torch_info(ctx)
        if info.get("ok"):
            findings += arch_findings(info, gpu)
            if gpu.get("available") and build_cuda and not info.get("cuda_available"):
                findings.append(Finding(
                    "torch.cuda-unavailable", Severity.FAIL,
                    "torch is a CUDA build and GPUs are present, but torch.cuda.is_available() is False",
                    cause=(info.get("cuda_error") or {}).get("message")
                    or "the CUDA runtime did not initialise (driver/runtime mismatch, CUDA_VISIBLE_DEVICES, "
                       "or a container without the GPU device nodes)",
                    evidence={"torch_cuda": build_cuda, "driver": gpu.get("driver_version")},
                ))
        if variant is None and ctx.profile.torch and gpu.get("available"):
            findings.append(Finding(
                "torch.no-variant", Severity.FAIL,
                "no CUDA variant of the profile's torch suits this driver and GPU",
                cause="the profile's torch builds need a newer driver or lack this GPU's arch",
                evidence={"driver": gpu.get("driver_version"),
                          "gpus": [g["capability"] for g in gpu.get("gpus", [])]},
            ))
        if not any(f.severity in (Severity.FAIL, Severity.WARN) for f in findings):
            findings.insert(0, Finding("torch.ok", Severity.OK,
                                       f"torch {torch_dist.version} ({'CUDA ' + build_cuda if build_cuda else 'CPU'})",
                                       evidence={"torch": torch_dist.version, "cuda": build_cuda,
                                                 "variant": variant}))
        return findings


CHECK = TorchCheck()
