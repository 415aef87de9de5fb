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
