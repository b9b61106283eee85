"""Nested selection (`fit --select`, `bench --select`): the configuration is chosen inside each outer training
fold, never on its test labels; the counts add up; a planted signal wins; floors never compete; sample sets stay
apart; the outputs carry it; the same numbers whatever --jobs."""

import copy
import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from featcache.errors import FeatcacheError
from regressors.cache_data import load_cache
from regressors.cv import cross_validate
from regressors.fit import bench, fit
from regressors.selection import _outer_folds, choose, nested_selection
from tests.fakedata import make_cache


def _prompt_signal(tmp_path, i2i_prompts=16, t2i_prompts=4, seed=1):
    """A cache whose generated images carry no signal: MOS_q of an I2I sample is its image prompt's level (read off
    the prompt's feature 0) plus noise, of a T2I sample noise around the middle. Only modes that read the image
    prompt (pr-diff, not nr) can predict it."""
    path = make_cache(tmp_path, i2i_prompts=i2i_prompts, t2i_prompts=t2i_prompts)
    data = load_cache(str(path))
    s = data.samples
    rng = np.random.default_rng(seed)
    data.emb = rng.normal(size=data.emb.shape).astype(data.emb.dtype)
    levels = {int(p): rng.uniform(1, 5) for p in np.unique(s.prompt_image[s.prompt_image >= 0])}
    for p, level in levels.items():
        data.emb[p, 0] = level
    has = s.prompt_image >= 0
    q = np.where(has, [levels.get(int(p), 0.0) for p in s.prompt_image], 3.0) + rng.normal(0, 0.15, len(s))
    s.targets = {"MOS_q": q}
    return data


def _run(data, modes, regressors, **cv):
    results = cross_validate(data, modes, ["MOS_q"], regressors, jobs=1, **cv)
    return results, nested_selection({data.backbone_id: data}, results, jobs=1)


def test_ties_go_to_the_earlier_candidate():
    assert choose([0.5, 0.5 + 1e-15, 0.4]) == 0
    assert choose([0.1, 0.3, 0.3]) == 1
    assert choose([0.0, -0.2, 0.7]) == 2


def test_the_choice_in_a_fold_never_reads_that_folds_test_labels(tmp_path):
    """Scrambling the labels of outer fold 1's test samples leaves fold 1's inner scores and choice exactly as
    they were; the other folds, which train on those samples, see the change (so the test can fail)."""
    data = _prompt_signal(tmp_path)
    results, before = _run(data, ["nr", "pr-diff"], ["ridge"], folds=3)
    outer = _outer_folds(data, results.config)
    scrambled = copy.deepcopy(data)
    test = outer[1].test
    scrambled.samples.targets["MOS_q"][test] = np.random.default_rng(5).uniform(1, 5, len(test))
    after = nested_selection({data.backbone_id: scrambled}, results, jobs=1)
    assert after[0]["folds"][1] == before[0]["folds"][1]
    assert any(a["inner_srcc"] != b["inner_srcc"] for a, b in zip(after[0]["folds"], before[0]["folds"]))


def test_a_planted_signal_wins_and_the_counts_add_up(tmp_path):
    data = _prompt_signal(tmp_path)
    results, selection = _run(data, ["nr", "pr-diff"], ["ridge"], folds=3, repeats=2)
    [entry] = selection
    assert entry["sample_set"] == "all" and entry["n_folds"] == 6 == len(entry["folds"])
    counts = {(c["mode"], c["regressor"]): c["count"] for c in entry["counts"]}
    assert sum(counts.values()) == 6
    assert counts[("pr-diff", "ridge")] >= 5, counts
    # the outer score is the chosen cells' folds: pr-diff's when it was chosen everywhere
    cell = next(r for r in results.summary if r["mode"] == "pr-diff" and r["regressor"] == "ridge")
    if counts[("pr-diff", "ridge")] == 6:
        assert entry["srcc_mean"] == pytest.approx(cell["srcc_mean"])
    assert entry["srcc_ci_low"] <= entry["srcc_pooled"] <= entry["srcc_ci_high"]
    assert entry["srcc_mean"] > 0.5


@pytest.mark.slow
def test_floors_never_compete_and_sample_sets_stay_apart(tmp_path):
    path = make_cache(tmp_path)
    data = load_cache(str(path))
    results = cross_validate(data, ["nr", "fr", "pr"], ["MOS_q"], ["ridge", "prompt-mean", "generator-mean"],
                             folds=3, jobs=1)
    selection = nested_selection({data.backbone_id: data}, results, jobs=1)
    by_set = {e["sample_set"]: e for e in selection}
    assert set(by_set) == {"all", "prompted"}
    assert {c["mode"] for c in by_set["all"]["candidates"]} == {"nr", "pr"}
    assert {c["mode"] for c in by_set["prompted"]["candidates"]} == {"fr", "nr-prompted"}
    for entry in selection:
        assert {c["regressor"] for c in entry["candidates"]} == {"ridge"}
        assert all(f["chosen"]["regressor"] == "ridge" for f in entry["folds"])
    assert by_set["prompted"]["inner_fits"] > 0  # fr and nr-prompted (NR on the same samples) compete
    # one candidate (fr ridge, no nr to bring nr-prompted): chosen everywhere without inner fits, and the procedure
    # scores as its cell
    results = cross_validate(data, ["pr", "fr"], ["MOS_q"], ["ridge", "prompt-mean"], folds=3, jobs=1)
    prompted = next(e for e in nested_selection({data.backbone_id: data}, results, jobs=1)
                    if e["sample_set"] == "prompted")
    assert prompted["inner_fits"] == 0 and prompted["folds"][0]["inner_srcc"] is None
    cell = next(r for r in results.summary if r["mode"] == "fr" and r["regressor"] == "ridge")
    assert prompted["srcc_mean"] == pytest.approx(cell["srcc_mean"]) and prompted["n_test"] == cell["n_test"]


def test_a_run_of_floors_alone_or_one_inner_fold_is_refused_before_fitting(tmp_path):
    path = make_cache(tmp_path)
    with pytest.raises(FeatcacheError, match="--select chooses among feature-reading regressors"):
        fit(str(path), regressors=["prompt-mean"], floors=True, select=True, labels="cache")
    with pytest.raises(FeatcacheError, match="--inner-folds 1"):
        fit(str(path), regressors=["ridge"], select=True, inner_folds=1, labels="cache")


def test_a_sample_set_too_small_for_the_inner_folds_is_left_out_with_a_warning(tmp_path):
    """6 image-prompt groups in 3 outer folds leave 4 in training: too few for 5 inner folds."""
    path = make_cache(tmp_path)
    data = load_cache(str(path))
    results = cross_validate(data, ["nr", "fr"], ["MOS_q"], ["ridge"], folds=3, jobs=1)
    with pytest.warns(UserWarning, match="prompted sample set .* left out of the selection"):
        selection = nested_selection({data.backbone_id: data}, results, inner_folds=5, jobs=1)
    assert [e["sample_set"] for e in selection] == ["all"]


@pytest.mark.slow  # over 0.7 s: run by CI and make test-all
def test_fit_select_on_the_command_line_writes_selection(tmp_path, monkeypatch):
    make_cache(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.main, ["fit", "--cache", "c.h5", "--quiet", "--no-figures", "--select",
                                           "--regressor", "ridge,svr", "--mode", "nr,pr", "--target", "MOS_q",
                                           "--folds", "3", "--out", "run"])
    assert result.exit_code == 0, result.output
    assert "nested selection, MOS_q (every sample): SRCC 0." in result.output
    payload = json.loads((tmp_path / "run" / "results.json").read_text())
    [entry] = payload["selection"]
    assert entry["inner_folds"] == 3 and entry["inner_grouping"] == "prompt groups"
    assert sum(c["count"] for c in entry["counts"]) == entry["n_folds"] == 3
    assert {"srcc_mean", "srcc_ci_low", "srcc_ci_high", "criterion", "folds", "n_failed"} <= set(entry)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Nested selection" in report and "| MOS_q | every sample" in report
    plain = CliRunner().invoke(cli.main, ["fit", "--cache", "c.h5", "--quiet", "--no-figures", "--regressor",
                                          "ridge", "--mode", "nr", "--folds", "3", "--out", "plain"])
    assert plain.exit_code == 0 and "selection" not in json.loads((tmp_path / "plain" / "results.json").read_text())


@pytest.mark.slow  # two worker processes start: seconds
def test_the_same_selection_whatever_jobs(tmp_path):
    data = _prompt_signal(tmp_path)
    results = cross_validate(data, ["nr", "pr", "pr-diff"], ["MOS_q"], ["ridge", "svr"], folds=3, jobs=1)
    one = nested_selection({data.backbone_id: data}, results, jobs=1)
    two = nested_selection({data.backbone_id: data}, results, jobs=2)
    for entry in one + two:
        assert entry.pop("inner_seconds") >= 0  # time taken: the one thing allowed to differ
    assert json.dumps(one) == json.dumps(two)


@pytest.mark.slow  # two backbones
def test_bench_select_chooses_among_backbones(tmp_path):
    """Backbone b carries no signal: the selection picks a, fitted on the same folds."""
    path = make_cache(tmp_path, backbones=("toy.random/paper/4", "toy.random/multilevel/4"))
    with h5py.File(path, "r+") as f:
        emb = f["features/toy.random/multilevel/4/emb"]
        emb[...] = np.random.default_rng(3).normal(size=emb.shape)
    results = bench(str(path), modes=["nr"], targets=["MOS_q"], regressors=["ridge"], folds=4, repeats=2,
                    select=True, labels="cache", jobs=1)
    [entry] = results.selection
    assert {c["backbone"] for c in entry["candidates"]} == {"toy.random/paper/4", "toy.random/multilevel/4"}
    counts = {c["backbone"]: c["count"] for c in entry["counts"]}
    assert counts["toy.random/paper/4"] >= 7 and sum(counts.values()) == 8
    assert "selection" in results.to_dict()


def test_inner_fits_choose_hyper_parameters_on_the_groups_the_run_uses(tmp_path, monkeypatch):
    """Under --split cross without --hold-out-prompts the run's own fits hold out prompt x generator (sibling)
    groups when they choose hyper-parameters; the inner fits of the selection hold out the same groups, never
    single samples (which would split siblings across the inner hyper-parameter folds)."""
    import regressors.selection as selection
    from regressors.design import label_codes

    data = load_cache(str(make_cache(tmp_path, i2i_prompts=8, t2i_prompts=12)))
    results = cross_validate(data, ["nr", "pr"], ["MOS_q"], ["ridge"], split="cross", train_on="t2i",
                             test_on="i2i", jobs=1)
    siblings = label_codes(data, np.arange(len(data.samples)))[:, 1]
    seen = []
    real = selection.fitted_tasks

    def spy(tasks, *args, **kwargs):
        seen.extend(m for task in tasks for m in task.members)
        return real(tasks, *args, **kwargs)

    monkeypatch.setattr(selection, "fitted_tasks", spy)
    nested_selection({data.backbone_id: data}, results, jobs=1)
    assert seen
    rows = selection.selection_rows(data, "all")  # nr and pr use every sample: positions index these rows
    for member in seen:
        assert member.groups is not None
        assert np.array_equal(member.groups, siblings[rows[member.train]])


def test_a_repeat_whose_chosen_folds_all_failed_counts_0_in_the_interval_too(tmp_path):
    """srcc_pooled counts such a repeat as 0 (as every summary row does); its interval must surround that value,
    not the pooled SRCC of the failed fits' predictions."""
    data = _prompt_signal(tmp_path)
    results = cross_validate(data, ["nr", "pr-diff"], ["MOS_q"], ["ridge"], folds=3, repeats=2, jobs=1)
    for row in results.folds:
        if row["repeat"] == 1:
            row["failed"] = True
    [entry] = nested_selection({data.backbone_id: data}, results, jobs=1)
    assert entry["n_failed"] == 3
    assert entry["srcc_ci_low"] <= entry["srcc_pooled"] <= entry["srcc_ci_high"], entry
