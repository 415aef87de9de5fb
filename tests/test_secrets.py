"""Secrets stay secret: with a known token, no command or format prints it or writes it to a file."""

from __future__ import annotations

import pytest
from fakehub import FakeHub

TOKEN = "hf_fakeValidTokenAliceAAAAAAAAAAAAAAA"  # valid on the fake hub: the checks really use it

COMMANDS = [
    ["check"], ["check", "-v"], ["check", "--json"], ["check", "--json", "-v"], ["check", "hf", "-v"],
    ["check", "--offline", "--json"], ["check", "--list-checks"],
    ["fix", "--dry-run"], ["fix", "--dry-run", "--json"], ["fix", "hf.download", "--dry-run", "--json"],
    ["fix", "--list-fixes"], ["check", "no-such-check"],
]


CASES = [("HF_TOKEN", a) for a in COMMANDS] + [
    (src, a) for src in ("HUGGING_FACE_HUB_TOKEN", "file") for a in (["check", "hf", "-v"], ["check", "--json", "-v"])]


@pytest.mark.parametrize("source, args", CASES, ids=[f"{s}: {' '.join(a)}" for s, a in CASES])
def test_token_never_appears_in_output_or_files(doctor, tmp_path, tiny_venv, args, source):
    hf_home = tmp_path / "hf-home"
    hf_home.mkdir()
    env = {"HF_HOME": str(hf_home)}
    if source == "file":
        (hf_home / "token").write_text(TOKEN)
    else:
        env[source] = TOKEN
    cache = tmp_path / "doctor-cache"
    with FakeHub() as hub:
        env["HF_ENDPOINT"] = hub.endpoint
        target = ["--python", str(tiny_venv)] if "--list-checks" not in args and "--list-fixes" not in args else []
        run = doctor(*args, *target, env=env, cache_dir=cache)
    assert TOKEN not in run.stdout and TOKEN not in run.stderr
    assert TOKEN[8:] not in run.stdout + run.stderr  # not even most of it
    for path in cache.rglob("*") if cache.exists() else []:
        if path.is_file():
            assert TOKEN not in path.read_text(errors="replace"), path
    if args[:2] == ["check", "hf"]:
        assert TOKEN[-4:] in run.stdout  # the last 4 characters identify it, and nothing more


def test_redaction_catches_a_token_that_a_check_would_leak():
    from m3d_doctor.secrets import redact

    assert redact(f"Authorization: Bearer {TOKEN}") == "Authorization: Bearer hf_***"


def test_streamed_download_progress_is_redacted_too(doctor, tmp_path):
    """hf.download streams the hub's progress and errors to the terminal: through redaction, even when the
    endpoint URL itself carries the token (a mirror with basic auth)."""
    prof = tmp_path / "dl.toml"
    prof.write_text('schema = 1\nname = "dl"\n[python]\nrequires = ">=3.8"\n[[models]]\nrepo = "org/m"\n'
                    'files = [{ path = "config.json", size = 10 }]\n')
    env = {"HF_TOKEN": TOKEN, "HF_ENDPOINT": f"http://user:{TOKEN}@127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_ETAG_TIMEOUT": "1", "HF_HUB_DOWNLOAD_TIMEOUT": "1"}
    run = doctor("fix", "hf.download", "--yes", "--profile", str(prof), env=env, timeout=120)
    assert run.rc == 4  # the download failed and was reported
    assert TOKEN not in run.stdout + run.stderr and TOKEN[8:] not in run.stdout + run.stderr
