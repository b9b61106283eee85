"""Uncertainty in every table: intervals in every summary row, bold only where the corrected resampled t-test
separates a best, ties and scores below a floor marked, SDs named, coinciding floors shown once, and the fold rows
of a results.json checked as untrusted input."""

import json
import math

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from regressors import registry
from regressors.cache_data import load_cache
from regressors.cv import cross_validate
from regressors.fold_rows import fold_sd
from regressors.inference import group_bootstrap_interval, pooled_predictions
from regressors.summary_text import floors_once, format_table, highest_on_test
from regressors.results_files import load_results, table_rows
from regressors.tables import paper_table, render_table
from tests.fakedata import fit_nr_run, make_cache

FLOORS = registry.floor_names()


def _noise_cache(tmp_path, seed=0):
    """make_cache's layout with features that carry no label: every score is noise."""
    path = make_cache(tmp_path, seed=seed)
    with h5py.File(path, "r+") as f:
        def scramble(name, item):
            if name.endswith("/emb"):
                item[:] = np.random.default_rng(seed + 100).normal(size=item.shape)
        f.visititems(scramble)
    return path


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """NR and FR, ridge and the floors, 3-fold group split x 2 repeats: (results, rows as the table reads them)."""
    root = tmp_path_factory.mktemp("tables_inference")
    data = load_cache(str(make_cache(root)))
    results = cross_validate(data, ["nr", "fr"], ["MOS_q"], ["ridge", *FLOORS], folds=3, repeats=2, seed=4)
    return results, table_rows(results.config, results.summary, results.folds, "run")


def test_every_summary_row_has_its_intervals_drawn_from_the_seed(small_run):
    results, _ = small_run
    assert results.config["intervals"]["seed"] == 4 and results.config["intervals"]["resamples"] == 1000
    groups = np.asarray(results.samples["group"])
    for row in results.summary:
        assert row["ci_level"] == 0.95 and row["ci_groups"] >= 6
        for metric, point in (("srcc", row["srcc_pooled"]), ("plcc", row["plcc_pooled"]),
                              ("rmse", row["rmse_pooled"])):
            assert row[f"{metric}_ci_low"] <= point <= row[f"{metric}_ci_high"], (row["regressor"], metric)
    ridge = next(r for r in results.summary if (r["regressor"], r["mode"]) == ("ridge", "fr"))
    mine = [p for p in results.predictions if (p.regressor, p.mode) == ("ridge", "fr")]
    parts = [[p for p in mine if p.repeat == rep] for rep in (0, 1)]
    pooled = pooled_predictions([np.concatenate([p.rows for p in part]) for part in parts],
                                [np.concatenate([p.y_true for p in part]) for part in parts],
                                [np.concatenate([p.y_pred for p in part]) for part in parts], groups)
    assert (ridge["srcc_ci_low"], ridge["srcc_ci_high"]) == group_bootstrap_interval(pooled, "srcc", seed=4)


def test_a_repeat_whose_every_fold_failed_counts_as_0_in_the_correlation_intervals(tmp_path, monkeypatch):
    from sklearn.dummy import DummyRegressor

    spec = registry.RegressorSpec("constant", lambda seed, device: DummyRegressor(), "sklearn.dummy:DummyRegressor",
                                  True, False, "predicts the training mean")
    monkeypatch.setitem(registry.REGRESSORS, "constant", spec)
    results = cross_validate(load_cache(str(make_cache(tmp_path))), ["nr"], ["MOS_q"], ["constant"], folds=3)
    (row,) = results.summary
    assert row["n_failed"] == 3 and row["srcc_ci_low"] == row["srcc_ci_high"] == 0.0 == row["plcc_ci_high"]
    assert 0 < row["rmse_ci_low"] < row["rmse_ci_high"]


@pytest.mark.slow
def test_bench_rows_get_intervals_and_they_do_not_depend_on_jobs(tmp_path):
    from regressors.fit import bench

    path = make_cache(tmp_path, backbones=("toy.random/paper/4", "toy.random/multilevel/4"))
    runs = [bench(str(path), modes=["nr"], targets=["MOS_q"], regressors=["ridge"], labels="cache", folds=3,
                  repeats=2, jobs=jobs) for jobs in (1, 2)]
    assert {r["backbone"] for r in runs[0].summary} == {"toy.random/paper/4", "toy.random/multilevel/4"}
    for one, two in zip(runs[0].summary, runs[1].summary):
        assert one["ci_level"] == 0.95
        for key in ("srcc_ci_low", "srcc_ci_high", "plcc_ci_low", "plcc_ci_high", "rmse_ci_low", "rmse_ci_high"):
            assert one[key] == pytest.approx(two[key], abs=1e-9)


@pytest.mark.slow
def test_on_noise_no_cell_is_bold(tmp_path):
    """Features that carry nothing, 3 repeats, ridge and SVR: the highest of each column is a chance winner, which
    the tables bolded; the corrected resampled t-test does not separate it from the runner-up."""
    data = load_cache(str(_noise_cache(tmp_path)))
    results = cross_validate(data, ["nr", "fr", "pr"], ["MOS_q", "MOS_a", "MOS_c"], ["ridge", "svr", *FLOORS],
                             folds=5, repeats=3)
    rows = table_rows(results.config, results.summary, results.folds, "noise")
    for ci in (False, True):
        _, body, caption = paper_table(rows, ["srcc", "plcc"], ci=ci)
        cells = [c for line in body for c in line[3:]]
        assert not any(c.bold for c in cells) and sum(c.tied for c in cells) >= 12  # every column has a tie
    assert "**" not in render_table(rows, ["srcc", "plcc"], "md")
    assert all(entry["separated"] is False for entry in highest_on_test(results.summary, results.folds))


def _row(mode, regressor, srcc, folds, **extra):
    return {"mode": mode, "backbone": "b", "regressor": regressor, "target": "MOS_q", "srcc_mean": srcc,
            "n_failed": 0, "_protocol": "p", "_file": "f", "_folds": folds, **extra}


def _folds(values, repeat_values=None):
    rows = {}
    for repeat, per_fold in enumerate(repeat_values or [values]):
        for k, v in enumerate(per_fold):
            rows[(repeat, k)] = {"srcc": v, "failed": False, "n_train": 80, "n_test": 20}
    return rows


def test_bold_needs_the_paired_test_and_ties_share_a_mark():
    steady = _folds([0.60, 0.61, 0.59, 0.60, 0.60])
    rows = [_row("nr", "ridge", 0.60, steady), _row("nr", "svr", 0.50, _folds([0.50, 0.51, 0.49, 0.50, 0.50])),
            _row("nr", "mlp", 0.55, _folds([0.95, 0.15, 0.90, 0.20, 0.55]))]
    _, body, caption = paper_table(rows, ["srcc"])
    marks = {line[2]: (line[3].bold, line[3].tied) for line in body}
    assert marks == {"ridge": (False, True), "svr": (False, False), "mlp": (False, True)}  # runner-up mlp: p > 0.05
    rows[2]["srcc_mean"] = 0.45  # now svr is the runner-up, and steadily below
    _, body, _ = paper_table(rows, ["srcc"])
    assert {line[2]: (line[3].bold, line[3].tied) for line in body} == {
        "ridge": (True, False), "svr": (False, False), "mlp": (False, False)}
    assert "corrected resampled t-test" in caption and "†: tied with the best" in caption


def test_a_score_below_the_best_floor_of_its_sample_set_is_marked():
    folds = _folds([0.3] * 5)
    rows = [_row("nr", "ridge", 0.35, folds), _row("nr", "svr", 0.25, folds), _row("fr", "ridge", 0.35, folds),
            _row("nr", "generator-mean", 0.3, folds), _row("nr", "prompt-mean", 0.2, folds),
            _row("fr", "generator-mean", 0.4, folds)]
    md = render_table(rows, ["srcc"], "md")
    lines = {tuple(c.strip() for c in line.split("|")[1:4]): line.split("|")[4].strip() for line in md.splitlines()
             if line.startswith("| NR") or line.startswith("| FR")}
    assert lines == {("NR", "b", "ridge"): "0.350†", ("NR", "b", "svr"): "0.250†°",
                     ("FR", "b", "ridge"): "0.350°"}
    assert "°: below the best label-only floor of its sample set" in md


def test_floors_are_one_row_only_when_every_number_coincides():
    folds = _folds([0.3] * 5)
    same = [_row("nr", name, 0.3, folds, plcc_mean=0.25) for name in FLOORS]
    _, body, caption = paper_table([_row("nr", "ridge", 0.5, folds), *same], ["srcc", "plcc"])
    assert [line[2] for line in body if line[0].startswith("floor")] == [" = ".join(FLOORS)]
    assert "generator-mean = sibling-mean = prompt-mean (all samples): the same numbers in every cell (no test " \
           "prompt in training)" in caption
    apart = [dict(same[0]), dict(same[1], plcc_mean=0.25 + 1e-9), dict(same[2])]  # the same to 3 decimals
    _, body, caption = paper_table([_row("nr", "ridge", 0.5, folds), *apart], ["srcc", "plcc"])
    assert [line[2] for line in body if line[0].startswith("floor")] == ["generator-mean = prompt-mean",
                                                                         "sibling-mean"]
    assert "no test prompt in training" in caption


def test_the_run_shows_its_coinciding_floors_once_in_table_report_and_leaderboard(small_run):
    results, rows = small_run
    md = render_table(rows, ["srcc"], "md")
    assert md.count(" = ".join(FLOORS)) == 2 + 2  # one row and one caption note per sample set
    assert all(line.count("-mean") == 3 for line in md.splitlines() if line.startswith("| floor"))
    printed = format_table(results.summary)
    assert printed.count(" = ".join(FLOORS)) == 2 and "SRCC pooled [95%]" in printed  # NR and FR, MOS_q
    assert len(floors_once(results.summary)) == 5  # ridge nr, nr-prompted (fitted with nr and fr), fr; 2 floors
    assert {tuple(e["floor_names"]) for e in highest_on_test(results.summary, results.folds)} == {tuple(FLOORS)}


def test_ci_and_sd_in_every_format(small_run):
    results, rows = small_run
    md = render_table(rows, ["srcc", "krcc"], "md", ci=True)
    ridge = next(line for line in md.splitlines() if line.startswith("| NR | ") and "ridge" in line)
    row = next(r for r in results.summary if (r["regressor"], r["mode"]) == ("ridge", "nr"))
    assert f"{row['srcc_pooled']:.3f}" in ridge and f"[{row['srcc_ci_low']:.2f}, {row['srcc_ci_high']:.2f}]" in ridge
    assert "MOS_q SRCC (pooled)" in md and "95% interval" in md and "The other columns have no interval" in md
    csv = render_table(rows, ["srcc"], "csv", ci=True).splitlines()
    assert csv[0] == ("method,backbone,regressor,MOS_q SRCC (pooled),MOS_q SRCC (pooled) low,MOS_q SRCC (pooled) "
                      "high,MOS_q SRCC (pooled) mark")
    sd_md = render_table(rows, ["srcc"], "md", sd=True)
    sd, over, n = fold_sd(next(r for r in rows if (r["regressor"], r["mode"]) == ("ridge", "nr"))["_folds"], "srcc")
    per_repeat = [np.mean([f["srcc"] for f in results.folds if (f["regressor"], f["mode"], f["repeat"]) ==
                           ("ridge", "nr", rep)]) for rep in (0, 1)]
    assert (over, n) == ("repeats", 2) and sd == pytest.approx(np.std(per_repeat, ddof=1), abs=1e-12)
    assert f"± {sd:.3f}" in sd_md and "± the sample SD (ddof 1) over the 2 repeats" in sd_md
    latex = render_table(rows, ["srcc"], "latex", sd=True)
    assert r"$\pm$" in latex and "±" not in latex and "†" not in latex
    assert render_table(rows, ["srcc"], "csv", sd=True).splitlines()[0].endswith("MOS_q SRCC SD,MOS_q SRCC mark")
    with pytest.raises(Exception, match="choose one"):
        paper_table(rows, ["srcc"], ci=True, sd=True)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("tables_cli")
    made = fit_nr_run(root, "ridge,svr")
    assert made.exit_code == 0, made.output
    return root


def _crafted(run_folder, tmp_path, change):
    payload = json.loads((run_folder / "run" / "results.json").read_text())
    change(payload)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(payload))
    return path


def test_table_cli_takes_ci_and_sd_and_refuses_both(run_folder):
    runner = CliRunner()
    ci = runner.invoke(cli.main, ["table", str(run_folder / "run"), "--ci"])
    assert ci.exit_code == 0 and "[" in ci.output and "SRCC (pooled)" in ci.output
    sd = runner.invoke(cli.main, ["table", str(run_folder / "run"), "--sd", "--format", "latex"])
    assert sd.exit_code == 0 and r"$\pm$" in sd.output and "over the 3 folds" in sd.output
    both = runner.invoke(cli.main, ["table", str(run_folder / "run"), "--ci", "--sd"])
    assert both.exit_code == 2 and "choose one" in both.output


def test_an_older_results_json_gets_no_bold_no_interval_and_says_why(run_folder, tmp_path):
    def older(payload):
        del payload["folds"]
        for row in payload["summary"]:
            for key in [k for k in row if "_ci_" in k or k in ("ci_level", "ci_groups")]:
                del row[key]

    path = _crafted(run_folder, tmp_path, older)
    shown = CliRunner().invoke(cli.main, ["table", str(path), "--ci"])
    assert shown.exit_code == 0, shown.output
    table = shown.output.split("\n\n")[0]
    assert "**" not in table and "†" not in table and "[" not in table
    assert f"No interval for the rows of {path}: written before intervals were saved" in shown.output
    assert f"No bold or † where a row of {path} competes: it has no fold rows" in shown.output
    assert f"No SD for the rows of {path}" in CliRunner().invoke(cli.main, ["table", str(path), "--sd"]).output


@pytest.mark.parametrize("change, needle", [
    (lambda p: p.update(folds={"a": 1}), "its folds are not a list"),
    (lambda p: p["folds"][1].update(srcc="x"), "fold row 1: srcc 'x' is not a finite number or null"),
    (lambda p: p["folds"][0].update(rmse=[1]), "fold row 0: rmse"),
    (lambda p: p["folds"][0].update(n_train=-3), "fold row 0: n_train '-3' is not a whole number from 0"),
    (lambda p: p["folds"][0].update(repeat=True), "fold row 0: repeat 'True'"),
    (lambda p: p["folds"][0].update(failed="no"), "fold row 0: failed 'no'"),
    (lambda p: p["folds"][2].update(mode=None), "fold row 2: mode is not text"),
    (lambda p: p["folds"].insert(0, 7), "fold row 0 is not an object"),
    (lambda p: p["summary"][0].update(srcc_ci_low="x"), "srcc_ci_low 'x'")])
def test_fold_rows_and_intervals_are_checked_as_untrusted_input(run_folder, tmp_path, change, needle):
    path = _crafted(run_folder, tmp_path, change)
    result = CliRunner().invoke(cli.main, ["table", str(path)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith(f"error: {path}: not a featcache results.json") and needle in lines[0], lines[0]


def test_a_bounded_number_of_fold_rows(run_folder, tmp_path, monkeypatch):
    import regressors.fold_rows

    monkeypatch.setattr(regressors.fold_rows, "MAX_FOLD_ROWS", 3)
    with pytest.raises(Exception, match="15 fold rows, more than 3"):
        load_results([run_folder / "run"])


def test_the_report_names_a_best_only_when_the_test_separates_it():
    summary = [{"mode": "nr", "regressor": r, "target": "MOS_q", "srcc_mean": v, "n_failed": 0}
               for r, v in (("ridge", 0.6), ("svr", 0.5), ("prompt-mean", 0.1))]
    folds = [{"mode": "nr", "regressor": r, "target": "MOS_q", "repeat": 0, "fold": k, "srcc": v + d,
              "failed": False, "n_train": 80, "n_test": 20}
             for r, v in (("ridge", 0.6), ("svr", 0.5)) for k, d in enumerate((0.0, 0.01, -0.01, 0.0, 0.0))]
    (entry,) = highest_on_test(summary, folds)
    assert entry["model"]["regressor"] == "ridge" and entry["separated"] is True and entry["p"] < 0.05
    noisy = [dict(f, srcc=f["srcc"] + (0.3 if f["fold"] % 2 else -0.3) * (f["regressor"] == "ridge")) for f in folds]
    (entry,) = highest_on_test(summary, noisy)
    assert entry["separated"] is False and [r["regressor"] for r in entry["tied"]] == ["svr"]
    (entry,) = highest_on_test(summary)
    assert entry["separated"] is None and entry["model"]["regressor"] == "ridge"


def test_a_failed_fold_of_one_target_leaves_the_other_targets_contest_alone():
    """ridge has a failed fold in MOS_a only: in the MOS_q column it is the highest, with no failed fold there, so
    it competes there (else svr, below it, would be bold as the best of that column)."""
    rows = [_row("nr", "ridge", 0.70, _folds([0.70, 0.71, 0.69, 0.70, 0.70])),
            _row("nr", "ridge", 0.40, _folds([0.0, 0.5, 0.5, 0.5, 0.5]), target="MOS_a", n_failed=1),
            _row("nr", "svr", 0.60, _folds([0.60, 0.61, 0.59, 0.60, 0.60])),
            _row("nr", "svr", 0.30, _folds([0.30, 0.31, 0.29, 0.30, 0.30]), target="MOS_a"),
            _row("nr", "mlp", 0.50, _folds([0.50, 0.51, 0.49, 0.50, 0.50])),
            _row("nr", "mlp", 0.20, _folds([0.20, 0.21, 0.19, 0.20, 0.20]), target="MOS_a")]
    _, body, _ = paper_table(rows, ["srcc"])
    bold = {line[2]: (line[3].bold, line[4].bold) for line in body}
    assert bold == {"ridge (failed folds: MOS_a 1)": (True, False), "svr": (False, True), "mlp": (False, False)}


@pytest.mark.parametrize("change, needle", [
    (lambda p: p["config"].update(split=["group"]), "config split ['group'] is not text"),
    (lambda p: p.update(run=[1]), "its run is not an object"),
    (lambda p: p["run"].update(cache_attrs="abc"), "run cache_attrs is not an object"),
    (lambda p: p["run"].update(cache_attrs={"samples_sha256": 12345}), "samples_sha256 12345 is not text")])
def test_what_decides_the_folds_is_checked_before_two_runs_are_compared(run_folder, tmp_path, change, needle):
    """`table A B` compares the runs' protocols (split, cache samples hash): fields of the wrong kind give the
    one-line error naming the file, not a traceback."""
    path = _crafted(run_folder, tmp_path, change)
    result = CliRunner().invoke(cli.main, ["table", str(path), str(run_folder / "run")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith(f"error: {path}: not a featcache results.json") and needle in lines[0], lines[0]


def test_a_single_split_marks_no_tie_it_could_not_test_and_claims_no_sd():
    """One test fold (--split paper, cross): the paired test has nothing to pair, so no cell is bold or tied
    (a † would say the test ran and did not separate them), the caption says why, and --sd claims no SD."""
    one = lambda v: _folds([v])  # noqa: E731
    rows = [_row("nr", "ridge", 0.9, one(0.9)), _row("nr", "svr", 0.5, one(0.5)),
            _row("nr", "generator-mean", 0.1, one(0.1))]
    _, body, caption = paper_table(rows, ["srcc"], sd=True)
    assert not any(line[3].bold or line[3].tied for line in body)
    assert "fewer than 2 test folds" in caption and "No SD for rows with one test fold" in caption
    assert "over the 1 folds" not in caption
    summary = [dict(r, n_failed=0) for r in rows]
    folds = [dict(f, regressor=r["regressor"], mode="nr", target="MOS_q", repeat=0, fold=0) for r in rows
             for f in r["_folds"].values()]
    [entry] = highest_on_test([{k: v for k, v in r.items() if not k.startswith("_") and k != "backbone"}
                               for r in summary], folds)
    assert entry["separated"] is None and entry["unpaired"]


def test_a_single_split_repeated_is_still_one_test_fold():
    """--split paper --repeats 3: three equal differences of one test fold, p was 0 and the best bold."""
    rows = [_row("nr", "ridge", 0.9, _folds(None, [[0.9]] * 3)), _row("nr", "svr", 0.5, _folds(None, [[0.5]] * 3))]
    _, body, caption = paper_table(rows, ["srcc"])
    assert not any(line[3].bold or line[3].tied for line in body)
    assert "fewer than 2 test folds" in caption
    _, body, caption = paper_table(rows, ["srcc"], sd=True)  # its repeats test the same fold: no "± 0.000"
    assert not any(math.isfinite(line[3].sd) for line in body)
    assert "No SD for rows with one test fold" in caption and "over the 3 repeats" not in caption


def test_a_summary_row_cannot_smuggle_in_the_tables_own_keys(run_folder, tmp_path):
    """`_folds`, `_protocol` and `_file` are what the table attaches to a row; a file's summary row that carries
    them is read without them (its fold rows come from `folds` alone, checked), never a traceback."""
    def smuggle(payload):
        del payload["folds"]
        for row in payload["summary"]:
            row.update(_folds={"xyz": 1}, _protocol=["x"], _file={"a": 1})

    path = _crafted(run_folder, tmp_path, smuggle)
    shown = CliRunner().invoke(cli.main, ["table", str(path), "--sd"])
    assert shown.exit_code == 0 and "Traceback" not in shown.output, shown.output
    assert f"No SD for the rows of {path}: it has no fold rows" in shown.output


def test_the_accuracy_tables_caption_quotes_the_sds_of_its_own_json():
    """benchmarks/tables.py printed a hand-typed SD range (0.005-0.04) that accuracy.json contradicts."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    spec = importlib.util.spec_from_file_location("bench_tables", root / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = json.loads((root / "results" / "accuracy.json").read_text())
    sds = [r["srcc_std"] for t in data["tables"].values() for r in t["summary"] if r.get("srcc_std") is not None]
    assert f"{min(sds):.3f}-{max(sds):.3f}" in module.accuracy()


def test_a_floor_row_takes_each_target_from_any_mode_of_its_sample_set():
    """Two runs on one fold assignment: NR's floors for MOS_q, PR's (the same samples) for MOS_q and MOS_a; the floor
    row of all samples shows MOS_a from PR's rows, not n/a."""
    folds = _folds([0.3] * 5)
    a = lambda row: dict(row, target="MOS_a")  # noqa: E731
    rows = [_row("nr", "ridge", 0.5, folds), _row("nr", "generator-mean", 0.3, folds),
            _row("pr", "ridge", 0.4, folds), a(_row("pr", "ridge", 0.4, folds)),
            _row("pr", "generator-mean", 0.3, folds), a(_row("pr", "generator-mean", 0.2, folds))]
    _, body, _ = paper_table(rows, ["srcc"])
    [floor] = [line for line in body if line[0].startswith("floor")]
    assert [cell.value for cell in floor[3:]] == [0.3, 0.2]


def test_a_table_of_pooled_columns_calls_them_pooled_and_claims_no_sd():
    """`--metric srcc_pooled` (with or without --sd): the caption described fold means and an SD over the folds
    that no column showed."""
    rows = [_row("nr", "ridge", 0.6, _folds([0.6, 0.61, 0.59]), srcc_pooled=0.62),
            _row("nr", "svr", 0.5, _folds([0.5, 0.52, 0.49]), srcc_pooled=0.51)]
    for sd in (False, True):
        _, body, caption = paper_table(rows, ["srcc_pooled"], sd=sd)
        assert [line[3].value for line in body] == [0.62, 0.51]
        assert "Fold means" not in caption and "the sample SD" not in caption, caption
        assert "SRCC (pooled): the pooled value (all out-of-fold predictions of a repeat" in caption, caption
    _, _, caption = paper_table(rows, ["srcc", "srcc_pooled"], sd=True)
    assert "Fold means" in caption and "over the 3 folds" in caption and "pooled columns have none" in caption
