#!/usr/bin/env python3
"""A tiny fake Hugging Face Hub (stdlib only) for testing huggingface_hub clients.

Verified against huggingface_hub 0.25.2, 0.34.6, 0.36.2, 1.0.1, 1.33.0 and 2.4.0 (see verify.py).

Endpoints implemented (model repos at /{repo}, datasets at /datasets/{repo}, spaces at /spaces/{repo}):

  GET  /api/whoami-v2                                  200 user JSON | 401 (invalid / missing token)
  GET  /api/agent-harnesses                            {"standardEnvVars": [...], "harnesses": {}} (1.2x+/2.x)
  GET  /api/{models|datasets|spaces}/{repo}            repo info JSON
  GET  /api/{...}/{repo}/revision/{rev}                repo info JSON at a revision
  GET  /api/{...}/{repo}/auth-check                    200 {} | 401/403 GatedRepo | 401/404 RepoNotFound
  POST /api/{...}/{repo}/paths-info/{rev}              [{"type":"file","path":..,"size":..,"oid":..}]
  GET  /api/{...}/{repo}/tree/{rev}[/{path}]           flat listing
  HEAD/GET /{repo}/resolve/{rev}/{filename}            file (200), or 302 to the "CDN" for LFS-style files
  HEAD/GET <cdn>/_cdn/{sha256}                         raw LFS content, served on a second port and addressed
                                                       as http://localhost:<port2> (a different hostname, like
                                                       the real CDN, so the client drops auth / stops redirects)

Hub-like error semantics (what huggingface_hub keys on is the X-Error-Code header):
  * repo missing or private without access:   token valid -> 404, otherwise 401; X-Error-Code: RepoNotFound
  * gated repo without access:                 no token -> 401, token without access -> 403; X-Error-Code: GatedRepo
  * invalid token (on any endpoint):           401, X-Error-Message: "Invalid credentials in Authorization header",
                                               no X-Error-Code (same as the real Hub)
  * unknown revision:                          404, X-Error-Code: RevisionNotFound
  * unknown file:                              404, X-Error-Code: EntryNotFound (+ X-Repo-Commit)
  * hang mode (hub.hang = True, or hang_paths): the connection is accepted, the request read, and nothing is
                                                ever answered (until the hub is closed).

No X-Xet-* headers and no `Link: <...>; rel="xet-auth"` are ever sent, so hf_xet is never used.

Usage:
    from fakehub import FakeHub
    with FakeHub() as hub:               # demo data, see FakeHub.add_demo_data()
        os.environ["HF_ENDPOINT"] = hub.endpoint   # must be set BEFORE importing huggingface_hub
        ...
        hub.requests  # list of dicts: method, path, auth ('valid'|'invalid'|None), range, user_agent

    python fakehub.py [--port N] [--hang]   # serve the demo data until Ctrl-C
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Set, Tuple
from urllib.parse import parse_qs, quote, unquote, urlsplit

# Demo tokens (fake; they only have a meaning for this server)
VALID_TOKEN = "hf_fakeValidTokenAliceAAAAAAAAAAAAAAA"  # user "alice": access to gated & private demo repos
NOGATE_TOKEN = "hf_fakeValidTokenBobBBBBBBBBBBBBBBBBB"  # user "bob": valid, but no gated/private access
INVALID_TOKEN = "hf_fakeInvalidTokenXXXXXXXXXXXXXXXXX"  # unknown to the server -> 401

_API_SUBPATHS = {"revision", "auth-check", "paths-info", "tree", "refs", "commits", "resolve"}
_TYPE_PLURAL = {"model": "models", "dataset": "datasets", "space": "spaces"}
_PLURAL_TYPE = {v: k for k, v in _TYPE_PLURAL.items()}


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def fake_commit(repo_id: str, salt: str = "") -> str:
    return hashlib.sha1(f"commit:{repo_id}:{salt}".encode()).hexdigest()


@dataclass
class FakeRepo:
    repo_id: str
    repo_type: str = "model"  # model | dataset | space
    files: Dict[str, bytes] = field(default_factory=dict)
    lfs_files: Set[str] = field(default_factory=set)  # served as 302 -> CDN with X-Linked-Size / X-Linked-Etag
    gated: object = False  # False | "auto" | "manual"
    private: bool = False
    allowed_users: Set[str] = field(default_factory=set)  # who may read a gated/private repo
    commit: str = ""
    extra_refs: Dict[str, str] = field(default_factory=dict)  # branch/tag -> commit (default: main -> commit)

    def __post_init__(self):
        if not self.commit:
            self.commit = fake_commit(self.repo_id)
        self.extra_refs.setdefault("main", self.commit)

    def resolve_revision(self, rev: str) -> Optional[str]:
        if rev in self.extra_refs:
            return self.extra_refs[rev]
        if rev in self.extra_refs.values():
            return rev
        return None

    @property
    def web_url_path(self) -> str:
        return self.repo_id if self.repo_type == "model" else f"{_TYPE_PLURAL[self.repo_type]}/{self.repo_id}"


class FakeHub:
    """Threaded fake Hub on 127.0.0.1 (ephemeral port by default). Use as a context manager or start()/close()."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, demo: bool = True, quiet: bool = True,
                 cdn_host: Optional[str] = None):
        self.host = host
        # The "CDN" must have a different *hostname* than the hub: huggingface_hub 1.x (e.g. 1.33) follows HEAD
        # redirects to the same hostname (port ignored), and the CDN response carries no X-Repo-Commit.
        self.cdn_host = cdn_host or ("localhost" if host == "127.0.0.1" else "127.0.0.1")
        self.port = port
        self.quiet = quiet
        self.users: Dict[str, dict] = {}  # token -> user dict
        self.repos: Dict[Tuple[str, str], FakeRepo] = {}  # (repo_type, repo_id) -> repo
        self.hang = False  # if True: every request is accepted and never answered
        self.hang_paths: List[str] = []  # regexes on the request path; matching requests hang
        self.delay = 0.0  # seconds to sleep before answering (to test timeouts without hanging forever)
        self.requests: List[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._servers: List[ThreadingHTTPServer] = []
        self._threads: List[threading.Thread] = []
        if demo:
            self.add_demo_data()

    # ------------------------------------------------------------------ data
    def add_user(self, token: str, name: str, orgs: Optional[List[str]] = None, role: str = "read") -> None:
        self.users[token] = {"name": name, "orgs": orgs or [], "role": role}

    def add_repo(self, repo: FakeRepo) -> FakeRepo:
        self.repos[(repo.repo_type, repo.repo_id)] = repo
        return repo

    def add_demo_data(self) -> None:
        self.add_user(VALID_TOKEN, "alice", orgs=["fake-org"])
        self.add_user(NOGATE_TOKEN, "bob")
        cfg = json.dumps({"model_type": "fake", "hidden_size": 8}, indent=2).encode()
        weights = bytes(range(256)) * 256  # 64 KiB
        self.add_repo(
            FakeRepo(
                "fake-org/public-model",
                files={"config.json": cfg, "model.safetensors": weights, "sub/dir/file.txt": b"hello\n"},
                lfs_files={"model.safetensors"},
                extra_refs={"v1.0": fake_commit("fake-org/public-model", "v1.0")},
            )
        )
        self.add_repo(
            FakeRepo("fake-org/gated-model", files={"config.json": cfg}, gated="manual", allowed_users={"alice"})
        )
        self.add_repo(
            FakeRepo("fake-org/private-model", files={"config.json": cfg}, private=True, allowed_users={"alice"})
        )
        self.add_repo(FakeRepo("fake-org/public-dataset", repo_type="dataset", files={"data.csv": b"a,b\n1,2\n"}))

    # ------------------------------------------------------------------ lifecycle
    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self._servers[0].server_address[1]}"

    @property
    def cdn_endpoint(self) -> str:
        return f"http://{self.cdn_host}:{self._servers[1].server_address[1]}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_HubHandler):
            pass

        Handler.hub = hub
        for port in (self.port, 0):  # [0] = hub, [1] = "CDN" (different origin => client drops the auth header)
            srv = ThreadingHTTPServer((self.host, port), Handler)
            srv.daemon_threads = True
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
            t.start()
            self._servers.append(srv)
            self._threads.append(t)
        return self

    def close(self) -> None:
        self._stop.set()  # releases hung handlers
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        self._servers.clear()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers
    def user_for(self, authorization: Optional[str]) -> Tuple[Optional[dict], str]:
        """Return (user, state) with state in {'none', 'valid', 'invalid'}."""
        if not authorization:
            return None, "none"
        m = re.match(r"(?i)bearer\s+(.+)", authorization.strip())
        if not m:
            return None, "invalid"
        user = self.users.get(m.group(1).strip())
        return (user, "valid") if user else (None, "invalid")

    def log(self, entry: dict) -> None:
        with self._lock:
            self.requests.append(entry)

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries Content-Length
    server_version = "FakeHub/1.0"
    hub: FakeHub  # set on the subclass in FakeHub.start()

    # ---------------------------------------------------------------- plumbing
    def log_message(self, fmt, *args):  # silence default stderr logging
        if not self.hub.quiet:
            sys.stderr.write("fakehub: " + (fmt % args) + "\n")

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def _send(self, status: int, body: bytes = b"", headers: Optional[Dict[str, str]] = None,
              content_type: str = "application/json; charset=utf-8", content_length: Optional[int] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        self.send_header("X-Request-Id", f"Root=fake-{int(time.time() * 1000)}")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: Optional[Dict[str, str]] = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, status: int, message: str, code: Optional[str] = None, extra: Optional[dict] = None) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        headers.update(extra or {})
        self._json(status, {"error": message}, headers)

    # ---------------------------------------------------------------- routing
    def _dispatch(self, method: str) -> None:
        hub = self.hub
        url = urlsplit(self.path)
        path = url.path
        user, auth_state = hub.user_for(self.headers.get("Authorization"))
        body = b""
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            body = self.rfile.read(n)
        hub.log({
            "method": method, "path": self.path, "auth": None if auth_state == "none" else auth_state,
            "range": self.headers.get("Range"), "user_agent": self.headers.get("User-Agent"),
            "server": "cdn" if self.server is not hub._servers[0] else "hub",
        })
        if hub.hang or any(re.search(p, path) for p in hub.hang_paths):
            hub._stop.wait()  # never answer; released when the hub is closed
            self.close_connection = True
            return
        if hub.delay:
            time.sleep(hub.delay)

        if auth_state == "invalid":
            # Real Hub behaviour for a bad token on any endpoint (CDN ignores auth).
            if not path.startswith("/_cdn/"):
                return self._error(401, "Invalid credentials in Authorization header")

        if path == "/api/whoami-v2" and method == "GET":
            return self._whoami(user)
        if path == "/api/agent-harnesses" and method == "GET":
            # huggingface_hub >= ~1.20 fetches this once a day (3 s timeout) to build the User-Agent,
            # cached in $HF_HOME/.agent_harnesses.json
            return self._json(200, {"standardEnvVars": ["AI_AGENT", "AGENT"], "harnesses": {}})
        if path.startswith("/_cdn/") and method in ("GET", "HEAD"):
            return self._cdn(path)
        m = re.match(r"^/api/(models|datasets|spaces)/(.+)$", path)
        if m:
            return self._api(method, _PLURAL_TYPE[m.group(1)], m.group(2), user, url.query, body)
        if "/resolve/" in path and method in ("GET", "HEAD"):
            return self._resolve(path, user)
        return self._error(404, "Sorry, we can't find the page you are looking for.")

    # ---------------------------------------------------------------- access control
    def _check_access(self, repo_type: str, repo_id: str, user: Optional[dict], content: bool) -> Optional[FakeRepo]:
        """Return the repo, or send the Hub-like error and return None. content=True for files / auth-check."""
        repo = self.hub.repos.get((repo_type, repo_id))
        allowed = user is not None and repo is not None and user["name"] in repo.allowed_users
        if repo is None or (repo.private and not allowed):
            if user is None:
                self._error(401, "Invalid username or password.", "RepoNotFound")
            else:
                self._error(404, "Repository not found", "RepoNotFound")
            return None
        if content and repo.gated and not allowed:
            what = f"{repo_type} {repo_id}"
            if user is None:
                self._error(401, f"Access to {what} is restricted. You must have access to it and be authenticated "
                                 "to access it. Please log in.", "GatedRepo")
            else:
                self._error(403, f"Access to {what} is restricted and you are not in the authorized list. "
                                 f"Visit {self.hub.endpoint}/{repo.web_url_path} to ask for access.", "GatedRepo")
            return None
        return repo

    # ---------------------------------------------------------------- endpoints
    def _whoami(self, user: Optional[dict]) -> None:
        if user is None:
            return self._error(401, "Invalid credentials in Authorization header")
        self._json(200, {
            "type": "user", "id": hashlib.md5(user["name"].encode()).hexdigest()[:24], "name": user["name"],
            "fullname": user["name"].title(), "email": f"{user['name']}@example.invalid", "emailVerified": True,
            "canPay": False, "isPro": False, "periodEnd": None, "avatarUrl": "",
            "orgs": [{"type": "org", "name": o, "fullname": o, "roleInOrg": "read"} for o in user["orgs"]],
            "auth": {"type": "access_token",
                     "accessToken": {"displayName": "fakehub", "role": user["role"],
                                     "createdAt": "2024-01-01T00:00:00.000Z"}},
        })

    def _api(self, method: str, repo_type: str, rest: str, user, query: str, body: bytes) -> None:
        segs = [unquote(s) for s in rest.split("/")]
        if len(segs) >= 2 and segs[1] not in _API_SUBPATHS:
            repo_id, tail = f"{segs[0]}/{segs[1]}", segs[2:]
        else:
            repo_id, tail = segs[0], segs[1:]
        action = tail[0] if tail else ""
        if method == "GET" and action == "auth-check":
            repo = self._check_access(repo_type, repo_id, user, content=True)
            if repo:
                self._json(200, {})
            return
        repo = self._check_access(repo_type, repo_id, user, content=action in ("paths-info", "tree"))
        if repo is None:
            return
        if method == "GET" and action in ("", "revision"):
            rev = "/".join(tail[1:]) if action == "revision" else "main"
            commit = repo.resolve_revision(rev)
            if commit is None:
                return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            return self._json(200, self._repo_info(repo, commit))
        if method == "POST" and action == "paths-info":
            commit = repo.resolve_revision("/".join(tail[1:]) or "main")
            if commit is None:
                return self._error(404, "Invalid rev id", "RevisionNotFound")
            form = parse_qs(body.decode())
            if not form and body.strip().startswith(b"{"):
                form = {"paths": json.loads(body).get("paths", [])}
            paths = form.get("paths", [])
            return self._json(200, [self._path_info(repo, p) for p in paths if p in repo.files])
        if method == "GET" and action == "tree":
            commit = repo.resolve_revision(tail[1] if len(tail) > 1 else "main")
            if commit is None:
                return self._error(404, "Invalid rev id", "RevisionNotFound")
            prefix = "/".join(tail[2:]).strip("/")
            recursive = "recursive=true" in query.lower() or "recursive=1" in query
            out, dirs = [], set()
            for p in sorted(repo.files):
                if prefix and not p.startswith(prefix + "/"):
                    continue
                rel = p[len(prefix) + 1:] if prefix else p
                if "/" in rel and not recursive:
                    d = (prefix + "/" if prefix else "") + rel.split("/")[0]
                    if d not in dirs:
                        dirs.add(d)
                        out.append({"type": "directory", "oid": fake_commit(d), "size": 0, "path": d})
                    continue
                out.append(self._path_info(repo, p))
            return self._json(200, out)
        return self._error(404, "Sorry, we can't find the page you are looking for.")

    def _repo_info(self, repo: FakeRepo, commit: str) -> dict:
        author = repo.repo_id.split("/")[0] if "/" in repo.repo_id else None
        return {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
            **({"modelId": repo.repo_id} if repo.repo_type == "model" else {}),
            "author": author, "sha": commit, "lastModified": "2024-01-01T00:00:00.000Z",
            "createdAt": "2024-01-01T00:00:00.000Z", "private": repo.private, "disabled": False,
            "gated": repo.gated, "downloads": 0, "likes": 0, "tags": [],
            "siblings": [{"rfilename": p, "size": len(d), "blobId": git_blob_sha1(d)} for p, d in sorted(repo.files.items())],
            "usedStorage": sum(len(d) for d in repo.files.values()),
        }

    def _path_info(self, repo: FakeRepo, p: str) -> dict:
        data = repo.files[p]
        info = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": p}
        if p in repo.lfs_files:
            info["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return info

    def _resolve(self, path: str, user) -> None:
        p = path.lstrip("/")
        repo_type = "model"
        for plural in ("datasets", "spaces"):
            if p.startswith(plural + "/"):
                repo_type, p = _PLURAL_TYPE[plural], p[len(plural) + 1:]
                break
        repo_part, _, rest = p.partition("/resolve/")
        repo_id = unquote(repo_part)
        rev_q, _, filename_q = rest.partition("/")
        rev, filename = unquote(rev_q), unquote(filename_q)
        repo = self._check_access(repo_type, repo_id, user, content=True)
        if repo is None:
            return
        commit = repo.resolve_revision(rev)
        if commit is None:
            return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        if filename not in repo.files:
            return self._error(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit})
        data = repo.files[filename]
        common = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes", "Vary": "Origin, Accept-Encoding"}
        if filename in repo.lfs_files:
            sha256 = hashlib.sha256(data).hexdigest()
            pointer = (f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n").encode()
            loc = f"{self.hub.cdn_endpoint}/_cdn/{sha256}?filename={quote(filename.split('/')[-1])}"
            body = f"Found. Redirecting to {loc}".encode()
            return self._send(302, body, {
                **common, "Location": loc, "ETag": f'"{git_blob_sha1(pointer)}"',
                "X-Linked-Size": str(len(data)), "X-Linked-ETag": f'"{sha256}"',
            }, content_type="text/plain; charset=utf-8")
        return self._serve_bytes(data, {**common, "ETag": f'"{git_blob_sha1(data)}"'})

    def _cdn(self, path: str) -> None:
        sha256 = path[len("/_cdn/"):]
        for repo in self.hub.repos.values():
            for data in repo.files.values():
                if hashlib.sha256(data).hexdigest() == sha256:
                    return self._serve_bytes(data, {"ETag": f'"{sha256}"', "Accept-Ranges": "bytes"})
        self._send(404, b"NoSuchKey", content_type="text/plain")

    def _serve_bytes(self, data: bytes, headers: Dict[str, str]) -> None:
        rng = self.headers.get("Range")
        m = re.match(r"bytes=(\d*)-(\d*)$", rng or "")
        if m and self.command == "GET":
            start = int(m.group(1) or 0)
            end = int(m.group(2)) if m.group(2) else len(data) - 1
            if start >= len(data):
                return self._send(416, b"", {**headers, "Content-Range": f"bytes */{len(data)}"})
            chunk = data[start:end + 1]
            return self._send(206, chunk, {**headers, "Content-Range": f"bytes {start}-{start + len(chunk) - 1}/{len(data)}"},
                              content_type="application/octet-stream")
        self._send(200, data, headers, content_type="application/octet-stream")


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--hang", action="store_true", help="accept connections and never answer")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    hub = FakeHub(port=args.port, quiet=not args.verbose)
    hub.hang = args.hang
    hub.start()
    print(f"HF_ENDPOINT={hub.endpoint}  (cdn: {hub.cdn_endpoint})", flush=True)
    print(f"valid token (alice): {VALID_TOKEN}\nvalid token w/o gated access (bob): {NOGATE_TOKEN}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.close()


if __name__ == "__main__":
    main()
