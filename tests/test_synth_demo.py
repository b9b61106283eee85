import hashlib

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

import cli
from featcache.datasets import load_dataset
from featcache.errors import FeatcacheError
from featcache.synth import DISTORTIONS, distort, synth
from tests.fakedata import noisy_image


def _photos(folder, n=4, seed=0):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        noisy_image(rng, (96, 128)).save(folder / f"p{i}.png")
    return folder


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_synth_labels_follow_the_recipe_and_seed_repeats(tmp_path):
    photos = _photos(tmp_path / "photos")
    made = synth(photos, tmp_path / "a", views=3, size=64, seed=5)
    table = pd.read_csv(made.annotation, keep_default_na=False)
    assert made.samples == len(table) == 3 * 2 * 3 + 1 * 3 * 3  # p0, p1, p3 are i2i; p2 is t2i
    assert np.allclose(table.MOS_q, 5 - table.level)
    assert np.allclose(table.MOS_c, 5 - 4 * table.drift, atol=1e-3)
    weights = table.distortion.map(lambda d: DISTORTIONS.get(d, 0.0))
    assert np.allclose(table.MOS_a, 5 - table.level * weights, atol=1e-3)
    assert ((table.level == 0) == (table.distortion == "none")).all()
    samples = load_dataset(None, tmp_path / "a")
    assert set(samples.subset) == {"i2i", "t2i"} and len(set(samples.group)) == 4
    assert Image.open(tmp_path / "a" / samples.image[0]).size == (64, 64)
    synth(photos, tmp_path / "b", views=3, size=64, seed=5)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    synth(photos, tmp_path / "c", views=3, size=64, seed=6)
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


@pytest.mark.parametrize("kind", list(DISTORTIONS))
def test_distortions_grow_with_level(kind):
    rng = np.random.default_rng(0)
    image = noisy_image(rng, (64, 64))
    base = np.asarray(image, dtype=np.float64)
    errors = [np.abs(np.asarray(distort(image, kind, level, np.random.default_rng(1)), dtype=np.float64) - base).mean()
              for level in range(5)]
    assert errors[0] == 0 and errors[1] > 0 and errors[4] > errors[1]


@pytest.mark.slow
def test_short_demo_writes_its_report(tmp_path):
    photos = _photos(tmp_path / "photos", n=6)
    result = CliRunner().invoke(cli.main, ["demo", "--out", str(tmp_path / "demo"), "--photos", str(photos),
                                           "--views", "2", "--folds", "2", "--jobs", "1", "--mode", "nr,fr-diff",
                                           "--regressor", "ridge,sibling-mean", "--quiet"])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "demo" / "report.md").read_text()
    first_table = report.split("\n\n")[1].splitlines()
    assert first_table[0].startswith("| method | backbone | regressor | MOS_q SRCC | MOS_q PLCC")
    backbones = {line.split("|")[2].strip() for line in first_table[2:] if line.startswith("| NR |")}
    assert backbones == {"tf_efficientnet_lite0.in1k/paper/224", "tf_efficientnet_lite0.in1k/multilevel/224"}
    floors = "generator-mean = sibling-mean = prompt-mean"  # prompt-disjoint: the floors coincide, one row
    assert any(line.startswith(f"| floor (samples with an image prompt) | none (labels only) | {floors}")
               for line in first_table)
    assert f"| tf_efficientnet_lite0.in1k/paper/224 | {floors} | fr-diff | MOS_q |" in report
    scatters = sorted(p.name for p in (tmp_path / "demo").glob("scatter_*.png"))
    assert scatters == ["scatter_tf_efficientnet_lite0.in1k-multilevel-224_fr-diff_MOS_q_ridge.png",
                        "scatter_tf_efficientnet_lite0.in1k-multilevel-224_nr_MOS_q_ridge.png"]
    assert (tmp_path / "demo" / "backbones_ridge_MOS_q.png").is_file()
    assert "[4/4]" in result.output and "done in" in result.output


@pytest.mark.parametrize("options, message", [({"jobs": 0}, "--jobs 0"),
                                              ({"regressors": ["ridg"]}, "did you mean 'ridge'"),
                                              ({"modes": ["nx"]}, "unknown mode 'nx'"),
                                              ({"regressors": []}, "--regressor: give at least one")])
def test_demo_refuses_bad_fitting_options_before_any_work(tmp_path, options, message):
    """Bad fitting options are refused before the synth benchmark and both extractions run (a minute or more)."""
    from regressors.demo import run_demo

    with pytest.raises(FeatcacheError, match=message):
        run_demo(tmp_path / "demo", **options)
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("views, folds, message", [
    # the sample count is known only after synth: refused before both extractions
    (1, 50, r"the synth benchmark has \d+ samples.*too few for 50 .*; lower --folds or raise --views$"),
    # 6 photos give 4 image-prompt groups: 5 folds would leave FR an empty fold, which bench refuses
    (3, 5, r"^--mode fr: only 4 prompt groups have an image prompt, too few for 5 prompt-disjoint folds; lower "
           r"--folds to 4 or leave fr out of --mode$"),
])
def test_demo_refuses_folds_it_cannot_fill_before_the_extractions(tmp_path, monkeypatch, views, folds, message):
    import featcache.backbones
    from regressors.demo import run_demo

    monkeypatch.setattr(featcache.backbones, "load_backbone", lambda *a, **k: pytest.fail("extraction started"))
    photos = _photos(tmp_path / "photos", n=6)
    with pytest.raises(FeatcacheError, match=message):
        run_demo(tmp_path / "demo", photos=photos, views=views, folds=folds, jobs=1, progress=False,
                 echo=lambda line: None)
    assert not (tmp_path / "demo" / "synth" / "featcache.h5").exists()
