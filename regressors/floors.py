"""Label-only floors: how much of a score the split alone gives away, with no pixel read.

Their input is the code matrix of `design.label_codes`: columns generator, sibling (content group x generator),
prompt (content group).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

GENERATOR, SIBLING, PROMPT = 0, 1, 2


def _means(codes: np.ndarray, y: np.ndarray) -> dict[float, float]:
    keys, inverse = np.unique(codes, return_inverse=True)
    sums = np.bincount(inverse, weights=y)
    counts = np.bincount(inverse)
    return dict(zip(keys.tolist(), (sums / counts).tolist()))


class _CodeMean(RegressorMixin, BaseEstimator):
    """Mean training target of the first code column that knows the sample; the global mean otherwise."""

    columns: tuple[int, ...] = (GENERATOR,)

    def fit(self, X, y, groups=None):
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        self.global_mean_ = float(np.mean(y))
        cols = [min(c, X.shape[1] - 1) for c in self.columns]
        self.means_ = [_means(X[:, c], y) for c in cols]
        return self

    def predict(self, X):
        check_is_fitted(self, "means_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        cols = [min(c, X.shape[1] - 1) for c in self.columns]
        out = np.full(len(X), self.global_mean_)
        known = np.zeros(len(X), dtype=bool)
        for col, means in zip(cols, self.means_):
            values = np.array([means.get(v, np.nan) for v in X[:, col].tolist()])
            use = ~known & np.isfinite(values)
            out[use] = values[use]
            known |= use
        return out


class GeneratorMean(_CodeMean):
    """Mean target of the sample's generator in the training data."""

    columns = (GENERATOR,)


class SiblingMean(_CodeMean):
    """Mean target of training samples with the same content group and generator, else the generator mean."""

    columns = (SIBLING, GENERATOR)


class PromptMean(_CodeMean):
    """Mean target of training samples of the same content group (siblings or other generators), else the
    generator mean: the floor that matters when a split shares prompts (cross-generator, the paper split)."""

    columns = (PROMPT, GENERATOR)
