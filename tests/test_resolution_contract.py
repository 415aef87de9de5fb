"""Issue #10: one `--resolution` contract for check/gate/report/run, and one source of truth for a stage's plan.

A GPU pod is reproduced through the real command line: recorded NVML answers
(tests/fixtures/gpu/h200-torch2.11-cu130.json, a real H200) replayed with M3D_DOCTOR_NVML_REPLAY, or cards
derived from that record (named as such: a 24 GB card, a 4 GB card), so the budget is free memory as on any GPU
pod and no `--force` is given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
from gpureplay import replay
from m3d_doctor.errors import UsageError
from m3d_doctor.profile import load_profile
from m3d_doctor.stages import split_resolution

GiB = 1024**3
PLAN_KEYS = ("mode", "streamed_indices", "predicted_peak_bytes")
STAGES = load_profile().stages
PANO = [int(x) for x in STAGES["pano"]["resolution"].split("x")]  # the profile's defaults and named sizes
VIDEO = {name: list(hw) for name, hw in STAGES["video"]["resolutions"].items()}
VIDEO_DEFAULT = VIDEO[STAGES["video"]["resolution"]]


def card(total: int, used: int, name: str) -> Callable[[dict[str, Any]], None]:
    """Derive a card from the recorded H200: this much memory, this much held by a process we cannot see."""
    def mutate(nvml: dict[str, Any]) -> None:
        nvml["gpus"][0].update(name=name, capability="8.9", memory_total=total, memory_used=used,
                               memory_free=total - used, processes=[], pcie_gen=4)
    return mutate


RTX4090 = card(25757220864, int(1.5 * GiB), "NVIDIA GeForce RTX 4090")  # derived: a 24 GB card
SMALL = card(4 * GiB, int(0.5 * GiB), "NVIDIA T400 4GB")  # derived: a 4 GB card, where stages do not fit


def strict_json(text: str) -> Any:
    """json.loads that refuses Infinity/NaN (not JSON: other parsers reject them)."""
    def refuse(constant: str) -> Any:
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def root(tmp_path) -> Path:
    """A Matrix-3D checkout with no weights (the pano stage is native; nothing of upstream runs)."""
    r = tmp_path / "Matrix-3D"
    (r / "code").mkdir(parents=True)
    (r / "checkpoints").mkdir()
    return r


def _run(root: Path, out: Path, python: Path, *extra: str) -> list[str]:
    return ["run", "--prompt", "x", "--out", str(out), "--matrix3d-root", str(root), "--python", str(python),
            "--stages", "pano", *extra]


def _stage_plans(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The vram check's evidence per stage."""
    return {f["evidence"]["stage"]: f["evidence"] for c in doc["checks"] for f in c["findings"]
            if f["id"].startswith("vram.stage-")}


@pytest.mark.parametrize("extra", [[], ["--resolution", "720"], ["--resolution", "480"]])
def test_run_on_a_gpu_pod_without_force_is_not_a_resolution_error(doctor, tmp_path, root, tiny_venv, extra):
    env = replay(tmp_path, RTX4090)
    dry = doctor(*_run(root, tmp_path / "case", tiny_venv, "--dry-run", "--json", *extra), env=env)
    assert dry.rc == 0, dry.stderr
    (pano,) = strict_json(dry.stdout)["stages"]
    assert pano["plan"]["mode"] == "partial" and pano["plan"]["budget_bytes"] > 20 * GiB
    real = doctor(*_run(root, tmp_path / "case", tiny_venv, *extra), env=env)
    assert real.rc != 2 and "--resolution" not in real.stderr, real.stderr
    assert real.rc == 1 and "run refused" in real.stderr  # preflight: the tiny venv has no torch, no weights


@pytest.mark.parametrize("check_extra, run_extra", [
    ([], []),
    (["--budget", "12GiB"], ["--budget", "12GiB"]),
    (["--resolution", "1024x2048"], ["--height", "1024", "--width", "2048"]),
])
def test_check_vram_and_run_dry_run_plan_the_pano_the_same(doctor, tmp_path, root, tiny_venv, check_extra, run_extra):
    """One source of truth: `check vram` and `run --dry-run` on the same 24 GB card report the same pano plan."""
    env = replay(tmp_path, RTX4090)
    check = doctor("check", "vram", "--stage", "pano", "--json", *check_extra, env=env)
    assert check.rc == 0, check.stderr
    checked = _stage_plans(strict_json(check.stdout))["pano"]
    dry = doctor(*_run(root, tmp_path / "case", tiny_venv, "--dry-run", "--json", *run_extra), env=env)
    assert dry.rc == 0, dry.stderr
    (stage,) = strict_json(dry.stdout)["stages"]
    assert checked["plan"]["mode"] == "partial"
    assert {k: stage["plan"][k] for k in PLAN_KEYS} == {k: checked["plan"][k] for k in PLAN_KEYS}
    assert stage["plan"]["budget_bytes"] == checked["budget"]
    cmd = stage["command"]
    assert [int(cmd[cmd.index("--height") + 1]), int(cmd[cmd.index("--width") + 1])] == checked["resolution"]


@pytest.mark.parametrize("value, pano, video", [
    ("480", PANO, VIDEO["480"]),
    ("720", PANO, VIDEO["720"]),
    ("512x1024", [512, 1024], VIDEO_DEFAULT),
    ("1024x2048", [1024, 2048], VIDEO_DEFAULT),
])
def test_check_takes_either_form_without_stage(doctor, tmp_path, value, pano, video):
    env = replay(tmp_path, RTX4090)
    run = doctor("check", "vram", "--resolution", value, "--json", env=env)
    assert run.rc in (0, 1), run.stderr  # 1: a stage that does not fit this card is a finding, not bad input
    plans = _stage_plans(strict_json(run.stdout))
    assert plans["pano"]["resolution"] == pano and plans["video"]["resolution"] == video


@pytest.mark.parametrize("value", ["480", "720", "512x1024"])
def test_gate_and_report_take_either_form_without_stage(doctor, tmp_path, value):
    env = replay(tmp_path, RTX4090)
    gate = doctor("gate", "--offline", "--resolution", value, "--json", env=env)
    assert gate.rc != 2 and "--resolution" not in gate.stderr, gate.stderr
    report = doctor("report", "--format", "json", "--resolution", value, env=env)
    assert report.rc == 0, report.stderr
    assert {s["stage"] for s in strict_json(report.stdout)["stages"]} == {"pano", "video"}


@pytest.mark.parametrize("args", [
    ["check", "--resolution", "foo"],
    ["check", "vram", "--resolution", "1080"],
    ["gate", "--resolution", "720p"],
    ["report", "--resolution", "512x1000"],
])
def test_a_value_that_is_neither_form_is_one_line_exit_2(doctor, tmp_path, args):
    run = doctor(*args, env=replay(tmp_path, RTX4090))
    assert run.rc == 2 and "Traceback" not in run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert "480 or 720" in line and "HxW" in line


def test_run_takes_only_the_video_resolution(doctor, tmp_path, root, tiny_venv):
    run = doctor(*_run(root, tmp_path / "case", tiny_venv, "--dry-run", "--resolution", "512x1024"))
    assert run.rc == 2
    (line,) = run.stderr.strip().splitlines()
    assert "--height/--width" in line


def test_json_is_strict_where_stages_do_not_fit(doctor, tmp_path, root, tiny_venv):
    """A 4 GB card: the pano only fits sequentially (unknown slowdown), the video at 720 not at all; the planner
    says `inf` there, which must reach JSON as null, never as Infinity."""
    env = replay(tmp_path, SMALL)
    check = doctor("check", "vram", "--resolution", "720", "--json", env=env)
    assert check.rc == 1, check.stderr
    plans = _stage_plans(strict_json(check.stdout))
    assert not plans["video"]["plan"]["fits"] and plans["video"]["plan"]["slowdown_unknown"]
    assert plans["video"]["plan"]["predicted_slowdown"] is None
    assert plans["pano"]["plan"]["mode"] in ("sequential", "does-not-fit")
    assert plans["pano"]["plan"]["slowdown_unknown"] and plans["pano"]["plan"]["predicted_slowdown"] is None
    dry = doctor(*_run(root, tmp_path / "case", tiny_venv, "--dry-run", "--json"), env=env)
    assert dry.rc == 0, dry.stderr
    (stage,) = strict_json(dry.stdout)["stages"]
    assert stage["plan"]["mode"] == plans["pano"]["plan"]["mode"] and stage["plan"]["predicted_slowdown"] is None


def test_split_resolution_is_the_contract():
    assert split_resolution(None) == (None, None) and split_resolution("") == (None, None)
    assert split_resolution("720") == (None, "720") and split_resolution(480) == (None, "480")
    assert split_resolution("512x1024") == ((512, 1024), None)
    for bad in ("foo", "1080", "0x0", "512x1000", "720p"):
        with pytest.raises(UsageError, match="480 or 720.*HxW"):
            split_resolution(bad)
