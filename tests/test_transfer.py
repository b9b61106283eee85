"""featcache transfer: a hand computation of the off-diagonal cells, the diagonal as cross_validate gives it,
--target-map, the table's rendering and the one-line refusals (nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner
from scipy import stats

import cli
from tests.fakedata import make_cache


def _cache(root: Path, name: str, seed: int, **kwargs) -> Path:
    folder = root / name
    folder.mkdir()
    path = make_cache(folder, seed=seed, **kwargs)
    return path.rename(folder / f"{name}.h5")


@pytest.fixture
def two(tmp_path):
    return _cache(tmp_path, "a", 1), _cache(tmp_path, "b", 2)


def _rename_target(path: Path, old: str, new: str) -> None:
    with h5py.File(path, "r+") as f:
        f["targets"].move(old, new)
        order = json.loads(f["targets"].attrs["order"])
        f["targets"].attrs["order"] = json.dumps([new if t == old else t for t in order])


def _cell(results, source, test, target="MOS_q", mode="nr"):
    return next(c for c in results.cells if (c["source"], c["test"], c["target"], c["mode"]) ==
                (source, test, target, mode))


def test_off_diagonal_is_ridge_trained_on_all_of_a_scored_on_all_of_b(two):
    from regressors.cache_data import load_cache
    from regressors.design import content_groups, design_matrix
    from regressors.metrics import fit_logistic, plcc_after_logistic
    from regressors.standardized import StandardizedRidge
    from regressors.transfer import transfer

    a, b = two
    results = transfer([str(a), str(b)], None, ["nr"], ["MOS_q"], "ridge", folds=3)
    data_a, data_b = load_cache(str(a)), load_cache(str(b))
    xa, rows_a = design_matrix(data_a, "nr")
    xb, rows_b = design_matrix(data_b, "nr")
    ya, yb = data_a.target("MOS_q")[rows_a], data_b.target("MOS_q")[rows_b]
    model = StandardizedRidge().fit(xa, ya, groups=content_groups(data_a)[rows_a])
    pred = model.predict(xb)
    cell = _cell(results, "a", "b")
    assert cell["protocol"] == "transfer" and cell["n_train"] == len(ya) and cell["n_test"] == len(yb)
    assert cell["srcc"] == pytest.approx(stats.spearmanr(yb, pred).statistic, abs=1e-9)
    assert cell["plcc"] == pytest.approx(stats.pearsonr(yb, pred).statistic, abs=1e-9)
    logistic = fit_logistic(ya, model.predict(xa))  # fitted on the source, never on b's labels
    assert cell["plcc_logistic"] == pytest.approx(plcc_after_logistic(yb, pred, logistic), abs=1e-6)
    assert cell["plcc_logistic"] != pytest.approx(plcc_after_logistic(yb, pred), abs=1e-6)  # fitted on b: differs
    assert "rmse" not in cell


def test_diagonal_is_the_sources_cross_validation(two):
    from regressors.cache_data import load_cache
    from regressors.cv import cross_validate
    from regressors.transfer import transfer

    a, b = two
    results = transfer([str(a), str(b)], None, ["nr"], ["MOS_q"], "ridge", folds=3, repeats=2, seed=4)
    for path, name in ((a, "a"), (b, "b")):
        cv = cross_validate(load_cache(str(path)), ["nr"], ["MOS_q"], ["ridge"], split="group", folds=3,
                            repeats=2, seed=4, jobs=1)
        row = next(r for r in cv.summary if r["target"] == "MOS_q")
        cell = _cell(results, name, name)
        assert cell["protocol"] == "cv" and cell["n_folds"] == 6
        for metric in ("srcc", "plcc", "plcc_logistic"):
            assert cell[metric] == pytest.approx(row[f"{metric}_mean"], abs=1e-12)


def test_target_map_links_differently_named_targets(two):
    from regressors.transfer import transfer

    a, b = two
    plain = transfer([str(a), str(b)], None, ["nr"], ["MOS_q"], "ridge", folds=3)
    _rename_target(b, "MOS_q", "mos_quality")
    mapped = transfer([str(a), str(b)], None, ["nr"], ["MOS_q"], "ridge", ["a:MOS_q=b:mos_quality"], folds=3)
    assert [c["srcc"] for c in mapped.cells] == pytest.approx([c["srcc"] for c in plain.cells], abs=1e-12)
    assert _cell(mapped, "b", "a")["source_target"] == "mos_quality"
    assert mapped.config["targets"] == [{"target": "MOS_q", "names": {"a": "MOS_q", "b": "mos_quality"}}]


def test_cli_writes_and_table_renders_the_matrix(two, tmp_path):
    a, b = two
    out = tmp_path / "out"
    result = CliRunner().invoke(cli.main, ["transfer", str(a), str(b), "--target", "MOS_q", "--folds", "3",
                                           "--jobs", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Labels on different scales are expected" in result.output
    payload = json.loads((out / "transfer.json").read_text())
    assert payload["kind"] == "transfer" and len(payload["cells"]) == 4
    diagonal = next(c for c in payload["cells"] if c["source"] == c["test"] == "a")
    table = CliRunner().invoke(cli.main, ["table", str(out), "--metric", "srcc"])
    assert table.exit_code == 0, table.output
    row = next(line for line in table.output.splitlines() if line.startswith("| a |"))
    assert row.split("|")[2].strip() == f"({diagonal['srcc']:.3f})"  # the diagonal in brackets
    csv = CliRunner().invoke(cli.main, ["table", str(out / "transfer.json"), "--format", "csv"])
    assert csv.exit_code == 0 and csv.output.splitlines()[0].startswith("mode,target,train,a SRCC,a PLCC")
    refused = CliRunner().invoke(cli.main, ["table", str(out), "--metric", "rmse"])
    assert refused.exit_code == 2 and "source's label scale" in refused.output


def _refused(args: list[str], out: Path, words: str) -> None:
    result = CliRunner().invoke(cli.main, ["transfer", *args, "--out", str(out), "--jobs", "1"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0], result.output
    assert not out.exists()


def test_bad_inputs_are_one_line_and_write_nothing(two, tmp_path):
    a, b = two
    out = tmp_path / "never"
    _refused([str(a)], out, "at least two caches")
    _refused([str(a), str(a.parent / ".." / "a" / "a.h5")], out, "are the same cache")
    other = _cache(tmp_path, "c", 3, backbones=("other.random/paper/4",))
    _refused([str(a), str(other)], out, "no common backbone")
    _refused([str(a), str(b), "--target-map", "a:MOS_q"], out, "expected CACHE:TARGET=CACHE:TARGET")
    _refused([str(a), str(b), "--target-map", "z:MOS_q=b:MOS_q"], out, "'z' is none of the caches")
    _rename_target(b, "MOS_a", "authenticity")
    _refused([str(a), str(b), "--target", "MOS_a"], out, "target MOS_a is not in")
    t2i_only = _cache(tmp_path, "d", 4, i2i_prompts=0)
    _refused([str(a), str(t2i_only), "--mode", "fr"], out, "has no sample with an image prompt")
    _refused([str(a), str(b), "--regressor", "prompt-mean"], out, "label-only floor cannot transfer")


def test_a_stem_two_caches_share_must_be_given_as_a_path(tmp_path):
    x, y = tmp_path / "x", tmp_path / "y"
    for folder, seed in ((x, 5), (y, 6)):
        folder.mkdir()
        make_cache(folder, seed=seed).rename(folder / "db.h5")
    out = tmp_path / "never"
    _refused([str(x / "db.h5"), str(y / "db.h5"), "--target-map", "db:MOS_q=db:MOS_q"], out, "names several caches")
    from regressors.transfer import database_names

    assert database_names([str(x / "db.h5"), str(y / "db.h5")]) == [str(x / "db.h5"), str(y / "db.h5")]


def _transferred(two, tmp_path) -> tuple:
    """`featcache transfer` of the two caches on MOS_q into tmp_path/out: (the folder, its transfer.json)."""
    a, b = two
    out = tmp_path / "out"
    assert CliRunner().invoke(cli.main, ["transfer", str(a), str(b), "--target", "MOS_q", "--folds", "3", "--jobs",
                                         "1", "--out", str(out)]).exit_code == 0
    return out, json.loads((out / "transfer.json").read_text())


def test_table_refuses_a_tampered_transfer_json(two, tmp_path):
    out, payload = _transferred(two, tmp_path)
    payload["cells"][1]["srcc"] = "0.99"
    (out / "transfer.json").write_text(json.dumps(payload))
    result = CliRunner().invoke(cli.main, ["table", str(out / "transfer.json")])
    assert result.exit_code == 2 and "not a featcache transfer.json (a cell's srcc" in result.output
    both = CliRunner().invoke(cli.main, ["table", str(out / "transfer.json"), str(out / "transfer.json")])
    assert both.exit_code == 2 and "rendered alone" in both.output


def _hand_predictions(a, b):
    """Ridge trained on all of a, its predictions of b, b's labels and prompt groups, and the source's logistic."""
    from regressors.cache_data import load_cache
    from regressors.design import content_groups, design_matrix
    from regressors.metrics import fit_logistic
    from regressors.standardized import StandardizedRidge

    data_a, data_b = load_cache(str(a)), load_cache(str(b))
    xa, rows_a = design_matrix(data_a, "nr")
    xb, rows_b = design_matrix(data_b, "nr")
    ya, yb = data_a.target("MOS_q")[rows_a], data_b.target("MOS_q")[rows_b]
    model = StandardizedRidge().fit(xa, ya, groups=content_groups(data_a)[rows_a])
    return yb, model.predict(xb), content_groups(data_b)[rows_b], fit_logistic(ya, model.predict(xa))


def test_transfer_interval_is_the_group_bootstrap_over_the_test_prompts(two):
    import numpy as np

    from regressors.inference import BOOTSTRAP_SAMPLES, PooledPredictions, group_bootstrap_interval
    from regressors.metrics import logistic4
    from regressors.transfer import transfer

    a, b = two
    results = transfer([str(a), str(b)], None, ["nr"], ["MOS_q"], "ridge", folds=3, seed=7)
    cell = _cell(results, "a", "b")
    yb, pred, groups, logistic = _hand_predictions(a, b)
    assert cell["ci_groups"] == len(np.unique(groups)) >= 3
    plain = PooledPredictions(yb, pred[None, :], groups)
    mapped = PooledPredictions(yb, logistic4(pred, *logistic)[None, :], groups)
    for metric, pooled, which in (("srcc", plain, "srcc"), ("plcc", plain, "plcc"),
                                  ("plcc_logistic", mapped, "plcc")):
        low, high = group_bootstrap_interval(pooled, which, samples=BOOTSTRAP_SAMPLES, seed=7)
        assert (cell[f"{metric}_ci_low"], cell[f"{metric}_ci_high"]) == pytest.approx((low, high), abs=1e-9)
        assert cell[f"{metric}_ci_low"] < cell[metric] < cell[f"{metric}_ci_high"], metric  # brackets the value
    again = _cell(transfer([str(a), str(b)], None, ["nr"], ["MOS_q"], "ridge", folds=3, seed=7), "a", "b")
    assert all(again[k] == cell[k] for k in ("srcc_ci_low", "srcc_ci_high", "plcc_logistic_ci_high"))  # seeded
    other = _cell(transfer([str(a), str(b)], None, ["nr"], ["MOS_q"], "ridge", folds=3, seed=8), "a", "b")
    assert other["srcc_ci_low"] != cell["srcc_ci_low"]  # the seed draws the resamples


def test_transfer_interval_is_nan_with_fewer_than_three_test_groups():
    import numpy as np

    from regressors.transfer import INTERVAL_KEYS, transfer_intervals

    rng = np.random.default_rng(0)
    y = rng.normal(size=40)
    pred = y + rng.normal(size=40)
    two_groups = transfer_intervals(y, pred, np.repeat([0, 1], 20), None, seed=0, samples=50)
    assert all(np.isnan(two_groups[k]) for k in INTERVAL_KEYS)
    three = transfer_intervals(y, pred, np.repeat([0, 1, 2, 3], 10), None, seed=0, samples=50)
    assert all(np.isfinite(three[k]) for k in INTERVAL_KEYS)
    assert three["plcc_logistic_ci_low"] == three["plcc_ci_low"]  # no logistic: the plain PLCC's interval


def test_diagonal_carries_the_cross_validations_pooled_value_and_interval(two):
    from regressors.cache_data import load_cache
    from regressors.cv import cross_validate
    from regressors.transfer import transfer

    a, b = two
    results = transfer([str(a), str(b)], None, ["nr"], ["MOS_q"], "ridge", folds=3, seed=4)
    cv = cross_validate(load_cache(str(a)), ["nr"], ["MOS_q"], ["ridge"], split="group", folds=3, seed=4, jobs=1)
    row = next(r for r in cv.summary if r["target"] == "MOS_q")
    cell = _cell(results, "a", "a")
    for metric in ("srcc", "plcc"):
        assert cell[f"{metric}_pooled"] == pytest.approx(row[f"{metric}_pooled"], abs=1e-12)
        assert (cell[f"{metric}_ci_low"], cell[f"{metric}_ci_high"]) == (row[f"{metric}_ci_low"],
                                                                        row[f"{metric}_ci_high"])
        assert cell[f"{metric}_ci_low"] <= cell[f"{metric}_pooled"] <= cell[f"{metric}_ci_high"]
    assert cell["plcc_logistic_pooled"] != cell["plcc_logistic_pooled"]  # NaN: cv pools no logistic PLCC


def test_table_ci_shows_value_and_interval(two, tmp_path):
    out, payload = _transferred(two, tmp_path)
    off = next(c for c in payload["cells"] if (c["source"], c["test"]) == ("a", "b"))
    diagonal = next(c for c in payload["cells"] if c["source"] == c["test"] == "a")
    plain = CliRunner().invoke(cli.main, ["table", str(out), "--metric", "srcc"])
    assert "[" not in next(line for line in plain.output.splitlines() if line.startswith("| a |"))  # compact
    shown = CliRunner().invoke(cli.main, ["table", str(out), "--metric", "srcc", "--ci"])
    assert shown.exit_code == 0, shown.output
    cells = next(line for line in shown.output.splitlines() if line.startswith("| a |")).split("|")
    assert cells[2].strip() == (f"({diagonal['srcc']:.3f}; pooled {diagonal['srcc_pooled']:.3f} "
                                f"[{diagonal['srcc_ci_low']:.3f}, {diagonal['srcc_ci_high']:.3f}])")
    assert cells[3].strip() == f"{off['srcc']:.3f} [{off['srcc_ci_low']:.3f}, {off['srcc_ci_high']:.3f}]"
    assert "percentile interval" in shown.output and "pooled over all out-of-fold" in shown.output
    assert "[low, high]" in (out / "transfer.md").read_text()  # the written matrix carries them
    csv = CliRunner().invoke(cli.main, ["table", str(out), "--metric", "srcc", "--ci", "--format", "csv"])
    assert csv.output.splitlines()[0].startswith("mode,target,train,a SRCC,a SRCC pooled,a SRCC low,a SRCC high,"
                                                 "b SRCC,b SRCC pooled,b SRCC low,b SRCC high,cross-validated")
    header = (out / "transfer.csv").read_text().splitlines()[0].split(",")
    assert {"srcc_ci_low", "plcc_logistic_ci_high", "srcc_pooled"} <= set(header)
    assert CliRunner().invoke(cli.main, ["table", str(out), "--sd"]).exit_code == 2


def _payload() -> dict:
    """A minimal transfer.json of two databases, one block."""
    cells = [{"mode": "nr", "target": "MOS_q", "source": s, "test": t, "protocol": "cv" if s == t else "transfer",
              "srcc": 0.5, "plcc": 0.5, "n_failed": 0 if s == t else None} for s in "ab" for t in "ab"]
    return {"kind": "transfer", "config": {"databases": ["a", "b"], "modes": ["nr"], "cv": {"folds": 3}},
            "cells": cells}


@pytest.mark.parametrize("tamper, needle", [
    (lambda p: p["cells"][0].update(n_failed="abc"), "a cell's n_failed 'abc' is not a whole number or null"),
    (lambda p: p["cells"][0].update(n_failed=[1]), "a cell's n_failed '[1]' is not a whole number"),
    (lambda p: p["config"].update(cv=[1]), "config cv is not an object"),
    (lambda p: p["config"]["databases"].append("a"), "config databases names a database twice"),
    (lambda p: p["config"]["databases"].extend(f"d{i}" for i in range(20000)),
     "the block nr, MOS_q has 4 distinct cells, not one per training and test database (400080004)"),
    (lambda p: p["cells"].pop(), "the block nr, MOS_q has 3 distinct cells")])
def test_a_crafted_transfer_json_is_refused_before_rendering(tmp_path, tamper, needle):
    from regressors.transfer_table import render_transfer, transfer_problem

    payload = _payload()
    assert transfer_problem(payload) is None and "| a | (0.500) |" in render_transfer(payload)
    tamper(payload)
    assert needle in transfer_problem(payload)
    (tmp_path / "t.json").write_text(json.dumps(payload))
    result = CliRunner().invoke(cli.main, ["table", str(tmp_path / "t.json")])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and needle in result.output, result.output
