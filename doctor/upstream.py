"""CLI adapter for Matrix-3D's own scripts: read what a script accepts from its source, then build the command.

The options are read statically with `ast` (importing an upstream script pulls the whole video/3D stack), so
drift — a renamed or removed option, a narrowed choice — is caught before a launch that would burn minutes
of model loading first (field report: `--mode/--output_path` passed to a script that no longer had them).
Commands run from the Matrix-3D root: the scripts read `./checkpoints` and `code/...` relative to it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import EXIT_FAIL, DoctorError

PANO_SCRIPT = "code/panoramic_image_generation.py"
VIDEO_SCRIPT = "code/panoramic_image_to_video.py"
SCENE_SCRIPT = "code/panoramic_video_to_3DScene.py"
SCENE_LRM_SCRIPT = "code/panoramic_video_480p_to_3DScene_lrm.py"


class UpstreamDrift(DoctorError):
    """The upstream script no longer accepts what the doctor would pass: refused before launch (exit 1)."""

    exit_code = EXIT_FAIL


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]
    type: Optional[str] = None  # "int", "float", "str" (the name passed as type=)
    default: Any = None
    choices: Optional[tuple[Any, ...]] = None
    action: Optional[str] = None


@dataclass
class ScriptCLI:
    path: Path
    options: dict[str, Option] = field(default_factory=dict)  # every flag -> its option

    def require(self, flag: str, value: Any = None) -> Option:
        opt = self.options.get(flag)
        if opt is None:
            raise UpstreamDrift(f"{self.path}: upstream no longer accepts {flag} (it accepts "
                                f"{', '.join(sorted(self.options)) or 'no options'}); update Matrix-3D or the doctor")
        if value is not None and opt.choices is not None and _typed(value, opt.type) not in opt.choices:
            raise UpstreamDrift(f"{self.path}: {flag} {value} is not one of {list(opt.choices)}")
        return opt


def _typed(value: Any, type_name: Optional[str]) -> Any:
    try:
        return {"int": int, "float": float}.get(type_name or "", lambda v: v)(value)
    except (TypeError, ValueError):
        return value


def _literal(node: Optional[ast.AST]) -> Any:
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError):
        return None  # a computed default (DEFAULT_CONFIG[...]): present, value unknown


def read_cli(path: Path) -> ScriptCLI:
    """Every `<anything>.add_argument(...)` call in the script, as options; unreadable source is drift too."""
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8", errors="replace"), filename=str(path))
    except FileNotFoundError:
        raise UpstreamDrift(f"{path}: upstream script not found (is --matrix3d-root a Matrix-3D checkout?)") from None
    except SyntaxError as exc:
        raise UpstreamDrift(f"{path}: cannot parse upstream script: {exc.msg} (line {exc.lineno})") from None
    cli = ScriptCLI(Path(path))
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument"):
            continue
        flags = tuple(a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str))
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        type_node = kw.get("type")
        type_name = type_node.id if isinstance(type_node, ast.Name) else None
        choices = _literal(kw.get("choices"))
        opt = Option(flags, type_name, _literal(kw.get("default")),
                     tuple(choices) if isinstance(choices, (list, tuple)) else None, _literal(kw.get("action")))
        for f in flags:
            cli.options[f] = opt
    return cli


def build_args(cli: ScriptCLI, values: dict[str, Any]) -> list[str]:
    """`--flag=value` for each value (None skipped), each checked against what the script declares."""
    out = []
    for flag, value in values.items():
        if value is None:
            continue
        cli.require(flag, value)
        out.append(f"{flag}={value}")
    return out


def i2p_command(root: Path, python: str, image: Path, out_dir: Path, seed: Optional[int],
                prompt: Optional[str], device: Optional[str]) -> list[str]:
    """Image -> panorama is upstream's own i2p mode (FLUX.1-Fill-dev, VideoLLaMA3, MoGe): delegated as is."""
    cli = read_cli(root / PANO_SCRIPT)
    args = build_args(cli, {"--mode": "i2p", "--input_image_path": str(image), "--output_path": str(out_dir),
                            "--seed": seed, "--prompt": prompt, "--device": device})
    return [python, PANO_SCRIPT, *args]


def video_command(root: Path, inout_dir: Path, resolution: int, seed: Optional[int], nproc: int) -> list[str]:
    cli = read_cli(root / VIDEO_SCRIPT)
    args = build_args(cli, {"--inout_dir": str(inout_dir), "--resolution": resolution, "--seed": seed})
    return ["torchrun", "--nproc_per_node", str(max(1, nproc)), VIDEO_SCRIPT, *args]


def scene_command(root: Path, python: str, inout_dir: Path, resolution: int, lrm: bool = False,
                  device: Optional[str] = None) -> list[str]:
    if lrm:
        cli = read_cli(root / SCENE_LRM_SCRIPT)
        args = build_args(cli, {"--video_path": str(inout_dir / "pano_video.mp4"),
                                "--pose_path": str(inout_dir / "pano_video_cam.json"),
                                "--out_path": str(inout_dir / "lrm"), "--device": device})
        return [python, SCENE_LRM_SCRIPT, *args]
    cli = read_cli(root / SCENE_SCRIPT)
    args = build_args(cli, {"--inout_dir": str(inout_dir), "--resolution": resolution, "--device": device})
    return [python, SCENE_SCRIPT, *args]


OOM_MARKERS = ("torch.OutOfMemoryError", "torch.cuda.OutOfMemoryError", "CUDA out of memory")


def is_oom(text: str) -> bool:
    return any(m in text for m in OOM_MARKERS)
