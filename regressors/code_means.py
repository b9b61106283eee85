"""The label-only floors' arithmetic (mean training target per code) in numpy: the CV harness fits floors through
`*_members` here, and the estimators in regressors/floors.py wrap the same two functions.

Codes are the columns of `design.label_codes`: generator, sibling (content group x generator), prompt (content
group).
"""

from __future__ import annotations

import time
from functools import partial

import numpy as np

from regressors.fitting import Fitted

GENERATOR, SIBLING, PROMPT = 0, 1, 2
COLUMNS = {"generator-mean": (GENERATOR,), "sibling-mean": (SIBLING, GENERATOR), "prompt-mean": (PROMPT, GENERATOR)}


def _means(codes: np.ndarray, y: np.ndarray) -> dict[float, float]:
    keys, inverse = np.unique(codes, return_inverse=True)
    sums = np.bincount(inverse, weights=y)
    counts = np.bincount(inverse)
    return dict(zip(keys.tolist(), (sums / counts).tolist()))


def fit_code_means(X: np.ndarray, y: np.ndarray, columns: tuple[int, ...]) -> tuple[float, list[dict]]:
    """(global mean, per column a {code: mean target}) from training codes X and targets y."""
    cols = [min(c, X.shape[1] - 1) for c in columns]
    return float(np.mean(y)), [_means(X[:, c], y) for c in cols]


def predict_code_means(X: np.ndarray, global_mean: float, means: list[dict], columns: tuple[int, ...]) -> np.ndarray:
    """The mean of the first column whose code was seen in training; the global mean otherwise."""
    cols = [min(c, X.shape[1] - 1) for c in columns]
    out = np.full(len(X), global_mean)
    known = np.zeros(len(X), dtype=bool)
    for col, table in zip(cols, means):
        values = np.array([table.get(v, np.nan) for v in X[:, col].tolist()])
        use = ~known & np.isfinite(values)
        out[use] = values[use]
        known |= use
    return out


def _fit_members(columns: tuple[int, ...], X: np.ndarray, members: list, device: str = "cpu") -> list:
    """The registry's `fit_members` contract for one floor (the device is unused): a `fitting.Fitted` per member,
    whose training predictions are the code means of its own training rows."""
    X = np.asarray(X, dtype=np.float64)
    out = []
    for m in members:
        start = time.perf_counter()
        global_mean, means = fit_code_means(X[m.train], np.asarray(m.y_train, dtype=np.float64), columns)
        pred = predict_code_means(X[m.test], global_mean, means, columns)
        seconds = time.perf_counter() - start
        out.append(Fitted(pred, {}, seconds, predict_code_means(X[m.train], global_mean, means, columns)))
    return out


generator_mean_members = partial(_fit_members, COLUMNS["generator-mean"])
sibling_mean_members = partial(_fit_members, COLUMNS["sibling-mean"])
prompt_mean_members = partial(_fit_members, COLUMNS["prompt-mean"])
