"""Issue-8 protocol: preprocessing that cannot explode, failed folds counted, shared folds across modes, held-out
group selection, out-of-fold predictions and the summaries built from them."""

import csv
import json
import re
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

import cli
from featcache.errors import FeatcacheError
from regressors import registry
from regressors.cache_data import load_cache
from regressors.cv import cross_validate
from regressors.fit import bench, fit, modes_for
from regressors.metrics import plcc_after_logistic, prediction_failed, quality_metrics
from regressors.preprocess import FoldScaler
from regressors.report import format_table, highest_on_test, run_folder, write_results
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


@pytest.mark.parametrize("failed, note", [({"MOS_q": 1, "MOS_a": 1}, "ridge (1 failed fold per target)"),
                                           ({"MOS_q": 2, "MOS_a": 0}, "ridge (failed folds: MOS_q 2)"),
                                           ({"MOS_q": 1, "MOS_a": 3}, "ridge (failed folds: MOS_q 1, MOS_a 3)"),
                                           ({"MOS_q": 2}, "ridge (2 failed folds)"), ({"MOS_q": 0}, "ridge")])
def test_the_paper_table_counts_failed_folds_per_target(failed, note):
    """A row spans every target: one failed fold of each of 4 targets read "ridge (4 failed folds)", as if 4 of
    the 5 folds had failed."""
    from regressors.tables import paper_table

    rows = [{"mode": "fr", "backbone": "b", "regressor": "ridge", "target": t, "srcc_mean": 0.5, "n_failed": n,
             "_protocol": "p"} for t, n in failed.items()]
    assert paper_table(rows, ["srcc"])[1][0][2] == note


def test_comparisons_say_which_folds_failed_or_were_left_out():
    """The comparison runs over the table's folds: a failed fold counts as 0 on its side (as in the table) and is
    named; a fold that cannot be paired is named with the reason, not silently dropped (srcc_mode was then a mean
    over other folds than the table's)."""
    from regressors.cv import OutOfFold
    from regressors.report import format_comparisons
    from regressors.summaries import paired_comparisons

    rng = np.random.default_rng(0)
    rows = np.arange(40)
    y = rng.normal(size=40)
    predictions, folds = [], []
    for fold in range(3):
        test = rows[fold::3]
        for mode in ("nr", "fr"):
            if (mode, fold) == ("fr", 2):
                continue
            guess = y[test] + rng.normal(size=len(test))
            predictions.append(OutOfFold("ridge", mode, "MOS_q", 0, fold, test, y[test], guess))
            folds.append({"regressor": "ridge", "mode": mode, "target": "MOS_q", "repeat": 0, "fold": fold,
                          "failed": (mode, fold) == ("fr", 1)})
    (c,) = paired_comparisons(predictions, ["nr", "fr"], folds)
    assert c["n_folds"] == 2 and c["failed_folds"] == [{"repeat": 0, "fold": 1, "mode": "fr"}]
    assert c["folds_left_out"] == [{"repeat": 0, "fold": 2, "why": "no predictions of fr"}]
    first = predictions[1]
    assert c["srcc_mode"] == pytest.approx(stats.spearmanr(first.y_true, first.y_pred).statistic / 2)  # fold 1: 0
    assert "| 2 (1 failed, as 0; 1 left out) |" in format_comparisons([c])


def test_modes_use_the_same_folds_restricted_to_their_samples(tmp_path):
    data = load_cache(make_cache(tmp_path))
    result = cross_validate(data, ["nr", "fr"], ["MOS_q"], ["ridge"], folds=3, repeats=2)
    tests = {(p.mode, p.repeat, p.fold): set(p.rows.tolist()) for p in result.predictions}
    prompted = set(np.flatnonzero(data.samples.prompt_image >= 0).tolist())
    for (mode, repeat, fold), rows in tests.items():
        if mode == "fr":
            assert rows == tests[("nr", repeat, fold)] & prompted
    (comparison,) = result.comparisons
    assert (comparison["mode"], comparison["reference"], comparison["n_folds"]) == ("fr", "nr", 6)
    assert comparison["n_shared_test"] == 2 * len(prompted)
    assert 0.0 <= comparison["wilcoxon_p"] <= 1.0


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


def test_the_logistic_is_fitted_on_the_whole_repeat_not_on_one_fold(tmp_path):
    """generator-mean predicts two values per fold (one per generator). Any increasing map of two values is affine,
    so each fold's PLCC after a mapping fitted across the repeat is its plain PLCC, sign included: fitted on one
    fold, the logistic made a negative PLCC positive, and scored label noise at about 0.37."""
    data = load_cache(make_cache(tmp_path, i2i_prompts=8, t2i_prompts=12))
    result = cross_validate(data, ["nr"], ["MOS_q"], ["generator-mean"], folds=5)
    folds = [r for r in result.folds if not r["failed"]]
    assert len(folds) >= 4 and any(r["plcc"] < 0 for r in folds)
    for r in folds:
        assert r["plcc_logistic"] == pytest.approx(r["plcc"], abs=1e-9)
    # and a regressor whose predictions vary: the mapping reads every fold's predictions, so one fold's
    # mapping is the same function as its neighbour's
    ridge = cross_validate(data, ["nr"], ["MOS_q"], ["ridge"], folds=5)
    assert all(np.isfinite(r["plcc_logistic"]) for r in ridge.folds)


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


def test_bold_is_a_best_among_rows_scored_on_the_same_samples():
    """NR is scored on every sample, FR on those with an image prompt: one bold per column across both compared
    numbers on different test sets. Each sample set gets its own best, and the caption says so."""
    from regressors.tables import paper_table

    def row(mode, regressor, srcc):
        return {"mode": mode, "backbone": "b", "regressor": regressor, "target": "MOS_q", "srcc_mean": srcc,
                "plcc_mean": srcc, "n_failed": 0, "_protocol": "p"}

    rows = [row("nr", "ridge", 0.5), row("nr", "svr", 0.4), row("fr", "ridge", 0.3), row("fr", "svr", 0.45)]
    header, body, bold, caption = paper_table(rows, ["srcc"])
    best = {(line[0], line[2]) for line, flags in zip(body, bold) if flags[3]}
    assert best == {("NR", "ridge"), ("FR", "svr")}
    assert "scored on the same samples" in caption and "picked on the test folds" in caption
    header, body, bold, caption = paper_table(rows[:2], ["srcc"])
    assert "scored on the same samples" not in caption


def test_the_highest_test_score_is_picked_per_sample_set():
    """An FR score (samples with a prompt) beat an NR score (every sample) for "highest" although they come from
    other test samples; each sample set has its own line, with the floor of the same samples beside it."""
    def row(mode, regressor, srcc):
        return {"mode": mode, "regressor": regressor, "target": "MOS_q", "srcc_mean": srcc, "n_failed": 0}

    best = highest_on_test([row("nr", "ridge", 0.013), row("fr", "ridge", 0.026), row("nr", "prompt-mean", 0.3),
                            row("fr", "prompt-mean", 0.5)])
    picked = {(b["prompted"], b["model"]["mode"], b["floor"]["mode"]) for b in best}
    assert picked == {(False, "nr", "nr"), (True, "fr", "fr")}


def test_a_repeat_whose_every_fold_failed_pools_to_zero(tmp_path):
    """prompt-mean over one prompt's samples predicts each test fold's constant training mean: every fold fails,
    and the pooled correlation of those constants is an artefact of the fold offsets, not a score."""
    data = load_cache(make_cache(tmp_path, i2i_prompts=1, per=8))
    (row,) = cross_validate(data, ["nr"], ["MOS_q"], ["prompt-mean"], split="kfold", subset="i2i", folds=4).summary
    assert row["n_failed"] == row["n_folds"] == 4
    assert row["srcc_pooled"] == 0.0 and row["plcc_pooled"] == 0.0 and row["srcc_mean"] == 0.0


def test_inner_selection_holds_out_prompts_when_the_cross_split_does(tmp_path):
    """--split cross --hold-out-prompts keeps every prompt on one side, so hyper-parameters must be chosen on
    held-out prompt groups too (plain leave-one-out would choose on siblings of the training samples)."""
    from regressors.cv import plan

    data = load_cache(make_cache(tmp_path))
    for hold_out, grouped in ((True, True), (False, False)):
        _, tasks = plan(data, ["nr"], ["MOS_q"], ["ridge"], split="cross", train_on="t2i", test_on="i2i",
                        hold_out_prompts=hold_out)
        members = [m for task in tasks for m in task.members]
        assert members and all((m.groups is not None) == grouped for m in members)


def test_labels_that_overflow_are_a_one_line_error(tmp_path):
    path = make_cache(tmp_path)
    with h5py.File(path, "r+") as f:
        f["targets/MOS_a"][3] = 1e200
    data = load_cache(path)
    with pytest.raises(FeatcacheError, match=r"target MOS_a reaches 1e\+200 .*rescale"):
        cross_validate(data, ["nr"], ["MOS_a"], ["ridge"], folds=3)


def test_labels_that_are_not_finite_are_refused_on_load(tmp_path, monkeypatch):
    """A NaN written into the cache's labels was a traceback from the SVR (`y contains NaN`) and garbage reported as
    failed folds by ridge and the floors: now one line naming the sample and the target, for fit and bench."""
    path = make_cache(tmp_path)
    with h5py.File(path, "r+") as f:
        key = f["samples/key"][7].decode()
        values = f["targets/MOS_q"][()]
        values[7], values[9] = np.nan, np.inf
        f["targets/MOS_q"][...] = values
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    base = ["--cache", "c.h5", "--quiet", "--no-figures"]
    for args in (["fit", *base, "--mode", "nr", "--target", "MOS_q", "--regressor", "svr", "--folds", "4"],
                 ["fit", *base, "--regressor", "ridge", "--folds", "3"],
                 ["bench", *base, "--regressor", "prompt-mean", "--folds", "3"]):
        result = runner.invoke(cli.main, args)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert result.output.strip().splitlines() == [
            f"error: c.h5: sample {key}: target MOS_q is nan, not a finite number (2 samples in all); the cache's "
            "labels were edited: pass --labels annotation to fit the annotation's labels"]
    assert not list(tmp_path.glob("featcache-*/*/results.json"))  # nothing was fitted or written
    fixed = fit(str(path), modes=["nr"], targets=["MOS_q"], regressors=["svr"], folds=4, labels="annotation")
    assert np.isfinite(fixed.data.samples.targets["MOS_q"]).all() and fixed.results.summary[0]["n_failed"] == 0


def test_a_constant_target_is_refused_when_asked_for_and_left_out_of_the_defaults(tmp_path, monkeypatch):
    """MOS_q 3.0 everywhere was fitted and reported with exit 0: 0.000 +- 0.000, RMSE 0.000, every fold failed."""
    path = make_cache(tmp_path, backbones=("toy.random/paper/4", "toy.random/multilevel/4"))
    with h5py.File(path, "r+") as f:
        f["targets/MOS_q"][...] = np.full(len(f["targets/MOS_q"]), 3.0)
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    base = ["--cache", "c.h5", "--quiet", "--no-figures", "--labels", "cache", "--backbone", "toy.random/paper/4"]
    refused = runner.invoke(cli.main, ["fit", *base, "--target", "MOS_q,MOS_a", "--regressor", "ridge"])
    assert refused.exit_code == 2 and refused.output.strip().splitlines()[-1] == (
        "error: --target MOS_q is 3 for all 128 samples of --subset all; a constant target cannot be fitted or "
        "ranked; leave it out of --target"), refused.output
    kept = runner.invoke(cli.main, ["fit", *base, "--regressor", "ridge", "--mode", "nr", "--out", "kept"])
    assert kept.exit_code == 0, kept.output
    warned = [line for line in kept.output.splitlines() if "default targets" in line]
    assert warned == ["warning: MOS_q left out of the default targets: it is 3 for all 128 samples of --subset all; "
                      "a constant target cannot be fitted or ranked"]
    results = json.loads((tmp_path / "kept" / "results.json").read_text())
    assert results["config"]["targets"] == ["MOS_a", "MOS_c"]
    assert {row["target"] for row in results["summary"]} == {"MOS_a", "MOS_c"}
    assert all(row["n_failed"] == 0 for row in results["summary"])
    with pytest.warns(UserWarning, match="MOS_q left out of the default targets"):
        both = bench(str(path), regressors=["ridge"], modes=["nr"], folds=3, labels="cache")  # once, 2 backbones
    assert both.config["targets"] == ["MOS_a", "MOS_c"]
    assert len([row for row in both.summary if row["regressor"] == "ridge"]) == 4  # 2 backbones x 2 targets
    with h5py.File(path, "r+") as f:
        for name in ("MOS_a", "MOS_c"):
            f[f"targets/{name}"][...] = np.full(len(f[f"targets/{name}"]), 2.5)
    none_left = runner.invoke(cli.main, ["fit", *base, "--regressor", "ridge", "--out", "none"])
    assert none_left.exit_code == 2 and none_left.output.strip().splitlines()[-1] == (
        "error: target MOS_q is 3 for all 128 samples of --subset all; a constant target cannot be fitted or ranked "
        "(so are MOS_a, MOS_c: no target in the cache varies)"), none_left.output


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


def test_default_modes_follow_the_selection_and_the_cache(tmp_path):
    mixed = load_cache(make_cache(tmp_path))
    assert modes_for(mixed) == ["nr", "fr", "pr"]
    assert modes_for(mixed, subset="t2i") == ["nr"]
    assert modes_for(mixed, split="cross", train_on="t2i", test_on="i2i") == ["nr"]
    assert modes_for(mixed, split="cross", train_on="MJ", test_on="SD") == ["nr", "fr", "pr"]
    t2i_only = make_cache(tmp_path / "t2i" if (tmp_path / "t2i").mkdir() is None else None, i2i_prompts=0)
    outcome = fit(str(t2i_only), regressors=["ridge"], folds=3)
    assert outcome.results.config["modes"] == ["nr"]
    assert bench(str(t2i_only), regressors=["ridge"], folds=3).config["modes"] == ["nr"]
    outcome = fit(str(make_cache(tmp_path / "m" if (tmp_path / "m").mkdir() is None else None)), regressors=["ridge"],
                  folds=3, subset="t2i")
    assert outcome.results.config["modes"] == ["nr"]


def test_group_aware_selection_is_recorded_per_fold(tmp_path):
    data = load_cache(make_cache(tmp_path))
    result = cross_validate(data, ["nr"], ["MOS_q"], ["ridge", "svr"], folds=3)
    for row in result.folds:
        key = "alpha" if row["regressor"] == "ridge" else "C"
        assert key in row["chosen"]


def test_run_folders_never_mix_runs(tmp_path):
    first, second = run_folder(None, root=tmp_path / "r"), run_folder(None, root=tmp_path / "r")
    assert first != second and first.parent == second.parent
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    (out / "scatter_old.png").write_text("an earlier run's figure")
    (out / ".featcache-run").write_text("results.json\nscatter_old.png\n")
    with pytest.raises(FeatcacheError, match="not empty; pass --overwrite"):
        run_folder(out)
    assert run_folder(out, overwrite=True) == out
    assert (out / "results.json").read_text() == "{}" and (out / "scatter_old.png").exists()  # nothing removed yet
    assert not first.exists() and not second.exists()  # created only when there are results to write
    result = cross_validate(load_cache(make_cache(tmp_path)), ["nr"], ["MOS_q"], ["ridge"], folds=3)
    write_results(result, out, figures=False)
    assert json.loads((out / "results.json").read_text())["config"]["regressors"] == ["ridge"]
    assert not (out / "scatter_old.png").exists() and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["notes.txt", ".featcache-run", *(out / ".featcache-run").read_text().split()])  # no staging folder left


def test_a_failed_or_interrupted_write_keeps_the_earlier_run(tmp_path, monkeypatch):
    """--overwrite replaces an earlier run's files only once the new ones are all written: an error (or Ctrl-C)
    while writing, figures included, leaves them as they were and no staging folder behind."""
    from regressors import report

    data = load_cache(make_cache(tmp_path))
    out = tmp_path / "run"
    write_results(cross_validate(data, ["nr"], ["MOS_q"], ["ridge"], folds=3), out, figures=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = cross_validate(data, ["nr"], ["MOS_q"], ["svr"], folds=2)  # other numbers in every file

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "report_markdown", interrupted)  # after results.json and the tables
    with pytest.raises(KeyboardInterrupt):
        write_results(other, out, figures=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.slow
def test_cli_fit_writes_a_fresh_run_folder_and_refuses_a_used_out(tmp_path, monkeypatch):
    make_cache(tmp_path)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    args = ["fit", "--cache", "c.h5", "--regressor", "ridge,prompt-mean", "--folds", "3", "--quiet"]
    first = runner.invoke(cli.main, args)
    assert first.exit_code == 0, first.output
    folders = list((tmp_path / "featcache-results").iterdir())
    assert len(folders) == 1 and (folders[0] / "predictions.csv").is_file() and str(folders[0].name) in first.output
    args.append("--no-figures")
    assert runner.invoke(cli.main, args + ["--out", "res"]).exit_code == 0
    again = runner.invoke(cli.main, args + ["--out", "res"])
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert runner.invoke(cli.main, args + ["--out", "res", "--overwrite"]).exit_code == 0
    labels = runner.invoke(cli.main, ["fit", "--cache", "c.h5", "--regressor", "sibling-mean", "--folds", "3",
                                      "--split", "kfold", "--quiet", "--no-figures"])
    assert labels.exit_code == 0 and "kfold split" in labels.output
    bad_head = runner.invoke(cli.main, args[:3] + ["--mode", "nr", "--target", "MOS_q", "--regressor", "ridge",
                                                   "--save-head", "nodir/h.safetensors"])
    assert bad_head.exit_code == 2 and "does not exist" in bad_head.output and "fitted folds" not in bad_head.output


@pytest.mark.slow
def test_dask_backend_gives_the_same_results_as_one_job(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    data = load_cache(make_cache(tmp_path))
    local = cross_validate(data, ["nr", "pr"], ["MOS_q"], ["ridge", "svr", "mlp"], folds=3)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c, \
            distributed.Client(c):
        remote = cross_validate(data, ["nr", "pr"], ["MOS_q"], ["ridge", "svr", "mlp"], folds=3, backend="dask",
                                jobs=2)
    assert [r["srcc"] for r in remote.folds] == [r["srcc"] for r in local.folds]
    mlp = [(a.y_pred, b.y_pred) for a, b in zip(remote.predictions, local.predictions) if a.regressor == "mlp"]
    assert len(mlp) == 6 and all(np.array_equal(a, b) for a, b in mlp)  # the same stacks in other processes


@pytest.mark.slow
def test_dask_backend_reaches_the_scheduler_named_by_dask_scheduler_address(tmp_path, monkeypatch):
    """DASK_SCHEDULER_ADDRESS (dask's `scheduler-address`) names your cluster: the fit connects to it (passing
    a local cluster's options with it was a traceback); an unreachable one is a one-line error."""
    distributed = pytest.importorskip("dask.distributed")
    import dask

    from regressors import cv

    data = load_cache(make_cache(tmp_path))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as c, \
            dask.config.set({"scheduler-address": c.scheduler_address}):
        with pytest.raises(ValueError):
            distributed.get_client()  # no client yet: the fit makes one
        remote = cross_validate(data, ["nr"], ["MOS_q"], ["ridge"], folds=3, backend="dask")
        client = distributed.get_client()
        assert client.scheduler.address == c.scheduler_address
        client.close()
    local = cross_validate(data, ["nr"], ["MOS_q"], ["ridge"], folds=3)
    assert [r["srcc"] for r in remote.folds] == [r["srcc"] for r in local.folds]
    monkeypatch.setattr(cv, "DASK_CONNECT_SECONDS", 1)
    for address in ("tcp://127.0.0.1:9", "localhost:notaport", "tls://127.0.0.1:9"):  # unreachable, malformed, tls
        with dask.config.set({"scheduler-address": address}):
            with pytest.raises(FeatcacheError, match=rf"^--backend dask: cannot reach the scheduler at {address}"):
                cross_validate(data, ["nr"], ["MOS_q"], ["ridge"], folds=3, backend="dask")


@pytest.mark.slow
def test_table_in_the_paper_layout(tmp_path, monkeypatch):
    from regressors.tables import load_results, render_table

    make_cache(tmp_path, backbones=("toy.random/paper/4", "toy.random/multilevel/4"))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    out = runner.invoke(cli.main, ["bench", "--cache", "c.h5", "--regressor", "ridge,svr,prompt-mean", "--folds", "3",
                                   "--mode", "nr,fr", "--out", "b", "--quiet", "--plot", "svr"])
    assert out.exit_code == 0, out.output
    report = (tmp_path / "b" / "report.md").read_text()
    assert report.splitlines()[2].startswith("| method | backbone | regressor | MOS_q SRCC | MOS_q PLCC")
    assert (tmp_path / "b" / "backbones_svr_MOS_q.png").is_file()
    assert len(list((tmp_path / "b").glob("scatter_*.png"))) == 2 * 2 * 3  # backbones x modes x targets
    rows = load_results([tmp_path / "b"])
    md = render_table(rows, ["srcc"], "md")
    body = [line for line in md.splitlines() if line.startswith("| NR |")]
    assert len(body) == 4 and sum("**" in line for line in body) >= 1  # 2 backbones x 2 regressors, a best
    assert "| floor (all samples) | none (labels only) | prompt-mean |" in md
    best = [line for line in body if "**" in line]
    srcc = {line: float(line.split("|")[4].strip(" *")) for line in body}
    assert max(srcc.values()) == srcc[best[0]]
    latex = runner.invoke(cli.main, ["table", "b", "--format", "latex", "--metric", "srcc,plcc_logistic"])
    assert latex.exit_code == 0 and "\\toprule" in latex.output and "\\_" in latex.output
    import shutil
    import subprocess

    if shutil.which("pdflatex"):
        doc = "\\documentclass{article}\\usepackage{booktabs}\\begin{document}" + latex.output + "\\end{document}"
        (tmp_path / "t.tex").write_text(doc)
        run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout[-2000:]
    csv_out = runner.invoke(cli.main, ["table", "b/results.json", "--format", "csv"])
    assert csv_out.output.splitlines()[0].startswith("method,backbone,regressor,MOS_q SRCC")
    bad = runner.invoke(cli.main, ["table", "b", "--metric", "srcx"])
    assert bad.exit_code == 2 and "did you mean 'srcc'" in bad.output


def test_batched_ridge_equals_one_ridge_per_target(tmp_path):
    from regressors.fitting import Member, ridge_by_fold
    from regressors.standardized import StandardizedRidge

    rng = np.random.default_rng(3)
    x = rng.normal(size=(80, 7))
    groups = np.arange(80) // 4
    train, test = np.arange(60), np.arange(60, 80)
    ys = [x[:, 0] + rng.normal(0, 0.2, 80), x[:, 1] * 3 + rng.normal(0, 2.0, 80)]
    fitted = ridge_by_fold(x, [Member(train, y[train], test, groups[train], 0) for y in ys])
    for y, (pred, chosen, _) in zip(ys, fitted):
        single = StandardizedRidge().fit(x[train], y[train], groups=groups[train])
        assert chosen["alpha"] == single.alpha_
        np.testing.assert_allclose(pred, single.predict(x[test]), atol=1e-10)


@pytest.mark.parametrize("floor", ["generator-mean", "sibling-mean", "prompt-mean"])
def test_floors_in_the_harness_equal_their_estimators(floor):
    """The CV harness fits floors without scikit-learn (regressors.code_means); the estimators must agree,
    including test samples whose sibling or prompt code never appeared in training."""
    from regressors.fitting import Member, fit_members
    from regressors.registry import get_regressor

    rng = np.random.default_rng(5)
    codes = np.stack([rng.integers(0, 3, 120), rng.integers(0, 40, 120), rng.integers(0, 15, 120)], axis=1)
    y = rng.normal(size=120) + codes[:, 0]
    train, test = np.arange(90), np.arange(90, 120)
    (pred, chosen, _), = fit_members(floor, codes.astype(float), [Member(train, y[train], test, None, 0)])
    single = get_regressor(floor).factory(0, "cpu").fit(codes[train].astype(float), y[train])
    unseen = ~np.isin(codes[test, 1], codes[train, 1]) | ~np.isin(codes[test, 2], codes[train, 2])
    assert unseen.any() and chosen == {}
    np.testing.assert_array_equal(pred, single.predict(codes[test].astype(float)))


def test_batched_svr_equals_one_svr_per_target():
    from regressors.fitting import Member, svr_by_fold
    from regressors.standardized import StandardizedSVR

    rng = np.random.default_rng(4)
    x = rng.normal(size=(90, 6))
    groups = np.arange(90) // 3
    train, test = np.arange(66), np.arange(66, 90)
    ys = [np.sin(x[:, 0]) + rng.normal(0, 0.1, 90), x[:, 1] * 5 + rng.normal(0, 3.0, 90), x[:, 2] ** 2]
    fitted = svr_by_fold(x, [Member(train, y[train], test, groups[train], 7) for y in ys])
    assert len({(c["C"], c["epsilon"]) for _, c, _ in fitted}) > 1  # the targets chose differently
    for y, (pred, chosen, _) in zip(ys, fitted):
        single = StandardizedSVR(random_state=7).fit(x[train], y[train], groups=groups[train])
        assert chosen == {"C": single.C_, "epsilon": single.epsilon_}
        np.testing.assert_allclose(pred, single.predict(x[test]), atol=1e-10)


def test_svr_inner_selection_matches_sklearn_predict():
    """The inner grid predicts from support vectors by hand; the choice must be what SVR.predict would give."""
    from sklearn.model_selection import GroupKFold
    from sklearn.svm import SVR

    from regressors.standardized import StandardizedSVR, rbf_kernel

    rng = np.random.default_rng(5)
    x = rng.normal(size=(60, 5))
    y = np.tanh(x[:, 0]) + rng.normal(0, 0.3, 60)
    groups = np.arange(60) // 2
    model = StandardizedSVR(random_state=1).fit(x, y, groups=groups)
    xs = model._scale(x)
    kernel = rbf_kernel(xs, xs, model.gamma_)
    ys = (y - model.y_mean_) / model.y_scale_
    splits = list(GroupKFold(3, shuffle=True, random_state=1).split(x, groups=groups))
    errors = {}
    for c in model.C_grid:
        for e in model.epsilon_grid:
            errors[(c, e)] = sum(float(np.sum((SVR(kernel="precomputed", C=c, epsilon=e).fit(
                kernel[np.ix_(tr, tr)], ys[tr]).predict(kernel[np.ix_(va, tr)]) - ys[va]) ** 2)) for tr, va in splits)
    assert (model.C_, model.epsilon_) == min(errors, key=errors.get)


def test_a_new_mode_and_regressor_are_one_table_entry_each(tmp_path, monkeypatch):
    from sklearn.neighbors import KNeighborsRegressor

    from regressors import modes

    monkeypatch.setitem(modes.MODES, "fr-prod", modes.ModeSpec(
        "fr-prod", lambda g, p, has: np.concatenate([g, g * p], axis=1), True, True, False, "[g, g * p]"))
    monkeypatch.setitem(registry.REGRESSORS, "knn", registry.RegressorSpec(
        "knn", lambda seed, device: KNeighborsRegressor(5), "sklearn.neighbors:KNeighborsRegressor", True, False,
        "5 nearest neighbours"))
    make_cache(tmp_path)
    outcome = fit(str(tmp_path / "c.h5"), modes=["nr", "fr-prod"], targets=["MOS_q"], regressors=["knn", "ridge"],
                  folds=3)
    rows = {(r["mode"], r["regressor"]): r for r in outcome.results.summary}
    assert rows[("fr-prod", "knn")]["n_test"] < rows[("nr", "knn")]["n_test"]  # needs an image prompt
    assert [(c["mode"], c["regressor"]) for c in outcome.results.comparisons] == [  # the floors come with any list
        ("fr-prod", r) for r in ["knn", "ridge", *registry.floor_names()]]
    with pytest.raises(FeatcacheError, match="knn cannot be saved"):
        fit(str(tmp_path / "c.h5"), modes=["nr"], targets=["MOS_q"], regressors=["knn"], folds=3,
            save_head=str(tmp_path / "k.safetensors"))


def test_edited_labels_are_refused_or_chosen(tmp_path, monkeypatch):
    from featcache.annotation_lookup import annotation_unchanged

    path = make_cache(tmp_path)
    annotation = tmp_path / "annotation.csv"
    assert annotation_unchanged(path)
    annotation.write_text(annotation.read_text())  # touched, same bytes: still unchanged
    assert annotation_unchanged(path)
    lines = annotation.read_text().splitlines()
    fields = lines[5].split(",")
    fields[3] = "4.9999"  # MOS_q of one sample, edited after extraction
    lines[5] = ",".join(fields)
    annotation.write_text("\n".join(lines) + "\n")
    assert not annotation_unchanged(path)
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    base = ["fit", "--cache", "c.h5", "--regressor", "prompt-mean", "--folds", "3", "--quiet", "--no-figures"]
    refused = runner.invoke(cli.main, base)
    assert refused.exit_code == 2 and "target MOS_q: 1 values differ" in refused.output and "--labels" in refused.output
    kept = runner.invoke(cli.main, base + ["--labels", "cache", "--out", "kept"])
    assert kept.exit_code == 0 and "cached labels kept" in kept.output
    new = fit(str(path), regressors=["prompt-mean"], folds=3, labels="annotation")
    key = lines[5].split(",")[2]
    row = list(new.data.samples.key).index(key)
    assert new.data.samples.targets["MOS_q"][row] == pytest.approx(4.9999)


def test_labels_are_compared_with_the_annotation_this_invocation_finds(tmp_path, monkeypatch):
    """A copied database whose annotation was edited was fitted on the old labels (the check read the original's
    file, by the absolute path in the cache), and with the original gone the check was skipped without a word."""
    import shutil

    db, copy, alone = tmp_path / "db", tmp_path / "copy", tmp_path / "alone"
    db.mkdir()
    make_cache(db)
    shutil.copytree(db, copy)
    lines = (copy / "annotation.csv").read_text().splitlines()
    fields = lines[5].split(",")
    fields[3] = "4.9999"
    lines[5] = ",".join(fields)
    (copy / "annotation.csv").write_text("\n".join(lines) + "\n")
    runner = CliRunner()
    base = ["--regressor", "prompt-mean", "--folds", "3", "--quiet", "--no-figures"]

    def run(folder, *args):
        monkeypatch.chdir(folder)
        return runner.invoke(cli.main, ["fit", *base, *args])

    changed = "the labels in {} changed since the cache was written (target MOS_q: 1 values differ"
    inside = run(copy, "--cache", "c.h5")  # the copy's own annotation, found in the current folder (the cache's)
    assert inside.exit_code == 2 and changed.format("annotation.csv") in inside.output, inside.output
    beside = run(db, "--cache", "../copy/c.h5")  # the one beside the cache, before the current folder's
    assert beside.exit_code == 2 and changed.format(copy / "annotation.csv") in beside.output, beside.output
    named = run(tmp_path, "--cache", "copy/c.h5", "--root", "db", "--out", "named")  # the original, by name
    assert named.exit_code == 0 and "warning" not in named.output, named.output
    alone.mkdir()
    shutil.copyfile(copy / "c.h5", alone / "c.h5")
    stored = run(alone, "--cache", "c.h5", "--out", "stored")  # nothing here: the path the cache recorded
    assert stored.exit_code == 0 and "warning" not in stored.output, stored.output
    shutil.rmtree(db)
    unchecked = run(alone, "--cache", "c.h5", "--out", "unchecked")
    assert unchecked.exit_code == 0 and unchecked.output.splitlines()[0] == (
        f"warning: c.h5: labels not checked against any annotation file (none beside the cache or in the current "
        f"folder, and {db / 'annotation.csv'}, which the cache was made from, is not there); pass --root or "
        "--annotation to check them"), unchecked.output
    wanted = run(alone, "--cache", "c.h5", "--labels", "annotation", "--out", "wanted")
    assert wanted.exit_code == 2 and wanted.output.startswith("error: --labels annotation: no annotation file "
                                                              "found for c.h5"), wanted.output
    fields[3] = ""  # an empty cell: --labels cache asked for the cached labels, so the annotation is not needed
    lines[5] = ",".join(fields)
    (copy / "annotation.csv").write_text("\n".join(lines) + "\n")
    refused = run(copy, "--cache", "c.h5", "--out", "refused")
    assert refused.exit_code == 2 and "annotation.csv row 6: target MOS_q is empty" in refused.output, refused.output
    kept = run(copy, "--cache", "c.h5", "--labels", "cache", "--out", "kept")
    assert kept.exit_code == 0 and kept.output.splitlines()[0] == (
        "warning: cached labels kept without comparing them with the annotation (annotation.csv row 6: target "
        "MOS_q is empty, not a finite number)"), kept.output


def test_the_readme_featcache_toml_example_resolves_as_documented(tmp_path, monkeypatch):
    """root absolute (or relative to the toml), annotation relative to the root, cache next to the toml; backbone
    and pool together choose for fit."""
    from featcache.defaults import load_config

    db = tmp_path / "data" / "my-aigc-db"
    db.mkdir(parents=True)
    make_cache(db, backbones=("toy.random/paper/4", "toy.random/multilevel/4"))
    (db / "annotation.csv").rename(db / "labels.csv")
    project = tmp_path / "project"
    project.mkdir()
    (project / "featcache.toml").write_text(f'root = "{db}"\nannotation = "labels.csv"\ncache = "{db}/c.h5"\n'
                                            'backbone = "toy"\npool = "multilevel"\n')
    config = load_config(project)
    assert config["annotation"] == str(db / "labels.csv") and config["root"] == str(db)
    (project / "featcache.toml").write_text('root = "../data/my-aigc-db"\ncache = "mine.h5"\n')
    config = load_config(project)
    assert Path(config["root"]).resolve() == db and config["cache"] == str(project / "mine.h5")
    (project / "featcache.toml").write_text(f'cache = "{db}/c.h5"\nbackbone = "toy"\npool = "multilevel"\n')
    monkeypatch.chdir(project)
    out = CliRunner().invoke(cli.main, ["fit", "--regressor", "ridge", "--folds", "3", "--quiet", "--no-figures",
                                        "--labels", "cache"])
    assert out.exit_code == 0 and out.output.startswith("toy.random/multilevel/4:"), out.output


def test_cpu_workers_get_the_mlp_by_fold_and_the_costliest_tasks_first(tmp_path, monkeypatch):
    """On the CPU a cell of the MLP is split by fold (so CPU workers share it, and the stacks are the same whatever
    --jobs); parallel tasks are dispatched costliest first, and the results come out in the plan's order whatever
    order the tasks finished in."""
    from regressors import cv

    data = load_cache(make_cache(tmp_path))
    regressors = ["prompt-mean", "ridge", "svr", "mlp"]
    _, whole = cv.plan(data, ["nr", "pr"], ["MOS_q", "MOS_a"], regressors, folds=3)
    _, spread = cv.plan(data, ["nr", "pr"], ["MOS_q", "MOS_a"], regressors, folds=3, spread=True)
    sizes = lambda tasks, name: [len(t.members) for t in tasks if t.regressor == name]  # noqa: E731
    assert sizes(whole, "mlp") == [6, 6] and sizes(spread, "mlp") == [2] * 6  # 3 folds x 2 targets per mode
    assert sizes(whole, "prompt-mean") == sizes(spread, "prompt-mean") == [6, 6]  # floors: no device, one task
    assert sizes(whole, "ridge") == sizes(spread, "ridge") == [2] * 6
    assert all(t.cost > 0 for t in spread)
    # at the size of PKU-AIGIQA-4K's NR cell (a fold: 3200 training rows x 2048 features, 3 targets), the order
    # measured by benchmarks/stage2.py: an MLP fold > an SVR fold > a ridge fold > a floor's whole cell
    cost = {name: registry.get_regressor(name).cost for name in ("mlp", "svr", "ridge", "prompt-mean")}
    assert cost["mlp"](3, 3200, 2048) > cost["svr"](3, 3200, 2048) > cost["ridge"](3, 3200, 2048) \
        > cost["prompt-mean"](15, 3200, 3)

    started = []
    real = cv._run_task

    def recording(index, task, device, parent=None):
        started.append(task.cost)
        return real(index, task, device, parent)

    monkeypatch.setattr(cv, "_run_task", recording)
    fast = ["prompt-mean", "ridge", "svr", "mlp"]  # the MLP: stacked by fold on the CPU whatever the jobs
    _, tasks = cv.plan(data, ["nr", "pr"], ["MOS_q", "MOS_a"], fast, folds=3, spread=True)  # on the CPU
    in_order = cross_validate(data, ["nr", "pr"], ["MOS_q", "MOS_a"], fast, folds=3)
    assert started == [t.cost for t in tasks]  # one job, no joblib: the plan's order
    started.clear()
    dispatched = cross_validate(data, ["nr", "pr"], ["MOS_q", "MOS_a"], fast, folds=3, backend="threading")
    assert started == sorted(started, reverse=True) and started != [t.cost for t in tasks]
    # the same rows in the same order; numbers equal up to BLAS's last bits (a worker thread may sum differently)
    assert [(r["regressor"], r["mode"], r["target"], r["fold"], r["chosen"]) for r in dispatched.folds] == \
        [(r["regressor"], r["mode"], r["target"], r["fold"], r["chosen"]) for r in in_order.folds]
    for key in ("srcc", "plcc", "krcc", "rmse"):
        np.testing.assert_allclose([r[key] for r in dispatched.folds], [r[key] for r in in_order.folds], rtol=1e-9)
    for a, b in zip(dispatched.predictions, in_order.predictions):
        assert (a.regressor, a.mode, a.target, a.fold) == (b.regressor, b.mode, b.target, b.fold)
        np.testing.assert_allclose(a.y_pred, b.y_pred, rtol=1e-9)


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


def test_the_way_out_of_the_refusal_fills_every_fold_of_every_mode(tmp_path):
    """With as many image-prompt groups as folds the group split gives each fold one (it is stratified by
    T2I/I2I): no fold fails, and the comparisons pair all of them."""
    data = load_cache(make_cache(tmp_path, i2i_prompts=4, t2i_prompts=4))
    result = cross_validate(data, ["nr", "fr", "pr"], ["MOS_q", "MOS_a"], ["ridge"], folds=4, repeats=3)
    assert all(not f["failed"] and f["n_test"] >= 4 for f in result.folds) and len(result.folds) == 3 * 2 * 4 * 3
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


@pytest.mark.parametrize("order", [["prompt-mean", "generator-mean", "sibling-mean"],
                                   ["sibling-mean", "prompt-mean", "generator-mean"]])
def test_floor_rows_follow_the_run_order(order):
    """The floor rows came out of a set of strings, so their order changed with Python's hash seed between runs of
    the same report; they follow the run's regressor order now."""
    from regressors.tables import render_table

    rows = [{"mode": mode, "backbone": "b", "regressor": r, "target": "MOS_q", "srcc_mean": 0.5, "n_failed": 0,
             "_protocol": "p"} for mode in ("nr", "fr") for r in ["ridge"] + order]
    floors = [line.split("|")[3].strip() for line in render_table(rows, ["srcc"], "md").splitlines()
              if line.startswith("| floor")]
    assert floors == order + order  # all samples (NR), then samples with an image prompt (FR)


def test_a_floor_row_says_its_failed_folds_as_a_model_row_does():
    """A floor whose folds all failed showed 0.000 with no note (generator-mean with one generator per side)."""
    from regressors.tables import render_table

    rows = [{"mode": "nr", "backbone": "b", "regressor": r, "target": t, "srcc_mean": 0.0 if r != "ridge" else 0.5,
             "n_failed": 5 if r == "generator-mean" else 0, "_protocol": "p"}
            for r in ("ridge", "generator-mean", "prompt-mean") for t in ("MOS_q", "MOS_a")]
    floors = [line.split("|")[3].strip() for line in render_table(rows, ["srcc"], "md").splitlines()
              if line.startswith("| floor")]
    assert floors == ["generator-mean (5 failed folds per target)", "prompt-mean"]


def _table_runs(tmp_path, monkeypatch, runs: dict[str, list[str]], **cache) -> CliRunner:
    """Small `featcache fit` runs (NR, MOS_q) into folders named by `runs`' keys, from tmp_path."""
    make_cache(tmp_path, **cache)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for out, args in runs.items():
        result = runner.invoke(cli.main, ["fit", "--cache", "c.h5", "--mode", "nr", "--target", "MOS_q", "--out", out,
                                          "--quiet", "--no-figures", *args])
        assert result.exit_code == 0, result.output
    return runner


def test_table_refuses_runs_made_on_other_folds(tmp_path, monkeypatch):
    """A 4-fold bench beside a 5-fold fit showed one run's ridge cell (the other's vanished, which one by argument
    order) and one run's floors beside both runs' rows: runs whose folds differ are refused, naming both."""
    regs = ["--regressor", "ridge,prompt-mean"]
    runner = _table_runs(tmp_path, monkeypatch, {"f4": [*regs, "--folds", "4"], "f5": regs,
                                                 "seed1": [*regs, "--folds", "4", "--seed", "1"],
                                                 "paper0": [*regs, "--split", "paper"],
                                                 "paper1": ["--regressor", "svr", "--split", "paper", "--seed", "1",
                                                            "--no-floors"]})  # a single split's interval reads --seed
    out = runner.invoke(cli.main, ["bench", "--cache", "c.h5", "--mode", "nr", "--target", "MOS_q", "--regressor",
                                   "ridge,prompt-mean", "--folds", "4", "--out", "bench", "--quiet", "--no-figures"])
    assert out.exit_code == 0, out.output
    for runs, differs in ((["bench", "f5"], "--folds 4 vs 5"), (["f5", "bench"], "--folds 5 vs 4"),
                          (["f4", "seed1"], "--seed 0 vs 1"), (["f4", "paper0"], "--split group vs paper"),
                          (["bench", "f4", "f5"], "--folds 4 vs 5")):
        out = runner.invoke(cli.main, ["table", *runs, "--metric", "srcc"])
        assert out.exit_code == 2 and out.output.splitlines() == [
            f"error: {runs[0]} and {runs[-1]} were made on different folds ({differs}): a table compares one "
            "protocol; render them separately"], (runs, out.output)
    other = tmp_path / "other"
    other.mkdir()
    make_cache(other, seed=1)  # other samples (labels), the same options
    out = runner.invoke(cli.main, ["fit", "--cache", "other/c.h5", "--mode", "nr", "--target", "MOS_q", "--regressor",
                                   "svr", "--folds", "4", "--out", "other/run", "--quiet", "--no-figures"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(cli.main, ["table", "f4", "other/run"])
    assert out.exit_code == 2 and "f4 and other/run were made on different folds (samples (cache samples_sha256 " \
        in out.output and len(out.output.splitlines()) == 1, out.output
    out = runner.invoke(cli.main, ["table", "paper0", "paper1", "--metric", "srcc"])  # the paper split reads no seed
    assert out.exit_code == 0 and "| NR | toy.random/paper/4 | svr |" in out.output, out.output


def test_table_keeps_a_cell_two_runs_share_once_and_refuses_two_values(tmp_path, monkeypatch):
    """Same folds, disjoint cells (one backbone per run): the table of a bench of both, its floor once. A cell both
    runs give: kept once when equal (the floor here, a run given twice), refused with both runs when not."""
    regs = ["--regressor", "ridge,prompt-mean", "--folds", "3"]
    runner = _table_runs(tmp_path, monkeypatch, {"a": [*regs, "--backbone", "toy.random/paper/4"],
                                                 "b": [*regs, "--backbone", "toy.random/multilevel/4"]},
                         backbones=("toy.random/paper/4", "toy.random/multilevel/4"))
    out = runner.invoke(cli.main, ["bench", "--cache", "c.h5", "--mode", "nr", "--target", "MOS_q", "--regressor",
                                   "ridge,prompt-mean", "--folds", "3", "--out", "both", "--quiet", "--no-figures"])
    assert out.exit_code == 0, out.output
    tables = {tuple(runs): runner.invoke(cli.main, ["table", *runs]) for runs in (["a", "b"], ["both"], ["a", "a"],
                                                                                   ["a"], ["both", "a", "b"])}
    assert all(t.exit_code == 0 for t in tables.values()), [t.output for t in tables.values()]
    lines = {runs: sorted(t.output.splitlines()) for runs, t in tables.items()}  # rows follow the run order
    assert lines["a", "b"] == lines["both",] == lines["both", "a", "b"]
    assert tables["a", "a"].output == tables["a",].output
    assert [tables["a", "b"].output.count(f"| floor (all samples) | none (labels only) | {floor} |")
            for floor in registry.floor_names()] == [1, 1, 1]
    assert len([line for line in tables["a", "b"].output.splitlines() if line.startswith("| NR |")]) == 2
    payload = json.loads((tmp_path / "a" / "results.json").read_text())
    ridge = next(r for r in payload["summary"] if r["regressor"] == "ridge")
    ridge["srcc_mean"] = 0.5  # the same cell from another version, on the same folds
    (tmp_path / "a2").mkdir()
    (tmp_path / "a2" / "results.json").write_text(json.dumps(payload))
    for runs in (["a", "a2"], ["both", "a2"]):
        out = runner.invoke(cli.main, ["table", *runs])
        assert out.exit_code == 2 and out.output.splitlines() == [
            f"error: {runs[0]} and a2 both give cell NR, toy.random/paper/4, ridge, MOS_q with different values "
            f"(srcc_mean {ridge_srcc(tables, runs[0])} vs 0.500); render them separately or leave one out"], out.output


def ridge_srcc(tables, run: str) -> str:
    """The paper/4 ridge SRCC of a run's rendered table."""
    line = next(line for line in tables[run,].output.splitlines()
                if line.startswith("| NR | toy.random/paper/4 | ridge |"))
    return line.split("|")[4].strip(" *")


def test_jobs_auto_uses_every_core_only_for_a_run_worth_the_workers(tmp_path, monkeypatch):
    """--jobs auto (the default): one process for a small run (no joblib, no worker start-up), every usable core
    (at most one per task) from AUTO_PARALLEL_SECONDS of estimated fitting, every backend worker with a backend;
    numbers are taken as given. Through joblib the numbers are those of one process."""
    import joblib

    from featcache import devices
    from regressors import cv

    data = load_cache(make_cache(tmp_path))
    _, tasks = cv.plan(data, ["nr", "pr"], ["MOS_q"], ["ridge", "svr"], folds=3, spread=True)
    monkeypatch.setattr(devices, "usable_cores", lambda: 8)
    assert sum(t.cost for t in tasks) < cv.AUTO_PARALLEL_SECONDS and cv.resolve_jobs("auto", None, tasks) == 1
    assert cv.resolve_jobs("auto", "dask", tasks) == cv.resolve_jobs(-1, "dask", tasks) == -1  # every worker
    assert cv.resolve_jobs(3, None, tasks) == 3 and cv.resolve_jobs(-1, None, tasks) == 8
    assert cv.resolve_jobs(50, None, tasks[:5]) == cv.resolve_jobs(-1, "loky", tasks[:5]) == 5  # no idle workers
    assert cv.resolve_jobs(10 ** 6, "threading", tasks[:2]) == 2 and cv.resolve_jobs(4, None, []) == 1
    monkeypatch.setattr(cv, "AUTO_PARALLEL_SECONDS", 0.0)
    assert cv.resolve_jobs("auto", None, tasks) == 8 and cv.resolve_jobs("auto", None, tasks[:3]) == 3
    monkeypatch.setattr(devices, "usable_cores", lambda: 1)
    assert cv.resolve_jobs("auto", None, tasks) == 1
    for bad in (0, -2, "four", 2.5, True):
        with pytest.raises(FeatcacheError, match="use a positive number, -1 for every core, or auto"):
            cv.check_jobs(bad)

    asked = []

    class Threads(joblib.Parallel):  # records n_jobs; threads, so the test starts no processes
        def __init__(self, n_jobs=None, **kwargs):
            asked.append(n_jobs)
            super().__init__(n_jobs=n_jobs, backend="threading", **kwargs)

    monkeypatch.setattr(joblib, "Parallel", Threads)
    monkeypatch.setattr(devices, "usable_cores", lambda: 2)
    parallel = cross_validate(data, ["nr", "pr"], ["MOS_q"], ["ridge", "svr"], folds=3)
    assert asked == [2]
    monkeypatch.setattr(cv, "AUTO_PARALLEL_SECONDS", 10.0)
    alone = cross_validate(data, ["nr", "pr"], ["MOS_q"], ["ridge", "svr"], folds=3)
    assert asked == [2]  # under the threshold: no joblib
    assert [r["chosen"] for r in parallel.folds] == [r["chosen"] for r in alone.folds]
    np.testing.assert_allclose([r["srcc"] for r in parallel.folds], [r["srcc"] for r in alone.folds], rtol=1e-9)


def test_the_multiprocessing_backend_is_refused(tmp_path):
    """joblib's multiprocessing backend forks this process: after torch or BLAS threads ran, the children can
    hang. loky does the same work without forking."""
    data = load_cache(make_cache(tmp_path))
    with pytest.raises(FeatcacheError, match="backend 'multiprocessing' can hang .* use loky"):
        cross_validate(data, ["nr"], ["MOS_q"], ["ridge"], folds=2, backend="multiprocessing")


def test_a_failed_fit_leaves_no_folder_and_keeps_an_overwritten_run(tmp_path, monkeypatch):
    make_cache(tmp_path)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    base = ["fit", "--cache", "c.h5", "--regressor", "ridge", "--folds", "3", "--quiet", "--no-figures"]
    bad = runner.invoke(cli.main, base[:4] + ["ridg"] + base[5:])
    assert bad.exit_code == 2 and not (tmp_path / "featcache-results").exists()
    assert runner.invoke(cli.main, base + ["--out", "res"]).exit_code == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "res").iterdir()}
    again = runner.invoke(cli.main, base + ["--out", "res", "--overwrite", "--target", "MOS_x"])
    assert again.exit_code == 2 and "MOS_x" in again.output
    assert {p.name: p.read_bytes() for p in (tmp_path / "res").iterdir()} == before


def test_results_record_where_the_torch_heads_trained(tmp_path):
    """--device auto (the default of fit and bench) is resolved and recorded; runs without the MLP record None
    (and never import torch to find out)."""
    data = load_cache(make_cache(tmp_path))
    import torch

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert cross_validate(data, ["nr"], ["MOS_q"], ["mlp"], folds=2, device="auto").config["device"] == expected
    assert cross_validate(data, ["nr"], ["MOS_q"], ["ridge"], folds=2, device="auto").config["device"] is None
    from regressors.fit import CV_DEFAULTS

    assert CV_DEFAULTS["device"] == "auto" and CV_DEFAULTS["jobs"] == "auto"


def test_write_results_ignores_and_removes_a_staging_folder_left_by_a_killed_run(tmp_path):
    """kill -9 while writing leaves `.featcache-new-*` in --out: it neither makes the folder count as used nor
    survives the next write."""
    from regressors.report import STAGING

    out = tmp_path / "run"
    (out / f"{STAGING}old").mkdir(parents=True)
    (out / f"{STAGING}old" / "results.json").write_text("{}")
    assert run_folder(out) == out  # not refused as non-empty
    write_results(cross_validate(load_cache(make_cache(tmp_path)), ["nr"], ["MOS_q"], ["ridge"], folds=3), out,
                  figures=False)
    assert not list(out.glob(f"{STAGING}*")) and (out / "results.json").is_file()


def test_cli_save_head_into_the_runs_own_new_folder(tmp_path, monkeypatch):
    make_cache(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--cache", "c.h5", "--mode", "nr", "--target", "MOS_q", "--regressor", "ridge", "--folds", "3",
            "--quiet", "--no-figures", "--jobs", "AUTO"]
    done = CliRunner().invoke(cli.main, args + ["--out", "o2", "--save-head", "o2/head.safetensors"])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "o2" / "head.safetensors").is_file() and (tmp_path / "o2" / "results.json").is_file()
    bad = CliRunner().invoke(cli.main, args[:-4] + ["--target", "MOS_x", "--out", "o3", "--save-head", "o3/h.json"])
    assert bad.exit_code == 2 and not (tmp_path / "o3").exists()  # refused: no folder left behind


def test_a_multiprocessing_backend_set_around_the_call_is_refused_too(tmp_path):
    import joblib

    data = load_cache(make_cache(tmp_path))
    with joblib.parallel_config(backend="multiprocessing"):
        with pytest.raises(FeatcacheError, match="backend 'multiprocessing' can hang"):
            cross_validate(data, ["nr"], ["MOS_q", "MOS_a"], ["ridge"], folds=2, jobs=2)


def test_a_live_runs_staging_folder_is_left_alone_and_save_head_may_not_take_an_output_name(tmp_path, monkeypatch):
    from regressors.report import STAGING

    out = tmp_path / "run"
    live = out / f"{STAGING}{os.getpid()}-abc"  # this process: alive
    live.mkdir(parents=True)
    with pytest.raises(FeatcacheError, match="not empty"):
        run_folder(out)  # another run is writing there
    write_results(cross_validate(load_cache(make_cache(tmp_path)), ["nr"], ["MOS_q"], ["ridge"], folds=3), out,
                  figures=False)
    assert live.is_dir()
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--cache", "c.h5", "--mode", "nr", "--target", "MOS_q", "--regressor", "ridge", "--folds", "3",
            "--quiet", "--no-figures"]
    clash = CliRunner().invoke(cli.main, args + ["--out", "r5", "--save-head", "r5/results.json"])
    assert clash.exit_code == 2 and "writes a file of that name" in clash.output and not (tmp_path / "r5").exists()
    deep = CliRunner().invoke(cli.main, args + ["--target", "NOPE", "--out", "deep/x/y", "--save-head",
                                                "deep/x/y/h.safetensors"])
    assert deep.exit_code == 2 and not (tmp_path / "deep").exists()  # the parents it created are gone too


@pytest.mark.slow  # a fresh process importing torch and dask, then an MLP fit to interrupt: about 20 s
def test_ctrl_c_during_a_local_dask_fit_exits_130_without_aborting(tmp_path):
    """The local cluster's workers are threads of the process, busy in torch: finalising the interpreter under them
    aborted (exit 134, "terminate called without an active exception", after screens of dask warnings)."""
    pytest.importorskip("dask.distributed")
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from tests.fakedata import make_cache

    cache = make_cache(tmp_path, i2i_prompts=10, t2i_prompts=10, per=8, dim=512)  # MLP tasks of seconds
    repo = str(Path(__file__).resolve().parents[1])
    scratch = tmp_path / "dask-tmp"
    env = {**os.environ, "PYTHONPATH": repo, "OMP_NUM_THREADS": "1", "DASK_TEMPORARY_DIRECTORY": str(scratch)}
    command = [sys.executable, "-m", "cli", "fit", "--cache", str(cache), "--mode", "nr,fr,pr", "--regressor", "mlp",
               "--backend", "dask", "--jobs", "2", "--repeats", "20", "--no-figures", "--out", str(tmp_path / "out")]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, preexec_fn=_terminal_ctrl_c)  # CI may run the tests with Ctrl-C ignored
    lines = []
    for line in process.stdout:  # wait until the fitting has started
        lines.append(line)
        if "heads to fit" in line:
            break
    time.sleep(3)
    assert process.poll() is None, "".join(lines)
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=60)
    output = "".join(lines) + rest
    assert process.returncode == 130, output
    assert rest.strip() == "interrupted", rest
    assert not (tmp_path / "out" / "results.json").exists()
    left = sorted(p.name for p in (scratch / "dask-scratch-space").iterdir() if not p.name.endswith(".lock"))
    assert left == [], left  # the scheduler's and workers' scratch folders



def test_a_worker_process_leaves_ctrl_c_to_the_parent(tmp_path):
    """A terminal's Ctrl-C reaches every process of the group: loky workers caught inside a task printed
    KeyboardInterrupt tracebacks (two screens, seen 1 run in 3) under the parent's `interrupted`. A task run in
    another process than the one that dispatched it ignores SIGINT; in the dispatching process it does not."""
    import os
    import signal

    from regressors import cv

    data = load_cache(str(make_cache(tmp_path)))
    _, tasks = cv.plan(data, ["nr"], ["MOS_q"], ["ridge"], folds=2)
    before = signal.getsignal(signal.SIGINT)
    try:
        cv._run_task(0, tasks[0], "cpu", os.getpid())  # the parent itself (--jobs 1, threads): untouched
        assert signal.getsignal(signal.SIGINT) is before
        cv._run_task(0, tasks[0], "cpu", os.getpid() + 1)  # a worker process
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_ctrl_c_that_python_dropped_still_stops_the_run_at_the_next_task(tmp_path, monkeypatch):
    """Python drops a KeyboardInterrupt raised inside a garbage-collection callback ("Exception ignored"); the
    CLI's handler also remembers the Ctrl-C, and the fitting loop stops at the next task (a dask run went on to
    its end). Simulated: the first task receives the signal and nothing raises."""
    import signal

    from featcache import interrupts
    from regressors import cv

    cache = make_cache(tmp_path)
    real = cv.fit_members
    calls = []

    def lost_interrupt(*args):
        calls.append(1)
        if len(calls) == 1:
            with pytest.raises(KeyboardInterrupt):  # the handler raises; here it is swallowed, as in a callback
                signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
        return real(*args)

    monkeypatch.setattr(cv, "fit_members", lost_interrupt)
    runner_handler = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (CI may ignore it)
    before = signal.getsignal(signal.SIGINT)
    try:
        result = CliRunner().invoke(cli.main, ["fit", "--cache", str(cache), "--mode", "nr,pr", "--regressor", "ridge",
                                               "--jobs", "1", "--no-figures", "--quiet", "--out", str(tmp_path / "o")])
    finally:
        after = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, runner_handler)
    assert result.exit_code == 130 and result.output.strip().splitlines()[-1] == "interrupted", result.output
    assert len(calls) == 1 and not (tmp_path / "o").exists()
    assert after is before  # handlers back for the caller
    interrupts.check()  # and the interruption forgotten: an in-process caller's next call is not interrupted


def test_a_second_signal_soon_after_the_first_is_the_same_request(monkeypatch):
    """A double press, or SLURM's SIGTERM right after a Ctrl-C: raising again cut the first one's clean-up short
    (joblib printed a resource_tracker warning under the one line)."""
    import signal

    from featcache import interrupts

    now = [100.0]
    monkeypatch.setattr(interrupts.time, "monotonic", lambda: now[0])
    interrupts.reset()
    try:
        with pytest.raises(KeyboardInterrupt) as first:
            interrupts.on_signal(signal.SIGINT, None)
        assert type(first.value) is KeyboardInterrupt
        now[0] += 0.05
        assert interrupts.on_signal(signal.SIGTERM, None) is None  # taken as the same request
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()  # the loops still see the first
        now[0] += interrupts.SECOND_SIGNAL_SECONDS
        with pytest.raises(interrupts.Terminated):  # a later one is a new request
            interrupts.on_signal(signal.SIGTERM, None)
    finally:
        interrupts.reset()


def test_the_command_line_keeps_signals_ignored_while_its_process_ends(tmp_path, monkeypatch):
    """Run from the process's own command line (click parses sys.argv), the command ends the process: after a
    Ctrl-C, signals stay ignored until it is gone (a second one must not change the exit 130). In-process callers
    get their handlers back."""
    import signal
    import sys

    from regressors import cv

    cache = make_cache(tmp_path)
    monkeypatch.setattr(cv, "fit_members", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    command = ["fit", "--cache", str(cache), "--regressor", "ridge", "--jobs", "1", "--no-figures", "--quiet",
               "--out", str(tmp_path / "o")]
    runner = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (CI may ignore Ctrl-C)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert CliRunner().invoke(cli.main, command).exit_code == 130
        assert {s: signal.getsignal(s) for s in before} == before
        monkeypatch.setattr(sys, "argv", ["featcache", *command])
        with pytest.raises(SystemExit) as exited:
            cli.main()
        assert exited.value.code == 130
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        for s, handler in runner.items():
            signal.signal(s, handler)


def _terminal_ctrl_c() -> None:
    """In a child about to exec: Ctrl-C handled as in a terminal, even when the test runner was started with SIGINT
    ignored (a background job of a non-interactive shell), which the child would inherit."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_an_interrupted_fit_leaves_no_run_folder_holding_only_its_head(tmp_path, monkeypatch):
    """--save-head into the run's own new folder: Ctrl-C after the head was saved, before the results were
    written, left the folder with the head alone, and the same command then refused it as not empty."""
    import signal

    import regressors.report

    cache = make_cache(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(regressors.report, "write_results", interrupted)
    command = ["fit", "--cache", str(cache), "--mode", "nr", "--target", "MOS_q", "--regressor", "ridge", "--folds",
               "3", "--quiet", "--no-figures", "--out", str(tmp_path / "run"), "--save-head",
               str(tmp_path / "run" / "h.safetensors")]
    runner_handler = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert CliRunner().invoke(cli.main, command).exit_code == 130
    finally:
        signal.signal(signal.SIGINT, runner_handler)
    assert not (tmp_path / "run").exists()
    (tmp_path / "run").mkdir()  # an empty folder made beforehand is the run's own too
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert CliRunner().invoke(cli.main, command).exit_code == 130
    finally:
        signal.signal(signal.SIGINT, runner_handler)
    assert not any((tmp_path / "run").iterdir())
    monkeypatch.undo()
    done = CliRunner().invoke(cli.main, command)
    assert done.exit_code == 0, done.output
    assert (tmp_path / "run" / "h.safetensors").is_file() and (tmp_path / "run" / "results.json").is_file()


def test_floors_come_with_any_regressor_list_unless_no_floors(tmp_path, monkeypatch):
    """`fit --regressor ridge` had no floor in any table, yet the caption still said "Floors read no pixel" and the
    report's highest-test-scores line showed ridge alone. The three floors now come with any list (a saved head
    is still the one regressor named); `--no-floors` leaves them out, and the table and the report say so."""
    make_cache(tmp_path)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    base = ["fit", "--cache", "c.h5", "--target", "MOS_q", "--folds", "3", "--quiet", "--no-figures"]
    run = runner.invoke(cli.main, [*base, "--mode", "nr", "--regressor", "ridge", "--out", "with",
                                   "--save-head", "h.safetensors"])
    assert run.exit_code == 0 and "saved ridge head for nr/MOS_q" in run.output, run.output
    floors = registry.floor_names()
    payload = json.loads((tmp_path / "with" / "results.json").read_text())
    assert payload["config"]["regressors"] == ["ridge", *floors]
    assert [r["regressor"] for r in payload["summary"]] == ["ridge", *floors]
    table = (tmp_path / "with" / "table.md").read_text()
    assert all(f"| floor (all samples) | none (labels only) | {floor} |" in table for floor in floors)
    assert table.rstrip().endswith("Floors read no pixel.")
    best = next(line for line in (tmp_path / "with" / "report.md").read_text().splitlines()
                if line.startswith("- MOS_q: ridge nr SRCC"))
    assert "; best label-only floor " in best and " nr SRCC " in best.split("floor", 1)[1], best

    run = runner.invoke(cli.main, [*base, "--mode", "nr,fr", "--regressor", "ridge", "--out", "without",
                                   "--no-floors"])
    assert run.exit_code == 0, run.output
    payload = json.loads((tmp_path / "without" / "results.json").read_text())
    assert {r["regressor"] for r in payload["summary"]} == {"ridge"}
    table = (tmp_path / "without" / "table.md").read_text()
    assert "| floor" not in table and "Floors read no pixel" not in table
    assert "No label-only floors (made with --no-floors)" in table
    report = (tmp_path / "without" / "report.md").read_text()
    assert "; no label-only floor beside it (run made with --no-floors)" in report
    mixed = runner.invoke(cli.main, ["table", "with", "without"])  # the first run's floors cover NR, not FR
    assert mixed.exit_code == 0 and "| floor (all samples) | none (labels only) | prompt-mean |" in mixed.output
    assert "Floors read no pixel; none for the samples with an image prompt (made with --no-floors)." \
        in mixed.output, mixed.output

    refused = runner.invoke(cli.main, [*base, "--regressor", "ridge,prompt-mean", "--no-floors", "--out", "x"])
    assert refused.exit_code == 2 and refused.output.splitlines() == [
        "error: --no-floors: --regressor names the floor prompt-mean; drop --no-floors or the floor"]
    from regressors.fit import run_regressors

    assert run_regressors(None, floors=False) == (["mlp", "svr", "ridge"], ["mlp", "svr", "ridge"])
    assert run_regressors(["prompt-mean"]) == (["prompt-mean"], ["prompt-mean", "generator-mean", "sibling-mean"])
    grid = {"modes": ["nr"], "targets": ["MOS_q"], "regressors": ["ridge"], "folds": 3}
    assert {r["regressor"] for r in bench("c.h5", **grid).summary} == {"ridge", *floors}
    assert {r["regressor"] for r in bench("c.h5", floors=False, **grid).summary} == {"ridge"}
    # a floor that cannot score a split (generator-mean trained on MJ alone, tested on SD) fails its fold; the
    # feature regressor the user asked for runs as before
    cross = fit("c.h5", regressors=["ridge"], modes=["nr"], targets=["MOS_q"], split="cross", train_on="MJ",
                test_on="SD").results.summary
    rows = {r["regressor"]: r for r in cross}
    assert rows["ridge"]["n_failed"] == 0 and rows["generator-mean"]["n_failed"] == 1


def test_table_takes_a_cell_equal_to_the_last_bits_as_one_and_refuses_a_real_difference(tmp_path, monkeypatch):
    """`fit --jobs 1` and `--jobs 2` (loky) give every number equal up to the last bits; `table` compared every
    summary value exactly and refused the two runs over a difference no table shows. Cells now count as the
    same within 1e-9 (absolute, or relative to the larger); a difference beyond it is still refused."""
    runner = _table_runs(tmp_path, monkeypatch, {"a": ["--regressor", "ridge", "--folds", "3"]})
    payload = json.loads((tmp_path / "a" / "results.json").read_text())
    ridge = next(r for r in payload["summary"] if r["regressor"] == "ridge")
    numbers = [k for k, v in ridge.items() if isinstance(v, float) and k != "seconds"]
    assert "plcc_logistic_mean" in numbers and "srcc_mean" in numbers

    def variant(name: str, **changed) -> None:
        edited = json.loads(json.dumps(payload))
        row = next(r for r in edited["summary"] if r["regressor"] == "ridge")
        row.update(changed)
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(edited))

    last_bits = {k: float(np.nextafter(np.nextafter(ridge[k], np.inf), np.inf)) for k in numbers}  # 2 ulps
    last_bits["plcc_logistic_mean"] = ridge["plcc_logistic_mean"] + 2e-11  # MINPACK's measured spread
    assert all(last_bits[k] != ridge[k] for k in numbers)
    variant("jobs2", **last_bits)
    same = runner.invoke(cli.main, ["table", "a", "jobs2", "--metric", "srcc,plcc,plcc_logistic,krcc,rmse"])
    alone = runner.invoke(cli.main, ["table", "a", "--metric", "srcc,plcc,plcc_logistic,krcc,rmse"])
    assert same.exit_code == 0 and same.output == alone.output, same.output
    variant("small", plcc_logistic_mean=ridge["plcc_logistic_mean"] + 1e-6)  # not shown at 3 decimals: named
    variant("large", plcc_logistic_mean=ridge["plcc_logistic_mean"] + 0.03)
    for other, shown in (("small", f"{ridge['plcc_logistic_mean']!r} vs {ridge['plcc_logistic_mean'] + 1e-6!r}"),
                         ("large", f"{ridge['plcc_logistic_mean']:.3f} vs {ridge['plcc_logistic_mean'] + 0.03:.3f}")):
        out = runner.invoke(cli.main, ["table", "a", other, "--metric", "srcc"])  # a metric the table hides, too
        assert out.exit_code == 2 and out.output.splitlines() == [
            f"error: a and {other} both give cell NR, toy.random/paper/4, ridge, MOS_q with different values "
            f"(plcc_logistic_mean {shown}); render them separately or leave one out"], out.output
    from regressors.tables import SAME_CELL_TOLERANCE

    assert SAME_CELL_TOLERANCE == 1e-9  # as the README states


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
