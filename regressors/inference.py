"""Uncertainty of cross-validated scores: intervals over prompt groups and a paired test valid over repeats.

Repeated K-fold reuses every sample once per repeat, so its K x R folds are not independent samples: a test that
treats them as such grows more "significant" with every repeat.

- `group_bootstrap_interval`: percentile interval of the mean-over-repeats pooled SRCC, PLCC or RMSE, resampling
  whole prompt groups with replacement, each group carrying its out-of-fold predictions of every repeat. It states
  how much the score moves with the prompts sampled (not with the training set drawn).
- `corrected_t` / `corrected_resampled_t`: the paired test of two procedures on the same folds: Nadeau and
  Bengio's corrected resampled t-test over the K x R per-fold differences (its variance term adds n_test / n_train
  for the overlap of the training sets), with the variance of one repeat less what the repeats average away.
  tests/paired_simulation.py measures its false-positive rate on two equally good procedures
  (benchmarks/paired_tests.py prints it beside Nadeau and Bengio's variance of all K x R folds, the Wilcoxon test
  over folds and a permutation over prompt groups, which ignores the training set's variance).

A resample is expressed as a count per sample (how often its group was drawn), so one matrix product gives every
resample's weighted ranks and correlations at once; a weighted statistic equals the plain one on the resampled,
duplicated samples (ties ranked by their average rank, as scipy.stats.spearmanr does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

BOOTSTRAP_SAMPLES = 1000
LEVEL = 0.95
INTERVAL_METRICS = ("srcc", "plcc", "rmse")
_CHUNK = 250  # resamples per matrix product (memory: _CHUNK x samples float64 per repeat)


@dataclass(frozen=True)
class PooledPredictions:
    """Out-of-fold predictions of one configuration on a fixed set of samples, every repeat.

    y_true: (n,) labels; y_pred: (repeats, n) predictions, each repeat's of the same n samples in the same order;
    groups: (n,) prompt group per sample. Build with `pooled_predictions`."""

    y_true: np.ndarray
    y_pred: np.ndarray
    groups: np.ndarray

    @property
    def n_groups(self) -> int:
        return int(len(np.unique(self.groups)))


def pooled_predictions(rows_per_repeat: list[np.ndarray], y_true_per_repeat: list[np.ndarray],
                       y_pred_per_repeat: list[np.ndarray], groups_of_rows: np.ndarray,
                       samples: np.ndarray | None = None) -> PooledPredictions:
    """Align each repeat's (rows, labels, predictions) on `samples` (default: the rows every repeat tested, sorted);
    `groups_of_rows` maps a row to its prompt group. A sample tested more than once in a repeat is an error."""
    rows_per_repeat = [np.asarray(r) for r in rows_per_repeat]
    if samples is None:
        samples = rows_per_repeat[0]
        for rows in rows_per_repeat[1:]:
            samples = np.intersect1d(samples, rows)
        samples = np.unique(samples)
    samples = np.asarray(samples)
    preds, truth = [], None
    for rows, y_true, y_pred in zip(rows_per_repeat, y_true_per_repeat, y_pred_per_repeat):
        if len(np.unique(rows)) != len(rows):
            raise ValueError("a sample is tested more than once in one repeat")
        order = np.argsort(rows)
        where = order[np.searchsorted(rows[order], samples)]
        if not np.array_equal(rows[where], samples):
            raise ValueError("a repeat did not test every sample asked for")
        preds.append(np.asarray(y_pred, dtype=np.float64)[where])
        if truth is None:
            truth = np.asarray(y_true, dtype=np.float64)[where]
    return PooledPredictions(truth, np.stack(preds), np.asarray(groups_of_rows)[samples])


def _weighted_ranks(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Ranks (1-based, ties averaged) of `values` (n,) within each resample, `weights` (B, n) copies per sample:
    the ranks that the duplicated resample would give, per original sample."""
    unique, inverse = np.unique(values, return_inverse=True)
    block = np.zeros((weights.shape[0], len(unique)))
    np.add.at(block.T, inverse, weights.T)
    below = np.cumsum(block, axis=1) - block
    return (below + (block + 1.0) / 2.0)[:, inverse]


def weighted_pearson(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted Pearson r per row: x and y (B, n) or (1, n), weights (B, n); 0 where either side is constant."""
    total = weights.sum(axis=1, keepdims=True)
    mx = (weights * x).sum(axis=1, keepdims=True) / total
    my = (weights * y).sum(axis=1, keepdims=True) / total
    dx, dy = x - mx, y - my
    sxy = (weights * dx * dy).sum(axis=1)
    sxx = (weights * dx * dx).sum(axis=1)
    syy = (weights * dy * dy).sum(axis=1)
    scale = np.sqrt(sxx * syy)
    tiny = 1e-12 * np.sqrt((weights * x * x).sum(axis=1) * (weights * y * y).sum(axis=1)) + 1e-300
    return np.where(scale > tiny, sxy / np.where(scale > 0, scale, 1.0), 0.0)


def _statistic(metric: str, y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean over repeats of the metric of each repeat's predictions, per resample: y_pred (R, n), weights (B, n)."""
    out = np.zeros(weights.shape[0])
    if metric == "srcc":
        truth = _weighted_ranks(y_true, weights)
    for pred in y_pred:
        if metric == "srcc":
            out += weighted_pearson(truth, _weighted_ranks(pred, weights), weights)
        elif metric == "plcc":
            out += weighted_pearson(y_true[None, :], pred[None, :], weights)
        elif metric == "rmse":
            out += np.sqrt((weights * (y_true - pred) ** 2).sum(axis=1) / weights.sum(axis=1))
        else:
            raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(INTERVAL_METRICS)}")
    return out / len(y_pred)


def point_estimate(pooled: PooledPredictions, metric: str = "srcc") -> float:
    """The statistic that `group_bootstrap_interval` resamples, on the samples as they are."""
    return float(_statistic(metric, pooled.y_true, pooled.y_pred, np.ones((1, len(pooled.y_true))))[0])


def group_bootstrap_interval(pooled: PooledPredictions, metric: str = "srcc", *, samples: int = BOOTSTRAP_SAMPLES,
                             seed: int = 0, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval at `level` of the mean-over-repeats pooled `metric` (srcc, plcc, rmse), resampling
    whole prompt groups with replacement, each bringing its predictions of every repeat. (NaN, NaN) with fewer
    than 3 groups or predictions that are not all finite."""
    names, inverse = np.unique(pooled.groups, return_inverse=True)
    if len(names) < 3 or not np.isfinite(pooled.y_pred).all():
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for start in range(0, samples, _CHUNK):
        draws = rng.integers(0, len(names), size=(min(_CHUNK, samples - start), len(names)))
        counts = np.zeros((len(draws), len(names)))
        np.add.at(counts, (np.repeat(np.arange(len(draws)), len(names)), draws.ravel()), 1.0)
        values.append(_statistic(metric, pooled.y_true, pooled.y_pred, counts[:, inverse]))
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(np.concatenate(values), [tail, 100.0 - tail])
    return float(low), float(high)


CORRECTED_T = ("corrected resampled t-test (Nadeau and Bengio) over the per-fold differences, its variance that "
               "of one repeat less what the repeats average away")


@dataclass(frozen=True)
class CorrectedT:
    """The paired test of two procedures on the same folds: `mean` of the per-fold differences, its standard error
    `se`, degrees of freedom `df`, two-sided `p`; `interval(level)` is the matching t interval of the mean."""

    mean: float
    se: float
    df: int
    p: float

    def interval(self, level: float = LEVEL) -> tuple[float, float]:
        if not (self.df >= 1 and np.isfinite(self.se)):
            return float("nan"), float("nan")
        half = float(stats.t.ppf(0.5 + level / 2.0, self.df)) * self.se
        return self.mean - half, self.mean + half


def corrected_t(differences, n_train: float, n_test: float, repeats=None) -> CorrectedT:
    """Corrected resampled t-test over the K x R per-fold differences d of a metric (A minus B on each fold's test
    samples); `repeats`: the repeat of each difference (None: one repeat); n_train, n_test: mean fold sizes.

    One repeat: Nadeau and Bengio's variance (1 / K + n_test / n_train) var(d). Several: that variance of a single
    repeat (var(d) within repeats), less the share the repeats average away, (1 - 1 / R) times the variance of the
    R repeat means (how much the mean moves with the fold assignment alone), and never below Nadeau and Bengio's
    variance of all K R folds, (1 / (K R) + n_test / n_train) var(d); K R - 1 degrees of freedom. Repeats thus
    remove the fold assignment's noise from the mean without counting as new data. NaN p with no repeat of 2
    differences or more (a single test fold, however often repeated, says nothing of the test set's variance), a
    non-finite difference or no training size; p = 1 when every difference is 0."""
    d = np.asarray(differences, dtype=np.float64).ravel()
    nan = CorrectedT(float(d.mean()) if len(d) else float("nan"), float("nan"), max(len(d) - 1, 0), float("nan"))
    labels = np.zeros(len(d)) if repeats is None else np.asarray(repeats).ravel()
    per_repeat = [d[labels == r] for r in np.unique(labels)]
    if max((len(values) for values in per_repeat), default=0) < 2 or not np.isfinite(d).all() or not (
            np.isfinite(n_train) and n_train > 0 and np.isfinite(n_test)):
        return nan
    mean, ratio = float(d.mean()), float(n_test) / float(n_train)
    variance = (1.0 / len(d) + ratio) * float(np.var(d, ddof=1))
    within = [float(np.var(values, ddof=1)) for values in per_repeat if len(values) >= 2]
    if len(per_repeat) > 1 and within:
        folds = len(d) / len(per_repeat)
        single = (1.0 / folds + ratio) * float(np.mean(within))
        between = float(np.var([values.mean() for values in per_repeat], ddof=1))
        variance = max(single - (1.0 - 1.0 / len(per_repeat)) * between, variance)
    if variance == 0:
        return CorrectedT(mean, 0.0, len(d) - 1, 1.0 if mean == 0 else 0.0)
    se = math.sqrt(variance)
    return CorrectedT(mean, se, len(d) - 1, float(2.0 * stats.t.sf(abs(mean) / se, len(d) - 1)))


def corrected_resampled_t(differences, n_train: float, n_test: float, repeats=None) -> float:
    """The p of `corrected_t`."""
    return corrected_t(differences, n_train, n_test, repeats).p
