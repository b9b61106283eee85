"""Ridge and RBF SVR on inputs standardised by the training fold (`FoldScaler`: constant columns zeroed, values
clipped), hyper-parameters chosen inside the training data only, on held-out groups when groups are given.

Own estimator classes (not bare Pipelines) so they pass `check_estimator`, and so a saved head needs only
plain arrays: scaler, coefficients or support vectors.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.model_selection import GroupKFold, KFold
from sklearn.svm import SVR
from sklearn.utils.validation import check_is_fitted, validate_data

from regressors.preprocess import DEFAULT_CLIP, FoldScaler
from regressors.ridge_path import RIDGE_ALPHAS, inner_groups, ridge_path

SVR_C_GRID = tuple(float(c) for c in np.logspace(-2, 3, 6))
SVR_EPSILON_GRID = (0.1, 0.3)


class _Scaled(RegressorMixin, BaseEstimator):
    """Shared scaler bookkeeping; `x_mean_`, `x_scale_`, `x_keep_`, `clip` and `blocks` (the fused backbones'
    widths, weighted by `preprocess.block_weights`; None: one backbone) are what a saved head persists."""

    def _fit_scaler(self, X: np.ndarray) -> np.ndarray:
        scaler = FoldScaler(self.clip, self.blocks).fit(X)
        self.x_mean_, self.x_scale_, self.x_keep_ = scaler.mean_, scaler.scale_, scaler.keep_.astype(np.float64)
        return scaler.transform(X)

    def _scale(self, X: np.ndarray) -> np.ndarray:
        scaler = FoldScaler.from_state({"mean": self.x_mean_, "scale": self.x_scale_, "keep": self.x_keep_},
                                       self.clip, self.blocks)
        return scaler.transform(X)


class StandardizedRidge(_Scaled):
    """Ridge with alpha chosen by exact leave-one-group-out error (leave-one-out without groups), all alphas
    from one eigendecomposition."""

    def __init__(self, alphas=RIDGE_ALPHAS, clip: float = DEFAULT_CLIP, blocks: tuple[int, ...] | None = None):
        self.alphas = alphas
        self.clip = clip
        self.blocks = blocks

    def fit(self, X, y, groups=None):
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        xs = self._fit_scaler(X)
        center = xs.mean(axis=0)
        y_mean = float(np.mean(y))
        alphas, coef, _ = ridge_path(xs - center, (y - y_mean)[:, None], np.asarray(self.alphas, float),
                                     inner_groups(groups, len(y)))
        self.alpha_, self.coef_ = float(alphas[0]), coef[:, 0]
        self.intercept_ = y_mean - float(center @ self.coef_)
        self.chosen_ = {"alpha": self.alpha_}
        return self

    def predict(self, X):
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return self._scale(X) @ self.coef_ + self.intercept_


class StandardizedSVR(_Scaled):
    """RBF SVR; C and epsilon chosen by an inner 3-fold CV over held-out groups (samples without groups). The
    kernel is computed once per fit with one BLAS matmul and handed to `SVR(kernel="precomputed")`: the same model
    as libsvm's RBF kernel, without its per-pair kernel loop. `fit_shared` fits several targets of one training
    set from one kernel and one set of inner-split slices (`svr_by_fold`). `training_predictions_`: `predict` of
    the training rows, read off the training kernel."""

    def __init__(self, C_grid=SVR_C_GRID, epsilon_grid=SVR_EPSILON_GRID, inner_folds: int = 3,
                 random_state: int = 0, clip: float = DEFAULT_CLIP, blocks: tuple[int, ...] | None = None):
        self.C_grid = C_grid
        self.epsilon_grid = epsilon_grid
        self.inner_folds = inner_folds
        self.random_state = random_state
        self.clip = clip
        self.blocks = blocks

    def fit(self, X, y, groups=None):
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True, ensure_min_samples=2)
        return self._fit_target(self._shared(X, groups), y)

    @classmethod
    def fit_shared(cls, X, targets: list[np.ndarray], groups=None, **params) -> list["StandardizedSVR"]:
        """One fitted model per target, all on the same rows X (and groups): the scaler, the kernel and the
        inner-split kernel slices are computed once. Each model equals `StandardizedSVR(**params).fit(X, y)`."""
        first = cls(**params)
        X = validate_data(first, X, dtype=np.float64, ensure_min_samples=2)
        shared = first._shared(X, groups)
        models = []
        for y in targets:
            model = cls(**params)
            model.n_features_in_ = first.n_features_in_
            models.append(model._fit_target(shared, np.asarray(y, dtype=np.float64).ravel()))
        return models

    def _shared(self, X: np.ndarray, groups) -> dict:
        """What every target of this training set shares: scaled inputs, gamma, the kernel, the inner splits
        with their kernel slices."""
        xs = self._fit_scaler(X)
        kept = int(self.x_keep_.sum())
        spread = float(xs[:, self.x_keep_ > 0.5].var()) if kept else 1.0
        gamma = 1.0 / (max(kept, 1) * max(spread, 1e-12))
        kernel = rbf_kernel(xs, xs, gamma)
        splits = self._inner_splits(len(xs), inner_groups(groups, len(xs)))
        if len(self.C_grid) * len(self.epsilon_grid) <= 1:
            splits = []
        sliced = [(train, valid, kernel[np.ix_(train, train)], kernel[np.ix_(valid, train)])
                  for train, valid in splits]
        return {"xs": xs, "gamma": gamma, "kernel": kernel, "sliced": sliced, "x_mean": self.x_mean_,
                "x_scale": self.x_scale_, "x_keep": self.x_keep_}

    def _fit_target(self, shared: dict, y: np.ndarray) -> "StandardizedSVR":
        if len(y) != len(shared["xs"]):
            raise ValueError(f"y has {len(y)} entries for {len(shared['xs'])} samples")
        if not np.all(np.isfinite(y)):
            raise ValueError("y contains NaN or infinity")
        self.x_mean_, self.x_scale_, self.x_keep_ = shared["x_mean"], shared["x_scale"], shared["x_keep"]
        self.gamma_ = shared["gamma"]
        self.y_mean_, self.y_scale_ = float(np.mean(y)), float(np.std(y)) or 1.0
        ys = (y - self.y_mean_) / self.y_scale_
        grid = [(float(c), float(e)) for c in self.C_grid for e in self.epsilon_grid]
        self.C_, self.epsilon_ = grid[0]
        if shared["sliced"]:
            errors = []
            for c, e in grid:
                error = 0.0
                for train, valid, k_train, k_valid in shared["sliced"]:
                    support, dual_coef, intercept = fit_precomputed(k_train, ys[train], c, e)
                    pred = k_valid[:, support] @ dual_coef + intercept  # = SVR.predict
                    error += float(np.sum((pred - ys[valid]) ** 2))
                errors.append(error)
            self.C_, self.epsilon_ = grid[int(np.argmin(errors))]
        support, self.dual_coef_, self.intercept_ = fit_precomputed(shared["kernel"], ys, self.C_, self.epsilon_)
        self.support_vectors_ = shared["xs"][support]
        self.training_predictions_ = (shared["kernel"][:, support] @ self.dual_coef_ + self.intercept_) \
            * self.y_scale_ + self.y_mean_  # = predict(X) of the training rows, from the kernel already there
        self.chosen_ = {"C": self.C_, "epsilon": self.epsilon_}
        return self

    def _inner_splits(self, n: int, groups: np.ndarray | None) -> list:
        """(train, validation) positions of the inner CV: `GroupKFold(shuffle=True)` over the groups, else
        `KFold(shuffle=True)`, both seeded with random_state; none with fewer than 2 groups (samples)."""
        if groups is not None:
            folds = min(self.inner_folds, len(np.unique(groups)))
            splitter = GroupKFold(folds, shuffle=True, random_state=self.random_state) if folds >= 2 else None
        else:
            folds = min(self.inner_folds, n)
            splitter = KFold(folds, shuffle=True, random_state=self.random_state) if folds >= 2 else None
        return [] if splitter is None else list(splitter.split(np.zeros((n, 1)), groups=groups))

    def predict(self, X):
        check_is_fitted(self, "support_vectors_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        kernel = rbf_kernel(self._scale(X), self.support_vectors_, self.gamma_)
        return (kernel @ self.dual_coef_ + self.intercept_) * self.y_scale_ + self.y_mean_


def fit_precomputed(kernel: np.ndarray, y: np.ndarray, C: float, epsilon: float) -> tuple[np.ndarray, np.ndarray,
                                                                                            float]:
    """(support indices, dual coefficients, intercept) of `SVR(kernel="precomputed", C=C, epsilon=epsilon)` fitted
    on the square `kernel` of the training rows; predictions are `kernel_rows[:, support] @ dual_coef + intercept`.
    Raises scikit-learn's ValueError for a kernel that is not square with one row per target, or non-finite
    dual coefficients."""
    model = SVR(kernel="precomputed", C=C, epsilon=epsilon).fit(kernel, y)
    return model.support_, np.asarray(model.dual_coef_, dtype=np.float64).ravel(), float(model.intercept_[0])


def rbf_kernel(a: np.ndarray, b: np.ndarray, gamma: float) -> np.ndarray:
    sq = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2.0 * a @ b.T
    return np.exp(-gamma * np.maximum(sq, 0.0))
