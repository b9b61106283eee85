"""The frozen feature extractor: a timm model in eval mode, read off by one pooling of the POOLINGS table."""

from __future__ import annotations

import torch
from torch import nn

from featcache.backbones.pooling import get_pooling


class FeatureExtractor(nn.Module):
    """Frozen backbone -> (B, D) float32 features. `pool` names an entry of POOLINGS.

    Input: (B, 3, H, W) pixels (any H, W the model accepts), or (B, K, 3, S, S) crops, forwarded as B x K images and
    combined per image by the pooling's `combine_crops`."""

    def __init__(self, model: nn.Module, feature: str, pool: str):
        super().__init__()
        spec = get_pooling(pool)
        self.model = model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.feature = feature
        self.pool = pool
        self.pooler = spec.pool(self.model, feature)

    @property
    def levels(self) -> list[dict]:
        return self.pooler.levels

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 5:
            images, crops = x.shape[:2]
            features = self.pooler(x.flatten(0, 1))
            return self.pooler.combine_crops(features.reshape(images, crops, -1))
        return self.pooler(x)

    @torch.no_grad()
    def output_dim(self, input_size: int | tuple[int, int]) -> int:
        """D for an input of `input_size` (a side, or (height, width)); the poolings' D does not depend on it."""
        height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
        device = next(self.model.parameters()).device
        return int(self(torch.zeros(1, 3, height, width, device=device)).shape[1])
