"""hf: Hugging Face token and gated access for every repo the profile needs — before the 40 GB download.

Runs a probe through the target's own huggingface_hub (the version the pipeline will use), falling back to
the doctor's interpreter when the target has none (huggingface_hub is a dependency of the doctor). HF_ENDPOINT is
honoured; with HF_HUB_OFFLINE=1 it verifies the cache instead of the network. The token is never printed: only where
it came from and its last 4 characters.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from m3d_doctor.check import Check
from m3d_doctor.context import Context
from m3d_doctor.findings import Finding, Remedy, Severity
from m3d_doctor.probe import run_probe

TIMEOUT_S = 4.0  # per request
DEADLINE_S = 8.0  # whole probe: a hub that does not answer ends the check within ~10 s


def hub_python(ctx: Context) -> str | None:
    """The target if it has huggingface_hub, else the doctor's own interpreter if it has it."""
    if ctx.target.live and "huggingface-hub" in ctx.target.dists:
        return ctx.target.python
    from importlib.util import find_spec

    return sys.executable if find_spec("huggingface_hub") is not None else None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _login_cmd(hub_version: str) -> str:
    """`hf auth login` exists from huggingface_hub 0.34; older releases only have huggingface-cli."""
    try:
        major, minor = (int(x) for x in hub_version.split(".")[:2])
    except ValueError:
        return "hf auth login"
    return "hf auth login" if (major, minor) >= (0, 34) else "huggingface-cli login"


def _token_label(tok: dict[str, Any]) -> str:
    src = tok.get("source") or "?"
    return f"{src} (…{tok['last4']})" if tok.get("last4") else src


class HfCheck(Check):
    name = "hf"
    description = "HF token valid and access to every repo the profile needs (gated ones included)"
    order = 70
    needs_live_target = False
    timeout_s = 20.0

    @property
    def needs_network(self) -> bool:  # type: ignore[override]
        return not _offline()  # offline mode checks the cache instead

    def run(self, ctx: Context) -> list[Finding]:
        python = hub_python(ctx)
        if python is None:
            return [Finding("hf.no-hub", Severity.SKIP, "huggingface_hub is not installed here or in the target",
                            cause="the access check uses huggingface_hub's own client",
                            remedy=Remedy("pip install 'huggingface_hub>=0.25'  # m3d-doctor's own dependency"))]
        repos: dict[str, dict[str, Any]] = {}
        for m in ctx.models():
            entry = repos.setdefault(m.repo, {"repo": m.repo, "type": "model", "files": [], "gated": False,
                                              "stages": []})
            entry["files"] += [f.path for f in m.files]
            entry["gated"] = entry["gated"] or m.gated
            entry["stages"].append(m.stage)
        request = {"repos": [{k: r[k] for k in ("repo", "type", "files")} for r in repos.values()],
                   "timeout": TIMEOUT_S, "deadline": DEADLINE_S}
        data = run_probe(python, "hf_access", stdin=json.dumps(request), timeout=DEADLINE_S + 10).data
        if not data.get("ok"):
            err = data.get("error") or {}
            return [Finding("hf.hub-broken", Severity.FAIL, "huggingface_hub does not import in the target",
                            cause=f"{err.get('type')}: {err.get('message')}", evidence={"python": python})]
        base = {"endpoint": data["endpoint"], "hub_version": data["hub_version"], "python": python}
        if data.get("offline"):
            return self._offline(data, base)
        return self._token(data, repos, base) + self._repos(data, repos, base)

    def _token(self, data: dict[str, Any], repos: dict[str, Any], base: dict[str, Any]) -> list[Finding]:
        tok, who = data["token"], data.get("whoami") or {}
        ev = {**base, "token_source": tok.get("source"), "token_last4": tok.get("last4")}
        status = who.get("status")
        any_gated = any(r["gated"] for r in repos.values())
        if status == "no-token":
            return [Finding(
                "hf.token-missing", Severity.FAIL if any_gated else Severity.WARN,
                "no Hugging Face token (HF_TOKEN, HUGGING_FACE_HUB_TOKEN, or the token file)",
                cause="gated repos (FLUX.1-dev) need a token of an account that accepted their licence"
                if any_gated else "anonymous downloads are rate-limited",
                evidence=ev, remedy=Remedy(f"{_login_cmd(base['hub_version'])}  # or: export HF_TOKEN=hf_..."))]
        if status == "unauthorized":
            return [Finding(
                "hf.token-invalid", Severity.FAIL, f"the token from {_token_label(tok)} is rejected (401)",
                cause="revoked, expired, or mistyped; every gated download will fail", evidence=ev,
                remedy=Remedy(f"{_login_cmd(base['hub_version'])}  # with a new token from "
                              "https://huggingface.co/settings/tokens"))]
        if status == "ok":
            return [Finding("hf.token-ok", Severity.OK, f"token from {_token_label(tok)} is valid (user "
                            f"{who.get('name')})", evidence={**ev, "user": who.get("name")})]
        return [self._unreachable("whoami", who, base)]

    def _repos(self, data: dict[str, Any], repos: dict[str, Any], base: dict[str, Any]) -> list[Finding]:
        out = []
        endpoint = data["endpoint"].rstrip("/")
        unreachable = []
        for r in data["repos"]:
            meta = repos[r["repo"]]
            ev = {**base, "repo": r["repo"], "stages": meta["stages"]}
            st = r.get("status")
            if st == "ok":
                out.append(Finding("hf.repo-ok", Severity.OK, f"{r['repo']}: readable", evidence=ev))
            elif st == "gated":
                url = f"{endpoint}/{r['repo']}"
                out.append(Finding(
                    "hf.gated-no-access", Severity.FAIL,
                    f"{r['repo']} is gated and this token's account has not been granted access",
                    cause=f"open {url}, accept the conditions with the account of the token, then re-run; "
                          f"needed by the {'/'.join(meta['stages'])} stage",
                    evidence={**ev, "request_access_url": url, "http": r.get("http")},
                    remedy=Remedy(f"open {url}  # request access, then: m3d-doctor check hf")))
            elif st == "not-found":
                out.append(Finding(
                    "hf.repo-not-found", Severity.FAIL, f"{r['repo']}: not found (or private without access)",
                    cause="a renamed or private repo, or a typo in the profile",
                    evidence={**ev, "http": r.get("http")}))
            elif st == "unauthorized":
                out.append(Finding("hf.repo-unchecked", Severity.INFO,
                                   f"{r['repo']}: not checked, the token is rejected", evidence=ev))
            elif st in ("unreachable", "error", "http-error"):
                unreachable.append((r, ev))
        for r, ev in unreachable:
            out.append(self._unreachable(r["repo"], r, base, ev))
        return out

    def _unreachable(self, what: str, r: dict[str, Any], base: dict[str, Any], ev: dict[str, Any] | None = None
                     ) -> Finding:
        detail = r.get("message") or r.get("type") or r.get("status")
        return Finding(
            "hf.unreachable", Severity.ERROR, f"{what}: the hub at {base['endpoint']} did not answer ({detail})",
            cause="no network, a proxy, HF_ENDPOINT pointing at a mirror that is down, or the Hub is slow; "
                  "nothing was concluded about access",
            evidence={**(ev or base), "status": r.get("status"), "http": r.get("http")})

    def _offline(self, data: dict[str, Any], base: dict[str, Any]) -> list[Finding]:
        out = []
        for r in data.get("cache_files", []):
            missing = [f for f, ok in r["files"].items() if not ok]
            ev = {**base, "repo": r["repo"], "cache": data.get("cache")}
            if missing:
                out.append(Finding(
                    "hf.offline-missing", Severity.FAIL,
                    f"HF_HUB_OFFLINE=1 but {len(missing)} file(s) of {r['repo']} are not in the cache",
                    cause="offline mode makes every uncached file a LocalEntryNotFoundError at load time",
                    evidence={**ev, "missing": missing},
                    remedy=Remedy("HF_HUB_OFFLINE=0 m3d-doctor fix hf.download", "hf.download")))
            else:
                out.append(Finding("hf.offline-ok", Severity.OK, f"{r['repo']}: every needed file is cached",
                                   evidence=ev))
        return out


CHECK = HfCheck()
