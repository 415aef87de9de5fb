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


VIDEO_OPTIONS = ("--angle", "--movement_range", "--movement_mode", "--json_path", "--seed", "--resolution",
                 "--inout_dir")
LATER_VIDEO_OPTIONS = ("--enable_vram_management", "--use_5b_model")  # upstream after 980959f (ff629bf, f1c0b14)
VIDEO_MODEL_DIR = {480: "checkpoints/Wan-AI/Wan2.1-I2V-14B-480P", 720: "checkpoints/Wan-AI/Wan2.1-I2V-14B-720P"}
VIDEO_LORA = {480: "checkpoints/Wan-AI/wan_lora/pano_video_gen_480p.ckpt",
              720: "checkpoints/Wan-AI/wan_lora/pano_video_gen_720p.bin"}
VIDEO_SHARDS = tuple(f"diffusion_pytorch_model-0000{i}-of-00007.safetensors" for i in range(1, 8))
VIDEO_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
VIDEO_CLIP = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
VIDEO_VAE = "Wan2.1_VAE.pth"
VIDEO_TOKENIZER = "google/umt5-xxl"  # beside the T5 file: WanVideoPipeline.fetch_models reads it from there
MOGE_CHECKPOINT = "checkpoints/moge/model.pt"
VENDORED = {"diffsynth": "code/DiffSynth-Studio/diffsynth/pipelines/wan_video.py",
            "nvrender": "code/utils_3dscene/nvrender.py", "MoGe": "code/MoGe/scripts/infer_panorama.py"}


def render_needs_cuda(root: Path) -> bool:
    """Whether the checkout's camera-rail render runs on CUDA only (upstream's uses nvdiffrast's
    `RasterizeCudaContext`, no CPU path): the video stage then needs a GPU."""
    try:
        return "RasterizeCudaContext" in (Path(root) / VENDORED["nvrender"]).read_text(errors="replace")
    except OSError:
        return False


def video_version(root: Path) -> str:
    """Which upstream video script this checkout has: '980959f' (the snapshot) or 'later' (adds the low-VRAM
    flag and the Wan2.2 5B path). Raises UpstreamDrift when options the native stage mirrors are gone."""
    cli = read_cli(root / VIDEO_SCRIPT)
    for flag in VIDEO_OPTIONS:
        cli.require(flag)
    return "later" if any(f in cli.options for f in LATER_VIDEO_OPTIONS) else "980959f"


@dataclass(frozen=True)
class VideoInputs:
    """Every file the native video stage reads, as absolute paths (the doctor resolves them once, the same way
    the checkpoints check does, and hands them to the runtime)."""

    root: Path
    resolution: int
    shards: tuple[Path, ...]
    t5: Path
    clip: Path
    vae: Path
    tokenizer: Path
    lora: Path
    moge: Path

    def to_dict(self) -> dict[str, Any]:
        return {"root": str(self.root), "resolution": self.resolution, "shards": [str(p) for p in self.shards],
                "t5": str(self.t5), "clip": str(self.clip), "vae": str(self.vae), "tokenizer": str(self.tokenizer),
                "lora": str(self.lora), "moge": str(self.moge)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VideoInputs:
        return cls(Path(d["root"]), int(d["resolution"]), tuple(Path(p) for p in d["shards"]), Path(d["t5"]),
                   Path(d["clip"]), Path(d["vae"]), Path(d["tokenizer"]), Path(d["lora"]), Path(d["moge"]))

    @classmethod
    def in_checkout(cls, root: Path, resolution: int, model_dir: Optional[Path] = None) -> VideoInputs:
        """Upstream's own layout (what `panoramic_image_to_video.py` reads), or `model_dir` for the Wan files."""
        root = Path(root).resolve()
        d = Path(model_dir) if model_dir else root / VIDEO_MODEL_DIR[resolution]
        return cls(root, resolution, tuple(d / s for s in VIDEO_SHARDS), d / VIDEO_T5, d / VIDEO_CLIP, d / VIDEO_VAE,
                   d / VIDEO_TOKENIZER, root / VIDEO_LORA[resolution], root / MOGE_CHECKPOINT)

    def problems(self) -> list[str]:
        """One line per missing input: the file, and the command that provides it. Empty: the stage can start."""
        out = []
        for name, rel in VENDORED.items():
            if not (self.root / rel).is_file():
                out.append(f"{self.root / rel}: the checkout lacks upstream's vendored {name} (is --matrix3d-root "
                           "a full Matrix-3D checkout? `git clone https://github.com/SkyworkAI/Matrix-3D`)")
        repo = f"Wan-AI/Wan2.1-I2V-14B-{self.resolution}P"
        for p in (*self.shards, self.t5, self.clip, self.vae):
            if not p.is_file():
                out.append(f"{p}: missing {repo} file (m3d-doctor fix hf.download, or `hf download {repo} "
                           f"{p.name} --local-dir {p.parent}`)")
        tok = self.tokenizer
        if not ((tok / "tokenizer_config.json").is_file()
                and ((tok / "tokenizer.json").is_file() or (tok / "spiece.model").is_file())):
            out.append(f"{tok}: missing the umT5 tokenizer folder of {repo} (`hf download {repo} --include "
                       f"'{VIDEO_TOKENIZER}/*' --local-dir {self.t5.parent}`)")
        if not self.lora.is_file():
            other = {480: 720, 720: 480}[self.resolution]
            alt = self.root / VIDEO_LORA[other]
            hint = (f"; only the {other}p LoRA ({alt.name}) is here: --resolution {other}, or download the "
                    f"{self.resolution}p one" if alt.is_file() else "")
            out.append(f"{self.lora}: missing the {self.resolution}p panoramic-video LoRA (Skywork/Matrix-3D: "
                       f"`python code/download_checkpoints.py` or m3d-doctor fix hf.download){hint}")
        if not self.moge.is_file():
            out.append(f"{self.moge}: missing the MoGe checkpoint (`hf download Ruicheng/moge-vitl model.pt "
                       f"--local-dir {self.moge.parent}`)")
        return out


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
