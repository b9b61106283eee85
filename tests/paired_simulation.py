"""Two equally good predictors under repeated grouped K-fold: the data sets on which a valid paired test rejects
at 5% about 5% of the time (used by tests/test_inference.py, tests/test_paired_comparisons.py and
benchmarks/paired_tests.py).

Each data set: `groups` prompts x `siblings` images; a latent quality per image (a prompt effect plus image noise)
and labels = latent + label noise (`signal` 0: pure-noise labels). Predictors A and B are ridge regressions on
features of the same make-up (the latent quality + independent noise in each column), so neither is better in
expectation. Folds: scikit-learn's GroupKFold(shuffle=True) over prompts, reseeded per repeat.

Three tests are compared: the Wilcoxon signed-rank test over the K x R per-fold differences (folds taken as
independent samples, `wilcoxon_p`), the corrected resampled t-test (`regressors.inference.corrected_resampled_t`,
what featcache reports) and a paired permutation over prompt groups on the pooled out-of-fold predictions
(`paired_group_test` here: it swaps each group's predictions of A and B, so it is conditional on the two fitted
procedures and ignores how much they move with the training set). `out_of_fold` gives A and B as the out-of-fold
predictions and fold rows of a run, the input of `regressors.summaries.paired_comparisons`. On pure-noise labels
(`signal=0`) the corrected t rejects more often than its level (benchmarks/paired_tests.py measures it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats
from sklearn.model_selection import GroupKFold

from regressors.inference import PooledPredictions, corrected_resampled_t, pooled_predictions, weighted_pearson
from regressors.metrics import spearman

PERMUTATIONS = 199
EXACT_GROUPS = 10
_CHUNK = 250
TIE_DECIMALS = 12


def wilcoxon_p(differences) -> float:
    """The Wilcoxon signed-rank test over the K x R per-fold differences, each fold taken as an independent sample
    (the test the simulation measures beside the corrected one): two-sided p of scipy.stats.wilcoxon (its
    defaults) on the differences rounded to TIE_DECIMALS, so last-bit noise does not split a tie; NaN with fewer
    than 2 differences or when all are 0."""
    d = np.round(np.asarray(differences, dtype=np.float64).ravel(), TIE_DECIMALS)
    if len(d) < 2 or not np.any(d != 0):
        return float("nan")
    return float(stats.wilcoxon(d).pvalue)


@dataclass(frozen=True)
class PairedTest:
    """A two-sided paired test of A against B on the same samples. `difference`: the statistic of A minus B
    (mean over repeats of the pooled metric); `p`: its p; `min_p`: the smallest p this design can give (exact:
    2 / 2**groups; random patterns: 1 / (permutations + 1)); `exact`: every swap pattern evaluated."""

    metric: str
    difference: float
    p: float
    min_p: float
    exact: bool
    permutations: int
    n_groups: int
    n_samples: int
    n_repeats: int
    method: str = "paired permutation over prompt groups (swap A and B per group, all repeats together)"

    def to_dict(self) -> dict:
        return {"metric": self.metric, "difference": self.difference, "p": self.p, "min_p": self.min_p,
                "exact": self.exact, "permutations": self.permutations, "n_groups": self.n_groups,
                "n_samples": self.n_samples, "n_repeats": self.n_repeats, "method": self.method}


def _standardised(pred: np.ndarray) -> np.ndarray:
    centre = pred.mean(axis=1, keepdims=True)
    spread = pred.std(axis=1, keepdims=True)
    return (pred - centre) / np.where(spread > 0, spread, 1.0)


def _swapped_statistic(metric: str, y_true: np.ndarray, a: np.ndarray, b: np.ndarray,
                       swap: np.ndarray) -> np.ndarray:
    """Statistic of A minus B for each swap pattern `swap` (P, n) booleans (True: the sample's A and B exchanged)."""
    out = np.zeros(swap.shape[0])
    truth = stats.rankdata(y_true) if metric == "srcc" else y_true
    for pa, pb in zip(a, b):
        first = np.where(swap, pb, pa)
        second = np.where(swap, pa, pb)
        if metric == "srcc":
            first, second = stats.rankdata(first, axis=1), stats.rankdata(second, axis=1)
        if metric == "rmse":
            out += np.sqrt(((first - truth) ** 2).mean(axis=1)) - np.sqrt(((second - truth) ** 2).mean(axis=1))
        else:
            ones = np.ones_like(first)
            out += weighted_pearson(truth[None, :], first, ones) - weighted_pearson(truth[None, :], second, ones)
    return out / len(a)


def paired_group_test(a: PooledPredictions, b: PooledPredictions, metric: str = "srcc", *,
                      permutations: int = PERMUTATIONS, seed: int = 0) -> PairedTest:
    """Two-sided paired permutation test that A and B score the same (`metric`: srcc, plcc or rmse) on the same
    samples, swapping each prompt group's predictions of A and B with probability 1/2. `a` and `b` must hold the
    same samples in the same order and the same number of repeats. p = (1 + patterns at least as extreme) /
    (1 + patterns) for random patterns (never 0), the exact proportion when every pattern is evaluated."""
    if not (np.array_equal(a.groups, b.groups) and np.array_equal(a.y_true, b.y_true)
            and a.y_pred.shape == b.y_pred.shape):
        raise ValueError("paired_group_test: A and B must hold the same samples, labels and repeats")
    if metric not in ("srcc", "plcc", "rmse"):
        raise ValueError(f"unknown metric {metric!r}; choose srcc, plcc or rmse")
    names, inverse = np.unique(a.groups, return_inverse=True)
    n_groups, (repeats, n) = len(names), a.y_pred.shape
    if metric == "rmse":  # on the labels' scale: nothing to standardise
        pa, pb = a.y_pred, b.y_pred
    else:
        pa, pb = _standardised(a.y_pred), _standardised(b.y_pred)
    observed = float(_swapped_statistic(metric, a.y_true, pa, pb, np.zeros((1, n), dtype=bool))[0])
    if n_groups < 2 or not (np.isfinite(pa).all() and np.isfinite(pb).all()):
        return PairedTest(metric, observed, float("nan"), float("nan"), False, 0, n_groups, n, repeats)
    exact = n_groups <= EXACT_GROUPS
    if exact:
        codes = np.arange(2 ** n_groups)
        patterns = ((codes[:, None] >> np.arange(n_groups)[None, :]) & 1).astype(bool)
    else:
        patterns = np.random.default_rng(seed).random((permutations, n_groups)) < 0.5
    tolerance = 1e-12 * max(1.0, abs(observed))
    extreme = 0
    for start in range(0, len(patterns), _CHUNK):
        swap = patterns[start:start + _CHUNK][:, inverse]
        values = _swapped_statistic(metric, a.y_true, pa, pb, swap)
        extreme += int(np.sum(np.abs(values) >= abs(observed) - tolerance))
    if exact:
        p, min_p, count = extreme / len(patterns), 2.0 / len(patterns), len(patterns)
    else:
        p, min_p, count = (1 + extreme) / (1 + permutations), 1.0 / (1 + permutations), permutations
    return PairedTest(metric, observed, float(min(1.0, p)), float(min_p), exact, count, n_groups, n, repeats)


def simulate_data_set(seed: int, *, groups: int = 40, siblings: int = 4, width: int = 12, signal: float = 1.0):
    rng = np.random.default_rng(seed)
    group = np.repeat(np.arange(groups), siblings)
    latent = rng.normal(size=groups)[group] * 0.7 + rng.normal(size=len(group))
    labels = signal * latent + rng.normal(size=len(group))
    features = [latent[:, None] * 0.5 + rng.normal(size=(len(group), width)) for _ in range(2)]
    return labels, features, group


def _ridge(x_train, y_train, x_test, alpha: float = 10.0) -> np.ndarray:
    mean_x, mean_y = x_train.mean(axis=0), y_train.mean()
    xc = x_train - mean_x
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x_train.shape[1]), xc.T @ (y_train - mean_y))
    return (x_test - mean_x) @ w + mean_y


def paired_p_values(seed: int, repeats: int, folds: int = 5, permutations: int = 0, **data) -> dict:
    """p of the Wilcoxon test over the folds of every repeat and of the corrected resampled t-test (and, when
    `permutations`, of the group permutation test with that many patterns), for A vs B on one simulated data set."""
    labels, (xa, xb), group = simulate_data_set(seed, **data)
    rows, preds_a, preds_b, differences, repeat_of = [], [], [], [], []
    n_train = n_test = 0
    for repeat in range(repeats):
        splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed * 1000 + repeat)
        order, pa, pb = [], [], []
        for train, test in splitter.split(xa, labels, group):
            a, b = _ridge(xa[train], labels[train], xa[test]), _ridge(xb[train], labels[train], xb[test])
            differences.append(spearman(labels[test], a) - spearman(labels[test], b))
            repeat_of.append(repeat)
            order.append(test)
            pa.append(a)
            pb.append(b)
            n_train, n_test = len(train), len(test)
        rows.append(np.concatenate(order))
        preds_a.append(np.concatenate(pa))
        preds_b.append(np.concatenate(pb))
    out = {"wilcoxon over folds": wilcoxon_p(differences),
           "corrected resampled t": corrected_resampled_t(differences, n_train, n_test, repeat_of),
           "Nadeau-Bengio over all K x R folds": corrected_resampled_t(differences, n_train, n_test)}
    if permutations:
        truth = [labels[r] for r in rows]
        a = pooled_predictions(rows, truth, preds_a, group)
        b = pooled_predictions(rows, truth, preds_b, group)
        out["group permutation"] = paired_group_test(a, b, permutations=permutations, seed=seed).p
    return out


def rejection_rates(data_sets: int, repeats: int, alpha: float = 0.05, start: int = 0, **options) -> dict:
    """Share of `data_sets` simulated data sets on which each test gives p < alpha."""
    counts: dict[str, int] = {}
    for seed in range(start, start + data_sets):
        for name, p in paired_p_values(seed, repeats, **options).items():
            counts[name] = counts.get(name, 0) + int(p < alpha)
    return {name: count / data_sets for name, count in counts.items()}


def out_of_fold(seed: int, repeats: int, folds: int = 5, **data) -> tuple[list, list[dict]]:
    """The out-of-fold predictions and fold rows that `regressors.cv.cross_validate` would keep for A (as mode
    `nr`) and B (as mode `pr`, whose reference is `nr`) on one simulated data set: the input of
    `regressors.summaries.paired_comparisons`."""
    from regressors.cv import OutOfFold

    labels, (xa, xb), group = simulate_data_set(seed, **data)
    predictions, rows = [], []
    for repeat in range(repeats):
        splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed * 1000 + repeat)
        for fold, (train, test) in enumerate(splitter.split(xa, labels, group)):
            for mode, x in (("nr", xa), ("pr", xb)):
                predictions.append(OutOfFold("ridge", mode, "y", repeat, fold, test, labels[test],
                                             _ridge(x[train], labels[train], x[test])))
                rows.append({"regressor": "ridge", "mode": mode, "target": "y", "repeat": repeat, "fold": fold,
                             "failed": False, "n_train": int(len(train)), "n_test": int(len(test))})
    return predictions, rows
