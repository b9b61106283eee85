"""The logistic PLCC never sees the test labels it is scored on: each fold's mapping is fitted on that fold's
training predictions against the training labels, and every fitter returns those training predictions."""

import numpy as np
import pytest

from regressors.cache_data import load_cache
from regressors.cv import LOGISTIC_FITTED_ON, cross_validate
from regressors.metrics import counted, fit_logistic
from regressors.registry import REGRESSORS
from tests.fakedata import make_cache


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if REGRESSORS[name].uses_device
                                  else name for name in REGRESSORS])  # the MLP: over 0.7 s (torch)
def test_every_fitter_returns_its_predictions_of_its_own_training_rows(name):
    """Every regressor's fitter (ridge, SVR and MLP batched, the floors' code means) gives what the same estimator
    fitted alone predicts for the training rows, beside its test predictions."""
    from regressors.fitting import Member, fit_members

    spec = REGRESSORS[name]
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 5))
    codes = np.stack([rng.integers(0, 3, 60), rng.integers(0, 20, 60), rng.integers(0, 10, 60)], 1).astype(float)
    groups = np.arange(60) // 3
    train, test = np.arange(45), np.arange(45, 60)
    y = x[:, 0] + rng.normal(0, 0.5, 60)
    inputs = x if spec.reads_features else codes
    (fitted,) = fit_members(name, inputs, [Member(train, y[train], test, groups[train], 3)])
    model = spec.factory(3, "cpu").fit(inputs[train], y[train], groups=groups[train])
    tolerance = 1e-5 if spec.uses_device else 1e-9  # the stacked MLP: batched matmuls round otherwise
    np.testing.assert_allclose(fitted.train_pred, model.predict(inputs[train]), atol=tolerance)
    np.testing.assert_allclose(fitted.pred, model.predict(inputs[test]), atol=tolerance)
    assert np.ptp(fitted.train_pred) > 0
    mapping = fit_logistic(y[train], fitted.train_pred)  # the fold's logistic: training predictions vs labels
    assert mapping is not None and np.array_equal(fitted.logistic, mapping)


def test_a_folds_mapping_does_not_move_when_only_its_test_labels_change(tmp_path):
    """--split cross: training on MJ, testing on SD. Negating the SD labels leaves the training data, the model and
    its predictions as they were, so a mapping fitted on training data maps them as before and the logistic PLCC
    just changes sign. Fitted on the test labels, the curve (constrained increasing) would follow them instead."""
    data = load_cache(make_cache(tmp_path, i2i_prompts=6, t2i_prompts=8))
    data.samples.targets["MOS_q"] = np.exp(data.samples.targets["MOS_q"])  # a bent relation: the curve bends too
    first = cross_validate(data, ["nr"], ["MOS_q"], ["ridge"], split="cross", train_on="MJ", test_on="SD")
    (row,) = first.folds
    assert first.config["logistic_fitted_on"] == LOGISTIC_FITTED_ON == "training predictions of each fold"
    assert row["plcc_logistic"] - row["plcc"] > 0.01  # the mapping is not a straight line here
    tested = data.samples.generator == "SD"
    data.samples.targets["MOS_q"] = np.where(tested, -data.samples.targets["MOS_q"], data.samples.targets["MOS_q"])
    (negated,) = cross_validate(data, ["nr"], ["MOS_q"], ["ridge"], split="cross", train_on="MJ",
                                test_on="SD").folds
    assert negated["plcc"] == pytest.approx(-row["plcc"], abs=1e-12)
    assert negated["plcc_logistic"] == pytest.approx(-row["plcc_logistic"], abs=1e-12)


def _noise_differences(tmp_path, regressors: list[str], targets: int, split: str) -> dict:
    """Per regressor: per pure-noise target, fold mean of the logistic PLCC minus fold mean of the plain PLCC."""
    data = load_cache(make_cache(tmp_path, i2i_prompts=16, t2i_prompts=16, dim=16, seed=4))
    rng = np.random.default_rng(0)
    names = [f"noise{t}" for t in range(targets)]
    data.samples.targets.clear()
    data.samples.targets.update({name: rng.normal(size=len(data.samples)) for name in names})
    folds = cross_validate(data, ["nr"], names, regressors, split=split, folds=5, jobs=1).folds
    out = {}
    for name in regressors:
        diffs = []
        for target in names:
            rows = [r for r in folds if r["regressor"] == name and r["target"] == target]
            diffs.append(np.mean([counted(r["plcc_logistic"], r["failed"]) - counted(r["plcc"], r["failed"])
                                  for r in rows]))
        out[name] = np.array(diffs)
    return out


@pytest.mark.slow  # over 0.7 s: run by CI and make test-all
def test_on_pure_noise_the_logistic_plcc_stays_within_001_of_the_plain_plcc(tmp_path):
    """256 samples, 40 independent noise targets (data sets), random 5-fold (siblings on both sides, so the floors
    predict many distinct values). A mapping fitted on the pooled test predictions against the test labels lifted
    the floors' PLCC by about 0.07 on average; fitted on each fold's training data it stays within 0.01."""
    diffs = _noise_differences(tmp_path, ["ridge", "sibling-mean", "prompt-mean"], 40, "kfold")
    for name, d in diffs.items():
        assert abs(d.mean()) < 0.01, (name, d.mean())
        assert np.mean(d > 1e-9) < 0.75, name  # not lifted in most data sets either
