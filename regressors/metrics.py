"""The four numbers IQA papers report, computed the same way everywhere."""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats


def quality_metrics(y_true, y_pred) -> dict[str, float]:
    """SRCC, PLCC (plain Pearson, no logistic fit), KRCC and RMSE; correlations are NaN for constant predictions."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    rmse = float(np.sqrt(np.mean((y_true - y_pred) ** 2)))
    if len(y_true) < 2 or np.ptp(y_pred) == 0 or np.ptp(y_true) == 0:
        return {"srcc": float("nan"), "plcc": float("nan"), "krcc": float("nan"), "rmse": rmse}
    with warnings.catch_warnings():  # near-constant predictions: the numbers are still reported
        warnings.simplefilter("ignore", stats.NearConstantInputWarning)
        return _correlations(y_true, y_pred, rmse)


def _correlations(y_true: np.ndarray, y_pred: np.ndarray, rmse: float) -> dict[str, float]:
    return {
        "srcc": float(stats.spearmanr(y_true, y_pred).statistic),
        "plcc": float(stats.pearsonr(y_true, y_pred).statistic),
        "krcc": float(stats.kendalltau(y_true, y_pred).statistic),
        "rmse": rmse,
    }
