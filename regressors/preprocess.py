"""Input preprocessing fitted on the training fold only, shared by every feature-reading regressor and saved head.

Why: a column that is (nearly) constant in training has no usable scale; dividing a held-out value by a tiny scale
gave |z| in the hundreds or thousands (FR folds with 6 distinct prompt images), which underflows an RBF kernel and
passes straight through ridge and ReLU MLPs. So columns constant in training are dropped (their z is set to 0) and
every standardised value is clipped to +-`clip`.
"""

from __future__ import annotations

import numpy as np

DEFAULT_CLIP = 5.0
CONSTANT_TOLERANCE = 1e-8  # a column whose training SD is below this fraction of its mean magnitude (or 1e-12)


class FoldScaler:
    """Standardise with training statistics, zero the columns constant in training, clip to +-clip.

    The dimension is kept (dropped columns become 0, not removed) so members of a stacked model and saved heads
    keep one shape; `keep_` says which columns carry information.
    """

    def __init__(self, clip: float = DEFAULT_CLIP):
        self.clip = clip

    def fit(self, X: np.ndarray) -> "FoldScaler":
        X = np.asarray(X, dtype=np.float64)
        mean = X.mean(axis=0)
        std = X.std(axis=0)
        self.keep_ = std > np.maximum(CONSTANT_TOLERANCE * np.abs(mean), 1e-12)
        self.mean_ = mean
        self.scale_ = np.where(self.keep_, std, 1.0)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        z = (np.asarray(X, dtype=np.float64) - self.mean_) / self.scale_
        z[:, ~self.keep_] = 0.0
        if self.clip is not None and np.isfinite(self.clip):
            np.clip(z, -self.clip, self.clip, out=z)
        return z

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        return self.fit(X).transform(X)

    # saved heads persist these three arrays and `clip`
    def state(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean_, "scale": self.scale_, "keep": self.keep_.astype(np.float64)}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], clip: float) -> "FoldScaler":
        scaler = cls(clip)
        scaler.mean_ = np.asarray(state["mean"], np.float64)
        scaler.scale_ = np.asarray(state["scale"], np.float64)
        scaler.keep_ = np.asarray(state["keep"]) > 0.5
        return scaler
