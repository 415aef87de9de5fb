"""Real trees for the disk tests: an HF cache with blobs/refs/snapshot symlinks, pip and uv caches, a
volume folder, the environment that points the doctor at them, and a listing to compare before/after."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OLD = time.time() - 3600  # an .incomplete blob untouched for an hour: an abandoned download
KEPT, DETACHED, OTHER = "a" * 40, "b" * 40, "c" * 40


def write(path: Path, size: int, seed: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    block = hashlib.sha256((seed or str(path)).encode()).digest()
    path.write_bytes((block * (size // len(block) + 1))[:size])
    return path


def link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


@dataclass
class Pod:
    root: Path

    @property
    def hf_home(self) -> Path:
        return self.root / "hf"

    @property
    def hub(self) -> Path:
        return self.hf_home / "hub"

    @property
    def repo(self) -> Path:
        return self.hub / "models--org--flux"

    @property
    def pip(self) -> Path:
        return self.root / "pip"

    @property
    def uv(self) -> Path:
        return self.root / "uv"

    @property
    def torch(self) -> Path:
        return self.root / "torch"

    @property
    def volume(self) -> Path:
        return self.root / "volume"

    @property
    def outside(self) -> Path:
        return self.root / "user-data"

    @property
    def shell_profile(self) -> Path:
        return self.root / "home" / ".profile"

    def env(self, **extra: str) -> dict[str, str]:
        e = {"HF_HOME": str(self.hf_home), "PIP_CACHE_DIR": str(self.pip), "UV_CACHE_DIR": str(self.uv),
             "TORCH_HOME": str(self.torch), "XDG_CACHE_HOME": str(self.root / "xdg"),
             "M3D_DOCTOR_PROFILE_FILE": str(self.shell_profile)}
        e.update(extra)
        return e

    def profile(self, models: str = "", **pod: object) -> Path:
        """tests/fixtures/profiles/disk.toml with the volume, container disk and `[pod]` keys filled in."""
        pod.setdefault("volume", str(self.volume))
        pod.setdefault("container_disk", str(self.root))
        lines = "\n".join(f"{k} = {_toml(v)}" for k, v in pod.items() if v is not None)
        text = (FIXTURES / "profiles" / "disk.toml").read_text().replace("# @POD@", lines)
        text = text.replace("# @MODELS@", models)
        path = self.root.parent / "disk.toml"  # beside the pod, out of its listings
        path.write_text(text)
        return path


def _toml(v: object) -> str:
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return str(v)


def build_pod(root: Path) -> Pod:
    """One model with a kept revision (ref main) and a detached one that shares a blob with it, a stale and a
    fresh `.incomplete`, pip and uv caches with a user file beside them and a link leading out."""
    pod = Pod(root)
    r = pod.repo
    write(r / "blobs" / "shared", 40_000)
    write(r / "blobs" / "kept-only", 120_000)
    write(r / "blobs" / "old-only", 300_000)
    write(r / "blobs" / "stale.incomplete", 50_000)
    write(r / "blobs" / "fresh.incomplete", 20_000)
    os.utime(r / "blobs" / "stale.incomplete", (OLD, OLD))
    (r / "refs").mkdir(parents=True)
    (r / "refs" / "main").write_text(KEPT)
    link(r / "snapshots" / KEPT / "model_index.json", "../../blobs/shared")
    link(r / "snapshots" / KEPT / "transformer" / "model.safetensors", "../../../blobs/kept-only")
    link(r / "snapshots" / DETACHED / "model_index.json", "../../blobs/shared")
    link(r / "snapshots" / DETACHED / "transformer" / "model.safetensors", "../../../blobs/old-only")
    write(pod.hub / "models--org--small" / "blobs" / "one", 8_000)
    (pod.hub / "models--org--small" / "refs").mkdir(parents=True)
    (pod.hub / "models--org--small" / "refs" / "main").write_text(OTHER)
    link(pod.hub / "models--org--small" / "snapshots" / OTHER / "config.json", "../../blobs/one")
    write(pod.pip / "http-v2" / "a" / "b" / "c1", 64_000)
    write(pod.pip / "wheels" / "ab" / "torch.whl", 200_000)
    write(pod.pip / "selfcheck" / "x.json", 100)
    write(pod.pip / "keep-me.txt", 10)  # not a pip cache entry: never listed
    write(pod.outside / "precious.bin", 5_000)
    link(pod.pip / "wheels" / "ab" / "escape", str(pod.outside / "precious.bin"))
    link(pod.pip / "http", str(pod.outside))  # a cache entry that is a link out of the cache
    write(pod.uv / "wheels-v5" / "pypi" / "numpy.whl", 90_000)
    write(pod.uv / "archive-v0" / "xyz" / "lib.so", 30_000)
    (pod.uv / "CACHEDIR.TAG").write_text("Signature: 8a477f597d28d172789f06886806bc55\n")
    write(pod.torch / "hub" / "checkpoints" / "vgg.pth", 70_000)
    pod.volume.mkdir()
    return pod


def du_bytes(*paths: Path) -> int:
    """What GNU du says: allocated bytes, hardlinks once, symlinks not followed, one filesystem."""
    out = subprocess.run(["du", "-scxB1", *map(str, paths)], capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1].split()[0])


def listing(root: Path) -> dict[str, str]:
    """Every entry below `root`: kind and size or link target (files by content digest)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = "file:" + hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    return out
