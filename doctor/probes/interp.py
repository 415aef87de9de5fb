# Probe: what the target interpreter is. Python 3.8-compatible; imports only the standard library.
import json
import os
import platform
import sys
import sysconfig

MARKER = "@@M3D-PROBE@@"

impl = sys.implementation.name
iver = sys.implementation.version
info = {
    "executable": sys.executable,
    "version": "%d.%d.%d" % sys.version_info[:3],
    "prefix": sys.prefix,
    "base_prefix": getattr(sys, "base_prefix", sys.prefix),
    "path": [p for p in sys.path if p],
    "purelib": sysconfig.get_paths().get("purelib"),
    "platlib": sysconfig.get_paths().get("platlib"),
    "markers": {
        "implementation_name": impl,
        "implementation_version": "%d.%d.%d" % (iver.major, iver.minor, iver.micro),
        "os_name": os.name,
        "platform_machine": platform.machine(),
        "platform_release": platform.release(),
        "platform_system": platform.system(),
        "platform_version": platform.version(),
        "python_full_version": platform.python_version(),
        "platform_python_implementation": platform.python_implementation(),
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "sys_platform": sys.platform,
    },
}
sys.stdout.write(MARKER + json.dumps(info) + "\n")
