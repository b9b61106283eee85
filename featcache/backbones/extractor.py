"""The frozen feature extractor: a timm model in eval mode, read off by one pooling of the POOLINGS table."""

from __future__ import annotations

import torch
from torch import nn

from featcache.backbones.pooling import get_pooling


class FeatureExtractor(nn.Module):
    """Frozen backbone -> (B, D) float32 features. `pool` names an entry of POOLINGS."""

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
        return self.pooler(x)

    @torch.no_grad()
    def output_dim(self, input_size: int) -> int:
        device = next(self.model.parameters()).device
        return int(self(torch.zeros(1, 3, input_size, input_size, device=device)).shape[1])
