"""image: inside a container, is this the pod image the doctor's lock describes, unchanged since its build?

The field report's pod ran a stale `:latest`; a container cannot see its own image digest, so the image
carries a build manifest (docker/Dockerfile writes /etc/m3d-doctor/build.json) that this check compares with
the running doctor's lock export and with what is installed now.
"""

from __future__ import annotations

import os
from pathlib import Path

from m3d_doctor.buildinfo import manifest_path, read_manifest
from m3d_doctor.check import Check
from m3d_doctor.context import Context
from m3d_doctor.errors import DoctorError
from m3d_doctor.findings import Finding, Remedy, Severity

CONTAINER_ENV = "M3D_DOCTOR_IN_CONTAINER"  # "1"/"0" overrides detection (tests, unusual runtimes)
IMAGE_ENV = "M3D_IMAGE"  # the image reference to name in the commands, e.g. ghcr.io/org/m3d-pod
PLACEHOLDER = "REGISTRY/m3d-pod:TAG"


def in_container() -> tuple[bool, str]:
    """(inside?, how we know): marker files first, then cgroup hints; the env var overrides both."""
    forced = os.environ.get(CONTAINER_ENV)
    if forced in ("0", "1"):
        return forced == "1", f"{CONTAINER_ENV}={forced}"
    for marker in ("/.dockerenv", "/run/.containerenv"):
        if os.path.exists(marker):
            return True, marker
    runtime = os.environ.get("container")  # noqa: SIM112 - podman and systemd-nspawn set it lowercase
    if runtime:
        return True, f"container={runtime}"
    try:
        cgroup = Path("/proc/1/cgroup").read_text()
    except OSError:
        cgroup = ""
    for hint in ("docker", "kubepods", "containerd", "libpod", "lxc"):
        if hint in cgroup:
            return True, f"/proc/1/cgroup mentions {hint}"
    return False, "no /.dockerenv, /run/.containerenv or container cgroup"


def rebuild_remedy(image: str) -> Remedy:
    image = image or os.environ.get(IMAGE_ENV) or PLACEHOLDER
    build = (f"m3d-doctor lock --output docker/matrix3d.lock.txt && "
             f"docker build -t {image} --build-arg GIT_COMMIT=$(git rev-parse HEAD) -f docker/Dockerfile . && "
             f"docker push {image}")
    note = (f"then on the pod use the pushed digest, not a tag: docker pull {image.split(':')[0]}@sha256:<digest>. "
            f"Verify: `docker buildx imagetools inspect {image}` (or `docker inspect --format "
            "'{{index .RepoDigests 0}}' " + image + "`) prints the digest; it must equal the digest the pod "
            "reports for its image")
    return Remedy(build, None, note)


class ImageCheck(Check):
    name = "image"
    description = "in a container: the image's build manifest against the lock and the installed set"
    order = 95

    def run(self, ctx: Context) -> list[Finding]:
        inside, how = in_container()
        if not inside:
            return [Finding("image.skipped", Severity.SKIP, "skipped: not in a container", cause=how)]
        path = manifest_path()
        try:
            manifest = read_manifest(path)
        except ValueError as exc:
            manifest, unreadable = None, str(exc)
        else:
            unreadable = ""
        if manifest is None:
            return [Finding(
                "image.no-manifest", Severity.WARN, f"in a container ({how}) without a build manifest at {path}",
                cause=unreadable or "this image was not built from m3d-doctor's docker/Dockerfile (e.g. a stale or "
                "generic :latest), so nothing says which lock it holds",
                evidence={"manifest": str(path), "detected_by": how}, remedy=rebuild_remedy(""))]
        image = str(manifest.get("image") or "")
        built = f"{manifest.get('git_commit', 'unknown')[:12]} on {manifest.get('build_date') or 'an unknown date'}"
        findings: list[Finding] = []
        try:
            from m3d_doctor.lock import export

            want = export(ctx.profile).sha256
        except DoctorError:
            want = None  # a profile without a lock: nothing to compare with
        have = manifest.get("lock_sha256")
        if want and have != want:
            findings.append(Finding(
                "image.lock-outdated", Severity.FAIL,
                f"the image (built {built}) holds lock {str(have)[:16]}; this doctor's lock is {want[:16]}",
                cause="the image was built from an older (or other) lock: its packages are not the set this doctor "
                      "checks against; rebuild and pull by digest",
                evidence={"image_lock_sha256": have, "doctor_lock_sha256": want, "manifest": str(path),
                          "git_commit": manifest.get("git_commit")},
                remedy=rebuild_remedy(image)))
        recorded = {str(k): str(v) for k, v in (manifest.get("installed") or {}).items()}
        now = {name: d.version for name, d in ctx.target.dists.items()}
        added = sorted(set(now) - set(recorded))
        removed = sorted(set(recorded) - set(now))
        changed = sorted(n for n in set(now) & set(recorded) if now[n] != recorded[n])
        if added or removed or changed:
            parts = [f"{len(x)} {w}" for x, w in ((added, "added"), (changed, "changed"), (removed, "removed")) if x]
            sample = [f"+{n}" for n in added[:5]] + [f"{n} {recorded[n]}->{now[n]}" for n in changed[:5]] + \
                     [f"-{n}" for n in removed[:5]]
            findings.append(Finding(
                "image.packages-changed", Severity.WARN,
                f"packages changed since the image was built ({', '.join(parts)}): {', '.join(sample)}",
                cause="something was pip-installed into the running container; it is lost on restart and the pod no "
                      "longer matches its image — put the change into the lock and rebuild",
                evidence={"added": added, "removed": removed,
                          "changed": {n: [recorded[n], now[n]] for n in changed}, "manifest": str(path)},
                remedy=rebuild_remedy(image)))
        if not findings:
            findings.append(Finding(
                "image.ok", Severity.OK, f"image built {built}: lock current, installed set unchanged",
                evidence={"manifest": str(path), "lock_sha256": have, "base_image": manifest.get("base_image")}))
        return findings


CHECK = ImageCheck()
