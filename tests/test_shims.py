"""Compatibility shims, end to end: built as real wheels, installed into real target venvs through
`m3d-doctor fix shims.<name>`, listed by pip and by `m3d-doctor shims`, and removed by `m3d-doctor fix --undo
shims` leaving the target's site-packages with exactly the files it had before."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import zipfile
from importlib import resources

import pytest
from fakehub import FakeHub
from m3d_doctor.fixes.shims import SHIMS
from m3d_doctor.fixes.shims.wheel import build_wheel, wheel_filename
from shimvenv import layered_venv, lookalike_wheel, pip_in, run_in, site_packages, torch_scipy_python, tree

SOURCES = resources.files("m3d_doctor.fixes.shims").joinpath("sources")


def shim_list(doctor, python) -> list[dict]:
    run = doctor("shims", "--python", str(python), "--json")
    assert run.rc == 0, run.stderr
    assert run.doc["schema"] == "m3d-doctor/shims/v1"
    return run.doc["shims"]


def undo(doctor, python) -> None:
    run = doctor("fix", "--undo", "shims", "--yes", "--python", str(python), "--json")
    assert run.rc == 0, run.stdout + run.stderr
    assert run.doc["applied"] == [{"fix_id": "shims.undo", "status": "applied"}]


# -- the wheels ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SHIMS))
def test_shim_wheel_is_a_distribution_whose_record_hashes_every_file(name, tmp_path):
    shim = SHIMS[name]
    wheel = build_wheel(shim, tmp_path)
    assert wheel.name == wheel_filename(shim) == f"m3d_shim_{name.replace('-', '_')}-{shim.version}-py3-none-any.whl"
    info = f"m3d_shim_{name.replace('-', '_')}-{shim.version}.dist-info"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        record = zf.read(f"{info}/RECORD").decode().splitlines()
        rows = {line.rsplit(",", 2)[0]: line.rsplit(",", 2)[1:] for line in record}
        assert set(rows) == set(names)
        for path in names:
            digest, size = rows[path]
            if path == f"{info}/RECORD":
                assert (digest, size) == ("", "")
                continue
            data = zf.read(path)
            want = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert (digest, size) == (f"sha256={want}", str(len(data))), path
        meta = zf.read(f"{info}/METADATA").decode()
        described = json.loads(zf.read(f"{info}/m3d_shim.json"))
    assert f"Name: m3d-shim-{name}\n" in meta and f"Version: {shim.version}\n" in meta
    summary = next(line for line in meta.splitlines() if line.startswith("Summary: "))
    assert shim.provides in summary and "Unnecessary once" in summary  # what it shims and when it can go
    assert "Why: " in meta and "pip uninstall m3d-shim-" in meta
    assert described["why"] == shim.why and described["unnecessary_when"] == shim.unnecessary_when
    assert build_wheel(shim, tmp_path).read_bytes() == wheel.read_bytes()  # deterministic


def test_hook_shims_ship_a_pth_line_and_a_filled_in_hook():
    files = SHIMS["torch-xpu"].files()
    assert files["m3d_shim_torch_xpu.pth"] == "import m3d_shim_torch_xpu\n"
    hook = files["m3d_shim_torch_xpu/__init__.py"]
    assert "TARGET = 'torch'" in hook and "ATTR = 'xpu'" in hook and "PROVIDER = 'm3d_shim_torch_xpu.xpu'" in hook
    hf = SHIMS["hf-cached-download"].files()["m3d_shim_hf_cached_download/__init__.py"]
    assert "TARGET = 'huggingface_hub'" in hf and "ATTR = 'cached_download'" in hf


def test_cached_download_maps_hub_urls_and_refuses_others():
    """The URL parser of the hf-cached-download shim (stdlib only, so it runs here)."""
    spec = importlib.util.spec_from_file_location("shim_cached_download", str(SOURCES / "cached_download.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ep = "https://huggingface.co"
    assert mod.parse_hub_url(f"{ep}/gpt2/resolve/main/config.json", ep) == ("model", "gpt2", "main", "config.json")
    assert mod.parse_hub_url(f"{ep}/org/m/resolve/refs%2Fpr%2F1/sub/dir/w%20x.bin", ep + "/") == (
        "model", "org/m", "refs/pr/1", "sub/dir/w x.bin")
    assert mod.parse_hub_url(f"{ep}/datasets/org/d/resolve/v1/data.csv", ep)[:2] == ("dataset", "org/d")
    assert mod.parse_hub_url(f"{ep}/spaces/org/s/resolve/main/app.py?download=true", ep) == (
        "space", "org/s", "main", "app.py")
    for bad in ("https://raw.githubusercontent.com/huggingface/diffusers/main/examples/community/x.py",
                f"{ep}/org/m/blob/main/config.json", f"{ep}/org/m/resolve/main", "http://huggingface.co.evil/x"):
        with pytest.raises(ValueError):
            mod.parse_hub_url(bad, ep)


# -- pytorch3d-transforms --------------------------------------------------------------------------------------

@pytest.mark.venv
def test_pytorch3d_shim_installs_verifies_lists_and_uninstalls_to_the_same_files(doctor, tmp_path):
    py = layered_venv(tmp_path / "venv", torch_scipy_python())
    site = site_packages(py)
    before = tree(site)
    assert "No module named 'pytorch3d'" in run_in(py, "import pytorch3d.transforms").stderr

    run = doctor("fix", "shims.pytorch3d-transforms", "--yes", "--python", str(py), "--json")
    assert run.rc == 0, run.stdout + run.stderr
    (plan,) = run.doc["plans"]
    assert plan["risk"] == "safe" and plan["blocked"] is None
    assert any("no pytorch3d wheel for torch >= 2.4" in n for n in plan["notes"])
    assert run.doc["applied"] == [{"fix_id": "shims.pytorch3d-transforms", "status": "applied"}]

    code = (
        "import json, torch\n"
        "from pytorch3d.transforms import matrix_to_quaternion\n"
        "from pytorch3d.transforms.rotation_conversions import quaternion_to_matrix\n"
        "import pytorch3d.transforms as t\n"
        "m = torch.tensor([[1.0, 0, 0], [0, -1, 0], [0, 0, -1]])\n"  # 180 degrees about x
        "q = matrix_to_quaternion(m)\n"
        "try:\n    t.Transform3d\nexcept AttributeError as e:\n    missing = str(e)\n"
        "print(json.dumps({'q': q.tolist(), 'back': quaternion_to_matrix(q).tolist(), 'missing': missing,"
        " 'file': t.__file__}))\n"
    )
    out = run_in(py, code)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["q"] == [0.0, 1.0, 0.0, 0.0]
    assert got["back"] == [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]]
    assert "m3d-shim-pytorch3d-transforms" in got["missing"]  # what is not shimmed says so
    assert got["file"].startswith(str(site))

    assert "m3d-shim-pytorch3d-transforms" in pip_in(py, "list", "--format=freeze").stdout
    (listed,) = shim_list(doctor, py)
    assert listed["distribution"] == "m3d-shim-pytorch3d-transforms" and listed["version"] == "1.0.0"
    assert listed["why"] == SHIMS["pytorch3d-transforms"].why
    assert listed["unnecessary_when"].startswith("once a real pytorch3d is installed")
    assert listed["remove"].endswith("-m pip uninstall -y m3d-shim-pytorch3d-transforms")
    human = doctor("shims", "--python", str(py))
    assert "m3d-shim-pytorch3d-transforms 1.0.0" in human.stdout and "unnecessary: once" in human.stdout

    again = doctor("fix", "shims.pytorch3d-transforms", "--yes", "--python", str(py), "--json")
    assert again.rc == 0 and again.doc["plans"][0]["actions"] == []
    assert "already installed" in again.doc["plans"][0]["notes"][0]

    unasked = doctor("fix", "--undo", "shims", "--python", str(py), "--json")  # no --yes, not a TTY
    assert unasked.rc == 0 and unasked.doc["applied"] == [] and len(shim_list(doctor, py)) == 1

    undo(doctor, py)
    assert tree(site) == before
    assert shim_list(doctor, py) == []
    assert "No module named 'pytorch3d'" in run_in(py, "import pytorch3d").stderr


@pytest.mark.venv
def test_pytorch3d_shim_refuses_to_shadow_a_real_pytorch3d(doctor, tmp_path, tiny_venv):
    py = layered_venv(tmp_path / "venv", tiny_venv)
    real = lookalike_wheel(tmp_path, "pytorch3d", "0.7.8", {"pytorch3d/__init__.py": "__version__ = '0.7.8'\n"})
    assert pip_in(py, "install", "--no-deps", "--no-index", str(real)).returncode == 0
    before = tree(site_packages(py))
    run = doctor("fix", "shims.pytorch3d-transforms", "--yes", "--python", str(py), "--json")
    assert run.rc == 1
    blocked = run.doc["plans"][0]["blocked"]
    assert "a real pytorch3d is installed; the shim never shadows it" in blocked and "pytorch3d found at" in blocked
    assert tree(site_packages(py)) == before


# -- torch-xpu -------------------------------------------------------------------------------------------------

TORCH_LOOKALIKE = {
    "torch/__init__.py": (
        '"""Stands in for torch 2.2.2: a module named torch without xpu."""\n'
        "__version__ = '2.2.2'\n\n\n"
        "def __getattr__(name):  # torch's own lazy-attribute hook, which raises for unknown names\n"
        "    raise AttributeError(f\"module 'torch' has no attribute {name!r}\")\n"
    ),
}

XPU_BEHAVIOUR = r"""
import importlib.util, json, sys
out = {"torch_at_startup": "torch" in sys.modules,
       "hooks_at_startup": [type(f).__module__ for f in sys.meta_path if "m3d" in type(f).__module__]}
importlib.util.find_spec("torch")  # a look before the import must not disturb it
import torch
out["hooks_after"] = [type(f).__module__ for f in sys.meta_path if "m3d" in type(f).__module__]
out["loader"] = type(torch.__loader__).__name__ + "/" + type(torch.__spec__.loader).__name__
import torch.xpu
from torch.xpu import device_count, is_available
out["module"] = torch.xpu.__name__
out["same"] = sys.modules["torch.xpu"] is torch.xpu
values = {}
for name, args in [("is_available", ()), ("device_count", ()), ("is_initialized", ()), ("empty_cache", ()),
                   ("manual_seed", (0,)), ("manual_seed_all", (0,)), ("seed", ()), ("synchronize", ()),
                   ("current_device", ()), ("init", ()), ("get_device_name", ()), ("is_bf16_supported", ()),
                   ("memory_allocated", ()), ("memory_stats", ()), ("get_rng_state_all", ())]:
    try:
        values[name] = repr(getattr(torch.xpu, name)(*args))
    except Exception as exc:
        values[name] = "%s: %s" % (type(exc).__name__, exc)
try:
    with torch.xpu.device(0):
        pass
except Exception as exc:
    values["device(0)"] = "%s: %s" % (type(exc).__name__, exc)
values["has_graphs"] = hasattr(torch.xpu, "graph")
out["values"] = values
print(json.dumps(out))
"""


@pytest.mark.venv
def test_torch_xpu_shim_answers_exactly_no_xpu_on_a_torch_without_xpu(doctor, tmp_path, tiny_venv):
    """A torch < 2.3 is what needs this shim, but none can be had cheaply here: PyPI's torch 2.2.2 for
    cp311 is a 755.6 MB CUDA wheel (measured) and the CPU builds live only on the PyTorch index. A real
    distribution `torch-lookalike` providing a module `torch` without `xpu` exercises the same import hook,
    and the next test proves the hook leaves a real torch 2.13's torch.xpu alone."""
    py = layered_venv(tmp_path / "venv", tiny_venv)
    wheel = lookalike_wheel(tmp_path, "torch-lookalike", "2.2.2", TORCH_LOOKALIKE)
    assert pip_in(py, "install", "--no-deps", "--no-index", str(wheel)).returncode == 0
    site = site_packages(py)
    before = tree(site)

    run = doctor("fix", "shims.torch-xpu", "--yes", "--python", str(py), "--json")
    assert run.rc == 0, run.stdout + run.stderr
    assert any("torch 2.2.2 has no xpu" in n for n in run.doc["plans"][0]["notes"])

    out = run_in(py, XPU_BEHAVIOUR)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["torch_at_startup"] is False  # the hook imports nothing at startup
    assert got["hooks_at_startup"] == ["m3d_shim_torch_xpu"] and got["hooks_after"] == []  # gone once done
    assert got["loader"] == "SourceFileLoader/SourceFileLoader"  # the real loader is back in place
    assert got["module"] == "m3d_shim_torch_xpu.xpu" and got["same"]
    not_compiled = "AssertionError: Torch not compiled with XPU enabled"
    assert got["values"] == {
        "is_available": "False", "device_count": "0", "is_initialized": "False", "empty_cache": "None",
        "manual_seed": "None", "manual_seed_all": "None", "seed": "None", "synchronize": not_compiled,
        "current_device": not_compiled, "init": not_compiled, "get_device_name": not_compiled,
        "is_bf16_supported": "False", "memory_allocated": "0", "memory_stats": "OrderedDict()",
        "get_rng_state_all": "[]", "device(0)": "NotImplementedError: PyTorch was compiled without XPU support",
        "has_graphs": False,
    }

    (listed,) = shim_list(doctor, py)
    assert listed["unnecessary_when"].startswith("once torch >= 2.3 is installed")
    undo(doctor, py)
    assert tree(site) == before
    assert run_in(py, "import torch; print(hasattr(torch, 'xpu'))").stdout.strip() == "False"


@pytest.mark.venv
def test_torch_xpu_shim_never_replaces_a_real_torch_xpu(doctor, tmp_path):
    py = layered_venv(tmp_path / "venv", torch_scipy_python())
    site = site_packages(py)
    before = tree(site)
    run = doctor("fix", "shims.torch-xpu", "--yes", "--python", str(py), "--json")
    assert run.rc == 1
    assert "torch already has torch.xpu; the shim never replaces it" in run.doc["plans"][0]["blocked"]
    assert tree(site) == before

    # Installed by hand anyway (`m3d-doctor shims --build` + pip), the hook must leave torch 2.13's own alone.
    built = doctor("shims", "--build", "torch-xpu", "--dest", str(tmp_path))
    assert built.rc == 0, built.stderr
    assert pip_in(py, "install", "--no-deps", "--no-index", built.stdout.strip()).returncode == 0
    out = run_in(py, "import torch, torch.xpu, json; print(json.dumps([torch.xpu.__name__, torch.xpu.__file__, "
                     "hasattr(torch.xpu, '__m3d_shim__'), hasattr(torch.xpu, 'XPUGraph')]))")
    assert out.returncode == 0, out.stderr
    name, file, is_shim, has_graph = json.loads(out.stdout)
    assert name == "torch.xpu" and file.endswith("torch/xpu/__init__.py") and not is_shim and has_graph
    assert pip_in(py, "uninstall", "-y", "m3d-shim-torch-xpu").returncode == 0
    assert tree(site) == before


# -- hf-cached-download ----------------------------------------------------------------------------------------

HUB_CALLS = r"""
import json, warnings
from huggingface_hub import cached_download, hf_hub_url
import diffusers.utils.dynamic_modules_utils  # the module that imports cached_download in diffusers <= 0.28.2
out = {}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    p = cached_download(hf_hub_url("fake-org/public-model", "config.json"), cache_dir=CACHE)
out["warned"] = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
out["model"] = [p, open(p).read()]
p = cached_download(hf_hub_url("fake-org/public-model", "sub/dir/file.txt", revision="v1.0"), cache_dir=CACHE,
                    resume_download=True, legacy_cache_layout=True, use_auth_token=None)
out["revision"] = [p, open(p).read()]
p = cached_download(hf_hub_url("fake-org/public-dataset", "data.csv", repo_type="dataset"), cache_dir=CACHE,
                    legacy_cache_layout=True)
out["dataset"] = [p, open(p).read()]
p = cached_download(hf_hub_url("fake-org/public-model", "model.safetensors"), cache_dir=CACHE,
                    legacy_cache_layout=True)
out["lfs"] = [p, len(open(p, "rb").read())]
p = cached_download(hf_hub_url("fake-org/public-model", "config.json"), cache_dir=CACHE, local_files_only=True,
                    legacy_cache_layout=True)
out["offline"] = p
for name, url in [("github", "https://raw.githubusercontent.com/huggingface/diffusers/main/examples/community/x.py"),
                  ("missing", hf_hub_url("fake-org/public-model", "missing.txt"))]:
    try:
        cached_download(url, cache_dir=CACHE, legacy_cache_layout=True)
    except Exception as exc:
        out[name] = "%s: %s" % (type(exc).__name__, str(exc).splitlines()[0])
print(json.dumps(out))
"""


@pytest.mark.venv
def test_hf_cached_download_shim_lets_old_diffusers_import_and_downloads_through_the_hub(doctor, tmp_path,
                                                                                         fault_venv):
    py = layered_venv(tmp_path / "venv", fault_venv("cached-download"))  # diffusers 0.27.2, huggingface_hub 0.26.0
    site = site_packages(py)
    before = tree(site)
    assert "cannot import name 'cached_download'" in run_in(py, "import diffusers").stderr

    run = doctor("fix", "shims.hf-cached-download", "--yes", "--python", str(py), "--json",
                 env={"HF_HOME": str(tmp_path / "hf")})
    assert run.rc == 0, run.stdout + run.stderr
    assert run.doc["applied"] == [{"fix_id": "shims.hf-cached-download", "status": "applied"}]
    assert run_in(py, "import diffusers").returncode == 0

    cache = tmp_path / "cache"
    with FakeHub() as hub:
        out = run_in(py, f"CACHE = {str(cache)!r}\n" + HUB_CALLS,
                     env={"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf")})
        paths = [r["path"] for r in hub.requests]
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    snapshots = str(cache / "models--fake-org--public-model" / "snapshots")
    assert got["model"][0].startswith(snapshots) and got["model"][0].endswith("/config.json")
    assert '"model_type": "fake"' in got["model"][1]
    assert got["warned"] and "m3d-shim-hf-cached-download" in got["warned"][0]  # legacy warning, like the original
    assert got["revision"][1] == "hello\n" and "/snapshots/" in got["revision"][0]
    assert got["dataset"][0].startswith(str(cache / "datasets--fake-org--public-dataset"))
    assert got["dataset"][1] == "a,b\n1,2\n"
    assert got["lfs"][1] == 65536
    assert got["offline"] == got["model"][0]
    assert got["github"].startswith("ValueError: cached_download (m3d-shim-hf-cached-download) only resolves files")
    assert got["missing"].startswith("EntryNotFoundError")  # the hub's own error
    assert "/fake-org/public-model/resolve/v1.0/sub/dir/file.txt" in paths
    assert "/datasets/fake-org/public-dataset/resolve/main/data.csv" in paths

    undo(doctor, py)
    assert tree(site) == before
    assert "cannot import name 'cached_download'" in run_in(py, "import diffusers").stderr


# -- the commands on a target without shims ----------------------------------------------------------------------

@pytest.mark.venv
def test_shims_and_undo_on_a_target_without_shims_list_nothing_and_change_nothing(doctor, tmp_path, tiny_venv):
    py = layered_venv(tmp_path / "venv", tiny_venv)
    before = tree(site_packages(py))
    assert shim_list(doctor, py) == []
    assert "no m3d-doctor shims installed" in doctor("shims", "--python", str(py)).stdout
    run = doctor("fix", "--undo", "shims", "--yes", "--python", str(py), "--json")
    assert run.rc == 0 and run.doc["plans"][0]["actions"] == [] and run.doc["applied"] == []
    refused = doctor("fix", "shims.hf-cached-download", "--yes", "--python", str(py), "--json")
    assert refused.rc == 1 and "cannot import huggingface_hub" in refused.doc["plans"][0]["blocked"]
    assert tree(site_packages(py)) == before


def test_unknown_shim_and_ids_with_undo_are_usage_errors(doctor, tmp_path):
    assert doctor("shims", "--build", "device-mesh", "--dest", str(tmp_path)).rc == 2
    assert doctor("fix", "--undo", "shims", "shims.torch-xpu").rc == 2
    assert doctor("fix", "--undo", "everything").rc == 2
