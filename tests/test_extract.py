import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cli
import cli_support
from featcache.backbones import Backbone, load_backbone
from featcache.datasets import load_dataset
from featcache.errors import FeatcacheError
from featcache.extract import extract
from featcache.merge import merge
from featcache.cache_lock import lock_cache
from tests.fakedata import make_pku

REPO = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=None)
def _small():
    """One build for the whole file (a Backbone keeps its network once built)."""
    return load_backbone("resnet18", random_weights=True, image_size=64)


def _features(cache, bid):
    with h5py.File(cache, "r") as f:
        return f[f"features/{bid}/emb"][()], f[f"features/{bid}/done"][()]


def test_one_forward_per_distinct_image(pku_root, tmp_path):
    samples = load_dataset(None, pku_root)
    result = extract(samples, pku_root, _small(), tmp_path / "c.h5", workers=0, progress=False)
    assert len(samples) == 20 and result.rows_written == 22
    with h5py.File(tmp_path / "c.h5", "r") as f:
        ref = f["samples/ref"][()]
        gen = f["samples/gen"][()]
        keys = f["images/key"].asstr()[()]
    assert (ref >= 0).sum() == 8 and len(set(ref[ref >= 0])) == 2 and len(set(gen)) == 20
    assert keys[ref[0]] == "I2I/Image_prompt/0.jpg"


@pytest.mark.slow
def test_batch_size_and_workers_do_not_change_features(pku_root, tmp_path):
    samples = load_dataset(None, pku_root)
    # on the CPU in fp32: on CUDA in fp16 the kernels chosen per batch size may move the last bits
    a = extract(samples, pku_root, load_backbone("lite0"), tmp_path / "a.h5", batch_size=1, workers=0,
                device="cpu", progress=False)
    extract(samples, pku_root, load_backbone("lite0"), tmp_path / "b.h5", batch_size=8, workers=2, device="cpu",
            progress=False)  # 3 batches: 2 workers
    ea, da = _features(tmp_path / "a.h5", a.backbone_id)
    eb, db = _features(tmp_path / "b.h5", a.backbone_id)
    assert da.all() and db.all() and np.isfinite(ea).all()
    np.testing.assert_allclose(ea, eb, atol=1e-5)


def test_complete_cache_runs_no_forward(pku_root, tmp_path, monkeypatch):
    samples = load_dataset(None, pku_root)
    extract(samples, pku_root, _small(), tmp_path / "c.h5", workers=0, progress=False)

    def no_model(self):
        raise AssertionError("a model was built for a complete cache")

    monkeypatch.setattr(Backbone, "extractor", no_model)
    result = extract(samples, pku_root, _small(), tmp_path / "c.h5", workers=0, progress=False)
    assert result.rows_written == 0 and result.rows_done_before == 22


@pytest.mark.slow
def test_shards_merge_into_the_unsharded_cache(pku_root, tmp_path):
    samples = load_dataset(None, pku_root)
    whole = extract(samples, pku_root, _small(), tmp_path / "whole.h5", workers=0, progress=False)
    shards = []
    for i in range(3):
        shard = tmp_path / f"shard{i}.h5"
        r = extract(samples, pku_root, _small(), shard, shard=(i, 3), batch_size=4, workers=0, progress=False)
        assert r.rows_in_shard in (7, 8)
        shards.append(shard)
    partial = merge(shards[:2], tmp_path / "partial.h5")
    assert partial.rows[whole.backbone_id][0] < 22
    merged = merge(shards, tmp_path / "merged.h5")
    assert merged.rows[whole.backbone_id] == (22, 22)
    e1, d1 = _features(tmp_path / "whole.h5", whole.backbone_id)
    e2, d2 = _features(tmp_path / "merged.h5", whole.backbone_id)
    assert d2.all()
    np.testing.assert_allclose(e1, e2, atol=1e-5)
    merge([shards[2]], tmp_path / "partial.h5")  # completing an existing merge
    assert merge(shards, tmp_path / "new" / "folder" / "m.h5").rows[whole.backbone_id] == (22, 22)
    np.testing.assert_allclose(_features(tmp_path / "partial.h5", whole.backbone_id)[0], e1, atol=1e-5)


def _count_done(cache, bid):
    try:
        with h5py.File(cache, "r", locking=False) as f:
            return int(f[f"features/{bid}/done"][()].sum()) if f"features/{bid}/done" in f else 0
    except (OSError, KeyError):
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("kill_when", [1, 10])
def test_resume_after_kill_9_equals_an_uninterrupted_run(tmp_path, kill_when):
    """Killed once the cache exists and `kill_when` rows are written (early: the first row; midway: ten): the
    rerun keeps those rows, writes only the rest, and the features equal an uninterrupted run."""
    root = tmp_path / "data"
    make_pku(root, i2i_prompts=4, t2i_prompts=4, per_generator=2)  # 40 samples, 44 images
    total = len(load_dataset(None, root).distinct_images()[0])
    command = [sys.executable, str(REPO / "cli.py"), "extract", "--root", str(root), "--backbone", "lite0",
               "--cache", str(tmp_path / "killed.h5"), "--batch-size", "1", "--workers", "0", "--quiet"]
    bid = "tf_efficientnet_lite0.in1k/paper/224"
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _count_done(tmp_path / "killed.h5", bid) < kill_when and time.time() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = _count_done(tmp_path / "killed.h5", bid)
    assert kill_when <= before < total == 44  # killed while rows were partly written
    rerun = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    assert f"wrote {total - before} rows" in rerun.stdout and f"{before} were already there" in rerun.stdout
    samples = load_dataset(None, root)
    extract(samples, root, load_backbone("lite0"), tmp_path / "clean.h5", batch_size=16, workers=0, progress=False)
    killed, done = _features(tmp_path / "killed.h5", bid)
    clean, _ = _features(tmp_path / "clean.h5", bid)
    assert done.all()
    np.testing.assert_allclose(killed, clean, atol=1e-5)


def test_other_configuration_under_the_same_id_is_refused(pku_root, tmp_path):
    samples = load_dataset(None, pku_root)
    extract(samples, pku_root, _small(), tmp_path / "c.h5", workers=0, progress=False)
    with pytest.raises(FeatcacheError, match=r"written with another configuration \(precision differ"):
        extract(samples, pku_root, _small(), tmp_path / "c.h5", workers=0, precision="bf16", progress=False)


def test_a_second_writer_is_refused(pku_root, tmp_path):
    samples = load_dataset(None, pku_root)
    with lock_cache(tmp_path / "c.h5"):
        with pytest.raises(FeatcacheError, match="being written by another featcache process"):
            extract(samples, pku_root, _small(), tmp_path / "c.h5", workers=0, progress=False)


def test_missing_images_stop_before_writing_and_keep_the_cache(pku_root, tmp_path):
    samples = load_dataset(None, pku_root)
    first = extract(samples, pku_root, _small(), tmp_path / "c.h5", workers=0, progress=False)
    (pku_root / "All" / "SD_1000_00.jpg").unlink()
    (pku_root / "All" / "MJ_1001_10.jpg").write_bytes(b"")
    with pytest.raises(FeatcacheError, match=r"2 of 22 image files are missing or empty .*All/SD_1000_00.jpg"):
        extract(samples, pku_root, load_backbone("resnet18", random_weights=True, image_size=96),
                tmp_path / "c.h5", workers=0, progress=False)
    emb, done = _features(tmp_path / "c.h5", first.backbone_id)
    assert done.all() and np.isfinite(emb).all()


@pytest.mark.slow  # over 0.7 s: run by CI and make test-all
def test_a_refused_extract_leaves_a_cache_whose_image_list_it_would_change_as_it_was(pku_root, tmp_path):
    """Following a changed image list drops the rows of removed images for every backbone; a command refused after
    that (a wrong --col or --annotation naming missing files, another configuration) lost them, exit 2 or not."""
    cache = tmp_path / "c.h5"
    samples = load_dataset(None, pku_root)
    first = extract(samples, pku_root, _small(), cache, workers=0, progress=False)
    other = load_backbone("resnet18", random_weights=True, image_size=96)
    second = extract(samples, pku_root, other, cache, workers=0, progress=False)
    with h5py.File(cache, "r") as f:
        keys_before = f["images/key"].asstr()[()].tolist()
    annotation = next(pku_root.glob("annotation.*"))
    text = annotation.read_text()
    annotation.write_text(text.replace("SD_1000_00.jpg", "SD_1000_99.jpg"))  # a misspelt name: missing
    changed = load_dataset(None, pku_root)
    with pytest.raises(FeatcacheError, match=r"1 of 1 image files are missing or empty .*SD_1000_99.jpg"):
        extract(changed, pku_root, other, cache, workers=0, progress=False)
    with pytest.raises(FeatcacheError, match=r"written with another configuration \(precision differ"):
        extract(changed, pku_root, _small(), cache, workers=0, precision="bf16", progress=False)
    with h5py.File(cache, "r") as f:
        assert f["images/key"].asstr()[()].tolist() == keys_before
    for bid in (first.backbone_id, second.backbone_id):
        emb, done = _features(cache, bid)
        assert done.all() and np.isfinite(emb).all()
    annotation.write_text(text.replace("SD_1000_00.jpg", "SD_1000_99.jpg").replace("SD_1000_00", "SD_1000_99"))
    (pku_root / "All" / "SD_1000_00.jpg").rename(pku_root / "All" / "SD_1000_99.jpg")  # the fix: now it follows
    with pytest.warns(UserWarning, match=r"the image list changed \(1 added, 1 removed\)"):
        result = extract(load_dataset(None, pku_root), pku_root, other, cache, workers=0, progress=False)
    assert result.rows_written == 1


def test_overflowed_features_are_not_written_and_are_named(pku_root, tmp_path, monkeypatch):
    """fp16 can overflow (e.g. random-weight ViT-L and ResNet-50): such rows must not be stored as done."""
    import featcache.forward as forward_module

    samples = load_dataset(None, pku_root)
    paths, _, _ = samples.distinct_images()
    real = forward_module._FeaturesToHost

    class Overflowing(real):  # the third and fourth image of every batch overflow
        def __init__(self, rows, features, errors, seconds):
            features = features.clone()
            features[2:4, 0] = torch.tensor([float("inf"), float("nan")])
            super().__init__(rows, features, errors, seconds)

    monkeypatch.setattr(forward_module, "_FeaturesToHost", Overflowing)
    first = sorted(str(pku_root / paths[i]) for i in (2, 3, 10, 11, 18, 19))[0]  # named in name order
    with pytest.raises(FeatcacheError, match=r"^6 images gave non-finite features \(inf/NaN\) with --precision fp32 "
                                             r"\(16 other rows were written and kept; check the weights; the cache "
                                             r"keeps no row for them\): " + re.escape(first)):
        extract(samples, pku_root, _small(), tmp_path / "c.h5", batch_size=8, workers=0, device="cpu",
                progress=False)
    emb, done = _features(tmp_path / "c.h5", _small().id)
    assert done.sum() == 16 and not done[[2, 3, 10, 11, 18, 19]].any()
    assert np.isfinite(emb[done]).all()
    # with an unreadable file too: one line, the kept rows said once, each kind with its own advice
    bad = pku_root / "All" / "DALLE_1000_00.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(FeatcacheError) as caught:
        extract(samples, pku_root, _small(), tmp_path / "d.h5", batch_size=8, workers=0, device="cpu", progress=False)
    message = str(caught.value)
    assert re.match(r"^1 images could not be read \(\d+ other rows were written and kept; fix these files.*\): "
                    r".*DALLE_1000_00.*; also \d+ images gave non-finite features \(inf/NaN\) with --precision fp32 "
                    r"\(check the weights; the cache keeps no row for them\): ", message), message
    assert message.count("written and kept") == 1 and "\n" not in message


def test_undecodable_image_keeps_the_other_rows_and_resumes(pku_root, tmp_path):
    samples = load_dataset(None, pku_root)
    bad = pku_root / "All" / "DALLE_1000_00.jpg"
    good_bytes = bad.read_bytes()
    bad.write_bytes(good_bytes[: len(good_bytes) // 3])
    with pytest.raises(FeatcacheError, match=r"1 images could not be read \(21 other rows were written.*DALLE_1000_00"):
        extract(samples, pku_root, _small(), tmp_path / "c.h5", batch_size=4, workers=2, progress=False)
    bid = _small().id
    assert _features(tmp_path / "c.h5", bid)[1].sum() == 21
    bad.write_bytes(good_bytes)
    result = extract(samples, pku_root, _small(), tmp_path / "c.h5", workers=0, progress=False)
    assert result.rows_written == 1 and _features(tmp_path / "c.h5", bid)[1].all()


def test_cache_of_another_dataset_is_refused(pku_root, tmp_path):
    samples = load_dataset(None, pku_root)
    extract(samples, pku_root, _small(), tmp_path / "c.h5", workers=0, progress=False)
    other = tmp_path / "other"
    make_pku(other, i2i_prompts=1)
    with pytest.raises(FeatcacheError, match="another list of images"):
        extract(load_dataset(None, other), other, _small(), tmp_path / "c.h5", workers=0, progress=False)


def test_cli_extract_info_and_one_line_errors(pku_root, monkeypatch):
    monkeypatch.chdir(pku_root)
    runner = CliRunner()
    ok = runner.invoke(cli.main, ["extract", "--backbone", "resnet18", "--random-weights", "--image-size", "64",
                                  "--workers", "0", "--quiet"])
    assert ok.exit_code == 0, ok.output
    assert "wrote 22 rows to featcache.h5" in ok.output
    shown = runner.invoke(cli.main, ["info"])
    assert "resnet18.random/paper/64: 22/22 rows complete, dim 512" in shown.output
    assert "i2i 8, t2i 12" in shown.output
    (pku_root / "annotation.csv").write_text("Generated_image,MOS_q\nx.jpg,1\n")
    bad = runner.invoke(cli.main, ["extract", "--backbone", "lite0"])
    assert bad.exit_code == 2
    assert bad.output.strip().splitlines() == ["error: annotation.csv: missing column(s) MOS_a, MOS_c "
                                               "(has: Generated_image, MOS_q)"]


@pytest.mark.slow
def test_a_writer_in_another_process_is_refused(pku_root, tmp_path):
    cache = tmp_path / "c.h5"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from featcache.cache_lock import lock_cache\n"
                               f"with lock_cache({str(cache)!r}):\n    print('held', flush=True); time.sleep(30)"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FeatcacheError, match="being written by another featcache process"):
            extract(load_dataset(None, pku_root), pku_root, _small(), cache, workers=0, progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert extract(load_dataset(None, pku_root), pku_root, _small(), cache, workers=0,
                   progress=False).rows_written == 22  # the lock died with its process


def test_a_damaged_cache_file_is_a_one_line_error(pku_root, tmp_path):
    (tmp_path / "c.h5").write_bytes(b"this is not HDF5")
    with pytest.raises(FeatcacheError, match="c.h5: cannot open the cache for writing"):
        extract(load_dataset(None, pku_root), pku_root, _small(), tmp_path / "c.h5", workers=0, progress=False)
    assert (tmp_path / "c.h5").read_bytes() == b"this is not HDF5"


@pytest.mark.slow
def test_cli_shards_and_merge(pku_root, monkeypatch):
    monkeypatch.chdir(pku_root)
    runner = CliRunner()
    base = ["extract", "--backbone", "resnet18", "--random-weights", "--image-size", "64", "--workers", "0", "--quiet"]
    for i in range(2):
        out = runner.invoke(cli.main, base + ["--shard", f"{i}/2", "--cache", f"s{i}.h5"])
        assert out.exit_code == 0 and "wrote 11 rows" in out.output, out.output
    info = runner.invoke(cli.main, ["info", "--cache", "s0.h5"])
    assert "11/22 rows INCOMPLETE" in info.output
    merged = runner.invoke(cli.main, ["merge", "s0.h5", "s1.h5", "--cache", "all.h5"])
    assert merged.exit_code == 0 and "resnet18.random/paper/64: 22/22 rows" in merged.output
    assert "merged from s0.h5, s1.h5" in runner.invoke(cli.main, ["info", "--cache", "all.h5"]).output
    bad = runner.invoke(cli.main, base + ["--shard", "2/2"])
    assert bad.exit_code == 2 and "need 0 <= I < N" in bad.output


def test_featcache_toml_gives_the_defaults(pku_root, tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "featcache.toml").write_text(
        'root = "../pku"\ncache = "out/feat.h5"\nbackbone = "resnet18"\npool = "multilevel"\n'
        'batch_size = 5\nworkers = 0\ndevice = "cpu"\ndecode = "gpu"\njpeg_draft = false\n')
    monkeypatch.chdir(project)
    runner = CliRunner()
    out = runner.invoke(cli.main, ["extract", "--random-weights", "--image-size", "32", "--quiet"])
    assert out.exit_code == 0, out.output
    assert "resnet18.random/multilevel/32: wrote 22 rows to" in out.output
    assert (project / "out" / "feat.h5").is_file()  # relative to the toml's folder
    shown = runner.invoke(cli.main, ["info", "--json"])  # the cache also comes from the toml
    info = json.loads(shown.output)
    assert info["backbones"]["resnet18.random/multilevel/32"]["rows_done"] == 22
    assert info["dataset"] == "pku-aigiqa-4k" and info["samples"] == 20 and info["images"] == 22
    assert info["subsets"] == {"i2i": 8, "t2i": 12} and info["half_created"] == []
    config = info["backbones"]["resnet18.random/multilevel/32"]["config"]
    assert config["pool"] == "multilevel" and config["decode"] == "torch" and config["jpeg_draft"] is False
    override = runner.invoke(cli.main, ["extract", "--random-weights", "--image-size", "32", "--quiet", "--pool",
                                        "paper", "--cache", "other.h5", "--decode", "cpu", "--jpeg-draft"])
    assert override.exit_code == 0 and "resnet18.random/paper/32: wrote 22 rows to other.h5" in override.output
    config = json.loads(runner.invoke(cli.main, ["info", "--cache", "other.h5", "--json"]).output)["backbones"][
        "resnet18.random/paper/32"]["config"]
    assert config["decode"] == "pil" and config["jpeg_draft"] is True


def test_csv_dataset_with_col_lists(pku_root, monkeypatch):
    monkeypatch.chdir(pku_root)
    table = (pku_root / "annotation.csv").read_text().replace("Generated_image", "file")
    (pku_root / "ratings.csv").write_text(table)
    runner = CliRunner()
    out = runner.invoke(cli.main, ["extract", "--dataset", "csv", "--annotation", "ratings.csv", "--col", "image=file",
                                   "--col", "target=MOS_q,MOS_a", "--col", "target=MOS_c", "--col",
                                   "prompt_image=Image_prompt", "--col", "image_dir=All", "--col",
                                   "prompt_dir=I2I/Image_prompt", "--cache", "csv.h5", "--backbone", "resnet18",
                                   "--random-weights", "--image-size", "32", "--workers", "0", "--quiet"])
    assert out.exit_code == 0 and "wrote 22 rows to csv.h5" in out.output, out.output
    info = json.loads(runner.invoke(cli.main, ["info", "--cache", "csv.h5", "--json"]).output)
    assert list(info["targets"]) == ["MOS_q", "MOS_a", "MOS_c"] and info["with_image_prompt"] == 8
    from featcache.annotation_lookup import read_labels_from_annotation

    again = read_labels_from_annotation(pku_root / "csv.h5")  # the --col options are kept in the cache
    assert again is not None and list(again.targets) == ["MOS_q", "MOS_a", "MOS_c"]


def test_backbones_and_datasets_commands_list_the_tables():
    from featcache.backbones import BACKBONES
    from featcache.datasets import list_datasets

    runner = CliRunner()
    backbones = runner.invoke(cli.main, ["backbones"])
    assert backbones.exit_code == 0
    rows = [line.split() for line in backbones.output.splitlines()[1:] if line.split()[0] in BACKBONES]
    assert [r[0] for r in rows] == list(BACKBONES)
    assert all(r[1] == BACKBONES[r[0]].timm_name and int(r[3]) == BACKBONES[r[0]].dim for r in rows)
    datasets = runner.invoke(cli.main, ["datasets"])
    assert datasets.exit_code == 0
    lines = datasets.output.splitlines()
    assert [line.split()[0] for line in lines] == [a.name for a in list_datasets()]
    assert any(line.startswith("pku-aigiqa-4k") and "annotation.xlsx, annotation.csv" in line for line in lines)
    assert any(line.startswith("csv") and "--annotation FILE" in line for line in lines)


def test_default_workers_are_every_usable_core(monkeypatch):
    from featcache import forward

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(48)), raising=False)
    assert forward.default_workers() == 48  # no fixed cap
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert forward.default_workers() == 3


def test_default_workers_never_outnumber_the_batches(monkeypatch):
    from featcache import forward as extract_module

    monkeypatch.setattr(extract_module, "default_workers", lambda: 16)
    assert extract_module.loader_workers(None, 12, 32) == 0  # one batch: decoded in the main process
    assert extract_module.loader_workers(None, 100, 32) == 4
    assert extract_module.loader_workers(None, 10_000, 32) == 16
    assert extract_module.loader_workers(1000, 12, 32) == 1 and extract_module.loader_workers(1000, 100, 32) == 4
    assert extract_module.loader_workers(0, 100, 32) == 0 and extract_module.loader_workers(3, 10_000, 32) == 3
    assert extract_module.loader_workers(2, 12, 32) == 1  # --workers is a ceiling: one batch, one worker


def test_extract_compares_and_hashes_each_image_once(pku_root, tmp_path, monkeypatch):
    import featcache.cache_rewrite as cache_rewrite
    import featcache.extract as extract_module
    import featcache.image_changes as image_changes

    samples = load_dataset(None, pku_root)
    extract(samples, pku_root, _small(), tmp_path / "c.h5", workers=0, progress=False, verify=True, shard=(0, 2))
    hashed, comparisons = [], []
    real_hashes, real_compare = image_changes.image_hashes, image_changes.compare_with_cache

    def counting_compare(*args, **kwargs):
        comparisons.append(1)
        return real_compare(*args, **kwargs)

    monkeypatch.setattr(image_changes, "image_hashes",
                        lambda root, paths: hashed.extend(paths) or real_hashes(root, paths))
    monkeypatch.setattr(cache_rewrite, "compare_with_cache", counting_compare)
    monkeypatch.setattr(extract_module, "compare_with_cache", counting_compare)
    result = extract(samples, pku_root, _small(), tmp_path / "c.h5", workers=0, progress=False, verify=True)
    assert result.rows_done_before == 11 and result.rows_written == 11
    assert len(comparisons) == 1  # the look without the lock is reused under it (the file did not change)
    assert len(hashed) == len(set(hashed)) == 22  # 11 compared by content, 11 new ones recorded: each read once


def test_info_walks_the_backbones_once_and_shows_the_decoding(pku_root, tmp_path, monkeypatch):
    import featcache.info as info_module

    samples = load_dataset(None, pku_root)
    extract(samples, pku_root, _small(), tmp_path / "c.h5", workers=0, progress=False, device="cpu")
    walks = []
    real = info_module.walk_backbones
    monkeypatch.setattr(info_module, "walk_backbones", lambda f: walks.append(1) or real(f))
    info = info_module.cache_info(tmp_path / "c.h5")
    assert len(walks) == 1 and list(info["backbones"]) == [_small().id] and info["half_created"] == []
    assert "decode pil, JPEG draft" in info_module.format_info(info)


def test_info_counts_the_groups_a_prompt_disjoint_split_keeps_apart(pku_root, tmp_path):
    """Two prompt ids with the same text are one group for `fit` (PKU-AIGIQA-4K's 1099 and 1196); `info` said 3
    groups where fit used 2 on such a database. Here: 2 image prompts + 2 prompt ids of one text = 3, not 4."""
    from featcache.info import cache_info, format_info
    from featcache.store import create_cache

    create_cache(tmp_path / "c.h5", load_dataset(None, pku_root), pku_root)
    info = cache_info(tmp_path / "c.h5")
    assert (info["groups"], info["prompt_groups"]) == (3, 4)
    assert "groups 3 (4 prompt ids and image prompts, those with the same text prompt joined)" in format_info(info)


def test_a_first_run_that_fails_before_any_backbone_leaves_no_cache(pku_root, tmp_path):
    """Weights that do not load: the new cache, which would hold only the annotation's tables, goes again with the
    folders made for it. A cache that existed before is kept as it was."""
    from safetensors.torch import save_file

    save_file({"conv1.weight": torch.zeros(64, 3, 5, 5)}, str(tmp_path / "other.safetensors"))
    samples = load_dataset(None, pku_root)
    wrong = load_backbone("resnet18", weights_file=tmp_path / "other.safetensors")
    with pytest.raises(FeatcacheError, match="weights do not fit resnet18"):
        extract(samples, pku_root, wrong, tmp_path / "new" / "deep" / "new.h5", workers=0, progress=False)
    assert not (tmp_path / "new").exists()  # nor the folders made for it
    extract(samples, pku_root, _small(), tmp_path / "old.h5", workers=0, progress=False)
    before = (tmp_path / "old.h5").read_bytes()
    with pytest.raises(FeatcacheError, match="weights do not fit resnet18"):
        extract(samples, pku_root, wrong, tmp_path / "old.h5", workers=0, progress=False)
    assert (tmp_path / "old.h5").read_bytes() == before


@pytest.mark.slow  # an extraction
def test_extract_takes_the_backbone_with_its_pooling_as_fit_does(pku_root, monkeypatch):
    """`extract --backbone resnet18/multilevel` is `--backbone resnet18 --pool multilevel`; the two ways must agree;
    a name whose last part is no pooling stays a name."""
    assert cli_support.name_and_pool("resnet18/multilevel", None) == ("resnet18", "multilevel")
    assert cli_support.name_and_pool("hf-hub:org/model", "paper") == ("hf-hub:org/model", "paper")
    assert cli_support.name_and_pool("resnet18", None) == ("resnet18", None)
    monkeypatch.chdir(pku_root)
    base = ["extract", "--random-weights", "--image-size", "32", "--workers", "0", "--quiet"]
    out = CliRunner().invoke(cli.main, [*base, "--backbone", "resnet18/multilevel", "--pool", "paper"])
    assert out.exit_code == 2 and "names pooling 'multilevel' but --pool is 'paper'" in out.output, out.output
    assert not (pku_root / "featcache.h5").exists()
    out = CliRunner().invoke(cli.main, [*base, "--backbone", "resnet18/multilevel"])
    assert out.exit_code == 0, out.output
    assert "/multilevel/" in out.output.split(":")[0], out.output  # the id it wrote
