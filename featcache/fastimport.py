"""Import timm without importing torch._dynamo: about 1.4 s of a 5 s `featcache extract` on 2 cores.

`import torchvision` (which timm does) runs `from torch._dynamo.utils import is_compile_supported` in torchvision.ops,
and timm decorates a few methods with `torch.compiler.disable` while its model modules load; each imports all of
torch._dynamo, which an eager forward never uses. For the duration of `import timm` only, `torch._dynamo` and
`torch._dynamo.utils` are placeholders that offer exactly those two names as wrappers resolving the real ones on
their first call; any other use of either module (another attribute, a submodule) imports the real torch._dynamo
at once, so the worst case is today's cost. Afterwards the placeholders are gone and `import torch._dynamo` is the
real thing. Called by the CLI only (a short-lived process that never compiles); library users import timm as usual.
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import os
import sys
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
