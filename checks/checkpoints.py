"""checkpoints: every artifact the profile needs is present, complete, parseable, and laid out for the
call that will load it — before a 40 GB download or a 10-minute load finds out.

Where a model lives: `--checkpoint REPO=PATH` (or M3D_CHECKPOINTS, or the profile's `local_path`), else
the HF cache (as `from_pretrained(repo)` finds it), else the Matrix-3D checkout (`local_dir`).
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

from m3d_doctor import hfcache
from m3d_doctor.check import Check
from m3d_doctor.context import Context
from m3d_doctor.findings import Finding, Remedy, Severity
from m3d_doctor.profile import Model, ModelFile
from m3d_doctor.safetensors_header import HeaderError, read_header


def matrix3d_root(ctx: Context) -> Path:
    root = (ctx.options.extra.get("matrix3d_root") or os.environ.get("M3D_MATRIX3D_ROOT")
            or ctx.profile.raw.get("pod", {}).get("matrix3d_root") or ".")
    return Path(root).expanduser()


def override_dir(ctx: Context, model: Model) -> Optional[Path]:
    local = (ctx.options.extra.get("checkpoints") or {}).get(model.repo) or model.local_path
    return Path(local).expanduser() if local else None


def locate(ctx: Context, model: Model, f: ModelFile) -> tuple[Optional[Path], str]:
    """Where this file would be loaded from, and which kind of place that is."""
    override = override_dir(ctx, model)
    if override is not None:
        p = override / f.path
        return (p if p.exists() else None), "override"
    cached = hfcache.find_file(model.repo, f.path)
    if cached is not None:
        return cached, "hf-cache"
    root = matrix3d_root(ctx)
    for rel in filter(None, [f.loaded_from, f"{model.local_dir}/{f.path}" if model.local_dir else None]):
        if (root / rel).exists():
            return root / rel, "matrix3d"
    return None, "missing"


def _download_cmd(model: Model, files: list[str]) -> str:
    if 0 < len(files) <= 3:
        return f"hf download {model.repo} " + " ".join(shlex.quote(p) for p in files)
    return f"m3d-doctor fix hf.download  # the profile's files of {model.repo}"


class CheckpointsCheck(Check):
    name = "checkpoints"
    description = "model files present, complete, parseable, and laid out for how they will be loaded"
    order = 72
    needs_live_target = False

    def run(self, ctx: Context) -> list[Finding]:
        findings: list[Finding] = []
        for model in ctx.models():
            # the stage a finding concerns: run's preflight only weighs the stages it will run
            findings += [replace(f, evidence={**(f.evidence or {}), "stage": model.stage}) if model.stage else f
                         for f in self._model(ctx, model)]
        if not any(f.severity in (Severity.FAIL, Severity.WARN) for f in findings):
            findings.insert(0, Finding("checkpoints.ok", Severity.OK,
                                       f"{len(ctx.models())} model entries present and complete"))
        return findings

    def _model(self, ctx: Context, model: Model) -> list[Finding]:
        out: list[Finding] = []
        sev = Severity.FAIL if model.required else Severity.WARN
        override = override_dir(ctx, model)
        if override is not None and model.layout == "diffusers":
            out += self._diffusers_layout(model, override)
        repo_cache = hfcache.read_repo(hfcache.hub_cache_dir() / hfcache.repo_folder(model.repo))
        if repo_cache is not None and repo_cache.incomplete:
            out.append(Finding(
                "checkpoints.incomplete", Severity.WARN,
                f"{model.repo}: {len(repo_cache.incomplete)} interrupted download(s) in the HF cache",
                cause="a download stopped before the end leaves `.incomplete` blobs; huggingface_hub resumes "
                      "them, but they hold disk until then",
                evidence={"repo": model.repo, "incomplete": [str(p) for p in repo_cache.incomplete],
                          "bytes": sum(p.stat().st_size for p in repo_cache.incomplete if p.exists())},
                remedy=Remedy(_download_cmd(model, []), "hf.download"),
            ))
        missing: list[ModelFile] = []
        for f in model.files:
            path, where = locate(ctx, model, f)
            if path is None:
                moved = self._lora_elsewhere(ctx, model, f)
                if moved is not None:
                    out.append(moved)
                    continue
                missing.append(f)
                continue
            out += self._file(model, f, path, where)
            if f.loaded_from and where != "override":
                expected = matrix3d_root(ctx) / f.loaded_from
                if not expected.exists() and matrix3d_root(ctx).is_dir():
                    out.append(self._link_finding(model, f, path, expected, sev))
        if missing:
            total = sum(f.size or 0 for f in missing)
            out.append(Finding(
                "checkpoints.missing", sev,
                f"{model.repo}: {len(missing)} of {len(model.files)} file(s) not found locally "
                f"({_gb(total)} to download)",
                cause=(f"needed by the {model.stage} stage: {model.why}" if model.stage else model.why)
                + (f"; looked in {override}" if override else "; looked in the HF cache and the Matrix-3D checkout"),
                evidence={"repo": model.repo, "files": [f.path for f in missing], "bytes": total,
                          "gated": model.gated},
                remedy=Remedy(_download_cmd(model, [f.path for f in missing]), "hf.download"),
            ))
        return out

    def _file(self, model: Model, f: ModelFile, path: Path, where: str) -> list[Finding]:
        out = []
        ev: dict[str, Any] = {"repo": model.repo, "file": f.path, "path": str(path), "found_in": where}
        try:
            size = path.stat().st_size
        except OSError as exc:
            return [Finding("checkpoints.unreadable", Severity.FAIL, f"{model.repo}/{f.path}: cannot stat",
                            cause=str(exc), evidence=ev)]
        ev["size"] = size
        if f.exact and f.size is not None and size != f.size:
            out.append(Finding(
                "checkpoints.size-mismatch", Severity.FAIL,
                f"{model.repo}/{f.path}: {size} bytes, the Hub's file has {f.size}",
                cause="a partial copy or a different revision; loading will fail or load the wrong weights",
                evidence={**ev, "expected": f.size},
                remedy=Remedy(_download_cmd(model, [f.path]), "hf.download"),
            ))
        if path.suffix == ".safetensors":
            try:
                header = read_header(path)
            except (HeaderError, OSError) as exc:
                out.append(Finding(
                    "checkpoints.corrupt", Severity.FAIL, f"{model.repo}/{f.path}: not a readable safetensors file",
                    cause=str(exc), evidence=ev, remedy=Remedy(_download_cmd(model, [f.path]), "hf.download")))
                return out
            if not header.complete:
                out.append(Finding(
                    "checkpoints.truncated", Severity.FAIL,
                    f"{model.repo}/{f.path}: truncated ({size} of {header.data_start + header.data_end} bytes)",
                    cause="the header promises more tensor data than the file holds: an interrupted copy or "
                          "download", evidence={**ev, "expected_at_least": header.data_start + header.data_end},
                    remedy=Remedy(_download_cmd(model, [f.path]), "hf.download")))
        return out

    def _diffusers_layout(self, model: Model, folder: Path) -> list[Finding]:
        """A folder given for a diffusers pipeline must be loadable by `Pipeline.from_pretrained(folder)`."""
        ev: dict[str, Any] = {"repo": model.repo, "path": str(folder)}
        if not folder.is_dir():
            single = folder if folder.suffix == ".safetensors" and folder.exists() else None
            if single is None:
                return [Finding("checkpoints.path-not-found", Severity.FAIL,
                                f"{model.repo}: {folder} does not exist", evidence=ev)]
            return [self._single_file_finding(model, single, ev)]
        index = folder / "model_index.json"
        if not index.exists():
            lone = sorted(folder.glob("*.safetensors"))
            if lone:
                return [self._single_file_finding(model, lone[0], ev)]
            return [Finding(
                "checkpoints.layout-no-model-index", Severity.FAIL,
                f"{model.repo}: {folder} has no model_index.json",
                cause="FluxPipeline.from_pretrained(folder) needs a diffusers folder (model_index.json and one "
                      "folder per component); this is neither that nor a single-file checkpoint",
                evidence={**ev, "entries": sorted(p.name for p in folder.iterdir())[:30]},
                remedy=Remedy(f"hf download {model.repo} --local-dir {shlex.quote(str(folder))}", "hf.download"))]
        try:
            components = json.loads(index.read_text())
        except (OSError, ValueError) as exc:
            return [Finding("checkpoints.layout-bad-model-index", Severity.FAIL,
                            f"{model.repo}: {index} is not valid JSON", cause=str(exc), evidence=ev)]
        absent = [name for name, spec in components.items()
                  if not name.startswith("_") and isinstance(spec, list) and spec[0] is not None
                  and not (folder / name).is_dir()]
        if absent:
            return [Finding(
                "checkpoints.layout-missing-component", Severity.FAIL,
                f"{model.repo}: {folder} lacks component folder(s) {', '.join(absent)}",
                cause="model_index.json names these components; from_pretrained(folder) fails on the first absent one",
                evidence={**ev, "missing": absent},
                remedy=Remedy(_download_cmd(model, [f"{a}/*" for a in absent]), "hf.download"))]
        return [Finding("checkpoints.layout-ok", Severity.OK,
                        f"{model.repo}: diffusers folder loads with from_pretrained({folder})", evidence=ev)]

    def _single_file_finding(self, model: Model, file: Path, ev: dict[str, Any]) -> Finding:
        return Finding(
            "checkpoints.layout-single-file", Severity.FAIL,
            f"{model.repo}: {file.name} is a single-file transformer, not a diffusers folder",
            cause="FluxPipeline.from_pretrained(folder) needs model_index.json; a lone transformer loads with "
                  "FluxTransformer2DModel.from_single_file(path), and the rest of the pipeline (text encoders, "
                  "VAE) must come from the diffusers repo: FluxPipeline.from_pretrained("
                  f"'{model.repo}', transformer=transformer). `m3d-doctor run` does this itself.",
            evidence={**ev, "single_file": str(file)},
            remedy=Remedy(f"m3d-doctor run --checkpoint {model.repo}={shlex.quote(str(file))} ...",
                          note="single-file transformer + base components"))

    def _lora_elsewhere(self, ctx: Context, model: Model, f: ModelFile) -> Optional[Finding]:
        """Upstream's downloader keeps the repo sub-folder; its generator reads another path and name."""
        if not (f.loaded_from and model.local_dir):
            return None
        root = matrix3d_root(ctx)
        downloaded = root / model.local_dir / f.path
        for candidate in (downloaded, root / model.local_dir / Path(f.path).name):
            if candidate.exists():
                return self._link_finding(model, f, candidate, root / f.loaded_from,
                                          Severity.FAIL if model.required else Severity.WARN)
        return None

    def _link_finding(self, model: Model, f: ModelFile, actual: Path, expected: Path, sev: Severity) -> Finding:
        return Finding(
            "checkpoints.lora-path-mismatch", sev,
            f"{model.repo}/{f.path} is at {actual}, the generator reads {expected}",
            cause="Matrix-3D's download_checkpoints.py keeps the repo sub-folder (and the file's own name), while "
                  "its generator loads a fixed path: the LoRA is downloaded and still 'not found'",
            evidence={"repo": model.repo, "file": f.path, "actual": str(actual), "expected": str(expected)},
            remedy=Remedy(f"mkdir -p {shlex.quote(str(expected.parent))} && "
                          f"ln -sfn {shlex.quote(str(actual))} {shlex.quote(str(expected))}", "checkpoints.link"),
        )


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


CHECK = CheckpointsCheck()
