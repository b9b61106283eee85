"""The folds are the tool's own (numpy), and must equal scikit-learn's on the inputs the tool feeds them."""

import warnings

import numpy as np
import pytest
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold

from regressors.fold_assignment import group_kfold_test_sets, kfold_test_sets, \
    stratified_group_kfold_test_sets, train_test_pairs


@pytest.mark.parametrize("n, folds", [(8, 2), (23, 5), (100, 3), (401, 10)])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_kfold_equals_scikit_learn(n, folds, seed):
    ours = kfold_test_sets(n, folds, seed)
    theirs = [np.sort(test) for _, test in KFold(folds, shuffle=True, random_state=seed).split(np.zeros(n))]
    assert [np.sort(t).tolist() for t in ours] == [t.tolist() for t in theirs]


@pytest.mark.parametrize("n", [7, 23, 100])
@pytest.mark.parametrize("folds", [2, 3, 5])
def test_kfold_train_test_pairs_equal_scikit_learn_split(n, folds):
    ours = train_test_pairs(n, kfold_test_sets(n, folds, 4))
    theirs = list(KFold(folds, shuffle=True, random_state=4).split(np.zeros(n)))
    assert [(a.tolist(), b.tolist()) for a, b in ours] == [(a.tolist(), b.tolist()) for a, b in theirs]


def test_group_kfold_equals_scikit_learn():
    rng = np.random.default_rng(2)
    for case in range(20):
        n_groups, folds, seed = int(rng.integers(2, 60)), int(rng.integers(2, 6)), int(rng.integers(0, 1000))
        folds = min(folds, n_groups)
        _, groups = _grouped_case(rng, n_groups, "one stratum")
        if case % 2:
            groups = np.array([f"prompt {g}" for g in groups])  # names, not codes
        ours = train_test_pairs(len(groups), group_kfold_test_sets(groups, folds, seed))
        theirs = list(GroupKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(groups)), groups=groups))
        assert [(a.tolist(), b.tolist()) for a, b in ours] == [(a.tolist(), b.tolist()) for a, b in theirs], case


def test_a_random_state_object_is_drawn_from_as_scikit_learn_does():
    """StandardizedSVR(random_state=np.random.RandomState(0)) was accepted when scikit-learn made its folds."""
    groups = np.repeat(np.arange(12), 3)
    ours, theirs = np.random.RandomState(5), np.random.RandomState(5)
    for _ in range(3):  # the same object twice in a row: its draws advance the same way
        mine = train_test_pairs(len(groups), group_kfold_test_sets(groups, 3, ours))
        sk = list(GroupKFold(3, shuffle=True, random_state=theirs).split(np.zeros(len(groups)), groups=groups))
        assert [b.tolist() for _, b in mine] == [b.tolist() for _, b in sk]
    assert [t.tolist() for t in kfold_test_sets(10, 2, np.random.RandomState(1))] == \
        [np.sort(b).tolist() for _, b in KFold(2, shuffle=True, random_state=1).split(np.zeros(10))]
    with pytest.raises(ValueError, match="cannot be used to seed"):
        kfold_test_sets(10, 2, "seven")


def test_svr_and_ridge_take_a_random_state_object_and_refuse_missing_groups():
    from regressors.standardized import StandardizedRidge, StandardizedSVR

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 3)), rng.normal(size=30)
    groups = np.repeat(np.arange(10), 3).astype(float)
    a = StandardizedSVR(random_state=np.random.RandomState(4)).fit(x, y, groups=groups)
    b = StandardizedSVR(random_state=4).fit(x, y, groups=groups)
    assert (a.C_, a.epsilon_) == (b.C_, b.epsilon_) and np.array_equal(a.predict(x), b.predict(x))
    groups[4] = np.nan
    for model in (StandardizedSVR(), StandardizedRidge()):
        with pytest.raises(ValueError, match="groups contain NaN"):
            model.fit(x, y, groups=groups)
    with pytest.raises(ValueError, match="groups contain NaN"):
        StandardizedSVR().fit(x, y, groups=np.array(["a", float("nan")] * 15, dtype=object))


def _grouped_case(rng, n_groups, mix):
    sizes = rng.integers(1, 12, n_groups)
    groups = np.repeat(rng.permutation(n_groups) * 3 + 5, sizes)  # codes neither dense nor sorted
    if mix == "one stratum":
        strata = np.full(len(groups), "t2i")
    elif mix == "by group":  # the databases: a prompt group is all T2I or all I2I
        kind = rng.random(n_groups) < 0.4
        strata = np.where(np.repeat(kind, sizes), "i2i", "t2i")
    else:  # strata mixed inside groups, three of them
        strata = rng.choice(["a", "b", "c"], len(groups))
    order = rng.permutation(len(groups))
    return strata[order], groups[order]


@pytest.mark.parametrize("mix", ["one stratum", "by group", "mixed"])
def test_stratified_group_kfold_equals_scikit_learn(mix):
    rng = np.random.default_rng(0)
    for case in range(10):
        n_groups, folds, seed = int(rng.integers(5, 80)), int(rng.integers(2, 6)), int(rng.integers(0, 1000))
        strata, groups = _grouped_case(rng, n_groups, mix)
        ours = stratified_group_kfold_test_sets(strata, groups, folds, seed)
        splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
        theirs = [test for _, test in splitter.split(np.zeros(len(groups)), strata, groups)]
        assert [t.tolist() for t in ours] == [t.tolist() for t in theirs], (mix, case)


def test_a_stratum_smaller_than_the_folds_is_warned_about():
    strata = np.array(["t2i"] * 30 + ["i2i"] * 3)
    with pytest.warns(UserWarning, match="only 3 members"):
        stratified_group_kfold_test_sets(strata, np.arange(33), 5, 0)


def test_groups_never_straddle_folds():
    rng = np.random.default_rng(3)
    strata, groups = _grouped_case(rng, 30, "by group")
    tests = stratified_group_kfold_test_sets(strata, groups, 4, 0)
    assert sorted(np.concatenate(tests).tolist()) == list(range(len(groups)))
    for a in range(4):
        for b in range(a + 1, 4):
            assert not set(groups[tests[a]]) & set(groups[tests[b]])


def test_each_subset_reaches_every_fold_when_it_has_a_group_per_fold():
    """What the README promises of the group split: with prompt groups each T2I or I2I (as the tool's content
    groups are), a subset with at least as many groups as folds is in every test fold, whatever the group sizes
    and the seed; with fewer groups, as many folds as it has groups hold it."""
    rng = np.random.default_rng(11)
    for case in range(200):
        folds = int(rng.integers(2, 8))
        counts = {"t2i": int(rng.integers(1, 12)), "i2i": int(rng.integers(1, 12))}
        strata, groups = [], []
        for name, n_groups in counts.items():
            for g in range(n_groups):
                size = int(rng.integers(1, 9))
                strata += [name] * size
                groups += [f"{name}{g}"] * size
        strata, groups = np.array(strata), np.array(groups)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scikit-learn's small-stratum warning
            tests = stratified_group_kfold_test_sets(strata, groups, folds, int(rng.integers(0, 1000)))
        for name, n_groups in counts.items():
            holding = sum(bool(np.any(strata[test] == name)) for test in tests)
            assert holding == min(folds, n_groups), (case, name, n_groups, folds)
