"""Paired mode comparisons: the corrected resampled t-test over the per-fold differences (near 5% false positives
at any number of repeats), distinct test samples counted once, and every FR comparison made against an NR fitted on
the same rows of the same folds (`nr-prompted`)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

import cli
from regressors.cache_data import load_cache
from regressors.cv import cross_validate
from regressors.inference import CORRECTED_T, corrected_resampled_t
from regressors.modes import MODES, comparison_reference, default_modes, reference_modes, with_matched_references
from regressors.summary_text import format_comparisons
from regressors.summaries import paired_comparisons
from tests.fakedata import make_cache
from tests.paired_simulation import out_of_fold, wilcoxon_p


@pytest.fixture(scope="module")
def noise_run(tmp_path_factory):
    """The default modes and their extras on one cache, 3 folds x 2 repeats."""
    data = load_cache(make_cache(tmp_path_factory.mktemp("cache")))
    return data, cross_validate(data, ["nr", "fr", "fr-diff", "pr", "pr-diff"], ["MOS_q"], ["ridge"], folds=3,
                                repeats=2)


def test_fr_is_compared_with_an_nr_fitted_on_exactly_its_training_rows(noise_run):
    data, result = noise_run
    assert result.config["modes"] == ["nr", "nr-prompted", "fr", "fr-diff", "pr", "pr-diff"]
    n_train = {(r["mode"], r["repeat"], r["fold"]): r["n_train"] for r in result.folds}
    prompted = data.samples.prompt_image >= 0
    for repeat, fold in {(r, f) for _, r, f in n_train}:
        assert n_train[("fr", repeat, fold)] == n_train[("nr-prompted", repeat, fold)] \
            == n_train[("fr-diff", repeat, fold)] < n_train[("nr", repeat, fold)] == n_train[("pr", repeat, fold)]
    tested = {(p.mode, p.repeat, p.fold): p.rows.tolist() for p in result.predictions}
    for (mode, repeat, fold), rows in tested.items():
        if mode == "nr-prompted":
            assert rows == tested[("fr", repeat, fold)] and prompted[rows].all()
    pairs = {c["mode"]: c["reference"] for c in result.comparisons}
    assert pairs == {"fr": "nr-prompted", "fr-diff": "nr-prompted", "pr": "nr", "pr-diff": "nr"}
    assert all(c["matched_training"] for c in result.comparisons)
    assert all(c["isolates"] == MODES[c["mode"]].isolates for c in result.comparisons)


def test_comparisons_report_the_corrected_t_over_the_folds_and_distinct_samples(noise_run):
    data, result = noise_run
    prompted = int((data.samples.prompt_image >= 0).sum())
    for c in result.comparisons:
        assert "wilcoxon_p" not in c and "n_shared_test" not in c
        assert c["test"] == CORRECTED_T and (c["n_folds"], c["n_repeats"], c["df"]) == (6, 2, 5)
        assert c["n_test_samples"] == (prompted if MODES[c["mode"]].needs_prompt_image else len(data.samples))
        by_fold = {}
        for p in result.predictions:
            if p.mode in (c["mode"], c["reference"]):
                by_fold.setdefault((p.repeat, p.fold), {})[p.mode] = stats.spearmanr(p.y_true, p.y_pred).statistic
        diff = [sides[c["mode"]] - sides[c["reference"]] for sides in by_fold.values()]
        repeats = [repeat for repeat, _ in by_fold]
        train = [r["n_train"] for r in result.folds if r["mode"] == c["mode"]]
        test = [r["n_test"] for r in result.folds if r["mode"] == c["mode"]]
        assert c["diff_mean"] == pytest.approx(np.mean(diff), abs=1e-12)
        assert c["p"] == pytest.approx(corrected_resampled_t(diff, np.mean(train), np.mean(test), repeats),
                                      rel=1e-9)
        assert c["diff_ci_low"] < c["diff_mean"] < c["diff_ci_high"]
    table = format_comparisons(result.comparisons)
    assert "p (corrected t)" in table and "distinct test samples" in table and "| fr vs nr-prompted | yes |" in table


def test_the_interval_holds_zero_exactly_when_p_is_above_5_percent():
    for seed in range(12):
        predictions, folds = out_of_fold(seed, 2, groups=12)
        (c,) = paired_comparisons(predictions, ["nr", "pr"], folds)
        assert (c["diff_ci_low"] < 0 < c["diff_ci_high"]) == (c["p"] > 0.05)


def test_modes_without_a_fitted_reference_say_their_training_rows_differ(tmp_path):
    data = load_cache(make_cache(tmp_path))
    result = cross_validate(data, ["fr", "pr"], ["MOS_q"], ["ridge"], folds=3)
    assert result.config["modes"] == ["fr", "pr"]  # nothing is compared with NR: no reference added
    (c,) = result.comparisons
    assert (c["mode"], c["reference"], c["matched_training"]) == ("pr", "fr", False)
    assert "different samples" in c["isolates"]
    assert c["n_train_mean"] == np.mean([r["n_train"] for r in result.folds if r["mode"] == "fr"])  # the smaller
    asked = cross_validate(data, ["nr-prompted", "fr"], ["MOS_q"], ["ridge"], folds=3)  # asked for by name
    assert [(c["mode"], c["reference"], c["matched_training"]) for c in asked.comparisons] == [
        ("fr", "nr-prompted", True)]


def test_the_reference_mode_is_added_with_nr_and_never_a_default():
    assert with_matched_references(["nr", "fr", "pr"]) == ["nr", "nr-prompted", "fr", "pr"]
    assert with_matched_references(["pr", "nr", "fr-diff"]) == ["pr", "nr", "nr-prompted", "fr-diff"]
    assert with_matched_references(["nr", "pr"]) == ["nr", "pr"]
    assert with_matched_references(["fr", "fr-diff"]) == ["fr", "fr-diff"]
    assert reference_modes() == ["nr-prompted", "nr"]
    assert "nr-prompted" not in default_modes(True, True, extras=True)
    assert default_modes(True, True) == ["nr", "fr", "pr"]
    assert comparison_reference("fr-diff", ["fr", "fr-diff"]) == "fr"
    assert comparison_reference("nr-prompted", ["nr", "nr-prompted", "fr"]) is None
    spec = MODES["nr-prompted"]
    assert spec.needs_prompt_image and not spec.uses_prompt_image and not spec.paper


def test_fit_with_mode_nr_fr_as_typed_compares_fr_with_the_matched_nr(tmp_path, monkeypatch):
    make_cache(tmp_path, i2i_prompts=10)
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(cli.main, ["fit", "--cache", "c.h5", "--mode", "nr,fr", "--regressor", "ridge",
                                        "--target", "MOS_q", "--quiet", "--no-figures", "--out", "o"])
    assert out.exit_code == 0, out.output
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["config"]["modes"] == ["nr", "nr-prompted", "fr"]
    assert [(c["mode"], c["reference"]) for c in results["comparisons"] if c["regressor"] == "ridge"] == [
        ("fr", "nr-prompted")]
    assert {c["regressor"] for c in results["comparisons"]} == {"ridge"}  # a floor's sides: the same predictions
    assert "| ridge | MOS_q | fr vs nr-prompted | yes |" in (tmp_path / "o" / "report.md").read_text()


def test_the_simulations_wilcoxon_is_scipys_with_last_bit_ties():
    d = np.array([0.25, -0.125, 0.25, 0.5, 0.375, -0.0625, 0.3125, 0.25, 0.4375, 0.15625])
    noisy = d + np.array([0, 0, 5.6e-17, 0, 0, 0, 0, -2.8e-17, 0, 0])
    assert wilcoxon_p(noisy) == wilcoxon_p(d) == stats.wilcoxon(d).pvalue
    assert np.isnan(wilcoxon_p(np.zeros(4))) and np.isnan(wilcoxon_p([0.3]))


@pytest.mark.slow
def test_two_equally_good_predictors_over_10_repeats_differ_at_5_percent_in_few_data_sets():
    """paired_comparisons on out-of-fold predictions of two ridge regressions on equally informative features,
    grouped 5-fold x 10 repeats, 200 data sets: the corrected t rejects in at most 8% (binomial SD at 5%: 1.5
    points); the Wilcoxon test over the same 50 fold differences in most."""
    rejected = wilcoxon = 0
    for seed in range(200):
        predictions, folds = out_of_fold(seed, 10)
        (c,) = paired_comparisons(predictions, ["nr", "pr"], folds)
        assert (c["n_folds"], c["n_repeats"], c["n_test_samples"]) == (50, 10, 160)
        rejected += c["p"] < 0.05
        by_fold = {}
        for p in predictions:
            by_fold.setdefault((p.repeat, p.fold), []).append(stats.spearmanr(p.y_true, p.y_pred).statistic)
        wilcoxon += wilcoxon_p([a - b for a, b in by_fold.values()]) < 0.05
    assert rejected <= 16 and wilcoxon >= 60
