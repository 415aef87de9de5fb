"""vram (real NVML where present, recorded answers for GPU cases), gate exit codes and the fingerprint skip,
and the report's formats parsed back (Prometheus by prometheus_client's own parser).

The GPU cases replay tests/fixtures/gpu/h200-torch2.11-cu130.json (a real H200 recorded through the device
tool) or variants derived from it, named as such: these CI machines have no NVIDIA driver.
"""

from __future__ import annotations

import json

import pytest
from gpureplay import REC, replay
from prometheus_client.parser import text_string_to_metric_families

GiB = 1024**3


def rtx4090(nvml):  # derived: a 24 GB card with another container holding 1.5 GiB
    g = nvml["gpus"][0]
    g.update(name="NVIDIA GeForce RTX 4090", capability="8.9", memory_total=25757220864,
             memory_used=int(1.5 * GiB), memory_free=25757220864 - int(1.5 * GiB), processes=[], pcie_gen=4)


def test_without_a_driver_the_real_nvml_library_says_why(doctor, tiny_venv, tiny_profile):
    run = doctor("check", "vram", "--python", str(tiny_venv), "--json")
    (f,) = run.findings("vram.no-gpu")
    assert f["severity"] == "skip" and "driver" in f["cause"].lower()


def test_recorded_h200_runs_the_panorama_resident(doctor, tmp_path):
    run = doctor("check", "vram", "--stage", "pano", "--json", env=replay(tmp_path))
    (gpu,) = run.findings("vram.gpu")
    assert gpu["evidence"]["name"] == "NVIDIA H200" and gpu["evidence"]["cuda_index"] == 0
    (fit,) = run.findings("vram.stage-fits")
    assert fit["evidence"]["plan"]["mode"] == "resident"


def test_a_24gb_card_gets_a_plan_and_foreign_memory_is_flagged(doctor, tmp_path):
    run = doctor("check", "vram", "--stage", "pano,video", "--json", env=replay(tmp_path, rtx4090))
    plans = {f["evidence"]["stage"]: f["evidence"]["plan"] for f in run.findings("vram.stage-needs-plan")}
    assert plans["pano"]["mode"] == "partial" and plans["pano"]["predicted_peak_gib"] <= 22
    assert plans["video"]["mode"] == "partial"
    assert "~1.0" in run.findings("vram.stage-needs-plan")[0]["title"]  # 4090 speed known: slowdown predicted
    (foreign,) = run.findings("vram.foreign-usage")
    assert "cannot see" in foreign["title"]


def test_video_720_fits_a_24gb_card_with_a_streaming_plan(doctor, tmp_path):
    run = doctor("check", "vram", "--stage", "video", "--resolution", "720", "--json", env=replay(tmp_path, rtx4090))
    (f,) = run.findings("vram.stage-needs-plan")
    assert "video at 720x1440: fits with plan 'partial'" in f["title"]
    assert f["evidence"]["plan"]["host_peak_bytes"] > 0


def test_video_on_a_small_card_names_the_phase_that_does_not_fit(doctor, tmp_path):
    """On 8 GiB the umT5 encoder alone (11 GiB, never streamed) is what fails: a lower resolution would not help."""
    run = doctor("check", "vram", "--stage", "video", "--resolution", "720", "--budget", "8GiB", "--json")
    assert run.rc == 1
    (f,) = run.findings("vram.stage-does-not-fit")
    assert "encode text phase alone needs 11.1 GiB" in f["cause"]
    assert f["remedy"]["command"] == "a GPU with more memory"


def test_cuda_visible_devices_maps_and_can_hide_every_gpu(doctor, tmp_path):
    uuid = REC["nvml"]["gpus"][0]["uuid"]
    run = doctor("check", "vram", "--json", env={**replay(tmp_path), "CUDA_VISIBLE_DEVICES": uuid[:12]})
    assert run.findings("vram.gpu")[0]["evidence"]["cuda_index"] == 0
    hidden = doctor("check", "vram", "--json", env={**replay(tmp_path), "CUDA_VISIBLE_DEVICES": "7"})
    assert hidden.findings("vram.none-visible")


def test_budget_plans_for_another_card_without_a_gpu(doctor):
    run = doctor("check", "vram", "--budget", "12GiB", "--stage", "pano", "--resolution", "1024x2048", "--json")
    (f,) = run.findings("vram.stage-needs-plan")
    assert f["evidence"]["budget"] == 12 * GiB and f["evidence"]["plan"]["predicted_peak_gib"] <= 10


def test_bad_sizes_are_usage_errors(doctor):
    for args in (["check", "vram", "--budget", "lots"], ["gate", "--min-free-disk", "80 parsecs"]):
        run = doctor(*args)
        assert run.rc == 2 and "expected a size" in run.stderr and "Traceback" not in run.stderr


@pytest.fixture
def gate_env(tmp_path):
    return {"HF_HOME": str(tmp_path / "hf")}


def test_gate_passes_a_healthy_target_with_one_line(doctor, tiny_venv, tiny_profile, gate_env):
    run = doctor("gate", "--offline", "--python", str(tiny_venv), "--profile", str(tiny_profile),
                 "--min-free-disk", "1MB", env=gate_env)
    assert run.rc == 0, run.stdout
    assert run.stdout.count("\n") == 1 and run.stdout.startswith("m3d-doctor gate: PASS")


def test_gate_blocks_on_a_threshold(doctor, tiny_venv, tiny_profile, gate_env):
    run = doctor("gate", "--offline", "--python", str(tiny_venv), "--profile", str(tiny_profile),
                 "--min-free-disk", "1000TB", "--json", env=gate_env)
    assert run.rc == 1
    doc = run.doc
    assert doc["decision"] == "block" and [f["id"] for f in doc["blocking"]] == ["gate.disk-below-threshold"]


def test_gate_skip_waives_a_check_and_rejects_unknown_ones(doctor, tiny_venv, tiny_profile, tmp_path, gate_env):
    prof = tmp_path / "bad.toml"
    prof.write_text(tiny_profile.read_text().replace('spec = "==1.16.0"', 'spec = "==1.15.0"'))
    assert doctor("gate", "--offline", "--python", str(tiny_venv), "--profile", str(prof), env=gate_env).rc == 1
    assert doctor("gate", "--offline", "--python", str(tiny_venv), "--profile", str(prof), "--skip", "packages",
                  env=gate_env).rc == 0
    bad = doctor("gate", "--skip", "nonsense")
    assert bad.rc == 2 and "unknown check" in bad.stderr


def test_gate_on_an_interpreter_that_hangs_exits_3(doctor, tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nsleep 60\n")
    fake.chmod(0o755)
    assert doctor("gate", "--offline", "--python", str(fake), "--timeout", "1", timeout=30).rc == 3


def test_gate_skips_unchanged_checks_at_restart(doctor, tiny_venv, tiny_profile, tmp_path, gate_env):
    cache = tmp_path / "cache"
    args = ("gate", "--offline", "--python", str(tiny_venv), "--profile", str(tiny_profile), "--json")
    first = doctor(*args, cache_dir=cache, env=gate_env)
    second = doctor(*args, cache_dir=cache, env=gate_env)
    assert first.rc == second.rc == 0
    assert "0 unchanged" in first.doc["line"] and "0 unchanged" not in second.doc["line"]
    assert second.doc["fingerprint"] == first.doc["fingerprint"]


def test_report_json_and_table(doctor, tmp_path):
    env = replay(tmp_path, rtx4090)
    js = doctor("report", "--format", "json", "--stage", "pano", env=env)
    doc = json.loads(js.stdout)
    assert doc["schema"] == "m3d-doctor/report/v1"
    assert doc["gpus"][0]["name"] == "NVIDIA GeForce RTX 4090" and doc["mounts"]
    assert doc["stages"][0]["plan"] == "partial" and doc["stages"][0]["fits"] is True
    table = doctor("report", "--stage", "pano", env=env).stdout
    assert "RTX 4090" in table and "partial" in table and "Disk" in table


def test_report_prometheus_parses_and_writes_atomically(doctor, tmp_path):
    out = tmp_path / "textfile" / "m3d.prom"
    out.parent.mkdir()
    run = doctor("report", "--format", "prometheus", "--stage", "pano,video", "--output", str(out),
                 env=replay(tmp_path, rtx4090))
    assert run.rc == 0 and run.stdout == ""
    families = {f.name: f for f in text_string_to_metric_families(out.read_text())}
    assert {"m3d_disk_free_bytes", "m3d_gpu_memory_free_bytes", "m3d_stage_fits", "m3d_host_memory_total_bytes",
            "m3d_report_timestamp_seconds"} <= set(families)
    fits = {s.labels["stage"]: s.value for s in families["m3d_stage_fits"].samples}
    assert fits == {"pano": 1.0, "video": 1.0}
    free = families["m3d_gpu_memory_free_bytes"].samples[0]
    assert free.labels["name"] == "NVIDIA GeForce RTX 4090" and free.value == 25757220864 - int(1.5 * GiB)
    assert not list(out.parent.glob(".m3d-report-*"))  # no temporary left behind


def test_a_plan_the_host_ram_cannot_hold_is_refused_with_numbers(doctor):
    """720p on a 16 GiB card streams most blocks from pinned host memory (~32 GiB): on a host with less usable
    RAM (this CI machine has 24 GiB) the vram check fails, so `run`'s preflight refuses before loading."""
    import psutil

    if psutil.virtual_memory().available > 30 * GiB:
        pytest.skip("this host has enough RAM for the plan")
    run = doctor("check", "vram", "--stage", "video", "--resolution", "720", "--budget", "16GiB", "--json")
    assert run.rc == 1
    (f,) = run.findings("vram.host-ram-short")
    assert f["evidence"]["stage"] == "video" and f["evidence"]["host_needed"] > f["evidence"]["host_usable"]
    assert "GiB of host RAM" in f["title"]
