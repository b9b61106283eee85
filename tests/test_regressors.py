import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.utils.estimator_checks import check_estimator

import cli
from featcache.datasets import load_dataset
from featcache.errors import FeatcacheError
from featcache.store import create_cache, ensure_features
from regressors.cache_data import load_cache
from regressors.cv import cross_validate
from regressors.design import content_groups, design_matrix
from regressors.heads_io import load_head, save_head
from regressors.registry import REGRESSORS
from regressors.splits import SplitRequest, make_folds
from tests.fakedata import ANNOTATIONS, HEADER


def _config(bid="toy.random/paper/4"):
    return {"id": bid, "arch": "toy", "weights": {"source": "random", "tag": "random"}, "feature": "gap",
            "pool": "paper", "precision": "fp32",
            "data_config": {"input_size": 4, "crop_pct": 1.0, "resize": 4, "interpolation": "bilinear",
                            "mean": [0.5] * 3, "std": [0.5] * 3}}


def _hand_made_cache(tmp_path, pku_root, emb=None):
    """The fake PKU samples with features chosen by hand: image i has feature [i, 10 i]."""
    samples = load_dataset(None, pku_root)
    path = tmp_path / "hand.h5"
    create_cache(path, samples, pku_root)
    paths, _, _ = samples.distinct_images()
    with h5py.File(path, "r+") as f:
        group = ensure_features(f, _config(), 2, {}, path)
        group["emb"][:] = emb if emb is not None else np.stack([np.arange(len(paths)), 10 * np.arange(len(paths))], 1)
        group["done"][:] = True
    return path


def test_design_matrices_follow_the_paper_definitions(tmp_path, pku_root):
    data = load_cache(_hand_made_cache(tmp_path, pku_root))
    gen, ref = data.samples.gen, data.samples.prompt_image
    i2i = int(np.flatnonzero(ref >= 0)[0])
    t2i = int(np.flatnonzero(ref < 0)[0])
    g, p = np.array([gen[i2i], 10 * gen[i2i]]), np.array([ref[i2i], 10 * ref[i2i]])
    x, rows = design_matrix(data, "nr")
    assert x.shape == (20, 2) and np.array_equal(x[i2i], g)
    x, rows = design_matrix(data, "fr")
    assert x.shape == (8, 4) and np.array_equal(x[list(rows).index(i2i)], np.concatenate([g, p]))
    x, rows = design_matrix(data, "pr")
    assert np.allclose(x[i2i], (g + p) / 2) and np.array_equal(x[t2i], [gen[t2i], 10 * gen[t2i]])
    x, rows = design_matrix(data, "fr-diff")
    assert np.array_equal(x[list(rows).index(i2i)], np.concatenate([g, p, np.abs(g - p)]))
    x, rows = design_matrix(data, "pr-diff")
    assert np.array_equal(x[i2i], np.concatenate([g, p, np.abs(g - p), [1]]))
    assert np.array_equal(x[t2i], [gen[t2i], 10 * gen[t2i], 0, 0, 0, 0, 0])
    t2i_rows = np.flatnonzero(data.samples.subset == "t2i")
    with pytest.raises(FeatcacheError, match="--mode fr: no sample .* has an image prompt; use --mode pr"):
        design_matrix(data, "fr", t2i_rows)


def test_nan_feature_rows_are_refused(tmp_path, pku_root):
    emb = np.ones((22, 2))
    emb[3] = np.nan
    data = load_cache(_hand_made_cache(tmp_path, pku_root, emb))
    with pytest.raises(FeatcacheError, match="1 feature rows of toy.random/paper/4 hold NaN .*featcache repair"):
        design_matrix(data, "nr")


def _pku_4k_like(tmp_path):
    """4000 rows with the official order: 1600 I2I (200 prompts x MJ,SD x 4), then 2400 T2I; no images needed."""
    rows = []
    for p in range(200):
        for g in ("MJ", "SD"):
            rows += [f'{p}.jpg,"t",{g}_{p}_{k}.jpg,{(p * 7 + k) % 5 + 1},2,3' for k in range(4)]
    for pid in range(1000, 1200):
        for g in ("SD", "MJ", "DALLE"):
            rows += [f',"prompt {pid}",{g}_{pid}_{k}0.jpg,{(pid * 3 + k) % 5 + 1},2,3' for k in range(4)]
    (tmp_path / "annotation.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    samples = load_dataset(None, tmp_path)
    create_cache(tmp_path / "c.h5", samples, tmp_path)
    return load_cache(tmp_path / "c.h5", labels_only=True)


def _request(data, rows, **options):
    s = data.samples
    return SplitRequest(np.asarray(rows), content_groups(data), s.subset, s.generator, **options)


def test_paper_split_matches_the_official_loaders(tmp_path):
    data = _pku_4k_like(tmp_path)
    s = data.samples
    for subset, (n_train, n_test) in {"all": (3000, 1000), "t2i": (1800, 600), "i2i": (1200, 400)}.items():
        rows = np.flatnonzero(np.ones(4000, bool) if subset == "all" else s.subset == subset)
        (fold,) = make_folds(_request(data, rows), "paper")
        assert (len(fold.train), len(fold.test)) == (n_train, n_test)
        assert np.array_equal(fold.test, rows[3::4])
    assert np.array_equal(make_folds(_request(data, np.arange(4000)), "paper")[0].test[:3], [3, 7, 11])


def test_group_split_is_prompt_disjoint_stratified_and_cross_split_separates(tmp_path):
    data = _pku_4k_like(tmp_path)
    s = data.samples
    groups = content_groups(data)
    folds = make_folds(_request(data, np.arange(4000), folds=5, seed=3), "group", repeats=2)
    assert len(folds) == 10
    for fold in folds:
        assert not set(groups[fold.train]) & set(groups[fold.test])
        share = np.mean(s.subset[fold.test] == "i2i")
        assert 0.3 < share < 0.5  # stratified: every fold holds its share of I2I (1600 of 4000)
    tests = np.concatenate([f.test for f in folds if f.repeat == 0])
    assert np.array_equal(np.sort(tests), np.arange(4000))
    other_seed = make_folds(_request(data, np.arange(4000), folds=5, seed=4), "group")
    assert not np.array_equal(other_seed[0].test, folds[0].test)
    (cross,) = make_folds(_request(data, np.arange(4000), train_on="MJ", test_on="SD"), "cross")
    assert set(s.generator[cross.train]) == {"MJ"} and set(s.generator[cross.test]) == {"SD"}
    assert set(groups[cross.train]) & set(groups[cross.test])  # the plain cross split shares every prompt
    with pytest.raises(FeatcacheError, match="too few for 5 prompt-disjoint folds"):
        make_folds(_request(data, np.arange(24), folds=5), "group")  # 24 samples, 3 prompts


def test_cross_split_can_hold_out_the_test_prompts(tmp_path):
    data = _pku_4k_like(tmp_path)
    s, groups = data.samples, content_groups(data)
    rows = np.flatnonzero(s.subset == "t2i")
    (plain,) = make_folds(_request(data, rows, train_on="MJ", test_on="SD"), "cross")
    assert set(groups[plain.train]) == set(groups[plain.test])  # MJ and SD share all 200 prompts
    with pytest.raises(FeatcacheError, match="leaves 0 training"):
        make_folds(_request(data, rows, train_on="MJ", test_on="SD", hold_out_prompts=True), "cross")
    some = rows[(s.generator[rows] == "MJ") | np.isin(s.key[rows], [f"SD_{p}_{k}0.jpg" for p in range(1000, 1100)
                                                                    for k in range(4)])]
    (held,) = make_folds(_request(data, some, train_on="MJ", test_on="SD", hold_out_prompts=True), "cross")
    assert len(held.test) == 400 and len(held.train) == 400
    assert not set(groups[held.train]) & set(groups[held.test])


def test_kfold_split_covers_every_sample_once(tmp_path):
    data = _pku_4k_like(tmp_path)
    folds = make_folds(_request(data, np.arange(0, 4000, 10), folds=4, seed=1), "kfold", repeats=2)
    assert len(folds) == 8
    tests = np.concatenate([f.test for f in folds if f.repeat == 1])
    assert np.array_equal(np.sort(tests), np.arange(0, 4000, 10))
    with pytest.raises(FeatcacheError, match="too few for 4 folds"):
        make_folds(_request(data, np.arange(10), folds=4), "kfold")


def test_identical_prompt_texts_are_one_group(tmp_path):
    rows = [f',"a red fox",SD_{pid}_00.jpg,3,3,3' for pid in (1099, 1196)] + [',"A  red fox ",MJ_1200_00.jpg,3,3,3',
                                                                              ',"a cat",SD_1300_00.jpg,3,3,3']
    (tmp_path / "annotation.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    create_cache(tmp_path / "c.h5", load_dataset(None, tmp_path), tmp_path)
    groups = content_groups(load_cache(tmp_path / "c.h5", labels_only=True))
    assert groups[0] == groups[1] == groups[2] != groups[3]


@pytest.mark.parametrize("name", [n for n in REGRESSORS if n != "mlp"])  # mlp: tests/test_mlp.py
@pytest.mark.slow  # over 0.7 s: run by CI and make test-all
def test_every_regressor_honours_the_estimator_contract(name):
    estimator = REGRESSORS[name].factory(0, "cpu")
    failed = [r for r in check_estimator(estimator, on_fail=None) if r["status"] == "failed"]
    assert not failed, [(r["check_name"], str(r["exception"])[:200]) for r in failed]


@pytest.mark.parametrize("name", ["mlp", "ridge", "svr"])
def test_saved_head_predicts_the_same_numbers(tmp_path, name):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 6))
    y = x[:, 0] - 2 * x[:, 1] ** 2 + rng.normal(0, 0.1, 120)
    model = REGRESSORS[name].factory(0, "cpu").fit(x[:100], y[:100])
    save_head(model, name, tmp_path / "h.safetensors", {"mode": "nr"})
    loaded, meta = load_head(tmp_path / "h.safetensors")
    assert meta["regressor"] == name and meta["mode"] == "nr"
    np.testing.assert_allclose(loaded.predict(x[100:]), model.predict(x[100:]), rtol=1e-6, atol=1e-6)
    with pytest.raises(FeatcacheError, match="cannot be saved"):
        save_head(REGRESSORS["sibling-mean"].factory(0, "cpu").fit(x[:, :2], y), "sibling-mean", tmp_path / "f", {})


@pytest.mark.skipif(not ANNOTATIONS.is_dir(), reason="../shared/data/annotations absent")
@pytest.mark.slow  # over 0.7 s: run by CI and make test-all
def test_sibling_floor_reproduces_the_leak_of_the_paper_split(tmp_path):
    samples = load_dataset("pku-aigiqa-4k", tmp_path, ANNOTATIONS / "pku-aigiqa-4k_t2i_annotation.csv")
    create_cache(tmp_path / "t2i.h5", samples, tmp_path)  # the floors read no pixel: no image is needed
    data = load_cache(tmp_path / "t2i.h5", labels_only=True)
    result = cross_validate(data, ["nr"], ["MOS_q", "MOS_a", "MOS_c"], ["sibling-mean", "generator-mean"],
                            split="paper")
    srcc = {(r["regressor"], r["target"]): r["srcc_mean"] for r in result.summary}
    assert round(srcc["sibling-mean", "MOS_q"], 3) == 0.870
    assert round(srcc["sibling-mean", "MOS_a"], 3) == 0.829
    assert round(srcc["sibling-mean", "MOS_c"], 3) == 0.835
    assert round(srcc["generator-mean", "MOS_q"], 3) == 0.624
    grouped = cross_validate(data, ["nr"], ["MOS_q"], ["sibling-mean"], split="group")
    assert grouped.summary[0]["srcc_mean"] < 0.7  # prompt-disjoint: no sibling to copy
    cross = cross_validate(data, ["nr"], ["MOS_q"], ["prompt-mean", "generator-mean"], split="cross",
                           train_on="MJ", test_on="SD")
    prompt_mean, generator_mean = cross.summary
    assert round(prompt_mean["srcc_mean"], 3) == 0.284  # MJ's score of the same prompt predicts SD's
    assert prompt_mean["srcc_ci_low"] < 0.284 < prompt_mean["srcc_ci_high"]
    assert generator_mean["n_failed"] == 1 and generator_mean["srcc_mean"] == 0.0  # one constant: failed


@pytest.mark.slow  # over 0.7 s: run by CI and make test-all
def test_fit_and_predict_from_the_command_line(tmp_path, pku_root, monkeypatch):
    monkeypatch.chdir(pku_root)
    runner = CliRunner()
    assert runner.invoke(cli.main, ["extract", "--backbone", "resnet18", "--random-weights", "--image-size", "64",
                                    "--workers", "0", "--quiet"]).exit_code == 0
    out = runner.invoke(cli.main, ["fit", "--mode", "pr", "--folds", "2", "--regressor", "ridge,sibling-mean",
                                   "--jobs", "2", "--out", "res"])
    assert out.exit_code == 0, out.output
    results = json.loads((pku_root / "res" / "results.json").read_text())
    assert {"config", "folds", "summary"} <= set(results)
    assert len(results["summary"]) == 4 * 3 and len(results["folds"]) == 4 * 3 * 2  # the other two floors too
    assert {"srcc_mean", "srcc_std", "plcc_mean", "plcc_std", "krcc_mean", "rmse_mean", "n_folds"} <= set(
        results["summary"][0])
    assert (pku_root / "res" / "results.csv").is_file() and "| regressor |" in (pku_root / "res" / "report.md").read_text()
    saved = runner.invoke(cli.main, ["fit", "--mode", "fr", "--target", "MOS_q", "--regressor", "ridge", "--folds",
                                     "2", "--save-head", "fr.safetensors", "--out", "res2"])
    assert saved.exit_code == 0, saved.output
    scored = runner.invoke(cli.main, ["predict", "--head", "fr.safetensors", "All/MJ_0_00.jpg", "All/SD_1_10.jpg",
                                      "--prompt-image", "I2I/Image_prompt/0.jpg", "--out", "s.csv"])
    assert scored.exit_code == 0, scored.output
    assert (pku_root / "s.csv").read_text().splitlines()[0] == "image,prompt_image,pred_MOS_q"
    refused = runner.invoke(cli.main, ["predict", "--head", "fr.safetensors", "All/MJ_0_00.jpg"])
    assert refused.exit_code == 2 and "needs --prompt-image" in refused.output
    wrong = runner.invoke(cli.main, ["predict", "--head", "fr.safetensors", "--mode", "nr", "All/MJ_0_00.jpg"])
    assert wrong.exit_code == 2 and "trained for --mode fr, not nr" in wrong.output
    mixed = runner.invoke(cli.main, ["predict", "--head", "fr.safetensors", "--root", ".", "--out", "fr.csv"])
    assert mixed.exit_code == 2 and "fr head: 12 of 20 images have no image prompt (first: All/SD_1000_00.jpg); " \
                                    "score only those with one (e.g. --dataset pku-i2iqa" in mixed.output
    assert runner.invoke(cli.main, ["fit", "--mode", "pr", "--target", "MOS_a", "--regressor", "svr", "--folds", "2",
                                    "--save-head", "pr.safetensors", "--out", "res3"]).exit_code == 0
    whole = runner.invoke(cli.main, ["predict", "--head", "pr.safetensors", "--root", ".", "--out", "all.csv"])
    assert whole.exit_code == 0, whole.output
    assert "22 images from the cache, 0 extracted" in whole.output and "against MOS_a" in whole.output
    lines = (pku_root / "all.csv").read_text().splitlines()
    assert lines[0] == "image,prompt_image,pred_MOS_a,MOS_a" and len(lines) == 21
    assert lines[1].startswith("All/MJ_0_00.jpg,I2I/Image_prompt/0.jpg,")
    assert any(line.split(",")[1] == "" for line in lines[1:])  # T2I rows scored without a prompt
    head, _ = load_head(pku_root / "pr.safetensors")
    x, rows = design_matrix(load_cache(str(pku_root / "featcache.h5")), "pr")
    scored = np.array([float(line.split(",")[2]) for line in lines[1:]])
    np.testing.assert_allclose(scored, head.predict(x), atol=1e-4)  # cached features, the head's numbers
    import featcache.forward

    calls, real = [], featcache.forward.compute_features
    monkeypatch.setattr(featcache.forward, "compute_features", lambda *a, **k: calls.append(k) or real(*a, **k))
    fresh = runner.invoke(cli.main, ["predict", "--head", "pr.safetensors", "--root", ".", "--cache", "none.h5",
                                     "--out", "fresh.csv"])
    assert fresh.exit_code == 0 and "from the cache" not in fresh.output
    from featcache.decode import decode_option
    from featcache.store import backbone_ids, read_config

    with h5py.File(pku_root / "featcache.h5", "r") as f:  # Pillow with draft here; nvjpeg where CUDA is
        recorded = read_config(f, backbone_ids(f)[0])
    assert [(k["decode"], k["jpeg_draft"], k["precision"]) for k in calls] == [
        (decode_option(recorded["decode"]), recorded["jpeg_draft"], recorded["precision"])]  # as the cache recorded
    again = np.array([float(line.split(",")[2]) for line in (pku_root / "fresh.csv").read_text().splitlines()[1:]])
    np.testing.assert_allclose(again, scored, atol=1e-4)  # images re-read give the cached features
    plain = runner.invoke(cli.main, ["extract", "--backbone", "resnet18", "--random-weights", "--image-size", "64",
                                     "--workers", "0", "--quiet", "--no-jpeg-draft", "--cache", "plain.h5"])
    assert plain.exit_code == 0, plain.output
    other = runner.invoke(cli.main, ["predict", "--head", "pr.safetensors", "--root", ".", "--cache", "plain.h5",
                                     "--out", "other.csv"])  # rows decoded otherwise than the head's: not reused
    assert other.exit_code == 0 and "from the cache" not in other.output, other.output
    refused = runner.invoke(cli.main, ["predict", "--head", "pr.safetensors", "--root", ".", "--out", "all.csv"])
    assert refused.exit_code == 2 and "all.csv: exists; pass --overwrite" in refused.output  # the first run's scores
    from tests.fakedata import noisy_image

    noisy_image(np.random.default_rng(9), (48, 40)).save(pku_root / "All" / "MJ_0_00.jpg")  # replaced on disk
    changed = runner.invoke(cli.main, ["predict", "--head", "pr.safetensors", "--root", ".", "--out", "all.csv",
                                       "--overwrite"])
    assert changed.exit_code == 0, changed.output
    assert "21 images from the cache, 1 extracted" in changed.output  # not its old features
    rescored = [float(line.split(",")[2]) for line in (pku_root / "all.csv").read_text().splitlines()[1:]]
    assert rescored[0] != scored[0] and rescored[1:] == pytest.approx(list(scored[1:]), abs=1e-4)
    folder = runner.invoke(cli.main, ["predict", "--head", "pr.safetensors", "All", "--out", "folder.csv"])
    assert folder.exit_code == 0, folder.output
    assert len((pku_root / "folder.csv").read_text().splitlines()) == 1 + 20
    # a pr head given a folder scores its I2I images without their prompts: one line says so and how to pair them
    assert "warning: pr.safetensors is a pr head: 20 images were scored without an image prompt; if they have " \
           "one, pair them with --root . (its" in folder.output and folder.output.count("warning:") == 1
    one = runner.invoke(cli.main, ["predict", "--head", "pr.safetensors", "All/MJ_0_00.jpg", "--out", "one.csv"])
    assert one.exit_code == 0 and "1 image was scored without an image prompt" in one.output, one.output
    paired = runner.invoke(cli.main, ["predict", "--head", "pr.safetensors", "All/MJ_0_00.jpg", "--prompt-image",
                                      "I2I/Image_prompt/0.jpg", "--out", "paired.csv"])
    assert paired.exit_code == 0 and "warning" not in paired.output, paired.output
    assert "warning" not in changed.output  # --root: the annotation pairs them; its T2I rows have no prompt
    # --backbone takes the forms fit --backbone takes, where they name the head's backbone
    for form in ["resnet18.random/paper/64", "resnet18/paper", "resnet18", "resnet18.random", "resnet18.r"]:
        same = runner.invoke(cli.main, ["predict", "--head", "pr.safetensors", "--root", ".", "--cache", "none.h5",
                                        "--backbone", form, "--out", "same.csv", "--overwrite"])
        assert same.exit_code == 0, (form, same.output)
        got = [float(line.split(",")[2]) for line in (pku_root / "same.csv").read_text().splitlines()[1:]]
        assert got == pytest.approx(rescored, abs=1e-4)  # extracted again by the head's own backbone
    for form, hint in [("resnet18/multilevel", "; did you mean 'resnet18.random/paper/64'?"), ("vgg19", "")]:
        other = runner.invoke(cli.main, ["predict", "--head", "pr.safetensors", "--root", ".", "--backbone", form])
        assert other.exit_code == 2 and other.output == (
            f"error: unknown backbone {form!r}{hint} (backbones of the head pr.safetensors: "
            "resnet18.random/paper/64)\n"), other.output
    missing = runner.invoke(cli.main, ["fit", "--backbone", "resnet19"])
    assert missing.exit_code == 2 and "did you mean 'resnet18.random/paper/64'" in missing.output
    target = runner.invoke(cli.main, ["fit", "--target", "MOS_x"])
    assert target.exit_code == 2 and "targets in featcache.h5: MOS_q, MOS_a, MOS_c" in target.output


@pytest.mark.parametrize("n,p", [(300, 40), (30, 80)])
def test_leave_one_out_ridge_matches_scikit_learn(n, p):
    from sklearn.linear_model import RidgeCV

    from regressors.preprocess import FoldScaler
    from regressors.standardized import StandardizedRidge

    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, p))
    y = x[:, :3].sum(1) + rng.normal(0, 0.5, n)
    ours = StandardizedRidge().fit(x, y)
    scaler = FoldScaler(ours.clip).fit(x)
    reference = RidgeCV(alphas=ours.alphas).fit(scaler.transform(x), y)
    assert ours.alpha_ == reference.alpha_
    test = rng.normal(size=(20, p))
    np.testing.assert_allclose(ours.predict(test), reference.predict(scaler.transform(test)), atol=1e-8)


def test_leave_one_group_out_ridge_is_exact():
    """The block formula equals refitting without each group (brute force with scikit-learn's Ridge)."""
    from sklearn.linear_model import Ridge

    from regressors.standardized import ridge_path

    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 8))
    y = x[:, 0] + rng.normal(0, 0.3, 60)
    groups = np.arange(60) // 6
    alphas = np.array([0.1, 10.0, 1000.0])
    xc, yc = x - x.mean(0), y - y.mean()
    chosen, _, errors = ridge_path(xc, yc[:, None], alphas, groups)
    for k, alpha in enumerate(alphas):
        brute = 0.0
        for g in range(10):
            out = groups == g
            brute += np.sum((y[out] - Ridge(alpha=alpha).fit(x[~out], y[~out]).predict(x[out])) ** 2)
        assert errors[k, 0] == pytest.approx(brute / 60, rel=1e-9)
    assert chosen[0] == alphas[np.argmin(errors[:, 0])]


@pytest.mark.slow  # over 0.7 s: run by CI and make test-all
def test_bench_runs_every_backbone_into_one_table(tmp_path, pku_root, monkeypatch):
    monkeypatch.chdir(pku_root)
    runner = CliRunner()
    for size in ("64", "96"):
        assert runner.invoke(cli.main, ["extract", "--backbone", "resnet18", "--random-weights", "--image-size",
                                        size, "--workers", "0", "--quiet"]).exit_code == 0
    out = runner.invoke(cli.main, ["bench", "--mode", "nr,pr", "--target", "MOS_q", "--regressor",
                                   "ridge,generator-mean", "--folds", "2", "--out", "b"])
    assert out.exit_code == 0, out.output
    summary = json.loads((pku_root / "b" / "results.json").read_text())["summary"]
    assert {r["backbone"] for r in summary} == {"resnet18.random/paper/64", "resnet18.random/paper/96"}
    assert len(summary) == 2 * 2 * 1 * 4  # backbones x modes x targets x (ridge and the three floors)


def test_cluster_backends_need_their_extras(tmp_path, pku_root):
    import importlib.util

    data = load_cache(_hand_made_cache(tmp_path, pku_root))
    for backend, module in (("dask", "dask.distributed"), ("ray", "ray.util.joblib")):
        try:
            installed = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            installed = False
        if installed:
            continue
        with pytest.raises(FeatcacheError, match=rf"--backend {backend} needs .* pip install 'featcache\[{backend}\]'"):
            cross_validate(data, ["nr"], ["MOS_q"], ["ridge"], folds=2, backend=backend)


@pytest.mark.parametrize("regressor", ["ridge", "svr", "generator-mean,sibling-mean,prompt-mean"])
@pytest.mark.slow  # over 0.7 s: run by CI and make test-all
def test_fit_without_the_mlp_or_figures_imports_neither_torch_nor_matplotlib(tmp_path, regressor):
    """Ridge, SVR and the floors need neither torch nor matplotlib. With the annotation unchanged since extraction
    (same bytes), the labels check does not parse it again (no dataset adapter is loaded). Two modes, so the paired
    comparisons run too."""
    import subprocess
    import sys

    from tests.fakedata import make_cache

    cache = make_cache(tmp_path)
    probe = ("import runpy, sys\n"
             f"sys.argv = ['featcache', 'fit', '--cache', {str(cache)!r}, '--mode', 'nr,pr', '--regressor', "
             f"{regressor!r}, '--folds', '3', '--no-figures', '--quiet', '--out', {str(tmp_path / 'out')!r}]\n"
             "try:\n    runpy.run_module('cli', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
             "heavy = ('torch', 'matplotlib', 'featcache.datasets')\n"
             "print('LOADED', [m for m in heavy if m in sys.modules], 'EXIT', code)\n")
    import os
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[1])  # works from a checkout that is not pip-installed too
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)}
    run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env=env)
    assert "LOADED [] EXIT 0" in run.stdout, run.stdout + run.stderr
    assert (tmp_path / "out" / "results.json").is_file()


def test_unpaired_warning_names_the_database_that_could_pair_the_images(tmp_path, monkeypatch):
    from regressors.heads import unpaired_warning

    monkeypatch.chdir(tmp_path)
    (tmp_path / "copied").mkdir()  # images copied out of their database: nothing to name, still one line
    assert unpaired_warning("h.safetensors", "pr", 3, ["copied"]) == (
        "h.safetensors is a pr head: 3 images were scored without an image prompt; if they have one, pair them "
        "with --root DIR of their database (its annotation pairs each image with its prompt), or --prompt-image "
        "FILE for one image")
    (tmp_path / "db" / "I2I" / "Generated").mkdir(parents=True)
    (tmp_path / "db" / "annotation.csv").write_text("name,prompt,MOS_q\n")
    assert "with --root db (its annotation.csv pairs" in unpaired_warning("h", "pr", 1, ["db/I2I/Generated"])


@pytest.mark.parametrize("C, epsilon", [(0.01, 0.1), (1.0, 0.1), (100.0, 0.3)])
def test_the_precomputed_kernel_svr_is_libsvms_rbf_svr(C, epsilon):
    """The BLAS kernel handed to SVR(kernel="precomputed") fits the model SVR(kernel="rbf") fits: the same support
    vectors and, to rounding of the kernel, the same coefficients and predictions."""
    from sklearn.svm import SVR

    from regressors.standardized import fit_precomputed, rbf_kernel

    rng = np.random.default_rng(1)
    x = rng.normal(size=(70, 4))
    y = np.sin(x[:, 0]) + x[:, 1] * 0.5 + rng.normal(0, 0.2, 70)
    y = (y - y.mean()) / y.std()
    support, dual_coef, intercept = fit_precomputed(rbf_kernel(x, x, 0.3), y, C, epsilon)
    model = SVR(kernel="rbf", gamma=0.3, C=C, epsilon=epsilon).fit(x, y)
    assert support.tolist() == model.support_.tolist()
    np.testing.assert_allclose(dual_coef, model.dual_coef_[0], atol=1e-8)
    rows = rng.normal(size=(9, 4))
    np.testing.assert_allclose(rbf_kernel(rows, x[support], 0.3) @ dual_coef + intercept, model.predict(rows),
                               atol=1e-8)
    with pytest.raises(ValueError, match="square"):
        fit_precomputed(rbf_kernel(x, x[:-1], 0.3), y, C, epsilon)
