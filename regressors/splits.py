"""Split protocols: the official `paper` split, random K-fold, prompt-disjoint `group` K-fold, and `cross`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import GroupKFold, KFold

from featcache.errors import FeatcacheError

PROTOCOLS = {
    "paper": "index % 4 == 3 inside the subset goes to test (the official loaders); leaks siblings into training",
    "kfold": "random K-fold over samples",
    "group": "prompt-disjoint K-fold: no group (what an image was generated from) in both train and test",
    "cross": "train on one generator or subset (--train-on), test on another (--test-on)",
}


@dataclass
class Fold:
    repeat: int
    fold: int
    train: np.ndarray  # sample indices
    test: np.ndarray


def subset_mask(subset: np.ndarray, generator: np.ndarray, name: str) -> np.ndarray:
    if name == "all":
        return np.ones(len(subset), dtype=bool)
    if name in ("t2i", "i2i"):
        return subset == name
    if name in set(generator.tolist()):
        return generator == name
    choices = sorted({"all", "t2i", "i2i", *generator.tolist()})
    raise FeatcacheError(f"unknown subset {name!r}; choose one of {', '.join(choices)}")


def make_folds(rows: np.ndarray, groups: np.ndarray, subsets: np.ndarray, generators: np.ndarray, protocol: str,
               folds: int = 5, repeats: int = 1, seed: int = 0, train_on: str | None = None,
               test_on: str | None = None, what: str = "this selection") -> list[Fold]:
    """Folds over `rows` (sample indices, in annotation order); groups/subsets/generators are indexed by sample."""
    if protocol not in PROTOCOLS:
        raise FeatcacheError(f"unknown split {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if repeats < 1:
        raise FeatcacheError("--repeats must be at least 1")
    n = len(rows)
    out: list[Fold] = []
    if protocol == "paper":
        position = np.arange(n)
        test, train = rows[position % 4 == 3], rows[position % 4 != 3]
        _enough(len(train), len(test), what, "the paper split")
        return [Fold(r, 0, train, test) for r in range(repeats)]
    if protocol == "cross":
        if not train_on or not test_on:
            raise FeatcacheError("--split cross needs --train-on and --test-on (a generator, t2i or i2i)")
        train = rows[subset_mask(subsets[rows], generators[rows], train_on)]
        test = rows[subset_mask(subsets[rows], generators[rows], test_on)]
        if np.intersect1d(train, test).size:
            raise FeatcacheError(f"--train-on {train_on} and --test-on {test_on} share samples; pick disjoint sets")
        _enough(len(train), len(test), what, f"training on {train_on} and testing on {test_on}")
        return [Fold(r, 0, train, test) for r in range(repeats)]
    if folds < 2:
        raise FeatcacheError("--folds must be at least 2")
    n_groups = len(set(groups[rows].tolist()))
    if protocol == "group" and n_groups < folds:
        raise FeatcacheError(f"{what} has {n} samples in {n_groups} groups: too few for {folds} prompt-disjoint "
                             "folds; lower --folds or widen --subset")
    if n < 2 * folds:
        raise FeatcacheError(f"{what} has {n} samples: too few for {folds} folds; lower --folds or widen --subset")
    for r in range(repeats):
        if protocol == "kfold":
            splitter = KFold(folds, shuffle=True, random_state=seed + r).split(rows)
        else:
            splitter = GroupKFold(folds, shuffle=True, random_state=seed + r).split(rows, groups=groups[rows])
        for k, (train, test) in enumerate(splitter):
            out.append(Fold(r, k, rows[np.sort(train)], rows[np.sort(test)]))
    return out


def _enough(n_train: int, n_test: int, what: str, how: str) -> None:
    if n_train < 3 or n_test < 3:
        raise FeatcacheError(f"{what}: {how} leaves {n_train} training and {n_test} test samples; too few")
