"""fit and bench as the library and the command line take them: labels checked against the annotation,
targets and modes chosen or refused, floors beside any regressor list, the featcache.toml defaults, and
new modes and regressors as one table entry each."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from featcache.errors import FeatcacheError
from regressors import registry
from regressors.cache_data import load_cache
from regressors.cv import cross_validate
from regressors.fit import bench, fit, modes_for
from tests.fakedata import make_cache


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


@pytest.mark.slow  # over 0.7 s: run by CI and make test-all
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


@pytest.mark.slow
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


@pytest.mark.slow  # over 0.7 s: run by CI and make test-all
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


@pytest.mark.slow  # over 0.7 s: run by CI and make test-all
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


@pytest.mark.slow
def test_the_readme_featcache_toml_example_resolves_as_documented(tmp_path, monkeypatch):
    """root absolute (or relative to the toml), annotation relative to the root, cache next to the toml (only
    there); backbone and pool together choose for fit."""
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
    fit = ["fit", "--regressor", "ridge", "--folds", "3", "--quiet", "--no-figures", "--labels", "cache"]
    out = CliRunner().invoke(cli.main, fit)  # a toml names a cache inside its own folder only
    assert out.exit_code == 2 and "may only name a cache inside its own folder" in out.output, out.output
    out = CliRunner().invoke(cli.main, [*fit, "--cache", str(db / "c.h5")])
    assert out.exit_code == 0 and out.output.startswith("toy.random/multilevel/4:"), out.output


@pytest.mark.slow  # over 0.7 s: run by CI and make test-all
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
    assert payload["config"]["regressors"] == ["ridge", *floors, *registry.zero_shot_names()]
    assert [r["regressor"] for r in payload["summary"]] == ["ridge", *floors]  # NR alone: no image prompt to compare
    table = (tmp_path / "with" / "table.md").read_text()
    one_row = " = ".join(floors)  # the group split: the three coincide, shown once
    assert f"| floor (all samples) | none (labels only) | {one_row} |" in table
    assert "Floors read no pixel." in table
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
    assert mixed.exit_code == 0 and f"| floor (all samples) | none (labels only) | {one_row} |" in mixed.output
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


def test_every_backbone_of_a_bench_fits_the_same_rows_with_the_default_modes(tmp_path):
    """The default modes are decided once; the matched reference NR-prompted, added beside them, fits no floors of
    its own on any backbone (the first backbone's added reference was handed to the next as a mode asked for)."""
    path = make_cache(tmp_path, backbones=("toy.random/paper/4", "toy.random/multilevel/4"))
    results = bench(str(path), targets=["MOS_q"], regressors=["ridge", "prompt-mean"], folds=3, labels="cache")
    cells = {}
    for row in results.summary:
        cells.setdefault(row["backbone"], set()).add((row["mode"], row["regressor"]))
    first, second = cells.values()
    assert first == second and ("nr-prompted", "prompt-mean") not in first
    assert ("nr-prompted", "ridge") in first
