"""Reports and tables: failed folds and floors in the tables, bold and 'highest' only among rows scored on the
same samples, `featcache table` across runs, and run folders that never mix runs or lose an earlier one."""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

import cli
from featcache.errors import FeatcacheError
from regressors import registry
from regressors.cache_data import load_cache
from regressors.cv import cross_validate
from regressors.report import run_folder, write_results
from regressors.summary_text import highest_on_test
from tests.fakedata import make_cache


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
    from regressors.summary_text import format_comparisons
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


def _folds(values, n_train=40, n_test=10):
    """Fold rows {(repeat, fold): row} with the given per-fold SRCC (and PLCC) values, repeat 0."""
    return {(0, k): {"srcc": v, "plcc": v, "failed": False, "n_train": n_train, "n_test": n_test}
            for k, v in enumerate(values)}


def test_bold_is_a_best_among_rows_scored_on_the_same_samples():
    """NR is scored on every sample, FR on those with an image prompt: one bold per column across both compared
    numbers on different test sets. Each sample set gets its own best, and the caption says so."""
    from regressors.tables import paper_table

    def row(mode, regressor, srcc):
        return {"mode": mode, "backbone": "b", "regressor": regressor, "target": "MOS_q", "srcc_mean": srcc,
                "plcc_mean": srcc, "n_failed": 0, "_protocol": "p",
                "_folds": _folds([srcc + d for d in (-0.01, 0.0, 0.01, 0.0, 0.0)])}

    rows = [row("nr", "ridge", 0.5), row("nr", "svr", 0.4), row("fr", "ridge", 0.3), row("fr", "svr", 0.45)]
    header, body, caption = paper_table(rows, ["srcc"])
    best = {(line[0], line[2]) for line in body if line[3].bold}
    assert best == {("NR", "ridge"), ("FR", "svr")}
    assert "and sample set" in caption and "picked on the test folds" in caption
    header, body, caption = paper_table(rows[:2], ["srcc"])
    assert "and sample set" not in caption


def test_the_highest_test_score_is_picked_per_sample_set():
    """An FR score (samples with a prompt) beat an NR score (every sample) for "highest" although they come from
    other test samples; each sample set has its own line, with the floor of the same samples beside it."""
    def row(mode, regressor, srcc):
        return {"mode": mode, "regressor": regressor, "target": "MOS_q", "srcc_mean": srcc, "n_failed": 0}

    best = highest_on_test([row("nr", "ridge", 0.013), row("fr", "ridge", 0.026), row("nr", "prompt-mean", 0.3),
                            row("fr", "prompt-mean", 0.5)])
    picked = {(b["prompted"], b["model"]["mode"], b["floor"]["mode"]) for b in best}
    assert picked == {(False, "nr", "nr"), (True, "fr", "fr")}


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
def test_table_in_the_paper_layout(tmp_path, monkeypatch):
    from regressors.results_files import load_results
    from regressors.tables import render_table

    make_cache(tmp_path, backbones=("toy.random/paper/4", "toy.random/multilevel/4"))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    out = runner.invoke(cli.main, ["bench", "--cache", "c.h5", "--regressor", "ridge,svr,prompt-mean", "--folds", "3",
                                   "--mode", "nr,fr", "--out", "b", "--quiet", "--plot", "svr"])
    assert out.exit_code == 0, out.output
    report = (tmp_path / "b" / "report.md").read_text()
    assert report.splitlines()[2].startswith("| method | backbone | regressor | MOS_q SRCC | MOS_q PLCC")
    assert (tmp_path / "b" / "backbones_svr_MOS_q.png").is_file()
    assert len(list((tmp_path / "b").glob("scatter_*.png"))) == 2 * 3 * 3  # backbones x modes (+ nr-prompted) x targets
    rows = load_results([tmp_path / "b"])
    md = render_table(rows, ["srcc"], "md")
    body = [line for line in md.splitlines() if line.startswith("| NR |")]
    # 2 backbones x 2 regressors; the backbones hold the same features, so their ridge rows tie: no bold
    assert len(body) == 4 and sum("**" in line for line in body) == 0 and sum("†" in line for line in body) >= 2
    assert "| floor (all samples) | none (labels only) | generator-mean = sibling-mean = prompt-mean |" in md
    srcc = {line: float(line.split("|")[4].strip(" *†°")) for line in body}
    assert "†" in max(srcc, key=srcc.get)
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


@pytest.mark.parametrize("order", [["prompt-mean", "generator-mean", "sibling-mean"],
                                   ["sibling-mean", "prompt-mean", "generator-mean"]])
def test_floor_rows_follow_the_run_order(order):
    """The floor rows came out of a set of strings, so their order changed with Python's hash seed between runs of
    the same report; they follow the run's regressor order now."""
    from regressors.tables import render_table

    rows = [{"mode": mode, "backbone": "b", "regressor": r, "target": "MOS_q", "srcc_mean": 0.1 * len(r),
             "n_failed": 0, "_protocol": "p"} for mode in ("nr", "fr") for r in ["ridge"] + order]  # floors differ
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


@pytest.mark.slow  # over 0.7 s: run by CI and make test-all
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


@pytest.mark.slow
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
    floors = " = ".join(registry.floor_names())  # under the group split the three coincide: one row
    assert tables["a", "b"].output.count(f"| floor (all samples) | none (labels only) | {floors} |") == 1
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
    return line.split("|")[4].strip(" *†°")


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
    from regressors.results_files import SAME_CELL_TOLERANCE

    assert SAME_CELL_TOLERANCE == 1e-9  # as the README states


@pytest.mark.slow
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


def test_the_report_names_the_plus_minus_of_every_cell_a_population_sd():
    """report.md's ± (summaries: np.std, ddof 0) is not the sample SD (ddof 1) of `featcache table --sd`: the
    report says which it is."""
    from regressors.cv import CVResults
    from regressors.report import report_markdown

    text = report_markdown(CVResults({"split": "group"}), "t", [])
    assert "population SD (ddof 0)" in text


def test_a_single_split_comparison_says_why_it_has_no_p(tmp_path):
    """--split paper: one test fold, however often repeated; the comparison has no p and no interval, and the
    report says why beside the n/a."""
    from regressors.report import report_markdown

    results = cross_validate(load_cache(make_cache(tmp_path)), ["nr", "pr"], ["MOS_q"], ["ridge"], split="paper",
                             repeats=2)
    [comparison] = results.comparisons
    assert comparison["p"] is None or np.isnan(comparison["p"])  # null in results.json
    text = report_markdown(results, "t", [])
    section = text.split("## Modes compared")[1].split("## Every cell")[0]
    assert "n/a" in section and "fewer than 2 test folds" in section, section
