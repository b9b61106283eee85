"""Summary rules: a single split's bootstrap interval is drawn over every repeat, as its point estimate averages
them, and a fold whose RMSE is not finite is counted, never left out of the RMSE mean."""

import json
import math

import numpy as np
import pytest

from regressors.cache_data import load_cache
from regressors.cv import OutOfFold, cross_validate
from regressors.metrics import spearman
from regressors.summaries import summarize
from tests.fakedata import make_cache


def _fold(repeat, y, pred):
    rmse = float(np.sqrt(np.mean((y - pred) ** 2)))
    return {"regressor": "r", "mode": "nr", "target": "t", "repeat": repeat, "fold": 0, "srcc": spearman(y, pred),
            "plcc": 0.0, "plcc_logistic": 0.0, "krcc": 0.0, "rmse": rmse, "failed": False, "n_train": 30,
            "n_test": len(y), "seconds": 0.0}


def test_a_single_splits_interval_is_drawn_over_every_repeat():
    """Two repeats of one test set: the first ranks the samples almost right, the second backwards. The point
    estimate averages them (about 0); the interval (intervals.add_intervals, for every split) resamples prompt groups
    with their predictions of both repeats, so it contains it; repeat 0's predictions alone sit near 0.95."""
    from types import SimpleNamespace

    from regressors.inference import group_bootstrap_interval, pooled_predictions
    from regressors.intervals import add_intervals

    rng = np.random.default_rng(0)
    y = rng.normal(size=60)
    rows = np.arange(60)
    good, backwards = y + rng.normal(0, 0.2, 60), -y + rng.normal(0, 0.2, 60)
    folds = [_fold(0, y, good), _fold(1, y, backwards)]
    predictions = [OutOfFold("r", "nr", "t", 0, 0, rows, y, good), OutOfFold("r", "nr", "t", 1, 0, rows, y, backwards)]
    groups = rows // 3
    summary = summarize(folds, predictions, {"group": groups}, single=True, seed=5)
    add_intervals(SimpleNamespace(summary=summary, predictions=predictions, folds=folds, samples={"group": groups},
                                  config={}), seed=5)
    (row,) = summary
    assert abs(row["srcc_mean"]) < 0.1
    assert row["srcc_ci_low"] <= row["srcc_mean"] <= row["srcc_ci_high"] < 0.5
    first = group_bootstrap_interval(pooled_predictions([rows], [y], [good], groups), "srcc", seed=5)
    assert first[0] > 0.9


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_a_fold_whose_rmse_is_not_finite_is_counted_not_dropped(tmp_path, bad):
    """A diverged fit (predictions that overflow, or NaN) has no finite RMSE: the configuration's RMSE mean is then
    not finite (null in results.json, n/a in the table) and `n_rmse_nonfinite` counts the fold; the mean of the
    other folds alone would show a smaller RMSE than the configuration has."""
    from regressors.report import write_results
    from regressors.results_files import load_results
    from regressors.tables import render_table

    data = load_cache(make_cache(tmp_path))
    result = cross_validate(data, ["nr"], ["MOS_q"], ["ridge"], folds=4)
    assert result.summary[0]["n_rmse_nonfinite"] == 0 and math.isfinite(result.summary[0]["rmse_mean"])
    result.folds[1]["rmse"] = bad
    (row,) = result.summary = summarize(result.folds, result.predictions, result.samples)
    assert row["n_rmse_nonfinite"] == 1 and not math.isfinite(row["rmse_mean"])
    assert not math.isfinite(row["rmse_std"]) and math.isfinite(row["srcc_mean"])
    paths = write_results(result, tmp_path / "out", figures=False)

    def refuse(constant):
        raise ValueError(f"results.json holds {constant}")

    payload = json.loads(paths["json"].read_text(), parse_constant=refuse)  # valid JSON: no NaN or Infinity
    (written,) = payload["summary"]
    assert written["rmse_mean"] is None and written["n_rmse_nonfinite"] == 1
    table = render_table(load_results([paths["json"]]), ["srcc", "rmse"])
    assert "| NR | toy.random/paper/4 | ridge | " in table and table.split("\n")[2].endswith(" | n/a |")
