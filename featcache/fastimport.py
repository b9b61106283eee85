"""Start-up shortcuts of the CLI: timm without torch._dynamo, scikit-learn without scipy.stats and pandas.

**timm.** Importing it without torch._dynamo saves about 1.4 s of a 5 s `featcache extract` on 2 cores.

`import torchvision` (which timm does) runs `from torch._dynamo.utils import is_compile_supported` in torchvision.ops,
and timm decorates a few methods with `torch.compiler.disable` while its model modules load; each imports all of
torch._dynamo, which an eager forward never uses. For the duration of `import timm` only, `torch._dynamo` and
`torch._dynamo.utils` are placeholders that offer exactly those two names as wrappers resolving the real ones on
their first call; any other use of either module (another attribute, a submodule) imports the real torch._dynamo
at once, so the worst case is today's cost. Afterwards the placeholders are gone and `import torch._dynamo` is the
real thing. Called by the CLI only (a short-lived process that never compiles); library users import timm as usual.

**scikit-learn.** `import sklearn` runs `sklearn.utils.fixes`, which imports scipy.stats (0.9 s on 2 cores) and
pandas (0.3 s) and uses neither until one of its functions is called; an SVR fit never calls them. While that one
module executes, `scipy.stats` and `pandas` are `_Deferred` stand-ins: any attribute (a dunder such as
`__version__` too) imports the real module and answers from it. When it is done the stand-ins leave `sys.modules`,
so the next `import pandas` is the real thing, and scikit-learn's "is this a DataFrame?" test, which first looks
whether pandas is in `sys.modules`, answers False without importing it (right: no DataFrame exists without
pandas). A name whose package is not installed gets no stand-in (its ImportError is kept). Only that module is
hooked: one that imported a submodule of a stand-in (`from scipy.stats.mstats import ...`, as
sklearn.inspection does) would make the import system load that submodule twice. Nor are stand-ins placed while
another Python thread runs (the dask backend's first scikit-learn import happens in a worker thread): `sys.modules`
is shared, so a thread importing pandas at that moment would get the stand-in, or a half-imported pandas.
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.util
import os
import sys
import threading
import types

_NAMES = ("torch._dynamo.utils", "torch._dynamo")


class _Placeholder(types.ModuleType):
    """Stands in for a torch._dynamo module; any attribute it does not offer imports the real module."""

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):  # hasattr probes (inspect, the import system)
            raise AttributeError(name)
        _import_real_dynamo()
        return getattr(importlib.import_module(self.__name__), name)


class _SubmoduleFinder(importlib.abc.MetaPathFinder):
    """A torch._dynamo submodule asked for while the placeholders are in place: the real package first."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith("torch._dynamo.") and isinstance(sys.modules.get("torch._dynamo"), _Placeholder):
            _import_real_dynamo()
        return None  # the usual finders go on, now under the real package


def _drop_placeholders() -> None:
    for name in _NAMES:
        if isinstance(sys.modules.get(name), _Placeholder):
            del sys.modules[name]
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(torch.__dict__.get("_dynamo"), _Placeholder):
        del torch._dynamo


def _import_real_dynamo() -> None:
    _drop_placeholders()
    importlib.import_module("torch._dynamo.utils")


def _is_compile_supported(*args, **kwargs):
    from torch._dynamo.utils import is_compile_supported

    return is_compile_supported(*args, **kwargs)


def _disable(fn=None, recursive: bool = True, **kwargs):
    """torch._dynamo.disable, applied when the function is first called."""
    if fn is None:
        return functools.partial(_disable, recursive=recursive, **kwargs)
    disabled = []

    @functools.wraps(fn)
    def call(*args, **call_kwargs):
        if not disabled:
            from torch._dynamo import disable

            disabled.append(disable(fn, recursive, **kwargs))
        return disabled[0](*args, **call_kwargs)

    return call


def import_timm_without_dynamo() -> None:
    """Import timm (and torchvision) with torch._dynamo deferred; a no-op when timm or torch._dynamo is loaded."""
    if "timm" in sys.modules or "torch._dynamo" in sys.modules:
        return
    import torch

    folder = os.path.join(os.path.dirname(torch.__file__), "_dynamo")
    package = _Placeholder("torch._dynamo")
    package.__file__, package.__path__ = os.path.join(folder, "__init__.py"), [folder]
    package.disable = _disable
    utils = _Placeholder("torch._dynamo.utils")
    utils.__file__ = os.path.join(folder, "utils.py")
    utils.is_compile_supported = _is_compile_supported
    finder = _SubmoduleFinder()
    sys.modules.update({"torch._dynamo": package, "torch._dynamo.utils": utils})
    sys.meta_path.insert(0, finder)
    try:
        import timm  # noqa: F401
        import timm.data  # noqa: F401
    finally:
        sys.meta_path.remove(finder)
        _drop_placeholders()


SKLEARN_TRIGGER = "sklearn.utils.fixes"
SKLEARN_DEFERRED = ("scipy.stats", "pandas")


class _Deferred(types.ModuleType):
    """Stands in for a module that an import statement names and the importing module only uses later."""

    def __getattr__(self, name: str):
        return getattr(self._real_module(), name)

    def _real_module(self) -> types.ModuleType:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return importlib.import_module(self.__name__)


def _single_threaded() -> bool:
    return threading.active_count() == 1


class _DeferringLoader:
    """Runs the wrapped loader's `exec_module` with stand-ins for `deferred` in `sys.modules`, then removes them
    (unless an enclosing hooked module placed them). The module gets its real loader back."""

    def __init__(self, loader, deferred: tuple[str, ...]):
        self.loader, self.deferred = loader, deferred

    def __getattr__(self, name: str):
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        placed = {}
        for name in self.deferred if _single_threaded() else ():  # see the module docstring
            if name in sys.modules:  # imported already, or a stand-in placed by an enclosing import
                continue
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                spec = None
            if spec is None:  # not installed: the importing module sees the ImportError as usual
                continue
            stand_in = _Deferred(name)
            stand_in.__spec__ = spec
            placed[name] = sys.modules[name] = stand_in
        try:
            self.loader.exec_module(module)
        finally:
            for name, stand_in in placed.items():
                if sys.modules.get(name) is stand_in:
                    del sys.modules[name]
            module.__loader__ = self.loader
            if module.__spec__ is not None:
                module.__spec__.loader = self.loader


class _DeferWhileImporting(importlib.abc.MetaPathFinder):
    """Finds the `hooked` modules through the other finders and wraps their loaders in a `_DeferringLoader`."""

    def __init__(self, hooked: tuple[str, ...], deferred: tuple[str, ...]):
        self.hooked, self.deferred = hooked, deferred

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.hooked:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _DeferringLoader(spec.loader, self.deferred)
                return spec
        return None


def defer_sklearn_extras() -> None:
    """Let `sklearn.utils.fixes`, when this process first imports scikit-learn, leave scipy.stats and pandas
    unimported until something uses them. A no-op when the hook is in place or scikit-learn is imported."""
    if SKLEARN_TRIGGER not in sys.modules and not any(isinstance(f, _DeferWhileImporting) for f in sys.meta_path):
        sys.meta_path.insert(0, _DeferWhileImporting((SKLEARN_TRIGGER,), SKLEARN_DEFERRED))
