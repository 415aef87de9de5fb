"""Checks are plugins: a separately installed distribution adds checks through the entry-point group."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest
from conftest import FIXTURES


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    """The plugin distribution, really built and installed by pip (into a --target dir put on PYTHONPATH)."""
    src = tmp_path_factory.mktemp("src") / "plugin"
    shutil.copytree(FIXTURES / "plugin_pkg", src)
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(src)], check=True, capture_output=True, timeout=300)
    return str(target)


def test_plugin_checks_are_listed(doctor, plugin_path):
    run = doctor("--list-checks", env={"PYTHONPATH": plugin_path})
    names = [line.split()[0] for line in run.stdout.splitlines()]
    assert {"greeting", "explodes", "hangs", "online", "broken"} <= set(names)
    assert names[:6] == ["python", "packages", "torch", "imports", "env", "device"]  # built-ins first
    assert "[network]" in next(line for line in run.stdout.splitlines() if line.startswith("online"))


def test_a_plugin_check_runs_by_name(doctor, plugin_path, tiny_venv, tiny_profile):
    run = doctor("check", "greeting", "--python", str(tiny_venv), "--profile", str(tiny_profile), "--json",
                 env={"PYTHONPATH": plugin_path})
    assert run.rc == 0, run.stderr
    assert run.finding_ids() == {"greeting.hello"}
    assert run.doc["checks"][0]["findings"][0]["title"] == "hello from a plugin, profile tiny"


def test_crash_and_timeout_become_errors_and_the_others_still_run(doctor, plugin_path, tiny_venv, tiny_profile):
    t0 = time.monotonic()
    run = doctor("check", "python", "explodes", "hangs", "broken", "greeting", "--python", str(tiny_venv),
                 "--profile", str(tiny_profile), "--json", env={"PYTHONPATH": plugin_path})
    assert time.monotonic() - t0 < 20
    assert run.rc == 3, run.stderr
    status = {c["name"]: c["status"] for c in run.doc["checks"]}
    assert status == {"python": "ok", "explodes": "error", "hangs": "error", "broken": "error", "greeting": "info"}
    ids = run.finding_ids()
    assert {"explodes.crashed", "hangs.timeout", "broken.crashed"} <= ids
    (crash,) = run.findings("explodes.crashed")
    assert "ZeroDivisionError: plugin bug" in crash["cause"]


def test_offline_skips_network_checks_with_the_reason(doctor, plugin_path, tiny_venv, tiny_profile):
    run = doctor("check", "online", "--offline", "--python", str(tiny_venv), "--profile", str(tiny_profile),
                 "--json", env={"PYTHONPATH": plugin_path})
    assert run.rc == 0
    (f,) = run.findings("online.skipped")
    assert f["severity"] == "skip" and "--offline" in f["title"]
    online = doctor("check", "online", "--python", str(tiny_venv), "--profile", str(tiny_profile), "--json",
                    env={"PYTHONPATH": plugin_path})
    assert online.finding_ids() == {"online.reached"}
