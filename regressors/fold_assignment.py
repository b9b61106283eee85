"""Which samples go to which test fold: the same assignments as scikit-learn 1.9's `KFold(shuffle=True)`,
`GroupKFold(shuffle=True)` and `StratifiedGroupKFold(shuffle=True)` (tests compare them on many inputs), in numpy
alone.

Why not import them: `import sklearn` pulls in scipy.stats and pandas, about 1.5 s on 2 cores, while a ridge or
floor fit needs nothing else from scikit-learn, and `sklearn.model_selection` imports scipy.stats again through
`sklearn.metrics` (0.7 s of an SVR fit's start-up, whose only use of it was the inner folds); `featcache fit`
should start faster than `import torch` (issue 10). A side effect: the folds no longer move when scikit-learn
changes its algorithm.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np


def random_state(seed) -> np.random.RandomState:
    """scikit-learn's `check_random_state`: None -> numpy's global RandomState, an int -> a new one seeded with it,
    a RandomState -> itself (its draws advance)."""
    if seed is None:
        return np.random.mtrand._rand
    if isinstance(seed, np.random.RandomState):
        return seed
    if isinstance(seed, numbers.Integral):
        return np.random.RandomState(seed)
    raise ValueError(f"{seed!r} cannot be used to seed a numpy.random.RandomState instance")


def kfold_test_sets(n: int, folds: int, seed) -> list[np.ndarray]:
    """Shuffle 0..n-1 with RandomState(seed) (see `random_state`), cut into `folds` consecutive parts, the first
    n % folds one larger."""
    order = np.arange(n)
    random_state(seed).shuffle(order)
    sizes = np.full(folds, n // folds, dtype=int)
    sizes[:n % folds] += 1
    bounds = np.r_[0, np.cumsum(sizes)]
    return [np.sort(order[bounds[k]:bounds[k + 1]]) for k in range(folds)]


def group_kfold_test_sets(groups, folds: int, seed) -> list[np.ndarray]:
    """The distinct groups (sorted) permuted with RandomState(seed), cut into `folds` near-equal runs (the first
    ones one larger); a fold tests every sample of its groups."""
    groups = np.asarray(groups)
    parts = np.array_split(random_state(seed).permutation(np.unique(groups)), folds)
    return [np.flatnonzero(np.isin(groups, part)) for part in parts]


def train_test_pairs(n: int, tests: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) position pairs, both ascending, as scikit-learn's `split` yields them."""
    pairs = []
    for test in tests:
        is_test = np.zeros(n, bool)
        is_test[test] = True
        pairs.append((np.flatnonzero(~is_test), np.flatnonzero(is_test)))
    return pairs


def stratified_group_kfold_test_sets(strata, groups, folds: int, seed: int) -> list[np.ndarray]:
    """Whole groups to folds, keeping each stratum's share of every fold even: groups in a seeded random order,
    stably sorted by how uneven their own strata counts are, each put where the spread of strata shares over
    folds stays smallest (ties within rounding: the fold with fewer samples; then the first). Warns, as
    scikit-learn does, when a stratum has fewer samples than folds (some folds then lack it)."""
    _, strata_code, strata_count = np.unique(np.asarray(strata), return_inverse=True, return_counts=True)
    _, group_code, group_count = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    strata_code, group_code = strata_code.ravel(), group_code.ravel()
    n_groups, n_strata = len(group_count), len(strata_count)
    if folds > strata_count.min():
        warnings.warn(f"The least populated class in y has only {strata_count.min()} members, which is less than "
                      f"n_splits={folds}.", UserWarning, stacklevel=2)
    per_group = np.zeros((n_groups, n_strata))
    np.add.at(per_group, (group_code, strata_code), 1)
    order = np.arange(n_groups)
    random_state(seed).shuffle(order)
    per_group = per_group[order]
    new_code = np.empty_like(order)
    new_code[order] = np.arange(n_groups)
    group_code = new_code[group_code]
    per_fold = np.zeros((folds, n_strata))
    fold_of_group = np.empty(n_groups, dtype=int)
    for g in np.argsort(-np.std(per_group, axis=1), kind="stable"):
        best = _best_fold(per_fold, strata_count, per_group[g])
        per_fold[best] += per_group[g]
        fold_of_group[g] = best
    fold_of_sample = fold_of_group[group_code]
    return [np.flatnonzero(fold_of_sample == k) for k in range(folds)]


def _best_fold(per_fold: np.ndarray, strata_count: np.ndarray, counts: np.ndarray) -> int:
    best, best_spread, best_size = 0, np.inf, np.inf
    for k in range(len(per_fold)):
        per_fold[k] += counts
        spread = np.mean(np.std(per_fold / strata_count.reshape(1, -1), axis=0))
        per_fold[k] -= counts
        size = np.sum(per_fold[k])
        if spread < best_spread or (np.isclose(spread, best_spread) and size < best_size):
            best, best_spread, best_size = k, spread, size
    return best
