"""Zero-shot reference rows: scores computed from cached features with no training and no label.

`PromptSimilarity` reads an FR-style input, concat(g, p) per sample (g: the generated image's cached feature, p:
its image prompt's), and predicts the cosine of the two halves. It fits nothing: `fit` only records the width.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data


def prompt_cosine(g: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Row-wise cosine of g and p (n x d each); 0 where either row is all zeros."""
    g = np.asarray(g, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    norms = np.linalg.norm(g, axis=1) * np.linalg.norm(p, axis=1)
    dots = np.einsum("ij,ij->i", g, p)
    return np.divide(dots, norms, out=np.zeros(len(g)), where=norms > 0)


class PromptSimilarity(RegressorMixin, BaseEstimator):
    """Predicts cos(g, p) from X = concat(g, p): g the first half of the columns, p the second; the labels given
    to `fit` are never read."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.regressor_tags.poor_score = True  # it learns nothing from y, by design
        return tags

    def fit(self, X, y, groups=None):
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)  # checked as any regressor's, not read
        self.half_ = X.shape[1] // 2  # concat(g, p) has an even width; an odd one's last column is never read
        return self

    def predict(self, X):
        check_is_fitted(self, "half_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return prompt_cosine(X[:, :self.half_], X[:, self.half_:2 * self.half_])
