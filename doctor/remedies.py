"""Building the exact commands a finding offers, from the profile's pins: one place, one quoting."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Iterable

from packaging.utils import canonicalize_name

if TYPE_CHECKING:
    from .context import Context


def pip(ctx: Context) -> str:
    python = getattr(ctx.target, "python", None) or "python"
    return f"{shlex.quote(python)} -m pip"


def pinned(ctx: Context, names: Iterable[str]) -> list[str]:
    """Requirement strings for these distributions: the profile's pin, else the bare name."""
    out = []
    for name in names:
        pin = ctx.profile.pin(name)
        out.append(pin.requirement if pin else canonicalize_name(name))
    return list(dict.fromkeys(out))


def install(ctx: Context, names: Iterable[str], extra: str = "") -> str:
    reqs = " ".join(shlex.quote(r) for r in pinned(ctx, names))
    torch_index = torch_index_option(ctx, names)
    return f"{pip(ctx)} install {extra}{reqs}{torch_index}".replace("  ", " ")


def torch_index_option(ctx: Context, names: Iterable[str]) -> str:
    """torch-family wheels come from the index `fix` would use (installer.torch_index: the CUDA variant that suits
    the driver and GPUs, the CPU index without a GPU), so the command shown and the fix agree."""
    from .installer import TORCH_FAMILY, torch_index

    if not set(TORCH_FAMILY).intersection(canonicalize_name(n) for n in names):
        return ""
    index, _why = torch_index(ctx)
    return f" --index-url {index}" if index else ""


def distribution_for_module(ctx: Context, module: str) -> str | None:
    """The distribution that provides an import name, from the profile first, then from installed metadata."""
    top = module.split(".")[0]
    for pin in ctx.profile.packages.values():
        if pin.import_name and pin.import_name.split(".")[0] == top:
            return pin.name
    for req in ctx.profile.imports:
        if req.module.split(".")[0] == top and req.distribution:
            return canonicalize_name(req.distribution)
    if canonicalize_name(top) in ctx.target.dists:
        return canonicalize_name(top)
    return None
