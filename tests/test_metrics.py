"""Metrics as the reports count them: failed folds (constant predictions) scored 0 and never dropped, the
4-parameter logistic before PLCC, pooled out-of-fold correlations, bootstrap intervals, and inputs
standardised by the training fold so held-out values stay bounded."""

import csv
import json

import h5py
import numpy as np
import pytest
from scipy import stats

from regressors import registry
from regressors.cache_data import load_cache
from regressors.cv import cross_validate
from regressors.metrics import plcc_after_logistic, prediction_failed, quality_metrics
from regressors.preprocess import FoldScaler
from regressors.report import write_results
from regressors.summary_text import format_table, highest_on_test
from tests.fakedata import make_cache


def test_held_out_inputs_never_exceed_the_clip_bound():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 5))
    train[:, 2] = 7.0  # constant in training (a prompt-half column of an FR fold with few prompt images)
    train[:, 3] = 7.0 + 1e-13 * rng.normal(size=50)  # constant but for rounding noise
    test = rng.normal(size=(20, 5)) * 1000.0
    scaler = FoldScaler(clip=5.0).fit(train)
    z = scaler.transform(test)
    assert np.abs(z).max() <= 5.0
    assert not scaler.keep_[2] and not scaler.keep_[3] and np.all(z[:, 2:4] == 0)
    for name in ("ridge", "svr", "mlp"):
        model = registry.get_regressor(name).factory(0, "cpu").fit(train, train[:, 0])
        assert np.abs(model._scale(test) if hasattr(model, "_scale") else 0).max() <= 5.0
        pred = model.predict(test)
        assert np.isfinite(pred).all() and np.abs(pred).max() < 50  # labels span about +-3


def test_failed_folds_are_counted_never_dropped_and_never_best(tmp_path, monkeypatch):
    from sklearn.dummy import DummyRegressor

    spec = registry.RegressorSpec("constant", lambda seed, device: DummyRegressor(), "sklearn.dummy:DummyRegressor",
                                  True, False, "predicts the training mean")
    monkeypatch.setitem(registry.REGRESSORS, "constant", spec)
    data = load_cache(make_cache(tmp_path))
    result = cross_validate(data, ["nr"], ["MOS_q"], ["constant", "ridge"], folds=4)
    constant, ridge = result.summary
    assert constant["n_failed"] == constant["n_folds"] == 4 and constant["srcc_mean"] == 0.0
    assert ridge["n_failed"] == 0 and ridge["srcc_mean"] > 0.5
    assert "(4 failed)" in format_table(result.summary)
    best = highest_on_test(result.summary)[0]
    assert best["model"]["regressor"] == "ridge"
    assert prediction_failed(np.full(10, 3.0) + np.arange(10) * 1e-15, train_sd=1.0)
    assert not prediction_failed(np.arange(10) * 1e-3, train_sd=1.0)


@pytest.mark.slow
def test_out_of_fold_predictions_pooled_and_broken_down(tmp_path):
    data = load_cache(make_cache(tmp_path))
    result = cross_validate(data, ["nr"], ["MOS_q", "MOS_a"], ["ridge", "prompt-mean"], folds=4)
    paths = write_results(result, tmp_path / "out", plot="ridge")
    with open(paths["predictions"]) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 2 * len(data.samples)
    mine = [r for r in rows if (r["regressor"], r["target"]) == ("ridge", "MOS_q")]
    pooled = stats.spearmanr([float(r["mos"]) for r in mine], [float(r["prediction"]) for r in mine]).statistic
    summary = next(r for r in result.summary if (r["regressor"], r["target"]) == ("ridge", "MOS_q"))
    assert summary["srcc_pooled"] == pytest.approx(pooled)
    assert {r["key"] for r in mine} == set(data.samples.key)
    by_generator = [b for b in result.breakdown if b["by"] == "generator" and b["regressor"] == "ridge"
                    and b["target"] == "MOS_q"]
    assert {b["value"] for b in by_generator} == {"MJ", "SD"}
    payload = json.loads(paths["json"].read_text())
    assert {"comparisons", "breakdown"} <= set(payload)
    assert all("alpha" in f["chosen"] for f in payload["folds"] if f["regressor"] == "ridge")
    assert any(name.startswith("scatter_") for name in paths)
    assert "orientation, not a result" in paths["report"].read_text()


def test_single_split_reports_a_bootstrap_interval(tmp_path):
    data = load_cache(make_cache(tmp_path))
    (row,) = cross_validate(data, ["nr"], ["MOS_q"], ["ridge"], split="paper").summary
    assert row["std_over"] == "none" and row["srcc_ci_low"] <= row["srcc_mean"] <= row["srcc_ci_high"]
    assert row["srcc_ci_high"] - row["srcc_ci_low"] > 0.01
    assert "[" in format_table([row])
    (row,) = cross_validate(data, ["nr"], ["MOS_q"], ["ridge"], split="paper", repeats=3).summary
    assert row["std_over"] == "none" and "±" not in format_table([row])  # repeats of the one test fold


def test_metrics_logistic_and_failed():
    x = np.linspace(-3, 3, 60)
    y = 1 + 4 / (1 + np.exp(-2 * x))
    m = quality_metrics(y, x)
    assert m["plcc_logistic"] > m["plcc"] and m["plcc_logistic"] > 0.999 and not m["failed"]
    assert quality_metrics(y, np.full(60, 2.0))["failed"]
    assert quality_metrics(y, np.where(x > 0, np.nan, x))["failed"]
    assert plcc_after_logistic(y, x) == pytest.approx(m["plcc_logistic"])


def test_the_logistic_mapping_is_increasing_so_it_never_flips_a_sign():
    """Left free, the 4-parameter fit maps anti-correlated predictions through a decreasing curve and reports a
    positive PLCC; constrained increasing it finds no mapping better than a constant, and PLCC stays the plain one."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=80)
    y = 3 - np.tanh(x) + rng.normal(0, 0.3, 80)
    plain = quality_metrics(y, x)["plcc"]
    assert plain < -0.5
    assert quality_metrics(y, x)["plcc_logistic"] == pytest.approx(plain)
    assert quality_metrics(-y, x)["plcc_logistic"] >= -plain - 1e-9  # the mirror image is mapped as before


def test_the_logistic_cannot_become_a_step_so_last_bits_do_not_move_it():
    """A width down to zero lets the curve become a step between two neighbouring predictions of a weak predictor,
    and the step jumps with the predictions' last bits (`--jobs 1` against 2 moved a cell by 0.03). Bounded, the
    same predictions up to their last bits give the same PLCC."""
    from regressors.metrics import LOGISTIC_WIDTHS, fit_logistic

    rng = np.random.default_rng(3)
    for _ in range(5):
        y = np.clip(np.round(3 + rng.normal(size=90)), 1, 5)  # labels unrelated to the predictions
        p = np.concatenate([rng.normal(0, 0.05, 60), rng.normal(1, 0.05, 30)])  # two clusters
        nudged = p * (1 + 4e-15) + 1e-15
        params = fit_logistic(y, p)
        if params is not None:
            assert abs(params[3]) >= LOGISTIC_WIDTHS[0] * np.std(p) * (1 - 1e-9)
        assert plcc_after_logistic(y, p, params) == pytest.approx(
            plcc_after_logistic(y, nudged, fit_logistic(y, nudged)), abs=1e-12)


def test_the_logistic_does_not_depend_on_the_labels_scale():
    """The solver's tolerances are absolute: on labels of about 1e-6 it stopped at its start (another curve, PLCC
    5.5e-6 off), so one database rated 0-1 and 0-100 gave other logistic PLCCs. It fits standardised labels."""
    rng = np.random.default_rng(0)
    y = rng.normal(size=40)
    p = y + rng.normal(size=40)
    base = plcc_after_logistic(y, p)
    for scaled in (y * 1e-6, y * 1e-4 + 3, y * 100, y * 1e6):  # y * 1e-4 + 3 keeps about 11 of y's 16 digits
        assert plcc_after_logistic(scaled, p) == pytest.approx(base, abs=1e-10)


def test_the_logistic_of_two_predicted_values_keeps_the_plain_plcc(tmp_path):
    """generator-mean predicts two values per fold (one per generator). Any increasing map of two values is affine,
    so each fold's PLCC after a mapping fitted outside its test labels is its plain PLCC, sign included: fitted on
    the fold's own test labels, the logistic made a negative PLCC positive, and scored label noise at about 0.37."""
    data = load_cache(make_cache(tmp_path, i2i_prompts=8, t2i_prompts=12))
    result = cross_validate(data, ["nr"], ["MOS_q"], ["generator-mean"], folds=5)
    folds = [r for r in result.folds if not r["failed"]]
    assert len(folds) >= 4 and any(r["plcc"] < 0 for r in folds)
    for r in folds:
        assert r["plcc_logistic"] == pytest.approx(r["plcc"], abs=1e-9)
    # and a regressor whose predictions vary: every fold gets a finite logistic PLCC
    ridge = cross_validate(data, ["nr"], ["MOS_q"], ["ridge"], folds=5)
    assert all(np.isfinite(r["plcc_logistic"]) for r in ridge.folds)


def test_a_repeat_whose_every_fold_failed_pools_to_zero(tmp_path):
    """prompt-mean over one prompt's samples predicts each test fold's constant training mean: every fold fails,
    and the pooled correlation of those constants is an artefact of the fold offsets, not a score."""
    data = load_cache(make_cache(tmp_path, i2i_prompts=1, per=8))
    (row,) = cross_validate(data, ["nr"], ["MOS_q"], ["prompt-mean"], split="kfold", subset="i2i", folds=4).summary
    assert row["n_failed"] == row["n_folds"] == 4
    assert row["srcc_pooled"] == 0.0 and row["plcc_pooled"] == 0.0 and row["srcc_mean"] == 0.0


def test_a_target_constant_only_in_training_is_fitted_and_its_folds_counted_as_failed(tmp_path):
    path = make_cache(tmp_path)
    with h5py.File(path, "r+") as f:
        values = f["targets/MOS_q"][()]
        t2i = f["samples/subset"][()].astype(str) == "t2i"
        values[t2i] = 3.0
        f["targets/MOS_q"][...] = values
    data = load_cache(path)
    result = cross_validate(data, ["nr"], ["MOS_q"], ["ridge", "prompt-mean"], split="cross", train_on="t2i",
                            test_on="i2i")
    assert result.config["targets"] == ["MOS_q"]
    assert all(row["n_failed"] == row["n_folds"] >= 1 for row in result.summary), result.summary


def _pairs(rng, kind, n):
    x = rng.normal(size=n)
    y = x * rng.normal() + rng.normal(size=n)
    if kind == "rounded":  # many ties
        x, y = np.round(x, 1), np.round(y, 1)
    elif kind == "few values":  # floors: a handful of distinct predictions
        x, y = rng.integers(0, 4, n).astype(float), rng.integers(0, 3, n).astype(float)
    return x, y


@pytest.mark.parametrize("kind", ["continuous", "rounded", "few values"])
def test_fold_correlations_are_scipys(kind):
    """SRCC (average ranks for ties), PLCC and KRCC (tau-b) of a fold that did not fail are scipy.stats'."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        y, pred = _pairs(rng, kind, int(rng.integers(5, 200)))
        if np.ptp(y) == 0 or np.ptp(pred) == 0:
            continue
        m = quality_metrics(y, pred, train_sd=1.0)
        assert not m["failed"]
        assert m["srcc"] == stats.spearmanr(y, pred).statistic
        assert m["plcc"] == stats.pearsonr(y, pred).statistic
        assert m["krcc"] == stats.kendalltau(y, pred).statistic


def test_constant_or_non_finite_predictions_fail_and_count_as_zero():
    """A fold whose predictions are constant (or not finite) fails: its correlations are NaN in the fold row,
    without a warning from scipy, and 0 wherever a mean counts them."""
    import warnings

    from regressors.metrics import counted, pooled_correlations, srcc_counted

    y = np.arange(10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for pred in (np.full(10, 2.5), np.r_[np.ones(9), np.nan], np.r_[np.ones(9), np.inf]):
            m = quality_metrics(y, pred, train_sd=1.0)
            assert m["failed"] and all(np.isnan(m[k]) for k in ("srcc", "plcc", "plcc_logistic", "krcc"))
            assert counted(m["srcc"], m["failed"]) == 0.0 and srcc_counted(y, pred) == 0.0
            assert pooled_correlations(y, pred) == {"srcc": 0.0, "plcc": 0.0}
        assert quality_metrics(np.ones(10), y, train_sd=1.0)["failed"]  # constant labels: nothing to rank
        assert srcc_counted(np.ones(10), y) == 0.0


def test_a_fold_on_the_flat_end_of_its_logistic_is_scored_without_a_warning():
    """The logistic is fitted on the fold's training predictions; test predictions all far below its midpoint map to
    values equal but for their last bits: PLCC of those values centred (scipy's value but for rounding), and no
    warning."""
    import warnings

    from regressors.metrics import logistic4

    rng = np.random.default_rng(0)
    y, pred = rng.normal(size=40), rng.normal(size=40) * 0.1 - 30.0
    params = np.array([5.0, 1.3, 0.0, 1.0])
    mapped = logistic4(pred, *params)
    assert 0 < np.ptp(mapped) < 1e-12
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        expected = stats.pearsonr(y, mapped).statistic
        assert any(issubclass(w.category, stats.NearConstantInputWarning) for w in seen)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = plcc_after_logistic(y, pred, params)
        assert got == stats.pearsonr(y, mapped - mapped.mean()).statistic and abs(got - expected) < 1e-5
