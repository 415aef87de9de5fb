"""The disk fixes through the real `m3d-doctor fix` on real trees: clean-caches deletes exactly its plan and
nothing outside caches; move-hf-cache copies, verifies, switches, persists HF_HOME, and survives a crash."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest
from disktree import DETACHED, KEPT, OLD, build_pod, listing, write
from m3d_doctor import shellenv
from m3d_doctor.fix import Action, Plan, Risk
from m3d_doctor.fixes.disk_clean import FIX


@pytest.fixture
def pod(tmp_path):
    return build_pod(tmp_path / "pod")


@pytest.fixture
def idle_pod(pod):
    """No download running: the move refuses to copy a cache a download is writing to."""
    os.utime(pod.repo / "blobs" / "fresh.incomplete", (OLD, OLD))
    return pod


def fix(doctor, pod, *args, **env):
    run = doctor("fix", *args, "--profile", str(pod.profile()), "--json", env=pod.env(**env))
    assert "Traceback" not in run.stderr, run.stderr
    return run


def planned_paths(doc, fix_id):
    (plan,) = [p for p in doc["plans"] if p["fix_id"] == fix_id]
    return [p for a in plan["actions"] for p in a["paths"]]


def under(paths, root):
    """Relative names of `paths` and of everything inside them, as `listing(root)` names them."""
    rel = [str(Path(p).relative_to(root)) for p in paths]
    return lambda name: any(name == r or name.startswith(r + "/") for r in rel)


# -- disk.clean-caches -------------------------------------------------------------------------------------

def test_clean_plan_lists_exactly_the_reclaimable_items_with_bytes(doctor, pod):
    run = fix(doctor, pod, "disk.clean-caches", "--dry-run")
    assert run.rc == 0
    (plan,) = run.doc["plans"]
    assert plan["risk"] == "destructive" and plan["blocked"] is None
    r, blobs = pod.repo, pod.repo / "blobs"
    assert sorted(planned_paths(run.doc, "disk.clean-caches")) == sorted(str(p) for p in [
        pod.pip / "http-v2", pod.pip / "selfcheck", pod.pip / "wheels",
        pod.uv / "archive-v0", pod.uv / "wheels-v5",
        r / "snapshots" / DETACHED, blobs / "old-only",  # never the blob the kept revision shares
        blobs / "stale.incomplete",  # never the fresh one
    ])
    for a in plan["actions"]:
        assert a["risk"] == "destructive" and a["bytes"] < 0
        assert a["command"] == "rm -rf " + " ".join(shlex.quote(p) for p in a["paths"])
    assert any("points outside" in n for n in plan["notes"])


def test_clean_dry_run_and_no_yes_delete_nothing(doctor, pod):
    before = listing(pod.root)
    assert fix(doctor, pod, "disk.clean-caches", "--dry-run").doc["message"] == "dry run: nothing applied"
    assert listing(pod.root) == before
    no_yes = fix(doctor, pod, "disk.clean-caches")
    assert no_yes.rc == 0 and "destructive steps need --yes" in no_yes.doc["message"]
    assert listing(pod.root) == before


def test_clean_with_yes_deletes_exactly_the_planned_paths_and_nothing_outside(doctor, pod):
    before = listing(pod.root)
    run = fix(doctor, pod, "disk.clean-caches", "--yes")
    assert run.rc == 0 and run.doc["applied"] == [{"fix_id": "disk.clean-caches", "status": "applied"}]
    gone = under(planned_paths(run.doc, "disk.clean-caches"), pod.root)
    assert listing(pod.root) == {k: v for k, v in before.items() if not gone(k)}
    assert (pod.outside / "precious.bin").stat().st_size == 5_000  # a link in the cache pointed at it
    assert (pod.pip / "http").is_symlink() and (pod.pip / "keep-me.txt").exists()
    assert (pod.repo / "snapshots" / KEPT / "transformer" / "model.safetensors").read_bytes()[:4]
    assert (pod.repo / "blobs" / "fresh.incomplete").exists()
    again = fix(doctor, pod, "disk.clean-caches", "--yes")
    assert again.doc["plans"][0]["actions"] == [] and again.doc["message"] == "nothing to apply"


def test_clean_apply_refuses_paths_that_resolve_outside_a_cache_root(pod, monkeypatch):
    """`apply` trusts no plan: each path is re-checked against the cache roots of the environment it runs in."""
    for k, v in pod.env().items():
        monkeypatch.setenv(k, v)
    outside = pod.outside / "precious.bin"
    tricks = [pod.pip / "http",  # a link out of the cache
              pod.pip / "wheels" / ".." / ".." / "user-data" / "precious.bin",  # climbs out
              outside]  # plainly outside
    plan = Plan("disk.clean-caches", [Action("stale plan", Risk.DESTRUCTIVE, paths=[str(p) for p in tricks],
                                             data={"root": str(pod.pip), "kind": "pip"}),
                                      Action("not a cache root", Risk.DESTRUCTIVE, paths=[str(pod.volume)],
                                             data={"root": str(pod.root), "kind": "pip"})])
    said = []
    before = listing(pod.root)
    FIX.apply(None, plan, said.append)
    assert listing(pod.root) == before
    assert len([m for m in said if m.startswith("refused")]) == 4
    assert {f.evidence["path"] for f in FIX.verify(None, plan)} == {str(p) for p in [*tricks, pod.volume]}


# -- disk.move-hf-cache ------------------------------------------------------------------------------------

def test_move_is_blocked_without_a_volume(doctor, idle_pod):
    pod = idle_pod
    run = doctor("fix", "disk.move-hf-cache", "--profile", str(pod.profile(volume=None)), "--json", "--yes",
                 env=pod.env())
    assert run.rc == 1
    assert "no persistent volume" in run.doc["plans"][0]["blocked"]
    assert run.doc["applied"] == [] and not pod.shell_profile.exists()


def test_move_is_blocked_when_the_volume_lacks_room(doctor, idle_pod):
    pod = idle_pod
    free = os.statvfs(pod.root).f_bavail * os.statvfs(pod.root).f_frsize
    with open(pod.hub / "sparse.bin", "wb") as fh:  # allocates nothing, but a copy writes every byte
        fh.truncate(free + (1 << 30))
    run = fix(doctor, pod, "disk.move-hf-cache", "--yes")
    assert run.rc == 1
    assert f"the volume {pod.volume} has" in run.doc["plans"][0]["blocked"]
    assert list(pod.volume.iterdir()) == []


def test_move_copies_verifies_links_and_persists_hf_home(doctor, idle_pod):
    pod = idle_pod
    pod.shell_profile.parent.mkdir()
    pod.shell_profile.write_text("# the user's own line\nexport PATH=$PATH:/opt/bin\n")
    before = listing(pod.hf_home)
    run = fix(doctor, pod, "disk.move-hf-cache", "--volume", str(pod.volume), "--yes")
    assert run.rc == 0, run.stdout
    (plan,) = run.doc["plans"]
    assert plan["risk"] == "risky" and run.doc["applied"][0]["status"] == "applied"
    dest = pod.volume / ".cache" / "huggingface"
    assert listing(dest) == before  # contents and relative snapshot symlinks identical
    assert os.path.realpath(pod.hf_home) == str(dest)
    assert listing(pod.hf_home) == before  # the old path still works, through the symlink
    assert shellenv.read_exports(pod.shell_profile) == {"HF_HOME": str(dest)}
    text = pod.shell_profile.read_text()
    assert text.startswith("# the user's own line\nexport PATH=$PATH:/opt/bin\n")
    again = fix(doctor, pod, "disk.move-hf-cache", "--volume", str(pod.volume), "--yes")
    assert again.rc == 0 and again.doc["plans"][0]["actions"] == []
    assert pod.shell_profile.read_text() == text


def test_move_interrupted_mid_copy_keeps_the_source_and_resumes_to_completion(doctor, idle_pod):
    pod = idle_pod
    before = listing(pod.hf_home)
    dest = pod.volume / ".cache" / "huggingface"
    crashed = fix(doctor, pod, "disk.move-hf-cache", "--yes", M3D_DOCTOR_TEST_CRASH_AFTER="3")
    assert crashed.rc == 137
    assert listing(pod.hf_home) == before and not pod.hf_home.is_symlink()  # every file still at the source
    journal = json.loads((pod.volume / ".cache" / ".m3d-move-huggingface.json").read_text())
    assert journal["state"] == "copying" and journal["src"] == str(pod.hf_home)
    half = listing(dest)
    assert 0 < len([v for v in half.values() if v.startswith("file:")]) < 8
    assert not any(k.endswith(".m3d-part") for k in half)  # a file is renamed into place only when whole
    assert not pod.shell_profile.exists()

    resumed = fix(doctor, pod, "disk.move-hf-cache", "--yes")
    assert resumed.rc == 0, resumed.stdout
    assert any("resuming" in n for n in resumed.doc["plans"][0]["notes"])
    assert listing(dest) == before
    assert os.path.realpath(pod.hf_home) == str(dest) and listing(pod.hf_home) == before
    assert shellenv.read_exports(pod.shell_profile)["HF_HOME"] == str(dest)
    done = json.loads((pod.volume / ".cache" / ".m3d-move-huggingface.json").read_text())
    assert done["state"] == "done" and done["files"] == 8 and done["symlinks"] == 5


def test_move_interrupted_during_the_switch_finishes_on_rerun(doctor, idle_pod):
    """A crash after the source was renamed aside but before the link: the copy is complete and verified,
    and the re-run puts the link in place and removes the old folder."""
    pod = idle_pod
    before = listing(pod.hf_home)
    assert fix(doctor, pod, "disk.move-hf-cache", "--yes").rc == 0
    dest = pod.volume / ".cache" / "huggingface"
    journal_file = pod.volume / ".cache" / ".m3d-move-huggingface.json"
    # replay the state a crash between `mv src src.m3d-old` and `ln -s` leaves behind
    pod.hf_home.unlink()
    (pod.root / "hf.m3d-old").mkdir()
    write(pod.root / "hf.m3d-old" / "leftover", 10)
    journal = json.loads(journal_file.read_text())
    journal_file.write_text(json.dumps({**journal, "state": "switching"}))
    run = fix(doctor, pod, "disk.move-hf-cache", "--yes")
    assert run.rc == 0, run.stdout
    assert os.path.realpath(pod.hf_home) == str(dest) and listing(pod.hf_home) == before
    assert not (pod.root / "hf.m3d-old").exists()


def test_move_waits_for_a_running_download(doctor, pod):
    run = fix(doctor, pod, "disk.move-hf-cache", "--yes")
    assert run.rc == 1 and "a download is writing to the cache" in run.doc["plans"][0]["blocked"]
    assert list(pod.volume.iterdir()) == []


def test_pip_cache_entries_are_pips_own_names_only():
    from m3d_doctor.reclaim import PIP_ENTRIES

    assert "http" in PIP_ENTRIES and "http-v2" in PIP_ENTRIES
    assert "httpd-site" not in PIP_ENTRIES and not any("*" in e for e in PIP_ENTRIES)


def test_a_transaction_restore_keeps_files_that_are_not_the_installers():
    from m3d_doctor.txn import _installer_artefact

    touched = {"diffusers", "huggingface_hub"}
    assert _installer_artefact("~iffusers", touched) and _installer_artefact("six-1.16.0.dist-info", touched)
    assert _installer_artefact("diffusers", touched) and _installer_artefact("huggingface_hub", touched)
    assert not _installer_artefact("mine", touched) and not _installer_artefact("sitecustomize.py", touched)
