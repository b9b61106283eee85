"""The correlations and the Wilcoxon p are the tool's own (numpy): they must equal scipy.stats' everywhere the
reports use them, ties and zeros included."""

import warnings

import numpy as np
import pytest
from scipy import stats

from regressors import rankstats


def _pairs(rng, kind, n):
    x = rng.normal(size=n)
    y = x * rng.normal() + rng.normal(size=n)
    if kind == "rounded":  # many ties
        x, y = np.round(x, 1), np.round(y, 1)
    elif kind == "few values":  # floors: a handful of distinct predictions
        x, y = rng.integers(0, 4, n).astype(float), rng.integers(0, 3, n).astype(float)
    elif kind == "identical":
        y = x.copy()
    elif kind == "reversed":
        y = -x
    return x, y


@pytest.mark.parametrize("kind", ["continuous", "rounded", "few values", "identical", "reversed"])
def test_correlations_equal_scipy(kind):
    rng = np.random.default_rng(0)
    for _ in range(60):
        n = int(rng.integers(3, 400))
        x, y = _pairs(rng, kind, n)
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            continue
        assert np.array_equal(rankstats.average_ranks(x), stats.rankdata(x))
        assert rankstats.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
        assert rankstats.pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
        assert rankstats.kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)


def test_constant_sides_are_nan():
    x = np.arange(5.0)
    for f in (rankstats.pearson, rankstats.spearman, rankstats.kendall_tau_b):
        assert np.isnan(f(x, np.ones(5))) and np.isnan(f(np.ones(5), x))
    assert np.isnan(rankstats.pearson(np.full(3, 0.1), np.arange(3.0)))  # its mean is not exactly 0.1


def test_pearson_edges_as_scipy():
    """Two points give exactly +-1; huge values do not overflow; column vectors are read as 1-D."""
    assert rankstats.pearson([0.3, 0.7], [5.0, 1.0]) == -1.0 and rankstats.pearson([1, 2], [3, 4]) == 1.0
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=50), rng.normal(size=50)
    for scale in (1e170, 1e-160):
        assert rankstats.pearson(x * scale, y * scale) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
    assert rankstats.pearson(x[:, None], y[:, None]) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)


def test_kendall_on_a_large_sample():
    rng = np.random.default_rng(1)
    x = rng.normal(size=5000)
    y = np.round(x + rng.normal(size=5000), 2)
    assert rankstats.kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)


@pytest.mark.parametrize("kind", ["continuous", "rounded", "integers"])
def test_wilcoxon_equals_scipy(kind):
    """Every branch scipy takes: exact (no ties or zeros, n <= 50), all sign flips (ties or zeros, n <= 13),
    the normal approximation (beyond)."""
    rng = np.random.default_rng(2)
    for n in (9, 13, 14, 51):
        d = rng.normal(size=n) + rng.normal() * 0.5
        if kind == "rounded":
            d = np.round(d, 1)
        elif kind == "integers":
            d = rng.integers(-3, 4, n).astype(float)
        if not np.any(d != 0):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = stats.wilcoxon(d).pvalue
        assert rankstats.wilcoxon_p(d) == pytest.approx(expected, rel=1e-9, abs=1e-15), d.tolist()


def test_wilcoxon_of_zeros_only_is_nan():
    assert np.isnan(rankstats.wilcoxon_p(np.zeros(4)))


def test_wilcoxon_ignores_last_bit_noise():
    """Equal SRCC differences computed in another order differ in the last bit; that must not turn a tie into
    two values (scipy would then switch from the sign-flip to the exact null)."""
    d = np.array([0.25, -0.125, 0.25, 0.5, 0.375, -0.0625, 0.3125, 0.25, 0.4375, 0.15625])
    noisy = d + np.array([0, 0, 5.6e-17, 0, 0, 0, 0, -2.8e-17, 0, 0])
    assert len(np.unique(noisy)) > len(np.unique(d))
    assert rankstats.wilcoxon_p(noisy) == rankstats.wilcoxon_p(d)
    assert rankstats.wilcoxon_p(d) == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-12)
