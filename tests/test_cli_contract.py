"""The command line's contract: default command, usage errors, exit codes, JSON schema, --strict."""

from __future__ import annotations

import json
from importlib import resources

import jsonschema
import pytest


def schema():
    return json.loads(resources.files("m3d_doctor").joinpath("schema/check-v1.json").read_text())


def test_bare_command_is_check_and_healthy_target_exits_0(doctor, tiny_venv, tiny_profile):
    bare = doctor("--python", str(tiny_venv), "--profile", str(tiny_profile), "--json")
    explicit = doctor("check", "--python", str(tiny_venv), "--profile", str(tiny_profile), "--json")
    assert bare.rc == explicit.rc == 0, bare.stderr
    assert [c["name"] for c in bare.doc["checks"]] == [c["name"] for c in explicit.doc["checks"]]
    assert bare.doc["summary"]["status"] == "healthy"


def test_json_document_validates_against_the_published_schema(doctor, tiny_venv, tiny_profile):
    run = doctor("--python", str(tiny_venv), "--profile", str(tiny_profile), "--json", "-v")
    jsonschema.validate(run.doc, schema())
    assert run.doc["schema"] == "m3d-doctor/check/v1"


def test_wrong_pin_is_a_failure_with_exit_1(doctor, tiny_venv, tmp_path, tiny_profile):
    prof = tmp_path / "strict.toml"
    prof.write_text(tiny_profile.read_text().replace('spec = "==1.16.0"', 'spec = "==1.15.0"'))
    run = doctor("--python", str(tiny_venv), "--profile", str(prof), "--json")
    assert run.rc == 1
    (f,) = run.findings("packages.wrong-version")
    assert f["evidence"] == {"package": "six", "installed": "1.16.0", "wanted": "==1.15.0"}
    assert f["remedy"]["command"].endswith("-m pip install six==1.15.0")
    assert f["remedy"]["fix_id"] == "packages.align"


def test_warnings_pass_unless_strict(doctor, tiny_venv, tmp_path, tiny_profile):
    prof = tmp_path / "warn.toml"
    prof.write_text(tiny_profile.read_text() + '\n[env.M3D_TEST_UNSET_VAR]\nwant = "1"\nwhy = "test"\n')
    assert doctor("--python", str(tiny_venv), "--profile", str(prof)).rc == 0
    strict = doctor("--python", str(tiny_venv), "--profile", str(prof), "--strict", "--json")
    assert strict.rc == 1
    assert "env.m3d_test_unset_var" in strict.finding_ids()


def test_same_exit_code_in_human_and_json_formats(doctor, tiny_venv, tmp_path, tiny_profile):
    prof = tmp_path / "strict.toml"
    prof.write_text(tiny_profile.read_text().replace('spec = "==1.16.0"', 'spec = "==1.15.0"'))
    human = doctor("--python", str(tiny_venv), "--profile", str(prof))
    js = doctor("--python", str(tiny_venv), "--profile", str(prof), "--json")
    assert human.rc == js.rc == js.doc["summary"]["exit_code"] == 1
    assert "✗ packages" in human.stdout and "packages.wrong-version" in human.stdout


def test_human_output_is_plain_text_off_a_tty(doctor, tiny_venv, tiny_profile):
    run = doctor("--python", str(tiny_venv), "--profile", str(tiny_profile))
    assert "\x1b[" not in run.stdout
    assert run.stdout.splitlines()[0].startswith("✓ python")


@pytest.mark.parametrize("args, message", [
    (["check", "no-such-check"], "unknown check no-such-check"),
    (["--python", "/nonexistent/python"], "no such interpreter"),
    (["--python", "no-such-python-on-path"], "not found on PATH"),
    (["--no-such-flag"], "unrecognized arguments"),
    (["--profile", "/nonexistent/profile.toml"], "profile file not found"),
    (["--freeze", "/nonexistent/freeze.txt"], "cannot read freeze file"),
    (["--timeout", "nan"], "--timeout must be positive"),
    (["check", "vram", "--stage", "nosuch"], "the profile has stages"),
    (["check", "vram", "--budget", "24GiB", "--resolution", "0x0"], "positive multiples of 16"),
    (["check", "vram", "--budget", "0GB"], "must be more than zero"),
    (["report", "--output", "/nonexistent/dir/m3d.prom"], "cannot write"),
    (["gate", "--min-free-vram=-5GB"], "expected a size"),
    (["fix", "no-such-fix"], "unknown fix or finding id"),
])
def test_bad_input_is_one_line_and_exit_2(doctor, args, message):
    run = doctor(*args)
    assert run.rc == 2, run.stderr
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], run.stderr
    assert "Traceback" not in run.stderr


def test_malformed_profile_names_file_and_line(doctor, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('schema = 1\nname = "x"\n[python]\nrequires = ">=3.8"\n[packages]\nsix = { spec = ">>1" }\n')
    run = doctor("--profile", str(bad))
    assert run.rc == 2
    assert f"{bad}:6: invalid profile: packages.six.spec" in run.stderr


def test_invalid_toml_names_file_and_line(doctor, tmp_path):
    bad = tmp_path / "broken.toml"
    bad.write_text('schema = 1\nname = "x"\n[python\n')
    run = doctor("--profile", str(bad))
    assert run.rc == 2
    assert f"{bad}:3: invalid TOML" in run.stderr


def test_interpreter_that_hangs_exits_3_within_the_timeout(doctor, tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nsleep 60\n")
    fake.chmod(0o755)
    run = doctor("--python", str(fake), "--timeout", "1", timeout=30)
    assert run.rc == 3
    assert "timed out" in run.stderr and "Traceback" not in run.stderr


def test_list_checks_names_the_builtins(doctor):
    run = doctor("--list-checks")
    names = [line.split()[0] for line in run.stdout.splitlines()]
    assert names[:6] == ["python", "packages", "torch", "imports", "env", "device"]


def test_version_flag(doctor):
    run = doctor("--version")
    assert run.rc == 0 and run.stdout.startswith("m3d-doctor ")
