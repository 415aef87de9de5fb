"""`huggingface_hub.cached_download` for huggingface_hub >= 0.26 (which removed it), installed by m3d-doctor.

Part of the m3d-shim-hf-cached-download distribution; its import hook sets `huggingface_hub.cached_download`
only when the installed huggingface_hub has none. diffusers <= 0.28.2 imports the name at module level.

Semantics kept: given the URL of a file on the Hub (`{endpoint}/{repo_id}/resolve/{revision}/{filename}`, with
`datasets/` or `spaces/` before the repo id for those repo types, as `hf_hub_url` builds it) return the local
path of the cached file, downloading it if needed, through the installed hub's `hf_hub_download`, so the
token, offline mode, cache directory and errors (RepositoryNotFoundError, EntryNotFoundError,
LocalEntryNotFoundError ...) are the hub's own. The path is in the hub's current cache layout
(`models--org--name/snapshots/<commit>/<filename>`), not the pre-0.26 flat layout.

Keywords of the old signature: cache_dir, force_download, token (use_auth_token, older), local_files_only,
user_agent, library_name, library_version, etag_timeout and proxies are passed on; resume_download and
legacy_cache_layout are accepted and ignored because they do nothing in the new API (downloads always resume;
there is no legacy layout). proxies on a hub that no longer takes them, and force_filename, raise ValueError
rather than being dropped. A URL that is not a file on the configured Hub endpoint (HF_ENDPOINT) raises
ValueError: the old function fetched any URL, this one does not pretend to.
"""

import inspect
import warnings
from urllib.parse import unquote

__m3d_shim__ = "hf-cached-download"

_REPO_TYPE_PREFIXES = (("datasets/", "dataset"), ("spaces/", "space"))


def parse_hub_url(url, endpoint):
    """(repo_type, repo_id, revision, filename) of a `/resolve/` URL on `endpoint`; ValueError otherwise."""
    base = endpoint.rstrip("/") + "/"
    if not isinstance(url, str) or not url.startswith(base):
        raise ValueError(
            "cached_download (m3d-shim-hf-cached-download) only resolves files on the Hub endpoint %s "
            "({endpoint}/{repo_id}/resolve/{revision}/{filename}); %r is not one. huggingface_hub >= 0.26 has no "
            "generic URL download: upgrade the caller (diffusers >= 0.29 no longer needs cached_download)."
            % (endpoint, url)
        )
    path = url[len(base):].split("#", 1)[0].split("?", 1)[0]
    repo_type = "model"
    for prefix, kind in _REPO_TYPE_PREFIXES:
        if path.startswith(prefix):
            repo_type, path = kind, path[len(prefix):]
            break
    repo_id, sep, rest = path.partition("/resolve/")
    revision, sep2, filename = rest.partition("/")
    if not (sep and sep2 and repo_id and revision and filename):
        raise ValueError("cached_download: %r is not a Hub file URL ({endpoint}/{repo_id}/resolve/{revision}/"
                         "{filename})" % (url,))
    return repo_type, unquote(repo_id), unquote(revision), unquote(filename)


def cached_download(
    url,
    *,
    library_name=None,
    library_version=None,
    cache_dir=None,
    user_agent=None,
    force_download=False,
    force_filename=None,
    proxies=None,
    etag_timeout=None,
    resume_download=None,
    token=None,
    local_files_only=False,
    legacy_cache_layout=False,
    use_auth_token=None,
):
    """Local path of the Hub file at `url`, downloaded into the hub cache if needed (see the module docstring)."""
    from huggingface_hub import constants, hf_hub_download

    if force_filename is not None:
        raise ValueError("cached_download(force_filename=...) is not supported by m3d-shim-hf-cached-download: "
                         "the hub cache names files itself; use hf_hub_download(local_dir=...)")
    if not legacy_cache_layout:
        warnings.warn(
            "'cached_download' is the legacy way to download files from the HF hub, please consider upgrading to"
            " 'hf_hub_download' (this one is provided by the m3d-shim-hf-cached-download shim)",
            FutureWarning,
            stacklevel=2,
        )
    repo_type, repo_id, revision, filename = parse_hub_url(url, constants.ENDPOINT)
    kwargs = {
        "repo_type": repo_type,
        "revision": revision,
        "cache_dir": cache_dir,
        "force_download": force_download,
        "token": token if token is not None else use_auth_token,
        "local_files_only": local_files_only,
        "user_agent": user_agent,
        "library_name": library_name,
        "library_version": library_version,
        "etag_timeout": etag_timeout,
        "proxies": proxies,
    }
    accepted = inspect.signature(hf_hub_download).parameters
    if proxies and "proxies" not in accepted:
        raise ValueError("this huggingface_hub takes no proxies argument; set HTTPS_PROXY/HTTP_PROXY instead")
    kwargs = {k: v for k, v in kwargs.items() if k in accepted and (v is not None or k == "token")}
    return str(hf_hub_download(repo_id, filename, **kwargs))


def attach(hub_module):
    """Called by the import hook once huggingface_hub has loaded and has no cached_download of its own."""
    hub_module.cached_download = cached_download
