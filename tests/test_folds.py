"""Folds: every mode on the same folds restricted to its samples, group-held-out inner selection, and the
refusals (with a way out that works) of folds a mode or a selection cannot fill."""

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from featcache.errors import FeatcacheError
from regressors.cache_data import load_cache
from regressors.cv import cross_validate
from regressors.fit import bench, fit
from tests.fakedata import make_cache


def test_modes_use_the_same_folds_restricted_to_their_samples(tmp_path):
    data = load_cache(make_cache(tmp_path))
    result = cross_validate(data, ["nr", "fr"], ["MOS_q"], ["ridge"], folds=3, repeats=2)
    tests = {(p.mode, p.repeat, p.fold): set(p.rows.tolist()) for p in result.predictions}
    prompted = set(np.flatnonzero(data.samples.prompt_image >= 0).tolist())
    for (mode, repeat, fold), rows in tests.items():
        if mode in ("fr", "nr-prompted"):
            assert rows == tests[("nr", repeat, fold)] & prompted
    (comparison,) = result.comparisons
    assert (comparison["mode"], comparison["reference"], comparison["n_folds"]) == ("fr", "nr-prompted", 6)
    assert comparison["n_test_samples"] == len(prompted) and comparison["n_repeats"] == 2
    assert comparison["matched_training"] and 0.0 <= comparison["p"] <= 1.0


def test_too_few_groups_or_samples_advise_fewer_folds_only_where_fewer_can_work(tmp_path):
    data = load_cache(make_cache(tmp_path, i2i_prompts=1, per=8))
    with pytest.raises(FeatcacheError) as one_group:
        cross_validate(data, ["nr"], ["MOS_q"], ["ridge"], subset="i2i", folds=2)
    assert str(one_group.value).endswith("16 samples in 1 prompt group: too few for 2 prompt-disjoint folds; "
                                         "widen --subset, or use --split kfold (which does not hold prompts out)")
    with pytest.raises(FeatcacheError, match=r"too few for 12 prompt-disjoint folds; lower --folds or widen"):
        cross_validate(data, ["nr"], ["MOS_q"], ["ridge"], folds=12, subset="t2i", split="group")
    (tmp_path / "tiny").mkdir()
    tiny = load_cache(make_cache(tmp_path / "tiny", i2i_prompts=1, t2i_prompts=1, per=1))
    with pytest.raises(FeatcacheError) as few:
        cross_validate(tiny, ["nr"], ["MOS_q"], ["ridge"], split="kfold", folds=2)
    assert str(few.value).endswith("too few for 2 folds of at least 4 test samples; widen --subset"), few.value


def test_inner_selection_holds_out_prompts_when_the_cross_split_does(tmp_path):
    """--split cross --hold-out-prompts keeps every prompt on one side, so hyper-parameters must be chosen on
    held-out prompt groups too (plain leave-one-out would choose on siblings of the training samples). Without it,
    the test generator's samples share prompts but are no siblings of training samples: inner selection holds out
    prompt x generator groups, so no sibling of a validation sample is in its inner training rows."""
    from regressors.cv import plan
    from regressors.design import content_groups, label_codes

    data = load_cache(make_cache(tmp_path))
    prompts = content_groups(data)
    siblings = label_codes(data, np.arange(len(data.samples)), prompts)[:, 1]
    for hold_out, expected in ((True, prompts), (False, siblings)):
        _, tasks = plan(data, ["nr"], ["MOS_q"], ["ridge"], split="cross", train_on="t2i", test_on="i2i",
                        hold_out_prompts=hold_out)
        members = [m for task in tasks for m in task.members]
        assert members
        for m in members:  # nr over every sample: positions in the mode's rows are sample indices
            np.testing.assert_array_equal(m.groups, expected[m.train])
    t2i = members[0].train
    assert len(np.unique(siblings[t2i])) > len(np.unique(prompts[t2i]))  # a prompt's generators held out apart


def test_group_aware_selection_is_recorded_per_fold(tmp_path):
    data = load_cache(make_cache(tmp_path))
    result = cross_validate(data, ["nr"], ["MOS_q"], ["ridge", "svr"], folds=3)
    for row in result.folds:
        key = "alpha" if row["regressor"] == "ridge" else "C"
        assert key in row["chosen"]


@pytest.mark.slow  # over 0.7 s: run by CI and make test-all
def test_a_mode_with_fewer_groups_than_folds_is_refused_before_any_fitting(tmp_path, monkeypatch):
    """8 prompt groups, 4 with an image prompt, 5 folds: FR had an empty fold, reported as failed (0 in its mean,
    "4 failed folds" in the table, left out of `comparisons`). Now one line and exit 2, before any fitting."""
    make_cache(tmp_path, i2i_prompts=4, t2i_prompts=4)
    monkeypatch.chdir(tmp_path)
    fitted = []
    monkeypatch.setattr("regressors.cv.fit_members", lambda *a: fitted.append(a))
    out = CliRunner().invoke(cli.main, ["fit", "--cache", "c.h5", "--mode", "nr,fr", "--quiet", "--no-figures",
                                        "--out", "o"])
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert out.exit_code == 2 and lines == [
        "error: --mode fr: only 4 prompt groups have an image prompt, too few for 5 prompt-disjoint folds; "
        "lower --folds to 4 or leave fr out of --mode"], out.output
    assert not fitted and not (tmp_path / "o").exists()
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)  # as typed, with the default modes: FR left out with a warning, NR and PR fitted
    typed = CliRunner().invoke(cli.main, ["fit", "--cache", "c.h5", "--regressor", "ridge", "--quiet",
                                          "--no-figures", "--out", "typed"])
    assert typed.exit_code == 0, typed.output
    assert typed.output.splitlines()[0] == (
        "warning: fr left out of the default modes: only 4 prompt groups have an image prompt, too few for 5 "
        "prompt-disjoint folds; lower --folds to 4 to include it")
    results = json.loads((tmp_path / "typed" / "results.json").read_text())
    assert {row["mode"] for row in results["summary"]} == {"nr", "pr"}
    assert not any(row["failed"] for row in results["folds"])
    (tmp_path / "two").mkdir()
    make_cache(tmp_path / "two", i2i_prompts=4, t2i_prompts=4, backbones=("a.random/paper/4", "b.random/paper/4"))
    both = CliRunner().invoke(cli.main, ["bench", "--cache", str(tmp_path / "two" / "c.h5"), "--regressor", "ridge",
                                         "--quiet", "--no-figures", "--out", "b"])
    assert both.exit_code == 0, both.output
    assert sum(line.startswith("warning: fr left out") for line in both.output.splitlines()) == 1  # not per backbone
    progress = []
    with pytest.raises(FeatcacheError, match="^--mode fr: only 4 prompt groups"):  # bench too, per backbone
        bench("c.h5", modes=["nr", "fr"], targets=["MOS_q"], regressors=["ridge"],
              on_progress=lambda done, total: progress.append(done))
    assert not progress and not fitted


@pytest.mark.slow  # over 0.7 s: run by CI and make test-all
def test_the_way_out_of_the_refusal_fills_every_fold_of_every_mode(tmp_path):
    """With as many image-prompt groups as folds the group split gives each fold one (it is stratified by
    T2I/I2I): no fold fails, and the comparisons pair all of them."""
    data = load_cache(make_cache(tmp_path, i2i_prompts=4, t2i_prompts=4))
    result = cross_validate(data, ["nr", "fr", "pr"], ["MOS_q", "MOS_a"], ["ridge"], folds=4, repeats=3)
    assert all(not f["failed"] and f["n_test"] >= 4 for f in result.folds)
    assert len(result.folds) == 4 * 2 * 4 * 3  # nr, nr-prompted, fr, pr x targets x folds x repeats
    assert all(c["n_folds"] == 12 and not c["failed_folds"] and not c["folds_left_out"] for c in result.comparisons)


@pytest.mark.parametrize("options, message", [
    ({"split": "kfold", "folds": 5, "i2i": 2},  # kfold is not stratified: 3 and 4 folds leave one short too
     "--mode fr: only 16 samples have an image prompt, too few for 5 folds of at least 4 test samples; "
     "lower --folds to 2 or leave fr out of --mode"),
    ({"split": "cross", "train_on": "t2i", "test_on": "i2i", "i2i": 6},
     "--mode fr: the cross split leaves 0 training and 48 test samples with an image prompt; "
     "too few (at least 3 and 4); leave fr out of --mode"),
    ({"split": "group", "folds": 3, "i2i": 1},
     "--mode fr: only 1 prompt group has an image prompt, too few for 3 prompt-disjoint folds; "
     "leave fr out of --mode"),
])
def test_every_split_refuses_a_mode_that_cannot_fill_its_folds(tmp_path, options, message):
    options = dict(options)
    data = load_cache(make_cache(tmp_path, i2i_prompts=options.pop("i2i"), t2i_prompts=10))
    with pytest.raises(FeatcacheError) as refused:
        cross_validate(data, ["nr", "fr"], ["MOS_q"], ["ridge"], **options)
    assert str(refused.value) == message
    advised = re.search(r"lower --folds to (\d+)", message)
    if advised:  # the advice is followed without a refusal in turn
        result = cross_validate(data, ["nr", "fr"], ["MOS_q"], ["ridge"], **dict(options, folds=int(advised[1])))
        assert not any(f["failed"] for f in result.folds)


@pytest.mark.slow  # over 0.7 s: run by CI and make test-all
def test_a_subset_with_fewer_prompt_groups_than_folds_is_warned_about_and_fr_refused(tmp_path, monkeypatch):
    """The README said the group split puts T2I and I2I in every fold; with 4 T2I prompt groups for 5 folds one
    fold tested I2I alone, unsaid. Now a warning names the subset and the folds (once, also in a bench); with a
    group per fold for each subset every fold tests both, silently. FR, which reads I2I alone, is refused (or
    left out of the default modes) when a fold would test no I2I sample."""
    import warnings

    from featcache.errors import FeatcacheWarning

    def predicted_subsets(outcome):
        subsets = outcome.data.samples.subset
        out: dict[int, set] = {}
        for p in outcome.results.predictions:
            if (p.regressor, p.mode, p.target) == ("ridge", "nr", "MOS_q"):
                out.setdefault(p.fold, set()).update(subsets[p.rows].tolist())
        return out

    short_t2i = make_cache(tmp_path, i2i_prompts=6, t2i_prompts=3)  # 3 T2I groups for 4 folds
    with pytest.warns(FeatcacheWarning) as caught:
        outcome = fit(str(short_t2i), modes=["nr"], targets=["MOS_q"], regressors=["ridge"], folds=4)
    notes = [str(w.message) for w in caught if str(w.message).startswith("--split group")]
    lacking = [fold for fold, held in predicted_subsets(outcome).items() if held == {"i2i"}]
    assert len(lacking) == 1 and notes == [
        f"--split group: T2I has only 3 prompt groups for 4 folds, so fold {lacking[0] + 1} tests no T2I sample "
        "(scores there come from I2I alone); lower --folds to 3 for every fold to test both"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FeatcacheWarning)  # a group per fold for each subset: no warning
        outcome = fit(str(short_t2i), modes=["nr"], targets=["MOS_q"], regressors=["ridge"], folds=3)
    assert all(held == {"i2i", "t2i"} for held in predicted_subsets(outcome).values())

    (tmp_path / "i").mkdir()
    short_i2i = make_cache(tmp_path / "i", i2i_prompts=3, t2i_prompts=6, backbones=("a.random/paper/4",
                                                                                    "b.random/paper/4"))
    with pytest.raises(FeatcacheError, match="^--mode fr: only 3 prompt groups have an image prompt, too few for "
                                             "4 prompt-disjoint folds; lower --folds to 3"):
        fit(str(short_i2i), backbone="a.random/paper/4", modes=["nr", "fr"], regressors=["ridge"], folds=4)
    monkeypatch.chdir(tmp_path / "i")
    out = CliRunner().invoke(cli.main, ["bench", "--cache", "c.h5", "--regressor", "ridge", "--folds", "4",
                                        "--quiet", "--no-figures", "--out", "b"])
    assert out.exit_code == 0, out.output
    warned = [line for line in out.output.splitlines() if line.startswith("warning:")]
    assert len(warned) == 2 and warned[0].startswith("warning: fr left out of the default modes: only 3 prompt "
                                                     "groups have an image prompt")
    assert warned[1].startswith("warning: --split group: I2I has only 3 prompt groups for 4 folds, so fold ")
    modes = {r["mode"] for r in json.loads((tmp_path / "i" / "b" / "results.json").read_text())["summary"]}
    assert modes == {"nr", "pr"}


def _request(groups, subsets, folds=3, seed=0):
    from regressors.splits import SplitRequest

    groups = np.asarray(groups)
    return SplitRequest(np.arange(len(groups)), groups, np.asarray(subsets), np.array(["SD"] * len(groups)), folds,
                        seed)


PINNED_GROUPS = np.repeat(np.arange(8), [3, 2, 4, 3, 2, 3, 3, 4])
PINNED_SUBSETS = np.where(PINNED_GROUPS % 3 == 0, "i2i", "t2i")


def test_the_folds_are_scikit_learns_splitters_pinned():
    """scikit-learn's StratifiedGroupKFold / KFold / GroupKFold (shuffle=True, seeded) give these test folds; a
    scikit-learn release that moves them fails here (folds.csv keeps every earlier run reproducible)."""
    from regressors.splits import make_folds
    from regressors.standardized import StandardizedSVR

    request = _request(PINNED_GROUPS, PINNED_SUBSETS)
    assert [f.test.tolist() for f in make_folds(request, "group")] == [
        [5, 6, 7, 8, 9, 10, 11, 12, 13], [0, 1, 2, 20, 21, 22, 23], [3, 4, 14, 15, 16, 17, 18, 19]]
    assert [f.test.tolist() for f in make_folds(request, "kfold")] == [
        [1, 10, 11, 13, 14, 20, 22, 23], [2, 4, 5, 6, 8, 16, 17, 18], [0, 3, 7, 9, 12, 15, 19, 21]]
    inner = StandardizedSVR()._inner_splits(len(PINNED_GROUPS), PINNED_GROUPS)
    assert [valid.tolist() for _, valid in inner] == [
        [3, 4, 5, 6, 7, 8, 17, 18, 19], [0, 1, 2, 9, 10, 11, 20, 21, 22, 23], [12, 13, 14, 15, 16]]
    assert [valid.tolist() for _, valid in StandardizedSVR()._inner_splits(10, None)] == [
        [2, 4, 8, 9], [1, 6, 7], [0, 3, 5]]


def test_folds_partition_the_selection_and_groups_never_straddle_them():
    from regressors.splits import make_folds

    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 9, 30)
    groups = np.repeat(rng.permutation(30) * 3 + 5, sizes)  # codes neither dense nor sorted
    subsets = np.where(np.repeat(rng.random(30) < 0.4, sizes), "i2i", "t2i")
    order = rng.permutation(len(groups))
    request = _request(groups[order], subsets[order], folds=4, seed=2)
    folds = make_folds(request, "group", repeats=2)
    for repeat in (0, 1):
        tests = [f.test for f in folds if f.repeat == repeat]
        assert sorted(np.concatenate(tests).tolist()) == list(range(len(groups)))
        for f in folds:
            assert not set(request.groups[f.train]) & set(request.groups[f.test])
            assert np.array_equal(np.sort(np.concatenate([f.train, f.test])), np.arange(len(groups)))
    assert any(not np.array_equal(a.test, b.test) for a, b in zip(folds[:4], folds[4:]))  # repeats reshuffle


def test_each_subset_reaches_every_fold_when_it_has_a_group_per_fold():
    """What the README promises of the group split: with prompt groups each T2I or I2I (as the tool's content
    groups are), a subset with at least as many groups as folds is in every test fold, whatever the group sizes
    and the seed; with fewer groups, as many folds as it has groups hold it."""
    from regressors.splits import make_folds

    rng = np.random.default_rng(11)
    checked = 0
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
        try:
            tests = [f.test for f in make_folds(_request(groups, strata, folds, int(rng.integers(0, 1000))),
                                                "group")]
        except FeatcacheError:  # too few samples or groups for these folds: refused, as it says elsewhere
            continue
        checked += 1
        for name, n_groups in counts.items():
            holding = sum(bool(np.any(strata[test] == name)) for test in tests)
            assert holding == min(folds, n_groups), (case, name, n_groups, folds)
    assert checked > 50


def test_svr_takes_a_random_state_object_and_refuses_missing_groups():
    """A RandomState as random_state is drawn from as scikit-learn does (the same seed: the same folds)."""
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
