"""The compatibility shims m3d-doctor can install, as data.

The field report's pods carried a sitecustomize.py of stubs (torch.xpu, device_mesh, cached_download,
matrix_to_quaternion) that made imports pass while the features were missing. A shim here is the opposite:
a faithful implementation, installed into the target as its own distribution `m3d-shim-<name>` (so pip lists
it and removes it, leaving the file set exactly as before), which says in its metadata what it provides,
why, and when it becomes unnecessary. Each shim's files and its verification live in the module named by
`module`; whether a target needs it is decided by `needed`, conditions probed in the target interpreter.

torch.distributed.device_mesh is deliberately absent: diffusers evaluates it at import to build real
parallelism types, which no shim can provide faithfully; the torch family must be aligned instead.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Optional

SHIM_PREFIX = "m3d-shim-"
INFO_FILE = "m3d_shim.json"  # in the dist-info: what `m3d-doctor shims` shows


@dataclass(frozen=True)
class Condition:
    """A fact about the target that must hold for a shim to be installed, decided by the `shims` probe.

    kind: "importable" (module imports), "absent" (no module of that name can be found: never shadow one),
    "attr-missing" (module imports and has no `attr`).
    """

    kind: str
    module: str
    attr: str = ""
    refusal: str = ""  # why the shim is refused when this does not hold

    def describe(self) -> str:
        return {"importable": f"{self.module} imports", "absent": f"no module {self.module} exists",
                "attr-missing": f"{self.module} has no {self.attr}"}[self.kind]

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "module": self.module, "attr": self.attr}


@dataclass(frozen=True)
class Shim:
    name: str
    version: str
    brief: str  # one line for `fix --list-fixes`
    provides: str
    why: str
    unnecessary_when: str
    sources: str  # keys of the sources list (README "Sources")
    needed: tuple[Condition, ...]
    module: str  # the module holding files() and VERIFY

    @property
    def dist(self) -> str:
        return SHIM_PREFIX + self.name

    @property
    def summary(self) -> str:
        return f"m3d-doctor shim: {self.provides}. Unnecessary {self.unnecessary_when}."

    def files(self) -> dict[str, str]:
        """Path inside the wheel -> text (packages, .pth hook), without the dist-info."""
        return importlib.import_module(self.module).files()

    @property
    def verify(self) -> str:
        """Python run in the target after installing: imports through the real import path, raises if broken."""
        return importlib.import_module(self.module).VERIFY

    def info(self) -> dict[str, str]:
        return {"name": self.name, "distribution": self.dist, "version": self.version, "provides": self.provides,
                "why": self.why, "unnecessary_when": self.unnecessary_when, "sources": self.sources}


_HERE = __name__

SHIMS: dict[str, Shim] = {
    s.name: s
    for s in (
        Shim(
            name="pytorch3d-transforms",
            version="1.0.0",
            brief="pytorch3d.transforms' rotation conversions in pure PyTorch",
            provides="pytorch3d.transforms: rotation conversions (matrix_to_quaternion and 12 others) in pure "
                     "PyTorch",
            why="Matrix-3D calls only pytorch3d.transforms.matrix_to_quaternion; PyPI's pytorch3d is a stale "
                "0.7.4 sdist and there is no pytorch3d wheel for torch >= 2.4, so building it needs a CUDA "
                "toolchain for one call of pure-PyTorch math",
            unnecessary_when="once a real pytorch3d is installed (remove the shim first: it refuses to coexist)",
            sources="[S13][S20]",
            needed=(
                Condition("absent", "pytorch3d", refusal="a real pytorch3d is installed; the shim never shadows "
                                                         "it"),
                Condition("importable", "torch", refusal="the rotation code is PyTorch: torch must import first"),
            ),
            module=f"{_HERE}.pytorch3d_transforms",
        ),
        Shim(
            name="torch-xpu",
            version="1.0.0",
            brief="torch.xpu meaning 'no XPU' for torch < 2.3",
            provides="torch.xpu for torch < 2.3, answering exactly as a torch without XPU does "
                     "(is_available() is False, device_count() is 0)",
            why="diffusers and transformers touch torch.xpu at import or behind is_available() guards; torch "
                "< 2.3 has no torch.xpu, and an old torch has no XPU to offer",
            unnecessary_when="once torch >= 2.3 is installed (its own torch.xpu wins; the shim then does nothing)",
            sources="[S17] transformers#31563",
            needed=(
                Condition("attr-missing", "torch", "xpu", refusal="torch already has torch.xpu; the shim never "
                                                                  "replaces it"),
                Condition("absent", "intel_extension_for_pytorch",
                          refusal="intel_extension_for_pytorch is installed: it provides torch.xpu for a real "
                                  "XPU, and 'no XPU' would be a lie"),
            ),
            module=f"{_HERE}.torch_xpu",
        ),
        Shim(
            name="hf-cached-download",
            version="1.0.0",
            brief="huggingface_hub.cached_download on the hub's hf_hub_download",
            provides="huggingface_hub.cached_download for Hub file URLs, on the hub's own hf_hub_download",
            why="diffusers <= 0.28.2 imports cached_download, which huggingface_hub removed in 0.26.0",
            unnecessary_when="once diffusers >= 0.29 is installed (or nothing else imports cached_download)",
            sources="[S16][S17]",
            needed=(
                Condition("attr-missing", "huggingface_hub", "cached_download",
                          refusal="huggingface_hub still has cached_download; the shim never replaces it"),
            ),
            module=f"{_HERE}.hf_cached_download",
        ),
    )
}


def shim_for_dist(dist_name: str) -> Optional[Shim]:
    for s in SHIMS.values():
        if s.dist == dist_name:
            return s
    return None
