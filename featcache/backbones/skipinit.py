"""Build a timm model whose weights are about to be loaded without first initialising it at random.

`timm.create_model` allocates every tensor and fills it with random numbers only for the load to overwrite them:
on 2 shared cores, building and loading ViT-L/16 from a local file took 10.9 s, of which 1.7 s remain; VGG-19 2.7 s,
now 0.6 s. Here the model is built on the meta device (shapes, no
memory, no random draws) and gets real but uninitialised CPU memory just before `load_state_dict` copies the
checkpoint in. That is safe only when the load writes every tensor, so each step checks and answers None when it
cannot promise it; the caller then builds the model the usual way (today's cost, today's result):
- a model that computes state in `__init__` that no checkpoint holds (non-persistent buffers, tensors kept as plain
  attributes): built on meta, those values would be lost;
- a checkpoint that lacks any parameter or persistent buffer (a missing key, or one that a module fills from its
  own current value, as BatchNorm does for `num_batches_tracked`);
- timm loading other than through `load_state_dict` (a model's own `load_pretrained`, e.g. for .npz), which would
  leave tensors on meta.
None of it imports torch._dynamo, which the CLI keeps out of its start-up (see featcache.fastimport).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import torch
from torch.overrides import TorchFunctionMode

# In-place Tensor methods that change a tensor's shape, strides or autograd state rather than its values.
_METADATA_METHODS = frozenset({
    "as_strided_", "detach_", "requires_grad_", "resize_", "resize_as_", "set_", "share_memory_", "squeeze_",
    "swapaxes_", "swapdims_", "t_", "transpose_", "unsqueeze_", "rename_",
})


_WRAPPING = threading.Lock()  # one wrapper of timm's load_pretrained at a time


class _Unsafe(Exception):
    """The load would leave a tensor unwritten: build the model the usual way."""


class MetaWritesAreNoOps(TorchFunctionMode):
    """Writes of values into a meta tensor (random fills, `nn.init.*`, `x.mul_(s)`, `x.clamp_(...)`) answered at
    once: there are no values to write, and the meta kernels of several of them are Python references whose first
    call imports torch._dynamo (about 1.4 s)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")
        if isinstance(target, torch.Tensor) and target.is_meta and _writes_values(func):
            return target
        return func(*args, **kwargs)


def _writes_values(func) -> bool:
    """`torch.nn.init.*_` or an in-place Tensor method that keeps the tensor's shape."""
    name = getattr(func, "__name__", "")
    if getattr(func, "__module__", None) == "torch.nn.init":
        return name.endswith("_")
    return (name.endswith("_") and not name.endswith("__") and name not in _METADATA_METHODS
            and getattr(torch.Tensor, name, None) is func)


def meta_model(build: Callable[[], torch.nn.Module]) -> torch.nn.Module | None:
    """`build()` on the meta device; None when it fails there or computes state that a load would not restore."""
    model = _built_on_meta(build)
    return None if model is None or computed_in_init(model) else model


def meta_state_names(build: Callable[[], torch.nn.Module]) -> list[str] | None:
    """The state-dict names of `build()`'s model, built on the meta device; None when it cannot be built there."""
    model = _built_on_meta(build)
    return None if model is None else list(model.state_dict())


def _built_on_meta(build: Callable[[], torch.nn.Module]) -> torch.nn.Module | None:
    try:
        with torch.device("meta"), MetaWritesAreNoOps():
            return build()
    except Exception:  # e.g. `.item()` of a meta tensor in __init__: the usual build will tell
        return None


def computed_in_init(model: torch.nn.Module) -> bool:
    """Non-persistent buffers or tensors kept as plain attributes: values of __init__ that no checkpoint holds."""
    return any(module._non_persistent_buffers_set for module in model.modules()) or \
        next(_attribute_tensors(model), None) is not None


def _attribute_tensors(model: torch.nn.Module) -> Iterator[torch.Tensor]:
    """Tensors a module keeps outside its parameters and buffers, directly or in a list, tuple or dict."""
    for module in model.modules():
        for name, value in vars(module).items():
            if name in ("_parameters", "_buffers", "_modules"):
                continue
            values = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) \
                else (value,)
            yield from (v for v in values if isinstance(v, torch.Tensor))


def left_on_meta(model: torch.nn.Module) -> bool:
    """Any tensor that no load or computation has given values: the model cannot run."""
    tensors = [*model.parameters(), *model.buffers(), *_attribute_tensors(model)]
    return any(t.is_meta for t in tensors)


def covers(state: dict, model: torch.nn.Module) -> bool:
    """Whether the checkpoint holds every parameter and persistent buffer of the model (keys only)."""
    return set(model.state_dict()) <= set(state)


def materialised(model: torch.nn.Module) -> torch.nn.Module:
    """Real CPU memory for the meta tensors of a model, left uninitialised: for a load that writes it all. This is
    `to_empty`, less its `empty_like`, whose meta-to-CPU path imports sympy on its first call (0.5 s)."""
    return model._apply(lambda t: torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device="cpu")
                        if t.is_meta else t)


def timm_pretrained(create: Callable[[], torch.nn.Module]) -> torch.nn.Module | None:
    """`create()`, a `timm.create_model(..., pretrained=True)`, with the model built on meta and materialised when
    timm's load begins, so that timm's own checkpoint handling (family filters, classifier and input-conv
    adaptation) runs unchanged. timm has no public hook between building and loading: its `load_pretrained` is
    wrapped for this thread and this call only. None when any check fails (or the wrapper has nowhere to go): the
    caller then runs `create()` as usual, which also gives any error its usual message."""
    try:
        from timm.models import _builder
    except ImportError:
        return None
    loader = getattr(_builder, "load_pretrained", None)
    if loader is None:
        return None
    with _WRAPPING:
        _builder.load_pretrained = _loading_into_empty(loader, threading.get_ident())
        try:
            with torch.device("meta"), MetaWritesAreNoOps():
                model = create()
        except Exception:  # _Unsafe, or anything the usual build will raise again
            return None
        finally:
            _builder.load_pretrained = loader
    return None if left_on_meta(model) else model


def _loading_into_empty(loader: Callable, owner: int) -> Callable:
    """timm's `load_pretrained`, for the owner thread on a meta model: refused (_Unsafe) unless the load covers it."""

    def load_pretrained(model: torch.nn.Module, *args, **kwargs) -> None:
        if threading.get_ident() != owner:
            return loader(model, *args, **kwargs)
        if computed_in_init(model):
            raise _Unsafe()
        watch = _LoadWatch(model)
        try:
            with torch.device("cpu"):  # the checkpoint and whatever timm's filters make, as in the usual build
                loader(model, *args, **kwargs)
        finally:
            watch.remove()
        if not watch.complete:
            raise _Unsafe()

    return load_pretrained


class _LoadWatch:
    """Hooks on a meta model: when `load_state_dict` begins, checks that the checkpoint covers the model, then
    materialises it; when it ends, records whether any key was missing."""

    def __init__(self, model: torch.nn.Module):
        self.covered = self.loaded = False
        self.handles = [model.register_load_state_dict_pre_hook(self._before),
                        model.register_load_state_dict_post_hook(self._after)]

    @property
    def complete(self) -> bool:
        return self.covered and self.loaded

    def _before(self, model, state_dict, prefix, *args) -> None:
        if not self.covered:
            if not covers(state_dict, model):
                raise _Unsafe()
            self.covered = True
            materialised(model)

    def _after(self, model, incompatible_keys) -> None:
        self.loaded = self.covered and not incompatible_keys.missing_keys

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
