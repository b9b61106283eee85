"""Ridge and RBF SVR on standardised inputs, hyper-parameters chosen by a CV inside the training data only.

Own estimator classes (not bare Pipelines) so they pass `check_estimator`, and so a saved head needs only
plain arrays: scaler, coefficients or support vectors.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.model_selection import KFold
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
        xs = (X - self.x_mean_) / self.x_scale_
        y_mean = float(np.mean(y))
        self.alpha_, self.coef_ = loo_ridge(xs - xs.mean(axis=0), y - y_mean, np.asarray(self.alphas, float))
        self.intercept_ = y_mean - float(xs.mean(axis=0) @ self.coef_)
        return self

    def predict(self, X):
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return ((X - self.x_mean_) / self.x_scale_) @ self.coef_ + self.intercept_


def loo_ridge(xc: np.ndarray, yc: np.ndarray, alphas: np.ndarray) -> tuple[float, np.ndarray]:
    """Ridge on centred data with alpha chosen by exact leave-one-out error, from one eigendecomposition of the
    smaller Gram matrix (X'X or XX'): the same choice as RidgeCV's LOO, about 3x faster on 3200 x 2048."""
    n, p = xc.shape
    if n >= p:
        lam, v = np.linalg.eigh(xc.T @ xc)
        q = xc @ v  # n x p, columns scaled by sqrt(lam)
        weights = [1.0 / (np.maximum(lam, 0.0) + a) for a in alphas]
    else:
        lam, q = np.linalg.eigh(xc @ xc.T)  # n x n
        lam = np.maximum(lam, 0.0)
        weights = [lam / (lam + a) for a in alphas]
    qy = q.T @ yc
    q2 = q ** 2
    errors = []
    for w in weights:
        fitted = q @ (qy * w)
        leverage = np.minimum(q2 @ w + 1.0 / n, 1.0 - 1e-12)
        errors.append(float(np.mean(((yc - fitted) / (1.0 - leverage)) ** 2)))
    best = int(np.argmin(errors))
    alpha = float(alphas[best])
    if n >= p:
        coef = v @ (qy / (np.maximum(lam, 0.0) + alpha))
    else:
        coef = xc.T @ (q @ (qy / (lam + alpha)))
    return alpha, coef


class StandardizedSVR(RegressorMixin, BaseEstimator):
    """The RBF kernel is computed once per fit with BLAS and handed to libsvm precomputed: about 50x faster
    than libsvm's own kernel loop on 2048-d features, with the same model."""

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
        kernel = rbf_kernel(xs, xs, self.gamma_)
        folds = min(self.inner_folds, len(xs))
        self.C_ = float(self.C_grid[0])
        if len(self.C_grid) > 1 and folds >= 2:
            splits = list(KFold(folds, shuffle=True, random_state=self.random_state).split(xs))
            errors = []
            for c in self.C_grid:
                error = 0.0
                for train, valid in splits:
                    model = SVR(kernel="precomputed", C=c, epsilon=self.epsilon)
                    model.fit(kernel[np.ix_(train, train)], ys[train])
                    error += float(np.sum((model.predict(kernel[np.ix_(valid, train)]) - ys[valid]) ** 2))
                errors.append(error)
            self.C_ = float(self.C_grid[int(np.argmin(errors))])
        fitted = SVR(kernel="precomputed", C=self.C_, epsilon=self.epsilon).fit(kernel, ys)
        self.support_vectors_ = xs[fitted.support_]
        self.dual_coef_ = np.asarray(fitted.dual_coef_, dtype=np.float64).ravel()
        self.intercept_ = float(np.ravel(fitted.intercept_)[0])
        return self

    def predict(self, X):
        check_is_fitted(self, "support_vectors_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        xs = (X - self.x_mean_) / self.x_scale_
        kernel = rbf_kernel(xs, self.support_vectors_, self.gamma_)
        return (kernel @ self.dual_coef_ + self.intercept_) * self.y_scale_ + self.y_mean_


def rbf_kernel(a: np.ndarray, b: np.ndarray, gamma: float) -> np.ndarray:
    sq = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2.0 * a @ b.T
    return np.exp(-gamma * np.maximum(sq, 0.0))
