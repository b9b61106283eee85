"""Label-only floors: how much of a score the split alone gives away, with no pixel read.

Their input is the code matrix of `design.label_codes`: columns generator, sibling (content group x generator),
prompt (content group).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from regressors.code_means import COLUMNS, fit_code_means, predict_code_means


class _CodeMean(RegressorMixin, BaseEstimator):
    """Mean training target of the first code column that knows the sample; the global mean otherwise."""

    columns: tuple[int, ...] = COLUMNS["generator-mean"]

    def fit(self, X, y, groups=None):
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        self.global_mean_, self.means_ = fit_code_means(X, y, self.columns)
        return self

    def predict(self, X):
        check_is_fitted(self, "means_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return predict_code_means(X, self.global_mean_, self.means_, self.columns)


class GeneratorMean(_CodeMean):
    """Mean target of the sample's generator in the training data."""

    columns = COLUMNS["generator-mean"]


class SiblingMean(_CodeMean):
    """Mean target of training samples with the same content group and generator, else the generator mean."""

    columns = COLUMNS["sibling-mean"]


class PromptMean(_CodeMean):
    """Mean target of training samples of the same content group (siblings or other generators), else the
    generator mean: the floor that matters when a split shares prompts (cross-generator, the paper split)."""

    columns = COLUMNS["prompt-mean"]
