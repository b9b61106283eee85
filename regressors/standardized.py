"""Ridge and RBF SVR on standardised inputs, hyper-parameters chosen by a CV inside the training data only.

Own estimator classes (not bare Pipelines) so they pass `check_estimator`, and so a saved head needs only
plain arrays: scaler, coefficients or support vectors.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.svm import SVR
from sklearn.utils.validation import check_is_fitted, validate_data


def standard_scaler(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale per column. Scales are floored at 1% of the median scale: a unit (nearly) constant in
    training must not turn a small test value into a huge input."""
    std = X.std(axis=0)
    positive = std[std > 0]
    floor = 0.01 * float(np.median(positive)) if len(positive) else 1.0
    return X.mean(axis=0), np.maximum(std, floor)


class StandardizedRidge(RegressorMixin, BaseEstimator):
    def __init__(self, alphas=(0.01, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5)):
        self.alphas = alphas

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        self.x_mean_, self.x_scale_ = standard_scaler(X)
        ridge = RidgeCV(alphas=np.asarray(self.alphas, dtype=np.float64)).fit((X - self.x_mean_) / self.x_scale_, y)
        self.alpha_ = float(ridge.alpha_)
        self.coef_ = np.asarray(ridge.coef_, dtype=np.float64)
        self.intercept_ = float(ridge.intercept_)
        return self

    def predict(self, X):
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return ((X - self.x_mean_) / self.x_scale_) @ self.coef_ + self.intercept_


class StandardizedSVR(RegressorMixin, BaseEstimator):
    def __init__(self, C_grid=(0.1, 1.0, 10.0), epsilon: float = 0.1, inner_folds: int = 3, random_state: int = 0):
        self.C_grid = C_grid
        self.epsilon = epsilon
        self.inner_folds = inner_folds
        self.random_state = random_state

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        self.x_mean_, self.x_scale_ = standard_scaler(X)
        self.y_mean_, self.y_scale_ = float(np.mean(y)), float(np.std(y)) or 1.0
        xs, ys = (X - self.x_mean_) / self.x_scale_, (y - self.y_mean_) / self.y_scale_
        self.gamma_ = 1.0 / (X.shape[1] * max(float(xs.var()), 1e-12))
        svr = SVR(kernel="rbf", gamma=self.gamma_, epsilon=self.epsilon)
        folds = min(self.inner_folds, len(xs))
        if len(self.C_grid) > 1 and folds >= 2:
            search = GridSearchCV(svr, {"C": list(self.C_grid)}, scoring="neg_mean_squared_error",
                                  cv=KFold(folds, shuffle=True, random_state=self.random_state)).fit(xs, ys)
            self.C_ = float(search.best_params_["C"])
            fitted = search.best_estimator_
        else:
            self.C_ = float(self.C_grid[0])
            fitted = svr.set_params(C=self.C_).fit(xs, ys)
        self.support_vectors_ = np.asarray(fitted.support_vectors_, dtype=np.float64)
        self.dual_coef_ = np.asarray(fitted.dual_coef_, dtype=np.float64).ravel()
        self.intercept_ = float(np.ravel(fitted.intercept_)[0])
        return self

    def predict(self, X):
        check_is_fitted(self, "support_vectors_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        xs = (X - self.x_mean_) / self.x_scale_
        sq = (xs ** 2).sum(1)[:, None] + (self.support_vectors_ ** 2).sum(1)[None, :] - 2 * xs @ self.support_vectors_.T
        kernel = np.exp(-self.gamma_ * np.maximum(sq, 0.0))
        return (kernel @ self.dual_coef_ + self.intercept_) * self.y_scale_ + self.y_mean_
