"""python: is the target interpreter a version the profile supports?"""

from __future__ import annotations

from m3d_doctor.check import Check
from m3d_doctor.context import Context
from m3d_doctor.findings import Finding, Remedy, Severity


class PythonCheck(Check):
    name = "python"
    description = "target interpreter version supported by the profile"
    order = 10
    needs_live_target = False

    def cache_key(self, ctx: Context) -> str:
        return ""

    def run(self, ctx: Context) -> list[Finding]:
        version = ctx.target.version
        if version is None:
            return [Finding("python.unknown", Severity.SKIP, "interpreter version not in a freeze file",
                            "a freeze file does not record the Python version")]
        spec = ctx.profile.python
        evidence = {"version": version, "executable": getattr(ctx.target, "python", None),
                    "profile_requires": str(spec)}
        if spec.contains(version, prereleases=True):
            return [Finding("python.supported", Severity.OK, f"Python {version}", evidence=evidence)]
        return [Finding(
            "python.unsupported", Severity.FAIL,
            f"Python {version} is outside the profile's range {spec}",
            cause=f"Profile '{ctx.profile.name}' pins wheels that exist only for Python {spec}; on {version} "
                  "pip either finds no wheel or builds from source.",
            evidence=evidence,
            remedy=Remedy(command=f"uv venv --python 3.10 /workspace/venv  # a Python in {spec}",
                          note="create an environment with a supported interpreter and point --python at it"),
        )]


CHECK = PythonCheck()
