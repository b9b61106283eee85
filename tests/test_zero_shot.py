"""The prompt-similarity zero-shot reference row: its numbers, and where it is shown and never competes."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

import cli
from featcache.store import open_read, read_samples
from regressors.cache_data import load_cache
from regressors.cv import cross_validate
from regressors.registry import with_floors
from regressors.selection import nested_selection
from regressors.summary_text import highest_on_test
from regressors.tables import paper_table
from tests.fakedata import add_backbone, make_cache

PLANTED = "toy.random/paper/cos"


def _planted_cache(tmp_path):
    """make_cache plus a backbone whose cosine of generated image and image prompt rises with MOS_q, while the
    features themselves carry no linear trace of it (a ridge on them scores poorly)."""
    path = make_cache(tmp_path)
    with open_read(path) as f:
        samples = read_samples(f)
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(len(samples.image_keys), 8))
    mos = samples.targets["MOS_q"]
    for i, (gen, prompt) in enumerate(zip(samples.gen, samples.prompt_image)):
        if prompt >= 0:
            noise = rng.normal(size=8)
            emb[gen] = emb[prompt] + (6 - mos[i]) * 0.6 * noise / np.linalg.norm(noise)
    add_backbone(path, PLANTED, emb)
    return path, samples, emb


def _cosine(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_its_predictions_are_the_cosines_of_each_test_fold(tmp_path):
    path, samples, _ = _planted_cache(tmp_path)
    data = load_cache(str(path), PLANTED)
    emb = np.asarray(data.emb, dtype=np.float64)  # as cached (float32)
    results = cross_validate(data, ["nr", "fr", "pr"], ["MOS_q"], with_floors(["ridge"]), folds=3, jobs=1)
    outs = [p for p in results.predictions if p.regressor == "prompt-similarity"]
    assert {p.mode for p in outs} == {"fr"} and len(outs) == 3  # once, on the samples with an image prompt
    tested = np.concatenate([p.rows for p in outs])
    assert sorted(tested) == sorted(np.flatnonzero(samples.prompt_image >= 0))
    for p in outs:
        hand = [_cosine(emb[samples.gen[r]], emb[samples.prompt_image[r]]) for r in p.rows]
        np.testing.assert_allclose(p.y_pred, hand, rtol=1e-12)
    assert not any(c["regressor"] == "prompt-similarity" for c in results.comparisons)


def test_it_is_never_bold_never_selected_and_a_reference_row_of_the_table(tmp_path):
    path, _, _ = _planted_cache(tmp_path)
    data = load_cache(str(path), PLANTED)
    results = cross_validate(data, ["nr", "fr"], ["MOS_q"], with_floors(["ridge"]), folds=3, jobs=1)
    score = {(r["mode"], r["regressor"]): r["srcc_mean"] for r in results.summary}
    assert score[("fr", "prompt-similarity")] > score[("fr", "ridge")] + 0.2  # the best cell of its sample set
    for entry in nested_selection({data.backbone_id: data}, results, jobs=1):
        assert {c["regressor"] for c in entry["candidates"]} == {"ridge"}
    prompted = next(e for e in highest_on_test(results.summary, results.folds) if e["prompted"])
    assert prompted["model"]["regressor"] == "ridge" and "prompt-similarity" not in prompted["floor_names"]
    rows = [dict(r, backbone=PLANTED, _protocol="p", _folds={
        (f["repeat"], f["fold"]): f for f in results.folds if (f["mode"], f["regressor"]) == (r["mode"], r["regressor"])})
        for r in results.summary]
    _, body, caption = paper_table(rows, ["srcc"])
    line = next(b for b in body if b[2] == "prompt-similarity")
    assert line[:2] == ["zero-shot (samples with an image prompt)", PLANTED]
    assert not line[3].bold and not line[3].tied
    assert "Zero-shot rows" in caption


def test_table_command_shows_it_and_no_floors_save_head_leave_it_out(tmp_path):
    path, _, _ = _planted_cache(tmp_path)
    common = ["fit", "--cache", str(path), "--backbone", PLANTED, "--mode", "nr,fr", "--target", "MOS_q",
              "--folds", "3", "--quiet", "--no-figures"]
    run = CliRunner().invoke(cli.main, [*common, "--regressor", "ridge", "--out", str(tmp_path / "run")])
    assert run.exit_code == 0, run.output
    table = CliRunner().invoke(cli.main, ["table", str(tmp_path / "run")])
    line = next(t for t in table.output.splitlines() if "prompt-similarity" in t)
    assert line.startswith("| zero-shot (samples with an image prompt) |") and "**" not in line
    bare = CliRunner().invoke(cli.main, [*common, "--regressor", "ridge", "--no-floors", "--out", str(tmp_path / "b")])
    assert bare.exit_code == 0, bare.output
    config = json.loads((tmp_path / "b" / "results.json").read_text())["config"]
    assert config["regressors"] == ["ridge"]
    saved = CliRunner().invoke(cli.main, [*common, "--mode", "fr", "--regressor", "prompt-similarity",
                                          "--save-head", str(tmp_path / "h.safetensors"), "--out",
                                          str(tmp_path / "s")])
    assert saved.exit_code == 2 and "nothing to save" in saved.output and len(saved.output.strip().splitlines()) == 1
    assert not (tmp_path / "h.safetensors").exists()
