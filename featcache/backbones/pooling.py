"""Poolings as a table: how one vector is read off a frozen network.

One `PoolingSpec` per pooling in `POOLINGS` (name, one-line doc, the class that pools); `--pool`'s choices and help,
the backbone id and the cache's config all come from this table. To add a pooling, write a class with
`__init__(model, feature)`, `__call__(x) -> (B, D)`, `combine_crops(features (B, K, D)) -> (B, D)` (one image's
vector from the vectors of its K equal-sized crops) and `levels`, and add one entry below. Importing this module
does not import torch (the CLI lists the choices without it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from featcache.errors import FeatcacheError, unknown_name

MAX_LEVELS = 8  # transformers list every block as a level; more than this keeps 4, evenly spaced, ending at the last


class PaperPool:
    """The paper's feature: global average pool of the last stage ('gap') or timm's pre-logits (class token)."""

    def __init__(self, model, feature: str):
        self.model, self.feature, self.levels = model, feature, []

    def __call__(self, x):
        features = self.model.forward_features(x)
        if self.feature == "gap":
            return features.float().mean(dim=(2, 3))
        return self.model.forward_head(features, pre_logits=True).float()

    def combine_crops(self, features):
        """(B, K, D) features of K crops per image -> (B, D): their mean."""
        return features.mean(dim=1)


class MultilevelPool:
    """Per-channel mean and std of every stage (timm feature_info), concatenated."""

    def __init__(self, model, feature: str):
        self.model = model
        self.levels: list[dict] = []
        self.hooks: list = []  # handles, so a shared model can be unhooked
        self._captured: list = []
        info = list(getattr(model, "feature_info", None) or [])
        if not info:
            raise FeatcacheError("this backbone lists no stages (timm feature_info); use --pool paper")
        info = [dict(i) if isinstance(i, dict) else dict(i.__dict__) for i in info]
        if len(info) > MAX_LEVELS:
            step = len(info) / 4
            info = [info[int(round(len(info) - 1 - k * step))] for k in reversed(range(4))]
        modules = dict(model.named_modules())
        for level in info:
            module = modules.get(level["module"])
            if module is None:
                raise FeatcacheError(f"stage module {level['module']!r} not found; use --pool paper")
            self.hooks.append(module.register_forward_hook(self._capture))
            self.levels.append({"module": level["module"], "num_chs": int(level["num_chs"])})

    def _capture(self, module, inputs, output) -> None:
        self._captured.append(output[0] if isinstance(output, (tuple, list)) else output)

    def __call__(self, x):
        import torch

        self._captured = []
        self.model.forward_features(x)
        stats = [_mean_std(t.float(), level["num_chs"]) for t, level in zip(self._captured, self.levels)]
        self._captured = []
        return torch.cat(stats, dim=1)

    def combine_crops(self, features):
        """(B, K, D) per-crop features -> (B, D): per level, the mean and population std over the positions of all
        K crops together. The crops are the same size, so each holds as many positions of a stage: the pooled mean
        is the mean of the crops' means, and the pooled variance mean(std^2 + mean^2) - pooled mean^2 (not the mean
        of the stds)."""
        import torch

        parts, start = [], 0
        features = features.double()  # the difference of squares, in float64
        for level in self.levels:
            channels = level["num_chs"]
            means = features[:, :, start:start + channels]
            stds = features[:, :, start + channels:start + 2 * channels]
            start += 2 * channels
            mean = means.mean(dim=1)
            variance = (stds.square() + means.square()).mean(dim=1) - mean.square()
            parts += [mean, variance.clamp_min(0).sqrt()]
        if start != features.shape[2]:
            raise FeatcacheError(f"multilevel features of {features.shape[2]} values do not match the stages' "
                                 f"{start}; use --pool paper")
        return torch.cat(parts, dim=1).float()


def _mean_std(t, channels: int):
    """Per-channel mean and population std over every non-channel axis."""
    import torch

    if t.ndim == 4:
        if t.shape[1] != channels and t.shape[-1] == channels:  # NHWC stages (Swin and friends)
            t = t.permute(0, 3, 1, 2)
        t = t.flatten(2)  # B, C, HW
        return torch.cat([t.mean(dim=2), t.std(dim=2, unbiased=False)], dim=1)
    if t.ndim == 3:  # B, tokens, C
        return torch.cat([t.mean(dim=1), t.std(dim=1, unbiased=False)], dim=1)
    raise FeatcacheError(f"cannot pool a stage output of shape {tuple(t.shape)}; use --pool paper")


@dataclass(frozen=True)
class PoolingSpec:
    name: str
    doc: str  # one line, shown by --help and `featcache backbones`
    pool: type  # pool(model, feature) -> callable batch -> (B, D) float32, with a `levels` list
    feature: Callable[[str], str]  # the backbone's paper feature -> what the cache config records as "feature"


POOLINGS: dict[str, PoolingSpec] = {
    spec.name: spec
    for spec in [
        PoolingSpec("paper", "the paper's feature (global average pool or class token)", PaperPool, lambda f: f),
        PoolingSpec("multilevel", "mean+std of every stage", MultilevelPool, lambda f: "multilevel mean+std"),
    ]
}


def get_pooling(name: str) -> PoolingSpec:
    if name not in POOLINGS:
        raise unknown_name("pooling", name, POOLINGS)
    return POOLINGS[name]


def pooling_help() -> str:
    """'paper = ..., multilevel = ...' for --pool's help."""
    return "; ".join(f"{s.name} = {s.doc}" for s in POOLINGS.values())
