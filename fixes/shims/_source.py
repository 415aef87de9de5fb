"""Reading the shim sources shipped as package data (`sources/*.py`), and filling in the import hook."""

from __future__ import annotations

from importlib import resources


def source(name: str) -> str:
    return resources.files(__package__).joinpath("sources", name).read_text(encoding="utf-8")


def attach_hook(target: str, attr: str, provider: str) -> str:
    """The import hook that attaches `provider.attach(target)` once `target` has loaded without `attr`."""
    text = source("attach_hook.py")
    for key, value in (("__TARGET__", target), ("__ATTR__", attr), ("__PROVIDER__", provider)):
        text = text.replace(f'"{key}"', repr(value), 1)
    return text


def hook_shim_files(package: str, target: str, attr: str, module: str, source_name: str) -> dict[str, str]:
    """Wheel contents of an attribute shim: a one-line `.pth` that imports the hook package, the hook filled
    in for `target.attr`, and the provider `package.module` (`sources/<source_name>`)."""
    return {
        f"{package}.pth": f"import {package}\n",
        f"{package}/__init__.py": attach_hook(target, attr, f"{package}.{module}"),
        f"{package}/{module}.py": source(source_name),
    }
