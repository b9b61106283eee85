"""Label-only floors: how much of a score the split alone gives away, with no pixel read.

Their input is a 2-column code matrix (generator code, group x generator code) from `design.label_codes`.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data


def _means(codes: np.ndarray, y: np.ndarray) -> dict[float, float]:
    keys, inverse = np.unique(codes, return_inverse=True)
    sums = np.bincount(inverse, weights=y)
    counts = np.bincount(inverse)
    return dict(zip(keys.tolist(), (sums / counts).tolist()))


class GeneratorMean(RegressorMixin, BaseEstimator):
    """Mean target of the sample's generator in the training data (the global mean for an unseen generator)."""

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        self.global_mean_ = float(np.mean(y))
        self.generator_means_ = _means(X[:, 0], y)
        return self

    def predict(self, X):
        check_is_fitted(self, "generator_means_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return np.array([self.generator_means_.get(c, self.global_mean_) for c in X[:, 0].tolist()])


class SiblingMean(RegressorMixin, BaseEstimator):
    """Mean target of training samples with the same group and generator, else the generator mean."""

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        self.global_mean_ = float(np.mean(y))
        self.generator_means_ = _means(X[:, 0], y)
        self.sibling_means_ = _means(X[:, -1], y)
        return self

    def predict(self, X):
        check_is_fitted(self, "sibling_means_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return np.array([
            self.sibling_means_.get(s, self.generator_means_.get(g, self.global_mean_))
            for g, s in zip(X[:, 0].tolist(), X[:, -1].tolist())
        ])
