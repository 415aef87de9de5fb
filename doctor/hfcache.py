"""The Hugging Face cache layout, read from disk in the doctor's own process (no hub import).

Layout (stable across huggingface_hub 0.x-2.x): <hub>/models--org--name/{blobs/<etag>, refs/<ref>,
snapshots/<commit>/<path> -> ../../blobs/<etag>}; a download in progress is `blobs/<etag>.incomplete`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


def hf_home() -> Path:
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "huggingface"


def hub_cache_dir() -> Path:
    """HF_HUB_CACHE, else the legacy HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    return hf_home() / "hub"


def repo_folder(repo_id: str, repo_type: str = "model") -> str:
    return f"{repo_type}s--{repo_id.replace('/', '--')}"


@dataclass
class CachedRevision:
    commit: str
    refs: list[str]
    files: dict[str, Path]  # path in repo -> snapshot entry
    size: int  # bytes of the blobs this revision points to


@dataclass
class CachedRepo:
    repo_id: str
    repo_type: str
    path: Path
    revisions: list[CachedRevision] = field(default_factory=list)
    blobs_size: int = 0  # every blob, referenced or not
    incomplete: list[Path] = field(default_factory=list)

    @property
    def detached(self) -> list[CachedRevision]:
        """Revisions no ref points to: left behind by an update, safe to delete."""
        return [r for r in self.revisions if not r.refs]

    def blobs_of(self, rev: CachedRevision) -> set[Path]:
        """The blobs a revision's snapshot links to, resolved; only those inside this repo's `blobs/`."""
        blobs = os.path.realpath(self.path / "blobs")
        out = set()
        for entry in rev.files.values():
            if entry.is_symlink():
                target = os.path.realpath(entry)
                if os.path.dirname(target) == blobs:
                    out.add(Path(target))
        return out

    def detached_blobs(self) -> dict[str, set[Path]]:
        """Per detached revision, the blobs no kept revision uses (each blob under its first detached
        revision): what deleting those revisions frees, never a blob a kept revision still needs."""
        kept: set[Path] = set()
        for rev in self.revisions:
            if rev.refs:
                kept |= self.blobs_of(rev)
        out: dict[str, set[Path]] = {}
        taken: set[Path] = set()
        for rev in self.detached:
            mine = self.blobs_of(rev) - kept - taken
            taken |= mine
            out[rev.commit] = mine
        return out


def _blob_size(entry: Path) -> int:
    try:
        return entry.stat().st_size  # follows the snapshot symlink to the blob
    except OSError:
        return 0


def read_repo(path: Path) -> Optional[CachedRepo]:
    kind, sep, rest = path.name.partition("--")
    if not sep or kind not in ("models", "datasets", "spaces"):
        return None
    repo = CachedRepo(repo_id=rest.replace("--", "/", 1), repo_type=kind[:-1], path=path)
    refs: dict[str, list[str]] = {}
    refs_dir = path / "refs"
    if refs_dir.is_dir():
        for root, _dirs, files in os.walk(refs_dir):
            for name in files:
                ref_path = Path(root, name)
                try:
                    commit = ref_path.read_text().strip()
                except OSError:
                    continue
                refs.setdefault(commit, []).append(str(ref_path.relative_to(refs_dir)))
    blobs = path / "blobs"
    if blobs.is_dir():
        with os.scandir(blobs) as it:
            for e in it:
                try:
                    size = e.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
                repo.blobs_size += size
                if e.name.endswith(".incomplete"):
                    repo.incomplete.append(Path(e.path))
    snaps = path / "snapshots"
    if snaps.is_dir():
        for snap in sorted(snaps.iterdir()):
            files: dict[str, Path] = {}
            for root, _dirs, names in os.walk(snap):
                for name in names:
                    p = Path(root, name)
                    files[str(p.relative_to(snap))] = p
            seen_blobs: set[str] = set()
            size = 0
            for p in files.values():
                target = os.path.realpath(p)
                if target not in seen_blobs:
                    seen_blobs.add(target)
                    size += _blob_size(p)
            repo.revisions.append(CachedRevision(snap.name, refs.get(snap.name, []), files, size))
    return repo


def scan(cache_dir: Optional[Path] = None) -> list[CachedRepo]:
    root = cache_dir or hub_cache_dir()
    if not root.is_dir():
        return []
    out = []
    for child in sorted(root.iterdir()):
        if child.is_dir():
            repo = read_repo(child)
            if repo is not None:
                out.append(repo)
    return out


def find_file(repo_id: str, filename: str, revision: str = "main", cache_dir: Optional[Path] = None,
              repo_type: str = "model") -> Optional[Path]:
    """The cached file for `revision` (a ref or a commit), as `try_to_load_from_cache` would find it."""
    root = (cache_dir or hub_cache_dir()) / repo_folder(repo_id, repo_type)
    commit = revision
    ref = root / "refs" / revision
    if ref.is_file():
        commit = ref.read_text().strip()
    candidate = root / "snapshots" / commit / filename
    return candidate if candidate.exists() else None
