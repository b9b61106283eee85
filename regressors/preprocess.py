"""Input preprocessing fitted on the training fold only, shared by every feature-reading regressor and saved head.

Why: a column that is (nearly) constant in training has no usable scale; dividing a held-out value by a tiny scale
gave |z| in the hundreds or thousands (FR folds with 6 distinct prompt images), which underflows an RBF kernel and
passes straight through ridge and ReLU MLPs. So columns constant in training are dropped (their z is set to 0) and
every standardised value is clipped to +-`clip`.

Fused backbones (`blocks`): after standardisation each backbone's block is weighted to an equal share of the total
variance (`block_weights`), so a 1280-dim block does not outweigh a 512-dim one in the ridge penalty, the RBF
kernel's distances or the MLP's first layer just by being wider (docs/fusion.md says why and what it measured).
"""

from __future__ import annotations

import numpy as np

DEFAULT_CLIP = 5.0
CONSTANT_TOLERANCE = 1e-8  # a column whose training SD is below this fraction of its mean magnitude (or 1e-12)


def block_weights(blocks: tuple[int, ...] | list[int] | None, dim: int) -> np.ndarray | None:
    """Per-column weights of a design matrix of `dim` columns built from per-image features made of `blocks`
    (the fused backbones' widths d_1..d_B, summing to P): the matrix is k copies of the per-image layout (k = dim //
    P: g, or g and p, ...) followed by dim - k P extra columns (a flag). Each block's columns get
    sqrt(P / (B d_b)), proportional to 1/sqrt(d_b), so every block of every copy holds the same total variance
    (P / B after standardisation) and a copy's total stays P: the alpha grid, gamma and learning rate calibrated
    for standardised inputs keep their meaning. Extra columns get 1. None (no weighting) for None or one block."""
    if not blocks or len(blocks) < 2:
        return None
    blocks = [int(b) for b in blocks]
    total = sum(blocks)
    if min(blocks) < 1 or dim < total or dim - (dim // total) * total >= total:
        raise ValueError(f"blocks {blocks} do not lay out {dim} columns")
    per_image = np.concatenate([np.full(b, np.sqrt(total / (len(blocks) * b))) for b in blocks])
    copies = dim // total
    return np.concatenate([np.tile(per_image, copies), np.ones(dim - copies * total)])


class FoldScaler:
    """Standardise with training statistics, zero the columns constant in training, clip to +-clip, then (fused
    backbones) weight each block by `block_weights(blocks, dim)`.

    The dimension is kept (dropped columns become 0, not removed) so members of a stacked model and saved heads
    keep one shape; `keep_` says which columns carry information.
    """

    def __init__(self, clip: float = DEFAULT_CLIP, blocks: tuple[int, ...] | None = None):
        self.clip = clip
        self.blocks = blocks

    def fit(self, X: np.ndarray) -> "FoldScaler":
        X = np.asarray(X, dtype=np.float64)
        mean = X.mean(axis=0)
        std = X.std(axis=0)
        self.keep_ = std > np.maximum(CONSTANT_TOLERANCE * np.abs(mean), 1e-12)
        self.mean_ = mean
        self.scale_ = np.where(self.keep_, std, 1.0)
        self.weight_ = block_weights(self.blocks, X.shape[1])
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        z = (np.asarray(X, dtype=np.float64) - self.mean_) / self.scale_
        z[:, ~self.keep_] = 0.0
        if self.clip is not None and np.isfinite(self.clip):
            np.clip(z, -self.clip, self.clip, out=z)
        if self.weight_ is not None:
            z *= self.weight_
        return z

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        return self.fit(X).transform(X)

    # saved heads persist these three arrays and `clip`
    def state(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean_, "scale": self.scale_, "keep": self.keep_.astype(np.float64)}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], clip: float,
                   blocks: tuple[int, ...] | None = None) -> "FoldScaler":
        scaler = cls(clip, blocks)
        scaler.mean_ = np.asarray(state["mean"], np.float64)
        scaler.scale_ = np.asarray(state["scale"], np.float64)
        scaler.keep_ = np.asarray(state["keep"]) > 0.5
        scaler.weight_ = block_weights(blocks, len(scaler.mean_))
        return scaler
