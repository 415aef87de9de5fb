# Probe: download files with the target's own huggingface_hub (resumable: the hub continues `.incomplete`
# blobs). Progress bars go to stderr, which the doctor passes through. Python 3.8-compatible.
import json
import os
import sys

MARKER = "@@M3D-PROBE@@"
req = json.loads(sys.stdin.read() or "{}")
out = {"files": []}
try:
    from huggingface_hub import hf_hub_download
except BaseException as exc:
    sys.stdout.write(MARKER + json.dumps({"error": "%s: %s" % (type(exc).__name__, exc)}) + "\n")
    sys.exit(0)

for item in req.get("files", []):
    rec = {"repo": item["repo"], "file": item["file"]}
    try:
        rec["path"] = hf_hub_download(item["repo"], item["file"], repo_type=item.get("type", "model"))
        rec["ok"] = True
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        rec["ok"] = False
        rec["error"] = "%s: %s" % (type(exc).__name__, str(exc).splitlines()[0][:300] if str(exc) else "")
    out["files"].append(rec)
    sys.stdout.write(json.dumps(rec) + "\n")
    sys.stdout.flush()
sys.stdout.write(MARKER + json.dumps(out) + "\n")
os._exit(0)
