"""Where the panorama stage's FLUX.1-dev comes from, and which diffusers call loads it. Pure (no torch): the
doctor prints it in `run --dry-run`; the runtime (doctor.runtime.pano) executes exactly what it decided.

1. `--checkpoint black-forest-labs/FLUX.1-dev=DIR`, a diffusers folder (model_index.json):
   `FluxPipeline.from_pretrained(DIR)`.
2. The same flag naming a single-file transformer (a .safetensors file, or a folder holding exactly one and no
   model_index.json): `FluxTransformer2DModel.from_single_file(FILE, config=BASE, subfolder="transformer")`, then
   `FluxPipeline.from_pretrained(BASE, transformer=transformer)`; BASE (`--pano-base`) is a diffusers folder or
   the repo id (resolved through the HF cache).
3. Nothing given: `FluxPipeline.from_pretrained(REPO)` from the HF cache.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from .errors import UsageError

FLUX_REPO = "black-forest-labs/FLUX.1-dev"
SINGLE_FILE_SUFFIXES = (".safetensors", ".sft")


@dataclass(frozen=True)
class PanoSource:
    kind: str  # folder | single-file | hub
    base: str  # what FluxPipeline.from_pretrained reads (folder or repo id)
    transformer_file: Optional[str] = None  # single-file case only

    def describe(self) -> str:
        if self.kind == "single-file":
            return (f"FluxTransformer2DModel.from_single_file({self.transformer_file!r}, config={self.base!r}, "
                    f"subfolder='transformer') + FluxPipeline.from_pretrained({self.base!r}, transformer=...)")
        return f"FluxPipeline.from_pretrained({self.base!r})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PanoSource:
        return cls(d["kind"], d["base"], d.get("transformer_file"))


def resolve_source(override: Optional[str], base: Optional[str] = None, repo: str = FLUX_REPO) -> PanoSource:
    """Decide the loading call; a path that is none of the three cases is a usage error naming it."""
    if not override:
        return PanoSource("hub", base or repo)
    p = Path(override).expanduser()
    if p.is_dir() and (p / "model_index.json").is_file():
        return PanoSource("folder", str(p))
    if p.is_file() and p.suffix in SINGLE_FILE_SUFFIXES:
        return PanoSource("single-file", str(base or repo), str(p))
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in SINGLE_FILE_SUFFIXES)
        if len(files) == 1:
            return PanoSource("single-file", str(base or repo), str(files[0]))
        raise UsageError(f"--checkpoint {repo}={p}: neither a diffusers folder (no model_index.json) nor a folder "
                         f"with one single-file transformer ({len(files)} .safetensors files)")
    raise UsageError(f"--checkpoint {repo}={p}: not found, or not a diffusers folder / .safetensors file")
