"""regressors.inference: group-bootstrap intervals and the corrected resampled t-test, and the false-positive rate
of the paired tests on two equally good procedures (tests/paired_simulation.py)."""

import numpy as np
import pytest
from scipy import stats

from regressors.inference import (_statistic, _weighted_ranks, corrected_resampled_t, corrected_t,
                                  group_bootstrap_interval,
                                  point_estimate, pooled_predictions, weighted_pearson)
from regressors.metrics import pearson, spearman
from tests.paired_simulation import rejection_rates


def _duplicated(values, counts):
    return np.repeat(values, counts.astype(int))


def test_weighted_ranks_and_pearson_equal_scipy_on_the_duplicated_resample():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, 40).astype(float)  # ties
    p = rng.normal(size=40)
    counts = rng.integers(0, 3, size=(5, 40)).astype(float)
    ranks_y, ranks_p = _weighted_ranks(y, counts), _weighted_ranks(p, counts)
    rho = weighted_pearson(ranks_y, ranks_p, counts)
    r = weighted_pearson(y[None, :], p[None, :], counts)
    for b in range(5):
        dy, dp = _duplicated(y, counts[b]), _duplicated(p, counts[b])
        assert np.allclose(_duplicated(ranks_y[b], counts[b]), stats.rankdata(dy))
        assert rho[b] == pytest.approx(spearman(dy, dp), abs=1e-12)
        assert r[b] == pytest.approx(pearson(dy, dp), abs=1e-12)


def test_pooled_predictions_align_each_repeat_on_the_same_samples():
    rows = [np.array([3, 0, 2, 1]), np.array([1, 3, 0, 2])]
    truth = [np.array([30., 0., 20., 10.]), np.array([10., 30., 0., 20.])]
    preds = [np.array([3.1, 0.1, 2.1, 1.1]), np.array([1.2, 3.2, 0.2, 2.2])]
    pooled = pooled_predictions(rows, truth, preds, np.array([7, 7, 8, 8]))
    assert pooled.y_true.tolist() == [0, 10, 20, 30]
    assert pooled.y_pred.tolist() == [[0.1, 1.1, 2.1, 3.1], [0.2, 1.2, 2.2, 3.2]]
    assert pooled.groups.tolist() == [7, 7, 8, 8]
    with pytest.raises(ValueError):
        pooled_predictions([np.array([0, 0])], [np.zeros(2)], [np.zeros(2)], np.zeros(4, int))


def test_the_point_estimate_is_the_mean_over_repeats_of_the_pooled_metric():
    rng = np.random.default_rng(1)
    y = rng.normal(size=30)
    preds = [y + rng.normal(size=30), y + 2 * rng.normal(size=30)]
    pooled = pooled_predictions([np.arange(30)] * 2, [y, y], preds, np.arange(30) // 3)
    assert point_estimate(pooled, "srcc") == pytest.approx(np.mean([spearman(y, p) for p in preds]), abs=1e-12)
    assert point_estimate(pooled, "plcc") == pytest.approx(np.mean([pearson(y, p) for p in preds]), abs=1e-12)
    rmse = np.mean([np.sqrt(np.mean((y - p) ** 2)) for p in preds])
    assert point_estimate(pooled, "rmse") == pytest.approx(rmse, abs=1e-12)


def test_the_bootstrap_resamples_whole_groups_with_every_repeat():
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(12), 4)
    y = rng.normal(size=48)
    preds = [y + rng.normal(size=48) for _ in range(3)]
    pooled = pooled_predictions([np.arange(48)] * 3, [y] * 3, preds, groups)
    low, high = group_bootstrap_interval(pooled, "srcc", samples=200, seed=5)
    draws = np.random.default_rng(5).integers(0, 12, size=(200, 12))  # the same stream, drawn by hand
    values = []
    for draw in draws:
        picked = np.concatenate([np.flatnonzero(groups == g) for g in draw])
        values.append(np.mean([spearman(y[picked], p[picked]) for p in preds]))
    assert (low, high) == pytest.approx(tuple(np.percentile(values, [2.5, 97.5])), abs=1e-12)
    assert low < point_estimate(pooled) < high


def test_the_interval_widens_when_siblings_move_together():
    """Groups of 8 identical-noise siblings carry less evidence than 8 x as many independent samples."""
    rng = np.random.default_rng(3)
    noise = np.repeat(rng.normal(size=20), 8)
    y = np.repeat(rng.normal(size=20), 8) + 0.1 * rng.normal(size=160)
    pred = y + noise
    width = {}
    for name, groups in (("grouped", np.repeat(np.arange(20), 8)), ("independent", np.arange(160))):
        pooled = pooled_predictions([np.arange(160)], [y], [pred], groups)
        low, high = group_bootstrap_interval(pooled, "plcc", samples=400)
        width[name] = high - low
    assert width["grouped"] > 1.8 * width["independent"]


def test_corrected_resampled_t_is_the_one_sample_t_without_overlap_and_wider_with_it():
    d = np.array([0.02, 0.05, -0.01, 0.04, 0.03, 0.06, 0.00, 0.02, 0.05, 0.01])
    assert corrected_resampled_t(d, 1.0, 0.0) == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue, rel=1e-12)
    assert corrected_resampled_t(d, 4.0, 1.0) > 10 * stats.ttest_1samp(d, 0.0).pvalue
    assert np.isnan(corrected_resampled_t([0.1], 4, 1))
    assert corrected_resampled_t(np.zeros(5), 4, 1) == 1.0


def test_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="unknown metric"):
        _statistic("krcc", np.zeros(3), np.zeros((1, 3)), np.ones((1, 3)))


def test_repeats_take_out_the_fold_assignment_noise_not_the_evidence():
    """One repeat: Nadeau and Bengio's variance. Repeats whose means scatter (fold-assignment noise) lower the
    variance below one repeat's, never below Nadeau and Bengio's over all K x R folds; repeats that agree do not."""
    rng = np.random.default_rng(4)
    one = rng.normal(0.02, 0.05, size=5)
    nb_one = (1 / 5 + 0.25) * np.var(one, ddof=1)
    assert corrected_t(one, 4.0, 1.0).se == pytest.approx(np.sqrt(nb_one), rel=1e-12)
    same = np.tile(one, 4)  # four repeats, identical: the single repeat's variance, no smaller
    assert corrected_t(same, 4.0, 1.0, np.repeat(np.arange(4), 5)).se == pytest.approx(np.sqrt(nb_one), rel=1e-12)
    shifted = np.concatenate([one + shift for shift in (-0.03, -0.01, 0.01, 0.03)])
    labels = np.repeat(np.arange(4), 5)
    test = corrected_t(shifted, 4.0, 1.0, labels)
    single = (1 / 5 + 0.25) * np.var(one, ddof=1)
    between = np.var([-0.03 + one.mean(), -0.01 + one.mean(), 0.01 + one.mean(), 0.03 + one.mean()], ddof=1)
    floor = (1 / 20 + 0.25) * np.var(shifted, ddof=1)
    assert test.se ** 2 == pytest.approx(max(single - 0.75 * between, floor), rel=1e-12)
    assert test.df == 19
    low, high = test.interval()
    assert (low < 0 < high) == (test.p > 0.05)


@pytest.mark.slow
@pytest.mark.parametrize("signal", [1.0, 0.0])
@pytest.mark.parametrize("repeats", [1, 5, 10])
def test_two_equally_good_procedures_are_told_apart_about_5_percent_of_the_time(repeats, signal):
    """The corrected resampled t-test at 5% over 200 simulated data sets (binomial SD 1.5 points): at most 8% on
    labels with signal, 10% on pure noise (where Nadeau and Bengio's variance over all K x R folds reaches 13% at
    10 repeats); the Wilcoxon test over folds, which counts every fold of every repeat as a sample, far above 5%
    once folds are repeated."""
    rates = rejection_rates(200, repeats, signal=signal)
    assert rates["corrected resampled t"] <= (0.08 if signal else 0.10)
    if repeats >= 5:
        assert rates["wilcoxon over folds"] >= 0.25


def test_a_single_test_fold_repeated_gives_no_p():
    """A deterministic single split (--split paper or cross) repeated R times gives R equal differences of one test
    fold: not R samples of anything, and no within-repeat variance to estimate the test set's. No p, no interval
    (it was p = 0 and a zero-width interval, hence a bold cell)."""
    from regressors.inference import corrected_t

    test = corrected_t([-0.139] * 3, 96.0, 32.0, [0, 1, 2])
    assert np.isnan(test.p) and np.isnan(test.interval()[0])
    seeds = corrected_t([-0.10, -0.12, -0.14], 96.0, 32.0, [0, 1, 2])  # a seeded regressor's repeats
    assert np.isnan(seeds.p)
    assert np.isfinite(corrected_t([-0.1, -0.12, -0.14, -0.1], 96.0, 32.0, [0, 0, 1, 1]).p)  # 2 folds a repeat
