# Probe: Hugging Face access through the target's own huggingface_hub (0.25 .. 2.x). Python 3.8-compatible.
# Never prints a token: only where it came from and its last 4 characters. Every request is bounded
# (a timeout installed on the hub's HTTP client) and the whole probe has a deadline; requests that have not
# answered by then are reported as unreachable and the process exits without waiting for them.
import json
import os
import sys
import threading
import time

MARKER = "@@M3D-PROBE@@"
req = json.loads(sys.stdin.read() or "{}")
TIMEOUT = float(req.get("timeout", 4.0))
DEADLINE = float(req.get("deadline", 8.0))
t0 = time.monotonic()


def finish(out):
    sys.stdout.write(MARKER + json.dumps(out) + "\n")
    sys.stdout.flush()
    os._exit(0)  # hung request threads must not keep us alive


try:
    import huggingface_hub as hh
    from huggingface_hub import constants
except BaseException as exc:
    finish({"ok": False, "error": {"type": type(exc).__name__, "message": str(exc)[:500]}})

out = {"ok": True, "hub_version": hh.__version__, "endpoint": constants.ENDPOINT,
       "offline": bool(getattr(constants, "HF_HUB_OFFLINE", False)), "cache": constants.HF_HUB_CACHE}

try:
    from huggingface_hub.utils import _auth as _token_mod  # >= 0.26
except ImportError:  # 0.25
    from huggingface_hub.utils import _token as _token_mod


def token_and_source():
    if hasattr(_token_mod, "_get_token_from_oidc") and os.environ.get("HF_OIDC_RESOURCE"):
        return None, "oidc"
    tok = _token_mod._get_token_from_environment()
    if tok:
        return tok, "env:HF_TOKEN" if os.environ.get("HF_TOKEN", "").strip() else "env:HUGGING_FACE_HUB_TOKEN"
    tok = _token_mod._get_token_from_file()
    if tok:
        return tok, "file:" + str(constants.HF_TOKEN_PATH)
    return None, None


def install_timeout(seconds):
    """Every hub request without a timeout gets one (1.5+/2.x and 0.x have none for whoami/auth_check)."""
    if hasattr(hh, "set_client_factory"):  # 1.x / 2.x (httpx / httpx2)
        from huggingface_hub.utils._http import default_client_factory

        def enforce(request):
            t = dict(request.extensions.get("timeout") or {})
            request.extensions["timeout"] = {k: (seconds if t.get(k) is None else t[k])
                                             for k in ("connect", "read", "write", "pool")}

        def factory():
            client = default_client_factory()
            client.timeout = type(client.timeout)(seconds)
            hooks = client.event_hooks
            hooks["request"] = list(hooks.get("request", [])) + [enforce]
            client.event_hooks = hooks
            return client

        hh.set_client_factory(factory)
        return
    import requests
    from huggingface_hub.utils._http import UniqueRequestIdAdapter

    class TimeoutAdapter(UniqueRequestIdAdapter):
        def send(self, request, *args, **kwargs):
            if kwargs.get("timeout") is None:
                kwargs["timeout"] = seconds
            return super().send(request, *args, **kwargs)

    def factory():
        s = requests.Session()
        s.mount("http://", TimeoutAdapter())
        s.mount("https://", TimeoutAdapter())
        return s

    hh.configure_http_backend(backend_factory=factory)


def classify(exc):
    from huggingface_hub import errors as E  # present in every supported version
    status = getattr(getattr(exc, "response", None), "status_code", None)
    name = type(exc).__name__
    if isinstance(exc, getattr(E, "GatedRepoError", ())):
        return {"status": "gated", "http": status}
    if isinstance(exc, getattr(E, "RepositoryNotFoundError", ())):
        return {"status": "not-found", "http": status}
    if isinstance(exc, getattr(E, "OfflineModeIsEnabled", ())):
        return {"status": "offline"}
    if status == 401:
        return {"status": "unauthorized", "http": 401}
    if status is not None:
        return {"status": "http-error", "http": status, "message": str(exc).splitlines()[0][:300]}
    if "Timeout" in name or "Connect" in name or "Connection" in name or isinstance(exc, OSError):
        return {"status": "unreachable", "type": name, "message": str(exc)[:300]}
    return {"status": "error", "type": name, "message": str(exc)[:300]}


token, source = token_and_source()
out["token"] = {"source": source, "last4": token[-4:] if token and len(token) >= 12 else None}
results = {}


def run(key, fn):
    try:
        results[key] = fn()
    except BaseException as exc:
        results[key] = classify(exc)


if out["offline"]:
    # HF_HUB_OFFLINE=1: no HTTP at all; verify that every required file is already in the cache.
    from huggingface_hub import try_to_load_from_cache
    repos = []
    for r in req.get("repos", []):
        files = {}
        for f in r.get("files", []):
            hit = try_to_load_from_cache(r["repo"], f, repo_type=r.get("type", "model"))
            files[f] = isinstance(hit, str)
        repos.append({"repo": r["repo"], "files": files})
    out["cache_files"] = repos
    finish(out)

install_timeout(TIMEOUT)
api = hh.HfApi()
threads = []


def whoami():
    if not token:
        return {"status": "no-token"}
    info = api.whoami(token=token)
    return {"status": "ok", "name": info.get("name"), "orgs": [o.get("name") for o in info.get("orgs", [])
                                                                if isinstance(o, dict)]}


def auth_check(repo, repo_type):
    def go():
        if not hasattr(api, "auth_check"):
            return {"status": "error", "message": "huggingface_hub %s has no auth_check (>= 0.25)" % hh.__version__}
        api.auth_check(repo, repo_type=repo_type, token=token or False)
        return {"status": "ok"}
    return go


jobs = [("whoami", whoami)] + [("repo:" + r["repo"], auth_check(r["repo"], r.get("type", "model")))
                               for r in req.get("repos", [])]
for key, fn in jobs:
    th = threading.Thread(target=run, args=(key, fn), daemon=True)
    th.start()
    threads.append((key, th))
for key, th in threads:
    th.join(max(0.0, DEADLINE - (time.monotonic() - t0)))
    if th.is_alive():
        results[key] = {"status": "unreachable", "type": "Deadline",
                        "message": "no answer within %.0fs" % DEADLINE}
out["whoami"] = results.get("whoami")
out["repos"] = []
for r in req.get("repos", []):
    res = dict(results.get("repo:" + r["repo"], {}))
    res["repo"], res["repo_type"] = r["repo"], r.get("type", "model")
    out["repos"].append(res)
out["seconds"] = round(time.monotonic() - t0, 3)
finish(out)
