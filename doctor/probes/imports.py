# Probe: import each requested module in the target interpreter and report what really happens.
# Python 3.8-compatible; standard library only. Input (stdin): {"modules": [...], "names": {...},
# "attrs": [...], "skip": [...]}. Each result is printed as a progress line as soon as it is known, so a
# module that kills the interpreter (a segfault in a NumPy-1 extension) is still attributable.
import importlib
import io
import json
import sys
import time
import traceback
import warnings

MARKER = "@@M3D-PROBE@@"
req = json.loads(sys.stdin.read() or "{}")
skip = set(req.get("skip", []))
names = req.get("names", {})
results = []


def emit(rec):
    results.append(rec)
    sys.stdout.write(json.dumps(rec) + "\n")
    sys.stdout.flush()


def try_import(module):
    sys.stdout.write(json.dumps({"started": module}) + "\n")
    sys.stdout.flush()
    buf = io.StringIO()
    old = sys.stderr
    sys.stderr = buf
    t0 = time.perf_counter()
    rec = {"module": module, "ok": True}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mod = importlib.import_module(module)
            missing = []
            for name in names.get(module, []):
                try:
                    getattr(mod, name)
                except Exception as exc:  # lazy modules raise their real import error here
                    missing.append({"name": name, "type": type(exc).__name__, "message": str(exc)[:2000]})
            if missing:
                rec["ok"] = False
                rec["names"] = missing
            rec["warnings"] = [str(w.message)[:500] for w in caught][:10]
            rec["version"] = str(getattr(mod, "__version__", "") or "")
            rec["file"] = getattr(mod, "__file__", None)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt from a broken package too
        rec["ok"] = False
        rec["type"] = type(exc).__name__
        rec["message"] = str(exc)[:2000]
        causes, seen, cur = [], set(), exc
        while (cur.__cause__ or cur.__context__) is not None and id(cur) not in seen and len(causes) < 5:
            seen.add(id(cur))
            cur = cur.__cause__ or cur.__context__
            causes.append("%s: %s" % (type(cur).__name__, str(cur)[:1000]))
        rec["causes"] = causes  # "undefined symbol" lives only in __cause__ (torch.ops.load_library)
        rec["trace"] = traceback.format_exc()[-3000:]
    finally:
        sys.stderr = old
    rec["stderr"] = buf.getvalue()[-3000:]
    rec["seconds"] = round(time.perf_counter() - t0, 4)
    emit(rec)


def resolve_attr(dotted):
    parts = dotted.split(".")
    try:
        obj = importlib.import_module(parts[0])
    except BaseException as exc:
        return {"attr": dotted, "ok": False, "type": type(exc).__name__, "message": str(exc)[:500]}
    for i, part in enumerate(parts[1:], 1):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            return {"attr": dotted, "ok": False, "type": "AttributeError", "message": str(exc)[:500],
                    "missing_at": ".".join(parts[: i + 1])}
        except BaseException as exc:
            return {"attr": dotted, "ok": False, "type": type(exc).__name__, "message": str(exc)[:500]}
    return {"attr": dotted, "ok": True}


for m in req.get("modules", []):
    if m not in skip:
        try_import(m)
attrs = []
for a in req.get("attrs", []):
    if a.split(".")[0] not in skip:
        attrs.append(resolve_attr(a))
answer = {"imports": results, "attrs": attrs}
if req.get("torch_info_source") and "torch" in sys.modules:
    ns = {"__name__": "m3d_torch_info"}
    try:
        exec(compile(req["torch_info_source"], "torch_info", "exec"), ns)
        answer["torch_info"] = ns["collect"]()
    except BaseException as exc:
        answer["torch_info"] = {"ok": False, "error": {"type": type(exc).__name__, "message": str(exc)[:500]}}
sys.stdout.write(MARKER + json.dumps(answer) + "\n")
