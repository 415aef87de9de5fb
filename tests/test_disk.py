"""The disk check on real trees: room for downloads, caches on the container disk, the container floor, top
consumers and reclaimable bytes, through the real CLI; and `doctor.du` against GNU du."""

from __future__ import annotations

import json
import os
import shutil
from importlib import resources

import jsonschema
import pytest
from disktree import DETACHED, KEPT, build_pod, du_bytes, write
from m3d_doctor import du


@pytest.fixture
def pod(tmp_path):
    return build_pod(tmp_path / "pod")


def run_disk(doctor, pod, profile, **env):
    run = doctor("check", "disk", "--profile", str(profile), "--json", "-v", env=pod.env(**env))
    assert "Traceback" not in run.stderr, run.stderr
    return run


def test_missing_downloads_that_fit_are_info_with_exact_bytes_and_unknown_sizes_counted(doctor, pod):
    run = run_disk(doctor, pod, pod.profile(min_free_container_gib=0))
    assert run.rc == 0, run.stderr
    (f,) = run.findings("disk.downloads")
    ev = f["evidence"]
    assert f["severity"] == "info"
    assert (ev["needed"], ev["files_present"], ev["files_missing"], ev["unknown_size_files"]) == (1002345, 2, 3, 1)
    assert ev["unknown_size"] == ["org/flux/tokenizer/vocab.json"]
    assert ev["by_repo"] == {"org/flux": 1002345}
    assert "1 file(s) of unknown size" in f["title"]
    assert "disk.insufficient-for-downloads" not in run.finding_ids()


def test_downloads_larger_than_free_space_fail_with_the_shortfall(doctor, pod):
    huge = 1 << 60
    models = f'[[models]]\nrepo = "org/huge"\nfiles = [{{ path = "w.safetensors", size = {huge} }}]\n'
    run = run_disk(doctor, pod, pod.profile(models, min_free_container_gib=0))
    assert run.rc == 1
    (f,) = run.findings("disk.insufficient-for-downloads")
    ev = f["evidence"]
    assert f["severity"] == "fail"
    assert ev["needed"] == 1002345 + huge
    assert ev["shortfall"] == ev["needed"] - ev["free"] > 0
    assert ev["mount"] == run.findings("disk.free-space")[0]["evidence"]["mounts"][0]["mount"]
    # the volume is on the same disk, so moving does not help, and the caches are far too small
    assert f["remedy"]["fix_id"] is None and "disk.move-hf-cache --volume PATH" in f["remedy"]["note"]
    assert run.findings("disk.reclaimable")[0]["severity"] == "warn"  # space is short: freeing it matters


def test_caches_on_the_container_disk_warn_while_a_volume_exists(doctor, pod):
    run = run_disk(doctor, pod, pod.profile(min_free_container_gib=0))
    found = {f["evidence"]["cache"]: f for f in run.findings("disk.cache-on-container-disk")}
    assert set(found) == {"hf", "pip", "uv", "torch"}
    assert all(f["severity"] == "warn" for f in found.values())
    hf = found["hf"]
    assert hf["remedy"] == {"command": f"m3d-doctor fix disk.move-hf-cache --volume {pod.volume}",
                            "fix_id": "disk.move-hf-cache", "note": None}
    assert hf["evidence"]["path"] == str(pod.hf_home) and hf["evidence"]["bytes"] == du_bytes(pod.hf_home)
    assert found["pip"]["remedy"]["command"] == f"export PIP_CACHE_DIR={pod.volume}/.cache/pip"
    assert run.rc == 0  # warnings only


def test_caches_already_on_the_volume_do_not_warn(doctor, pod):
    moved = pod.volume / "hf"
    shutil.move(str(pod.hf_home), moved)
    run = run_disk(doctor, pod, pod.profile(min_free_container_gib=0), HF_HOME=str(moved))
    assert "hf" not in {f["evidence"]["cache"] for f in run.findings("disk.cache-on-container-disk")}


def test_a_volume_candidate_that_is_not_its_own_mount_is_not_a_volume(doctor, pod):
    run = run_disk(doctor, pod, pod.profile(volume=None, volumes=[str(pod.volume)], min_free_container_gib=0))
    assert run.rc == 0
    assert "disk.cache-on-container-disk" not in run.finding_ids()
    holds = [h["role"] for m in run.findings("disk.free-space")[0]["evidence"]["mounts"] for h in m["holds"]]
    assert "volume" not in holds and "container_disk" in holds and "hf_cache" in holds


def test_container_floor_comes_from_the_profile(doctor, pod):
    low = run_disk(doctor, pod, pod.profile(min_free_container_gib=10**9))
    (f,) = low.findings("disk.container-low")
    assert f["severity"] == "warn" and low.rc == 0
    assert f["evidence"]["min_free"] == 10**9 * (1 << 30) > f["evidence"]["free"]
    assert f["evidence"]["path"] == str(pod.root)
    assert f["remedy"]["fix_id"] == "disk.clean-caches"
    fine = run_disk(doctor, pod, pod.profile(min_free_container_gib=0))
    assert "disk.container-low" not in fine.finding_ids()


def test_top_consumers_are_sorted_by_size_per_repo_and_revision(doctor, pod):
    run = run_disk(doctor, pod, pod.profile(min_free_container_gib=0))
    (f,) = run.findings("disk.top-consumers")
    rows = f["evidence"]["consumers"]
    assert [r["bytes"] for r in rows] == sorted((r["bytes"] for r in rows), reverse=True)
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {"org/flux", "org/small", "pip cache", "uv cache", "torch hub cache"}
    assert by_name["org/flux"]["bytes"] == du_bytes(pod.repo)
    assert by_name["pip cache"]["bytes"] == du_bytes(pod.pip)
    assert by_name["uv cache"]["bytes"] == du_bytes(pod.uv)
    assert by_name["torch hub cache"]["bytes"] == du_bytes(pod.torch)
    revs = {r["commit"]: r for r in by_name["org/flux"]["revisions"]}
    blobs = pod.repo / "blobs"
    assert revs[KEPT]["refs"] == ["main"] and not revs[KEPT]["detached"]
    assert revs[KEPT]["bytes"] == du_bytes(blobs / "shared", blobs / "kept-only")
    assert revs[DETACHED]["detached"] and revs[DETACHED]["bytes"] == du_bytes(blobs / "shared", blobs / "old-only")
    assert by_name["org/flux"]["incomplete"] == 2
    assert by_name["org/flux"]["incomplete_bytes"] == du_bytes(blobs / "stale.incomplete", blobs / "fresh.incomplete")
    assert f["evidence"]["partial"] is False
    assert all(isinstance(r["bytes"], int) for r in rows)


def test_reclaimable_is_pip_uv_detached_only_blobs_and_stale_downloads(doctor, pod):
    run = run_disk(doctor, pod, pod.profile(min_free_container_gib=0))
    (f,) = run.findings("disk.reclaimable")
    blobs = pod.repo / "blobs"
    expected = {
        "pip": du_bytes(pod.pip / "http-v2", pod.pip / "wheels", pod.pip / "selfcheck"),  # not the link out
        "uv": du_bytes(pod.uv / "wheels-v5", pod.uv / "archive-v0"),
        "hf-detached": du_bytes(pod.repo / "snapshots" / DETACHED, blobs / "old-only"),  # not the shared blob
        "hf-incomplete": du_bytes(blobs / "stale.incomplete"),  # the fresh one may be a running download
    }
    assert f["evidence"]["by_kind"] == expected
    assert f["evidence"]["bytes"] == sum(expected.values())
    assert f["severity"] == "info"  # small, and nothing is short
    assert f["remedy"] == {"command": "m3d-doctor fix disk.clean-caches --yes", "fix_id": "disk.clean-caches",
                           "note": None}
    assert any("points outside" in s for s in f["evidence"]["skipped"])


def test_outputs_and_hf_env_precedence(doctor, pod, tmp_path):
    write(pod.root / "outputs" / "scene" / "video.mp4", 2_000_000)
    hub = tmp_path / "elsewhere" / "hub"
    shutil.move(str(pod.hub), hub)
    run = run_disk(doctor, pod, pod.profile(outputs=[str(pod.root / "outputs")], min_free_container_gib=0),
                   HF_HUB_CACHE=str(hub))
    rows = run.findings("disk.top-consumers")[0]["evidence"]["consumers"]
    assert rows[0]["kind"] == "outputs" and rows[0]["bytes"] == du_bytes(pod.root / "outputs")
    assert {r["path"] for r in rows if r["kind"] == "hf-model"} == {str(hub / "models--org--flux"),
                                                                    str(hub / "models--org--small")}
    assert run.findings("disk.downloads")[0]["evidence"]["hf_cache"] == str(hub)


def test_disk_check_document_validates_against_the_schema(doctor, pod):
    run = run_disk(doctor, pod, pod.profile(min_free_container_gib=10**9))
    schema = json.loads(resources.files("m3d_doctor").joinpath("schema/check-v1.json").read_text())
    jsonschema.validate(run.doc, schema)
    human = doctor("check", "disk", "--profile", str(pod.root.parent / "disk.toml"), env=pod.env())
    assert human.rc == 0 and "disk.container-low" in human.stdout


# -- doctor.du ---------------------------------------------------------------------------------------------

def test_du_matches_gnu_du_counting_hardlinks_once_and_not_following_symlinks(tmp_path):
    root = tmp_path / "t"
    write(root / "a" / "big", 1_000_000)
    os.link(root / "a" / "big", root / "a" / "hardlink")
    write(tmp_path / "outside" / "huge", 3_000_000)
    os.symlink(tmp_path / "outside", root / "link-to-dir")
    os.symlink(tmp_path / "outside" / "huge", root / "link-to-file")
    with open(root / "sparse", "wb") as fh:
        fh.truncate(1 << 30)
    use = du.disk_usage(root)
    assert use.bytes == du_bytes(root) < 2_000_000  # the sparse gigabyte allocates (almost) nothing
    assert (1 << 30) + 1_000_000 < use.apparent < (1 << 30) + 2_000_000  # the hardlinked file once
    assert (use.files, use.partial, use.errors) == (4, False, 0)  # big, sparse, two links


def test_du_walks_trees_deeper_than_the_recursion_limit(tmp_path):
    deep = tmp_path
    for _ in range(1200):  # Path.mkdir(parents=True) itself recurses
        deep = deep / "d"
        deep.mkdir()
    write(deep / "leaf", 10_000)
    try:
        use = du.disk_usage(tmp_path)
        assert use.files == 1 and use.bytes == du_bytes(tmp_path)
    finally:  # so pytest's recursive cleanup never meets it
        (deep / "leaf").unlink()
        while deep != tmp_path:
            deep.rmdir()
            deep = deep.parent


def test_du_out_of_time_is_partial_not_hung(tmp_path):
    for i in range(50):
        write(tmp_path / f"d{i}" / "f", 100)
    use = du.disk_usage(tmp_path, du.Deadline(0))
    assert use.partial and use.files < 50
    assert du.disk_usage(tmp_path / "missing") == du.Usage()


def test_reclaimable_counts_only_what_deleting_frees(doctor, pod):
    """uv hard-links its cache into venvs: deleting such a file from the cache frees nothing."""
    cached = pod.uv / "wheels-v5" / "pypi" / "numpy.whl"
    (pod.root / "venv").mkdir()
    os.link(cached, pod.root / "venv" / "numpy.py")
    run = run_disk(doctor, pod, pod.profile(min_free_container_gib=0))
    (f,) = run.findings("disk.reclaimable")
    assert f["evidence"]["by_kind"]["uv"] == du_bytes(pod.uv / "wheels-v5", pod.uv / "archive-v0") - du_bytes(cached)
    uv = [r for r in run.findings("disk.top-consumers")[0]["evidence"]["consumers"] if r["kind"] == "uv-cache"]
    assert uv[0]["bytes"] == du_bytes(pod.uv)  # what the cache occupies still counts the linked file
