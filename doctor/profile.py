"""Profiles: what a target stack needs, as data (TOML) with sources in comments.

The Matrix-3D profile is embedded and is the default; `--profile FILE` loads another. A malformed
profile is a configuration error (exit 2) whose message names the file and the line.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name

from .errors import ProfileError
from .toml_compat import TOMLDecodeError, loads

SCHEMA_VERSION = 1
DEFAULT_PROFILE = "matrix3d"


@dataclass(frozen=True)
class PackagePin:
    name: str  # canonical distribution name
    spec: SpecifierSet
    import_name: Optional[str]
    required: bool = True
    why: str = ""

    @property
    def requirement(self) -> str:
        return f"{self.name}{self.spec}"


@dataclass(frozen=True)
class TorchVariant:
    name: str  # "cu126"
    cuda: str  # "12.6"
    index_url: str
    min_driver: str  # nominal driver floor of the toolkit (NVIDIA Table 3)
    archs: tuple[str, ...]  # sm_XY entries compiled into the build


@dataclass(frozen=True)
class TorchFamily:
    torch: str
    torchvision: Optional[str]
    torchaudio: Optional[str]
    variants: tuple[TorchVariant, ...]


@dataclass(frozen=True)
class AttrRequirement:
    attr: str  # "torch.xpu"
    needed_by: str
    why: str
    remedy: str = ""


@dataclass(frozen=True)
class ImportRequirement:
    module: str
    names: tuple[str, ...] = ()
    distribution: Optional[str] = None
    optional: bool = False
    remedy: str = ""  # a command that replaces "install the distribution" (e.g. a shim)
    why: str = ""


@dataclass(frozen=True)
class ModelFile:
    path: str  # path inside the repo
    size: Optional[int] = None  # bytes; approximate unless `exact` (used to plan downloads and disk)
    exact: bool = False  # the size is the Hub's byte count: a different size on disk means a bad file
    loaded_from: Optional[str] = None  # where the upstream code reads it, relative to the Matrix-3D root


@dataclass(frozen=True)
class Model:
    repo: str
    stage: str
    gated: bool
    files: tuple[ModelFile, ...]
    layout: str = "diffusers"  # diffusers | single-file | lora | files
    why: str = ""
    local_path: Optional[str] = None  # operator's override: a local folder holding the repo's files
    local_dir: Optional[str] = None  # where upstream's downloader puts the files, relative to the root
    required: bool = True
    resolution: Optional[str] = None  # needed only at this named video resolution ("480" | "720")


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    source: str  # file path, or "embedded:<name>"
    digest: str
    python: SpecifierSet
    packages: dict[str, PackagePin]
    torch: Optional[TorchFamily]
    imports: tuple[ImportRequirement, ...]
    attrs: tuple[AttrRequirement, ...]
    models: tuple[Model, ...]
    env: dict[str, dict[str, str]]
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: dict[str, str] = field(default_factory=dict)  # optional [lock]: file (next to the profile), python, platform
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def pin(self, name: str) -> Optional[PackagePin]:
        return self.packages.get(canonicalize_name(name))


_POD_KEYS: dict[str, type] = {
    "volumes": list, "outputs": list, "volume": str, "container_disk": str, "matrix3d_root": str,
    "min_free_container_gib": float, "reclaim_warn_gib": float, "du_budget_s": float, "du_ttl_s": float,
}


def _line_of(text: str, needle: str) -> int:
    """Best-effort line number of a key in the TOML text (1-based; 0 if not found)."""
    pat = re.compile(rf"(^|[\s.\[\"']){re.escape(needle)}([\s.\]\"'=]|$)")
    for i, line in enumerate(text.splitlines(), 1):
        if pat.search(line.split("#", 1)[0]):
            return i
    return 0


class _Reader:
    def __init__(self, text: str, source: str):
        self.text = text
        self.source = source

    def fail(self, key: str, message: str) -> ProfileError:
        line = _line_of(self.text, key.split(".")[-1].split("[")[0])
        where = f"{self.source}:{line}" if line else self.source
        return ProfileError(f"{where}: invalid profile: {key}: {message}")

    def get(self, table: dict, key: str, kind: type, path: str, default: Any = ..., ) -> Any:
        if key not in table:
            if default is ...:
                raise self.fail(path, "missing required key")
            return default
        value = table[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(path, f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    def spec(self, value: str, path: str) -> SpecifierSet:
        try:
            return SpecifierSet(value)
        except InvalidSpecifier:
            raise self.fail(path, f"not a version specifier: {value!r}") from None


def parse_profile(text: str, source: str) -> Profile:
    try:
        data = loads(text)
    except TOMLDecodeError as exc:
        # tomllib says "... (at line L, column C)"; keep it on one line with the file name first.
        m = re.search(r"at line (\d+)", str(exc))
        line = f":{m.group(1)}" if m else ""
        raise ProfileError(f"{source}{line}: invalid TOML: {exc}") from None
    r = _Reader(text, source)
    schema = r.get(data, "schema", int, "schema")
    if schema != SCHEMA_VERSION:
        raise r.fail("schema", f"unsupported schema {schema} (this doctor reads {SCHEMA_VERSION})")
    name = r.get(data, "name", str, "name")
    python = r.spec(r.get(r.get(data, "python", dict, "python"), "requires", str, "python.requires"),
                    "python.requires")

    packages: dict[str, PackagePin] = {}
    for pname, entry in r.get(data, "packages", dict, "packages", {}).items():
        path = f"packages.{pname}"
        if isinstance(entry, str):
            entry = {"spec": entry}
        if not isinstance(entry, dict):
            raise r.fail(path, "expected a table or a specifier string")
        canon = canonicalize_name(pname)
        packages[canon] = PackagePin(
            name=canon,
            spec=r.spec(r.get(entry, "spec", str, path + ".spec"), path + ".spec"),
            import_name=r.get(entry, "import", str, path + ".import", None),
            required=r.get(entry, "required", bool, path + ".required", True),
            why=r.get(entry, "why", str, path + ".why", ""),
        )

    torch = None
    if "torch" in data:
        t = r.get(data, "torch", dict, "torch")
        variants = []
        for i, v in enumerate(r.get(t, "variants", list, "torch.variants", [])):
            path = f"torch.variants[{i}]"
            if not isinstance(v, dict):
                raise r.fail("variants", "each variant must be a table")
            variants.append(TorchVariant(
                name=r.get(v, "name", str, path + ".name"),
                cuda=r.get(v, "cuda", str, path + ".cuda"),
                index_url=r.get(v, "index_url", str, path + ".index_url"),
                min_driver=r.get(v, "min_driver", str, path + ".min_driver"),
                archs=tuple(r.get(v, "archs", list, path + ".archs", [])),
            ))
        torch = TorchFamily(
            torch=r.get(t, "torch", str, "torch.torch"),
            torchvision=r.get(t, "torchvision", str, "torch.torchvision", None),
            torchaudio=r.get(t, "torchaudio", str, "torch.torchaudio", None),
            variants=tuple(variants),
        )

    imports = []
    for i, entry in enumerate(r.get(data, "imports", list, "imports", [])):
        path = f"imports[{i}]"
        if isinstance(entry, str):
            entry = {"module": entry}
        if not isinstance(entry, dict):
            raise r.fail("imports", "each entry must be a module name or a table")
        imports.append(ImportRequirement(
            module=r.get(entry, "module", str, path + ".module"),
            names=tuple(r.get(entry, "names", list, path + ".names", [])),
            distribution=r.get(entry, "distribution", str, path + ".distribution", None),
            optional=r.get(entry, "optional", bool, path + ".optional", False),
            remedy=r.get(entry, "remedy", str, path + ".remedy", ""),
            why=r.get(entry, "why", str, path + ".why", ""),
        ))

    attrs = []
    for i, entry in enumerate(r.get(data, "attrs", list, "attrs", [])):
        path = f"attrs[{i}]"
        if not isinstance(entry, dict):
            raise r.fail("attrs", "each entry must be a table")
        attrs.append(AttrRequirement(
            attr=r.get(entry, "attr", str, path + ".attr"),
            needed_by=r.get(entry, "needed_by", str, path + ".needed_by", ""),
            why=r.get(entry, "why", str, path + ".why", ""),
            remedy=r.get(entry, "remedy", str, path + ".remedy", ""),
        ))

    models = []
    for i, entry in enumerate(r.get(data, "models", list, "models", [])):
        path = f"models[{i}]"
        if not isinstance(entry, dict):
            raise r.fail("models", "each model must be a table")
        files = []
        for j, f in enumerate(r.get(entry, "files", list, path + ".files", [])):
            if isinstance(f, str):
                f = {"path": f}
            if not isinstance(f, dict):
                raise r.fail("files", "each file must be a path or a table")
            fp = f"{path}.files[{j}]"
            files.append(ModelFile(path=r.get(f, "path", str, fp + ".path"),
                                   size=r.get(f, "size", int, fp + ".size", None),
                                   exact=r.get(f, "exact", bool, fp + ".exact", False),
                                   loaded_from=r.get(f, "loaded_from", str, fp + ".loaded_from", None)))
        layout = r.get(entry, "layout", str, path + ".layout", "diffusers")
        if layout not in ("diffusers", "single-file", "lora", "files"):
            raise r.fail("layout", f"unknown layout {layout!r}")
        models.append(Model(
            repo=r.get(entry, "repo", str, path + ".repo"),
            stage=r.get(entry, "stage", str, path + ".stage", ""),
            gated=r.get(entry, "gated", bool, path + ".gated", False),
            files=tuple(files),
            layout=layout,
            why=r.get(entry, "why", str, path + ".why", ""),
            local_path=r.get(entry, "local_path", str, path + ".local_path", None),
            local_dir=r.get(entry, "local_dir", str, path + ".local_dir", None),
            required=r.get(entry, "required", bool, path + ".required", True),
            resolution=r.get(entry, "resolution", str, path + ".resolution", None),
        ))

    pod = r.get(data, "pod", dict, "pod", {})
    for key, kind in _POD_KEYS.items():
        if key in pod:
            value = pod[key]
            ok = (isinstance(value, list) and all(isinstance(v, str) for v in value)) if kind is list else (
                isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0) if kind is float else (
                isinstance(value, kind))
            if not ok:
                want = {list: "a list of paths", float: "a non-negative number", str: "a path"}[kind]
                raise r.fail(f"pod.{key}", f"expected {want}, got {value!r}")

    env = {}
    for key, entry in r.get(data, "env", dict, "env", {}).items():
        if not isinstance(entry, dict):
            raise r.fail(f"env.{key}", "expected a table")
        env[key] = {k: str(v) for k, v in entry.items()}

    lock_table = r.get(data, "lock", dict, "lock", {})
    if lock_table and "file" not in lock_table:
        raise r.fail("lock.file", "missing required key")
    return Profile(
        name=name,
        description=r.get(data, "description", str, "description", ""),
        source=source,
        digest=hashlib.sha256(text.encode()).hexdigest()[:16],
        python=python,
        packages=packages,
        torch=torch,
        imports=tuple(imports),
        attrs=tuple(attrs),
        models=tuple(models),
        env=env,
        stages=r.get(data, "stages", dict, "stages", {}),
        lock={k: r.get(lock_table, k, str, f"lock.{k}") for k in lock_table},
        raw=data,
    )


def embedded_profile_text(name: str = DEFAULT_PROFILE) -> str:
    try:
        return resources.files("m3d_doctor.profiles").joinpath(f"{name}.toml").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(f"no embedded profile named {name!r}") from None


def load_profile(spec: Optional[str] = None) -> Profile:
    """Load the embedded default, an embedded profile by name, or a TOML file by path."""
    if not spec:
        return parse_profile(embedded_profile_text(), f"embedded:{DEFAULT_PROFILE}")
    path = Path(spec)
    if path.suffix == ".toml" or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ProfileError(f"{spec}: profile file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ProfileError(f"{spec}: cannot read profile: {exc}") from None
        return parse_profile(text, str(path))
    return parse_profile(embedded_profile_text(spec), f"embedded:{spec}")
