"""Import hook of an m3d-shim-* distribution (installed by m3d-doctor); its .pth file imports this at startup.

Once the real TARGET module has finished importing, it gets TARGET.ATTR from PROVIDER if, and only if, it has
no ATTR of its own (neither an attribute nor a submodule on disk): a real implementation is never replaced.
The hook imports nothing at startup and costs one string comparison per import; it takes itself off
sys.meta_path once TARGET is loaded. The loader wrapper is put back to the real loader as soon as TARGET's
code has run, so TARGET.__loader__ and TARGET.__spec__.loader are exactly what they would be without it.

Remove it with `python -m pip uninstall m3d-shim-...` (or `m3d-doctor fix --undo shims`).
"""

import sys

TARGET = "__TARGET__"  # filled in when the wheel is built
ATTR = "__ATTR__"
PROVIDER = "__PROVIDER__"  # a module with attach(target_module)


class _Loader:
    """Runs the real loader, then attaches."""

    def __init__(self, finder, loader):
        self._finder = finder
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        try:
            self._loader.exec_module(module)
        finally:
            if getattr(module, "__loader__", None) is self:
                module.__loader__ = self._loader
            spec = getattr(module, "__spec__", None)
            if spec is not None and spec.loader is self:
                spec.loader = self._loader
        self._finder.attach(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _Finder:
    def __init__(self):
        self._busy = False

    def find_spec(self, name, path=None, target=None):
        if name != TARGET or self._busy:
            return None
        self._busy = True  # the other finders may ask for TARGET again
        try:
            spec = None
            for finder in list(sys.meta_path):
                find = getattr(finder, "find_spec", None)
                if finder is self or find is None:
                    continue
                spec = find(name, path, target)
                if spec is not None:
                    break
        finally:
            self._busy = False
        if spec is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _Loader(self, spec.loader)
        return spec

    def attach(self, module):
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        if hasattr(module, ATTR):
            return
        path = getattr(module, "__path__", None)
        if path is not None:
            from importlib.machinery import PathFinder

            if PathFinder.find_spec(TARGET + "." + ATTR, path) is not None:
                return  # a real submodule exists; it is imported on demand, never shadowed
        import importlib

        importlib.import_module(PROVIDER).attach(module)


if TARGET in sys.modules:  # imported before this .pth ran (by an earlier .pth): attach now
    _Finder().attach(sys.modules[TARGET])
elif not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())
