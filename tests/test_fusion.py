"""Fused backbones (`--backbone A+B`): the same numbers as a hand-concatenated cache, block weighting inside the
estimators and saved heads, bench and table with fusions, short forms of the view ids, and the refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from featcache.errors import FeatcacheError
from regressors.cache_data import load_cache, resolve_backbone_id
from regressors.cv import cross_validate
from regressors.fit import bench, fit
from regressors.preprocess import FoldScaler, block_weights
from tests.fakedata import add_backbone, make_fused_cache

SMALL, LARGE, CAT = "toy.random/paper/4", "toy.random/paper/native", "toy.random/paper/cat"
FUSED = f"{SMALL}+{LARGE}"
CV = dict(folds=2, jobs=1, floors=False, labels="cache")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Two backbones (3 and 8 columns) and their hand-made concatenation under a third id."""
    folder = tmp_path_factory.mktemp("fused")
    path = make_fused_cache(folder, small=3, large=8, i2i_prompts=3, t2i_prompts=4, per=2)
    add_backbone(path, CAT, np.concatenate([load_cache(str(path), b).emb for b in (SMALL, LARGE)], axis=1))
    return path


def _predicted(results) -> dict:
    """Every out-of-fold prediction of a run, by (mode, regressor, fold)."""
    return {(p.mode, p.regressor, p.repeat, p.fold): p.y_pred for p in results.predictions}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_fused_rows_are_the_parts_concatenated_in_order(cache):
    fused = load_cache(str(cache), "toy/paper/native+toy/paper/4")
    small, large = load_cache(str(cache), SMALL), load_cache(str(cache), LARGE)
    assert fused.backbone_id == f"{LARGE}+{SMALL}" and fused.parts == (LARGE, SMALL)
    assert fused.part_dims == (8, 3) and fused.blocks == (8, 3)
    assert np.array_equal(fused.emb, np.concatenate([large.emb, small.emb], axis=1))


def test_unweighted_fusion_equals_the_hand_concatenated_cache(cache):
    plain = fit(str(cache), CAT, ["nr"], ["MOS_q"], ["ridge", "svr"], **CV).results
    fused = fit(str(cache), FUSED, ["nr"], ["MOS_q"], ["ridge", "svr"], block_weights=False, **CV).results
    assert _same(_predicted(fused), _predicted(plain)) and {k[1] for k in _predicted(plain)} == {"ridge", "svr"}
    assert fused.config["backbone"] == FUSED and fused.config["fused"] == {FUSED: [SMALL, LARGE]}
    assert fused.config["block_weights"] == "none" and "fused" not in plain.config


@pytest.mark.parametrize("modes, regressor", [(["fr", "pr-diff"], "ridge"), (["nr"], "svr")])
def test_weighted_fusion_equals_the_hand_concatenated_cache_with_its_blocks(cache, modes, regressor):
    fused = fit(str(cache), FUSED, modes, ["MOS_q"], [regressor], **CV).results
    by_hand = load_cache(str(cache), CAT)
    by_hand.parts, by_hand.part_dims = (SMALL, LARGE), (3, 8)  # the same cache, told its block widths
    assert by_hand.blocks == (3, 8)
    same = cross_validate(by_hand, modes, ["MOS_q"], [regressor], folds=2, jobs=1)
    assert _same(_predicted(fused), _predicted(same)) and {k[0] for k in _predicted(same)} == set(modes)
    unweighted = _predicted(fit(str(cache), CAT, modes, ["MOS_q"], [regressor], **CV).results)
    assert not any(np.allclose(_predicted(fused)[k], v) for k, v in unweighted.items())  # weighting changes each
    assert fused.config["block_weights"] == "equal"


def test_block_weights_give_each_block_equal_variance_and_keep_the_total():
    w = block_weights((2, 8), 2 * 10 + 1)  # fr-diff-like: two copies of (2 + 8) columns, then a flag
    assert np.isclose((w[:2] ** 2).sum(), (w[2:10] ** 2).sum())  # equal total variance per block
    assert np.isclose((w[:10] ** 2).sum(), 10) and np.array_equal(w[:10], w[10:20]) and w[20] == 1.0
    assert block_weights(None, 5) is None and block_weights((5,), 5) is None
    with pytest.raises(ValueError):
        block_weights((2, 8), 9)
    x = np.random.default_rng(0).normal(size=(50, 10)) * np.arange(1, 11)
    z = FoldScaler(None, (2, 8)).fit_transform(x)
    assert np.isclose(z[:, :2].var(axis=0).sum(), z[:, 2:].var(axis=0).sum())


@pytest.mark.parametrize("regressor", ["ridge", "svr"])
def test_a_fused_head_keeps_its_blocks_and_parts(cache, tmp_path, regressor):
    from regressors.design import content_groups, design_matrix
    from regressors.fitting import fit_estimator
    from regressors.heads_io import load_head
    from regressors.registry import get_regressor

    head = tmp_path / "h.safetensors"
    data = fit(str(cache), FUSED, ["nr"], ["MOS_q"], [regressor], save_head=str(head), **CV).data
    model, meta = load_head(head)
    assert tuple(model.blocks) == (3, 8) and meta["backbone_id"] == FUSED
    assert [p["backbone_id"] for p in meta["parts"]] == [SMALL, LARGE]
    assert [p["feature_dim"] for p in meta["parts"]] == [3, 8] and meta["feature_dim"] == 11
    assert meta["parts"][1]["backbone_config"]["id"] == LARGE
    x, rows = design_matrix(data, "nr")
    y, groups = data.target("MOS_q")[rows], content_groups(data)[rows]

    def refit(**params):
        return fit_estimator(get_regressor(regressor).factory(0, "cpu").set_params(**params), x, y, groups)

    np.testing.assert_allclose(model.predict(x), refit(blocks=(3, 8)).predict(x), rtol=1e-6, atol=1e-6)
    assert not np.allclose(model.predict(x), refit().predict(x), atol=1e-3)  # the saved blocks matter


@pytest.mark.slow  # imports torch
def test_an_mlp_head_saves_and_applies_its_block_weights(tmp_path):
    from regressors.heads_io import load_head, save_head
    from regressors.mlp import MLPHead

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 11)) * np.arange(1, 12)
    y = x[:, 0] + rng.normal(0, 0.5, 40)
    weighted = MLPHead(max_epochs=3, blocks=(3, 8)).fit(x, y)
    save_head(weighted, "mlp", tmp_path / "h.safetensors", {"backbone_id": FUSED})
    model, _ = load_head(tmp_path / "h.safetensors")
    assert tuple(model.blocks) == (3, 8)
    np.testing.assert_allclose(model.predict(x), weighted.predict(x), rtol=1e-5, atol=1e-5)
    plain = MLPHead(max_epochs=3).fit(x, y)
    assert not np.allclose(plain.predict(x), weighted.predict(x), atol=1e-3)
    z = weighted.scaler_.transform(x)  # what the stacked trainer fed: the blocks weighted after standardising
    assert np.isclose(z[:, :3].var(axis=0).sum(), z[:, 3:].var(axis=0).sum(), rtol=0.05)


def test_bench_takes_fusions_beside_single_backbones(cache):
    result = bench(str(cache), [SMALL, FUSED], ["nr"], ["MOS_q"], ["ridge"], **CV)
    assert result.config["backbone"] == [SMALL, FUSED] and result.config["fused"] == {FUSED: [SMALL, LARGE]}
    assert {r["backbone"] for r in result.summary} == {SMALL, FUSED}
    singles = bench(str(cache), None, ["nr"], ["MOS_q"], ["ridge"], **CV)  # the default: every id, unfused
    assert sorted(singles.config["backbone"]) == sorted([SMALL, LARGE, CAT]) and "fused" not in singles.config


def test_bench_through_the_cli_records_the_fusion_and_table_names_it(cache, tmp_path):
    run = tmp_path / "run"
    out = CliRunner().invoke(cli.main, ["bench", "--cache", str(cache), "--backbone", f"toy/paper/4,{FUSED}",
                                        "--mode", "nr", "--target", "MOS_q", "--regressor", "ridge", "--folds", "2",
                                        "--labels", "cache", "--quiet", "--no-figures", "--out", str(run)])
    assert out.exit_code == 0, out.output
    saved = json.loads((run / "results.json").read_text())
    assert saved["config"]["fused"] == {FUSED: [SMALL, LARGE]} and saved["config"]["block_weights"] == "equal"
    table = CliRunner().invoke(cli.main, ["table", str(run)])
    assert table.exit_code == 0, table.output
    assert FUSED in table.output and SMALL in table.output


def test_short_forms_name_the_view():
    ids = ["tf_efficientnet_lite0.in1k/multilevel/224", "tf_efficientnet_lite0.in1k/multilevel/native",
           "tf_efficientnet_lite0.in1k/paper/224x5", "vgg19.tv_in1k/paper/224"]
    assert resolve_backbone_id(ids, "lite0/multilevel/native", "c.h5") == ids[1]
    assert resolve_backbone_id(ids, "lite0/paper/224x5", "c.h5") == ids[2]
    assert resolve_backbone_id(ids, "tf_efficientnet_lite0.in1k/multilevel/native", "c.h5") == ids[1]
    assert resolve_backbone_id(ids, "tf_efficientnet_lite0/multilevel/224", "c.h5") == ids[0]
    assert resolve_backbone_id(ids, "lite0/paper", "c.h5") == ids[2]  # existing forms keep working
    assert resolve_backbone_id(ids, "vgg19", "c.h5") == ids[3]
    with pytest.raises(FeatcacheError, match="add the view .*lite0/multilevel/native") as error:
        resolve_backbone_id(ids, "lite0/multilevel", "c.h5")
    assert ids[0] in str(error.value) and ids[1] in str(error.value)
    assert resolve_backbone_id(ids, "lite0/multilevel/native+vgg19", "c.h5") == f"{ids[1]}+{ids[3]}"


def _refused(args: list[str], tmp_path, expected: str):
    run = tmp_path / "out"
    result = CliRunner().invoke(cli.main, [*args, "--mode", "nr", "--target", "MOS_q", "--regressor", "ridge",
                                           "--folds", "2", "--labels", "cache", "--quiet", "--out", str(run)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], result.output
    assert not run.exists()


@pytest.mark.parametrize("backbone, expected", [
    (f"{SMALL}+resnet50", "part 'resnet50': unknown backbone"),
    (f"{SMALL}+toy/paper/4", "both name toy.random/paper/4; name each backbone once"),
    (f"{SMALL}+", "an empty part"),
    ("toy/paper+toy/paper/native", "add the view"),
])
def test_bad_fusions_are_one_line_refusals(cache, tmp_path, backbone, expected):
    _refused(["fit", "--cache", str(cache), "--backbone", backbone], tmp_path, expected)


def test_parts_extracted_on_different_images_are_refused(tmp_path):
    path = make_fused_cache(tmp_path, small=3, large=4, i2i_prompts=2, t2i_prompts=3, per=2)
    emb = load_cache(str(path), LARGE).emb
    done = np.ones(len(emb), bool)
    done[1] = False
    add_backbone(path, "toy.random/paper/half", emb, done)
    _refused(["fit", "--cache", str(path), "--backbone", f"{SMALL}+toy/paper/half"], tmp_path,
             "extracted in toy.random/paper/4 but not in toy.random/paper/half")
    _refused(["bench", "--cache", str(path), "--backbone", f"{SMALL},{SMALL}+toy/paper/half"], tmp_path,
             "finish the extraction of toy.random/paper/half")


@pytest.mark.slow
def test_fused_lite0_head_predicts_from_the_cache_and_by_extracting(tmp_path):
    """lite0 (offline weights) with two poolings fused: predict reuses both parts' cached rows, and extracts both
    parts when no cache has them, with the same scores."""
    from tests.fakedata import make_pku

    make_pku(tmp_path, i2i_prompts=2, t2i_prompts=3, per_generator=2)
    runner = CliRunner()
    cache = tmp_path / "c.h5"
    for pool in ("paper", "multilevel"):
        out = runner.invoke(cli.main, ["extract", "--root", str(tmp_path), "--backbone", "lite0", "--pool", pool,
                                       "--cache", str(cache), "--workers", "0", "--device", "cpu", "--quiet"])
        assert out.exit_code == 0, out.output
    head = tmp_path / "h.safetensors"
    out = runner.invoke(cli.main, ["fit", "--cache", str(cache), "--backbone", "lite0/paper+lite0/multilevel",
                                   "--mode", "nr", "--target", "MOS_q", "--regressor", "ridge", "--folds", "2",
                                   "--root", str(tmp_path), "--quiet", "--no-figures", "--out", str(tmp_path / "run"),
                                   "--save-head", str(head)])
    assert out.exit_code == 0, out.output
    from regressors.heads import predict_paths
    from regressors.heads_io import read_metadata

    meta = read_metadata(head)
    assert [p["backbone_id"].split("/")[1] for p in meta["parts"]] == ["paper", "multilevel"]
    images = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "All").glob("*.jpg"))[:4]
    prompts = [""] * len(images)
    reused, info = predict_paths(head, tmp_path, images, prompts, cache=cache, device="cpu")
    assert info["reused"] == len(images) and info["extracted"] == 0
    fresh, info = predict_paths(head, tmp_path, images, prompts, cache=None, device="cpu")
    assert info["extracted"] == len(images)
    np.testing.assert_allclose(fresh, reused, rtol=1e-4, atol=1e-4)
    wrong = runner.invoke(cli.main, ["predict", *(str(tmp_path / i) for i in images), "--head", str(head),
                                     "--backbone", "lite0/multilevel+lite0/paper", "--out", str(tmp_path / "s.csv")])
    assert wrong.exit_code == 2 and "name its parts in that order" in wrong.output
