"""Split protocols as a table: adding one is one `SplitSpec` entry (a fold function and its options) here.

A fold function gets the selected sample indices and per-sample groups/subsets/generators and returns the folds of
one repeat. Folds are made once per selection and repeat; every mode then uses the same folds, restricted to the
samples it can use, so modes are compared on the same samples. The random splits are scikit-learn's
(`KFold(shuffle=True)`, `StratifiedGroupKFold(shuffle=True)`) seeded with seed + repeat; the fold of every sample is
written to folds.csv, so a run can be reproduced whatever a later scikit-learn does.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from sklearn.model_selection import KFold, StratifiedGroupKFold

from featcache.errors import FeatcacheError, unknown_name

MIN_TEST = 4  # a test fold smaller than this gives correlations of no meaning ("1.000 +- 0.000" on 2 samples)


@dataclass
class Fold:
    repeat: int
    fold: int
    train: np.ndarray  # sample indices
    test: np.ndarray


@dataclass
class SplitRequest:
    """Everything a fold function may read."""

    rows: np.ndarray  # selected sample indices, in annotation order
    groups: np.ndarray  # per sample (all samples), content group codes
    subsets: np.ndarray
    generators: np.ndarray
    folds: int = 5
    seed: int = 0
    train_on: str | None = None
    test_on: str | None = None
    hold_out_prompts: bool = False
    what: str = "this selection"
    more_data: str = "widen --subset"  # how to get more samples or groups, in a refusal of too few

    def advice(self, fewer_folds_help: bool) -> str:
        """What a refusal of too few samples or groups suggests: fewer folds only where fewer can work."""
        return f"lower --folds or {self.more_data}" if fewer_folds_help else self.more_data


FoldFunction = Callable[[SplitRequest, int], list[tuple[np.ndarray, np.ndarray]]]  # (request, repeat) -> folds


@dataclass(frozen=True)
class SplitSpec:
    name: str
    make: FoldFunction
    doc: str
    grouped: bool  # no content group on both sides: inner selection holds out groups too
    single: bool  # one test set per repeat: no SD over folds, nothing for a paired test to pair
    options: tuple[str, ...] = field(default=())  # the CLI options it reads (with --subset, --repeats: its folds)


def subset_mask(subset: np.ndarray, generator: np.ndarray, name: str) -> np.ndarray:
    if name == "all":
        return np.ones(len(subset), dtype=bool)
    if name in ("t2i", "i2i"):
        return subset == name
    if name in set(generator.tolist()):
        return generator == name
    raise unknown_name("subset", name, sorted({"all", "t2i", "i2i", *generator.tolist()}))


def _paper(req: SplitRequest, repeat: int):
    position = np.arange(len(req.rows))
    return [(req.rows[position % 4 != 3], req.rows[position % 4 == 3])]


def _kfold(req: SplitRequest, repeat: int):
    _enough_for_folds(req)
    splitter = KFold(req.folds, shuffle=True, random_state=req.seed + repeat)
    return [_train_test(req.rows, test) for _, test in splitter.split(req.rows)]


def _group(req: SplitRequest, repeat: int):
    _enough_for_folds(req)
    groups = req.groups[req.rows]
    n_groups = len(np.unique(groups))
    if n_groups < req.folds:
        advice = req.advice(fewer_folds_help=True) if n_groups >= 2 else \
            f"{req.more_data}, or use --split kfold (which does not hold prompts out)"
        raise FeatcacheError(f"{req.what} has {len(req.rows)} samples in {n_groups} prompt "
                             f"group{'s' if n_groups != 1 else ''}: too few for "
                             f"{req.folds} prompt-disjoint folds; {advice}")
    strata = req.subsets[req.rows]  # every fold gets its share of T2I and I2I where each has a group per fold
    with warnings.catch_warnings():  # scikit-learn's "least populated class in y": folds_missing_a_subset says
        warnings.filterwarnings("ignore", message="The least populated class")  # which folds, in words of ours
        splitter = StratifiedGroupKFold(req.folds, shuffle=True, random_state=req.seed + repeat)
        tests = [test for _, test in splitter.split(req.rows, strata, groups)]
    return [_train_test(req.rows, test) for test in tests]


def folds_missing_a_subset(request: SplitRequest, folds: list[Fold]) -> list[str]:
    """The group split's stratification puts every subset (T2I, I2I) of the selection into every test fold only
    when the subset has at least as many prompt groups as folds (each fold needs a whole group of it); one line
    per subset that some test folds lack, naming them and the way out. Empty when every fold tests both."""
    rows = request.rows
    subsets = request.subsets
    present = list(dict.fromkeys(np.asarray(subsets[rows]).tolist()))
    if len(present) < 2:
        return []
    repeats = len({fold.repeat for fold in folds})
    notes = []
    for name in sorted(present):
        lacking = [fold for fold in folds if not np.any(subsets[fold.test] == name)]
        if not lacking:
            continue
        label = str(name).upper()
        n_groups = len(np.unique(request.groups[rows[subsets[rows] == name]]))
        where = [f"{fold.fold + 1}" + (f" of repeat {fold.repeat + 1}" if repeats > 1 else "") for fold in lacking]
        where = ("fold " if len(where) == 1 else "folds ") + (", ".join(where[:-1]) + " and " if len(where) > 1
                                                              else "") + where[-1]
        why = f"has only {n_groups} prompt group{'s' if n_groups != 1 else ''} for {request.folds} folds, so" \
            if n_groups < request.folds else "is spread unevenly (prompt groups holding both subsets):"
        notes.append(f"--split group: {label} {why} {where} test{'s' if len(lacking) == 1 else ''} no {label} "
                     f"sample (scores there come from {', '.join(str(p).upper() for p in present if p != name)} "
                     "alone)" + (f"; lower --folds to {n_groups} for every fold to test both"
                                 if 2 <= n_groups < request.folds else ""))
    return notes


def _train_test(rows: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) sample indices from the test positions among `rows`, both in annotation order."""
    is_test = np.zeros(len(rows), dtype=bool)
    is_test[test] = True
    return rows[~is_test], rows[is_test]


def _cross(req: SplitRequest, repeat: int):
    if not req.train_on or not req.test_on:
        raise FeatcacheError("--split cross needs --train-on and --test-on (a generator, t2i or i2i)")
    subsets, generators = req.subsets[req.rows], req.generators[req.rows]
    train = req.rows[subset_mask(subsets, generators, req.train_on)]
    test = req.rows[subset_mask(subsets, generators, req.test_on)]
    if np.intersect1d(train, test).size:
        raise FeatcacheError(f"--train-on {req.train_on} and --test-on {req.test_on} share samples; "
                             "pick disjoint sets")
    if req.hold_out_prompts:
        train = train[~np.isin(req.groups[train], req.groups[test])]
    return [(train, test)]


SPLITS: dict[str, SplitSpec] = {spec.name: spec for spec in [
    SplitSpec("group", _group, "prompt-disjoint K-fold (stratified by T2I/I2I): no prompt in both train and test",
              grouped=True, single=False, options=("folds", "seed")),
    SplitSpec("paper", _paper, "index % 4 == 3 inside the selection goes to test (the official loaders); "
              "leaks siblings into training", grouped=False, single=True),
    SplitSpec("kfold", _kfold, "random K-fold over samples", grouped=False, single=False,
              options=("folds", "seed")),
    SplitSpec("cross", _cross, "train on one generator or subset (--train-on), test on another (--test-on); "
              "--hold-out-prompts also removes the test prompts from training", grouped=False, single=True,
              options=("train_on", "test_on", "hold_out_prompts")),
]}



def prompt_disjoint(split: str, hold_out_prompts: bool = False) -> bool:
    """Whether the split keeps every content group on one side (a grouped split, or `cross` with
    --hold-out-prompts): inner selection must then hold out groups too, or it would choose hyper-parameters on
    siblings of its own training samples while the test fold has none."""
    spec = get_split(split)
    return spec.grouped or (hold_out_prompts and "hold_out_prompts" in spec.options)


def get_split(name: str) -> SplitSpec:
    if name not in SPLITS:
        raise unknown_name("split", name, SPLITS)
    return SPLITS[name]


def make_folds(request: SplitRequest, split: str, repeats: int = 1) -> list[Fold]:
    """The folds of every repeat; refuses folds too small to report on."""
    spec = get_split(split)
    if repeats < 1:
        raise FeatcacheError("--repeats must be at least 1")
    out = []
    for repeat in range(repeats):
        for k, (train, test) in enumerate(spec.make(request, repeat)):
            _enough(len(train), len(test), request.what, f"the {split} split (fold {k + 1})")
            out.append(Fold(repeat, k, train, test))
    return out


def check_mode_folds(request: SplitRequest, split: str, folds: list[Fold], usable: np.ndarray, mode: str,
                     needs: str) -> None:
    """Refuse, before any fitting, a mode whose usable samples (those with `needs`: FR's an image prompt) cannot
    fill every fold: such a fold would be reported as failed though no regressor failed, and its 0 would sink the
    mode's mean. The group split spreads each subset's groups over the folds (stratified by T2I/I2I), so there a
    fold goes short only with fewer groups (or samples) than folds; the fold-by-fold count catches the rest. The
    advice names the most folds that do fill (searched, so following it is never refused in turn)."""
    spec = get_split(split)
    repeats = len({fold.repeat for fold in folds})
    if not spec.single:
        if spec.grouped:
            n_groups = len(np.unique(request.groups[usable]))
            if n_groups < request.folds:
                raise FeatcacheError(f"--mode {mode}: only {_counted(n_groups, 'prompt group')} {needs}, too few "
                                     f"for {request.folds} prompt-disjoint folds; "
                                     f"{_fewer_folds(request, split, repeats, usable, mode)}")
        if len(usable) < MIN_TEST * request.folds:
            raise FeatcacheError(f"--mode {mode}: only {_counted(len(usable), 'sample')} {needs}, too few for "
                                 f"{request.folds} folds of at least {MIN_TEST} test samples; "
                                 f"{_fewer_folds(request, split, repeats, usable, mode)}")
    short = _short_fold(folds, usable, len(request.groups))
    if short is not None:
        fold, n_train, n_test = short
        where = f"the {split} split" if spec.single else f"fold {fold.fold + 1}" + (
            f" of repeat {fold.repeat + 1}" if repeats > 1 else "") + f" of the {split} split"
        advice = _fewer_folds(request, split, repeats, usable, mode) if "folds" in spec.options \
            else f"leave {mode} out of --mode"
        raise FeatcacheError(f"--mode {mode}: {where} leaves {n_train} training and {n_test} test samples with "
                             f"{needs}; too few (at least 3 and {MIN_TEST}); {advice}")


def _short_fold(folds: list[Fold], usable: np.ndarray, n_samples: int) -> tuple[Fold, int, int] | None:
    """The first fold whose usable training or test samples are too few, with both counts."""
    is_usable = np.zeros(n_samples, dtype=bool)
    is_usable[usable] = True
    for fold in folds:
        n_train, n_test = int(is_usable[fold.train].sum()), int(is_usable[fold.test].sum())
        if n_train < 3 or n_test < MIN_TEST:
            return fold, n_train, n_test
    return None


def _fewer_folds(request: SplitRequest, split: str, repeats: int, usable: np.ndarray, mode: str) -> str:
    """'lower --folds to K', K the most folds below the asked number whose every fold the mode fills."""
    from dataclasses import replace

    most = len(usable) // MIN_TEST  # no more folds than the mode's samples (and groups) can fill, so the search,
    if get_split(split).grouped:  # which builds the folds for each candidate, starts where one can work
        most = min(most, len(np.unique(request.groups[usable])))
    for k in range(min(request.folds - 1, most), 1, -1):
        try:
            folds = make_folds(replace(request, folds=k), split, repeats)
        except FeatcacheError:
            continue
        if _short_fold(folds, usable, len(request.groups)) is None:
            return f"lower --folds to {k} or leave {mode} out of --mode"
    return f"leave {mode} out of --mode"


def _counted(n: int, noun: str) -> str:
    return f"{n} {noun} has" if n == 1 else f"{n} {noun}s have"


def _enough_for_folds(req: SplitRequest) -> None:
    if req.folds < 2:
        raise FeatcacheError("--folds must be at least 2")
    if len(req.rows) < MIN_TEST * req.folds:
        raise FeatcacheError(f"{req.what} has {len(req.rows)} samples: too few for {req.folds} folds of at least "
                             f"{MIN_TEST} test samples; {req.advice(len(req.rows) >= 2 * MIN_TEST)}")


def _enough(n_train: int, n_test: int, what: str, how: str) -> None:
    if n_train < 3 or n_test < MIN_TEST:
        raise FeatcacheError(f"{what}: {how} leaves {n_train} training and {n_test} test samples; too few "
                             f"(at least 3 and {MIN_TEST})")
