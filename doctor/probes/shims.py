# Probe: the facts that decide whether a shim may be installed, and the verification after installing one.
# Reads {"conditions": [{"kind", "module", "attr"}], "verify": CODE or null} on stdin. Python 3.8-compatible.
# kinds: "importable" (module imports), "absent" (no spec can be found: a broken module still counts as
# present), "attr-missing" (module imports and has no attr).
import importlib
import importlib.util
import json
import os
import sys
import traceback

MARKER = "@@M3D-PROBE@@"
req = json.loads(sys.stdin.read() or "{}")


def short(exc):
    text = str(exc).splitlines()[0] if str(exc) else ""
    return "%s: %s" % (type(exc).__name__, text[:300])


def where(obj):
    return getattr(obj, "__file__", None) or repr(obj)[:200]


def decide(cond):
    kind, module, attr = cond["kind"], cond["module"], cond.get("attr", "")
    if kind == "absent":
        try:
            spec = importlib.util.find_spec(module)
        except BaseException as exc:  # a parent package that fails to import: something is there
            return {"holds": False, "detail": "%s is present but broken (%s)" % (module, short(exc))}
        if spec is None:
            return {"holds": True, "detail": "no module %s" % module}
        found = spec.origin or list(spec.submodule_search_locations or [])
        return {"holds": False, "detail": "%s found at %s" % (module, found)}
    try:
        mod = importlib.import_module(module)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        return {"holds": False, "detail": "cannot import %s (%s)" % (module, short(exc))}
    if kind == "importable":
        return {"holds": True, "detail": "%s %s imports" % (module, getattr(mod, "__version__", ""))}
    if hasattr(mod, attr):
        value = getattr(mod, attr)
        shim = getattr(value, "__m3d_shim__", None)
        return {"holds": False, "detail": "%s.%s exists (%s%s)" % (module, attr, where(value),
                                                                  ", an m3d shim" if shim else "")}
    return {"holds": True, "detail": "%s %s has no %s" % (module, getattr(mod, "__version__", ""), attr)}


out = {"conditions": [], "pip": importlib.util.find_spec("pip") is not None}
for cond in req.get("conditions", []):
    out["conditions"].append(decide(cond))
if req.get("verify"):
    try:
        exec(compile(req["verify"], "<m3d-shim-verify>", "exec"), {"__name__": "__m3d_verify__"})
        out["verify"] = {"ok": True}
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        out["verify"] = {"ok": False, "error": short(exc),
                         "traceback_tail": traceback.format_exc().strip().splitlines()[-4:]}
sys.stdout.write(MARKER + json.dumps(out) + "\n")
sys.stdout.flush()
os._exit(0)
