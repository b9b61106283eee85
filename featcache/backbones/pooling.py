"""Reading a vector off a frozen network: the paper's definition, or statistics of every stage (multilevel)."""

from __future__ import annotations

import torch
from torch import nn

from featcache.errors import FeatcacheError

MAX_LEVELS = 8  # transformers list every block as a level; more than this keeps 4, evenly spaced, ending at the last


class FeatureExtractor(nn.Module):
    """Frozen backbone -> (B, D) float32 features. `pool` is 'paper' or 'multilevel'."""

    def __init__(self, model: nn.Module, feature: str, pool: str):
        super().__init__()
        if pool not in ("paper", "multilevel"):
            raise FeatcacheError(f"unknown pooling {pool!r}; choose paper or multilevel")
        self.model = model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.feature = feature
        self.pool = pool
        self._captured: list[torch.Tensor] = []
        self.levels: list[dict] = []
        if pool == "multilevel":
            self._hook_levels()

    def _hook_levels(self) -> None:
        info = list(getattr(self.model, "feature_info", None) or [])
        if not info:
            raise FeatcacheError("this backbone lists no stages (timm feature_info); use --pool paper")
        info = [dict(i) if isinstance(i, dict) else dict(i.__dict__) for i in info]
        if len(info) > MAX_LEVELS:
            step = len(info) / 4
            info = [info[int(round(len(info) - 1 - k * step))] for k in reversed(range(4))]
        modules = dict(self.model.named_modules())
        for level in info:
            module = modules.get(level["module"])
            if module is None:
                raise FeatcacheError(f"stage module {level['module']!r} not found; use --pool paper")
            module.register_forward_hook(self._capture)
            self.levels.append({"module": level["module"], "num_chs": int(level["num_chs"])})

    def _capture(self, module, inputs, output) -> None:
        self._captured.append(output[0] if isinstance(output, (tuple, list)) else output)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool == "multilevel":
            self._captured = []
            self.model.forward_features(x)
            stats = [_mean_std(t.float(), level["num_chs"]) for t, level in zip(self._captured, self.levels)]
            self._captured = []
            return torch.cat(stats, dim=1)
        features = self.model.forward_features(x)
        if self.feature == "gap":
            return features.float().mean(dim=(2, 3))
        return self.model.forward_head(features, pre_logits=True).float()

    @torch.no_grad()
    def output_dim(self, input_size: int) -> int:
        device = next(self.model.parameters()).device
        return int(self(torch.zeros(1, 3, input_size, input_size, device=device)).shape[1])


def _mean_std(t: torch.Tensor, channels: int) -> torch.Tensor:
    """Per-channel mean and population std over every non-channel axis."""
    if t.ndim == 4:
        if t.shape[1] != channels and t.shape[-1] == channels:  # NHWC stages (Swin and friends)
            t = t.permute(0, 3, 1, 2)
        t = t.flatten(2)  # B, C, HW
        return torch.cat([t.mean(dim=2), t.std(dim=2, unbiased=False)], dim=1)
    if t.ndim == 3:  # B, tokens, C
        return torch.cat([t.mean(dim=1), t.std(dim=1, unbiased=False)], dim=1)
    raise FeatcacheError(f"cannot pool a stage output of shape {tuple(t.shape)}; use --pool paper")
