"""Nothing lost, nothing stale: full disk, Ctrl-C and kill -9 while a backbone is created, one writer per
file, provenance compared, `info --check` and `repair`."""

import contextlib
import errno
import functools
import os
import signal
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from featcache import atomic_write, cache_rewrite, image_changes, store
from featcache.backbones import load_backbone
from featcache.datasets import load_dataset
from featcache.errors import FeatcacheError, FeatcacheWarning
from featcache.extract import extract
from featcache.info import cache_info
from featcache.annotation_lookup import labels_changed, read_labels_from_annotation
from featcache.cache_check import check_cache, repair
from featcache.cache_lock import lock_cache
from tests.fakedata import make_pku

REPO = Path(__file__).resolve().parents[1]
BIG_BACKBONE = ("resnet18", "multilevel")  # 22 x 1920 floats


@functools.lru_cache(maxsize=None)
def _small(pool="paper", size=32):
    """One build per pooling for the whole file (a Backbone keeps its network once built)."""
    return load_backbone("resnet18", pool=pool, random_weights=True, image_size=size)


def _extract(samples, root, cache, backbone=None, **kw):
    return extract(samples, root, backbone or _small(), cache, workers=0, progress=False, **kw)


def _temporaries(cache):
    return sorted(Path(cache).parent.glob(f".{Path(cache).name}.tmp-*"))


def _state(cache):
    with h5py.File(cache, "r") as f:
        return {b: (f[f"features/{b}/emb"][()], f[f"features/{b}/done"][()]) for b in store.backbone_ids(f)}


@contextlib.contextmanager
def _tmpfs(folder: Path, size: str):
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


# ------------------------------------------------------------------------------------------ full disk (ENOSPC)

@pytest.mark.slow
def test_full_disk_while_adding_a_backbone_keeps_the_cache(pku_root, tmp_path, monkeypatch):
    """Simulated ENOSPC at the allocation of the new backbone: the first backbone stays readable, the new one is
    absent, no temporary file is left, and the message is one line."""
    samples = load_dataset(None, pku_root)
    cache = tmp_path / "c.h5"
    first = _extract(samples, pku_root, cache)
    before = _state(cache)
    real = cache_rewrite.create_feature_datasets

    def full(f, config, dim, provenance, attrs=None):
        real(f, config, dim, provenance, attrs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_rewrite, "create_feature_datasets", full)
    with pytest.raises(FeatcacheError, match=r"the disk is full \(adding .*multilevel.*\); free some space"):
        _extract(samples, pku_root, cache, _small("multilevel"))
    assert _temporaries(cache) == []
    after = _state(cache)
    assert list(after) == [first.backbone_id]
    np.testing.assert_array_equal(after[first.backbone_id][0], before[first.backbone_id][0])
    assert cache_info(cache)["backbones"][first.backbone_id]["rows_done"] == 22
    monkeypatch.setattr(cache_rewrite, "create_feature_datasets", real)
    assert _extract(samples, pku_root, cache, _small("multilevel")).rows_written == 22


@pytest.mark.slow
def test_full_disk_during_row_writes_keeps_the_rows(pku_root, tmp_path, monkeypatch):
    import featcache.extract as extract_module

    samples = load_dataset(None, pku_root)
    cache = tmp_path / "c.h5"
    real, calls = extract_module._write_rows, []

    def full_after_two_batches(dataset, rows, values):
        calls.append(1)
        if len(calls) > 4:  # 2 batches of rows and flags
            raise OSError(errno.ENOSPC, "No space left on device")
        real(dataset, rows, values)

    monkeypatch.setattr(extract_module, "_write_rows", full_after_two_batches)
    with pytest.raises(FeatcacheError, match=r"the disk is full \(after 8 new rows, which are kept\)"):
        _extract(samples, pku_root, cache, batch_size=4)
    monkeypatch.setattr(extract_module, "_write_rows", real)
    assert _state(cache)[_small().id][1].sum() == 8
    assert _extract(samples, pku_root, cache).rows_written == 14


_FILL = textwrap.dedent("""
    import sys
    from featcache import cache_rewrite
    cache_rewrite.check_free_space = lambda *a, **k: None  # reach the real ENOSPC, not the early refusal
    sys.argv = ["featcache", *sys.argv[1:]]
    import cli
    cli.main()
""")


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_real_full_tmpfs_never_segfaults_nor_damages_the_cache(pku_root, tmp_path):
    """A 1 MiB tmpfs: the cache is created, then a second, larger backbone does not fit. Run in a subprocess so a
    segfault (exit 139) would show; then the cache is checked with `info --check`."""
    with _tmpfs(tmp_path / "disk", "1m") as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here")
        cache = tmp_path / "disk" / "c.h5"
        base = [sys.executable, "-c", _FILL, "extract", "--root", str(pku_root), "--random-weights", "--workers",
                "0", "--quiet", "--cache", str(cache)]
        ok = subprocess.run(base + ["--backbone", "resnet18", "--image-size", "64"], cwd=REPO, capture_output=True,
                            text=True)
        assert ok.returncode == 0, ok.stderr
        (tmp_path / "disk" / "filler").write_bytes(b"\0" * (1024 * 1024 - cache.stat().st_size - 150_000))
        full = subprocess.run(base + ["--backbone", "resnet50", "--image-size", "64", "--pool", "multilevel"],
                              cwd=REPO, capture_output=True, text=True)
        assert full.returncode == 2, full.stderr
        assert "error:" in full.stderr and "disk is full" in full.stderr and "Traceback" not in full.stderr
        assert _temporaries(cache) == []
        check = CliRunner().invoke(cli.main, ["info", "--check", "--cache", str(cache)])
        assert check.exit_code == 0 and "22/22 rows complete" in check.output, check.output
        with contextlib.suppress(OSError):  # now not even a new cache fits
            with open(tmp_path / "disk" / "filler2", "wb") as filler:
                for _ in range(1024):
                    filler.write(b"\0" * 4096)
                    filler.flush()
        fresh = subprocess.run(base[:-1] + [str(tmp_path / "disk" / "new.h5"), "--backbone", "resnet18",
                                            "--image-size", "64"], cwd=REPO, capture_output=True, text=True)
        assert fresh.returncode == 2 and "disk is full" in fresh.stderr and "Traceback" not in fresh.stderr
        assert not (tmp_path / "disk" / "new.h5").exists() and _temporaries(tmp_path / "disk" / "new.h5") == []


def test_not_enough_free_space_is_refused_before_writing(pku_root, tmp_path, monkeypatch):
    samples = load_dataset(None, pku_root)
    cache = tmp_path / "c.h5"
    _extract(samples, pku_root, cache)
    stamp = cache.stat().st_mtime_ns
    monkeypatch.setattr(atomic_write.shutil, "disk_usage", lambda folder: type("U", (), {"free": 1000})())
    with pytest.raises(FeatcacheError, match=r"needs about .* MiB but .* has 0.0 MiB free; nothing was changed"):
        _extract(samples, pku_root, cache, _small("multilevel"))
    assert cache.stat().st_mtime_ns == stamp


# ------------------------------------------------------------------------------ Ctrl-C and kill -9 at creation

def test_ctrl_c_while_the_datasets_are_allocated(pku_root, tmp_path, monkeypatch):
    samples = load_dataset(None, pku_root)
    cache = tmp_path / "c.h5"
    first = _extract(samples, pku_root, cache)
    real = cache_rewrite.create_feature_datasets

    def interrupted(f, config, dim, provenance, attrs=None):
        f.require_group(f"features/{config['id']}").create_dataset("emb", shape=(22, dim), dtype="f4")
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_rewrite, "create_feature_datasets", interrupted)
    monkeypatch.chdir(pku_root)
    out = CliRunner().invoke(cli.main, ["extract", "--backbone", "resnet18", "--random-weights", "--image-size", "32",
                                        "--pool", "multilevel", "--workers", "0", "--quiet", "--cache", str(cache)])
    assert out.exit_code == 130 and "every row written so far is kept" in out.output
    assert _temporaries(cache) == [] and list(_state(cache)) == [first.backbone_id]
    monkeypatch.setattr(cache_rewrite, "create_feature_datasets", real)
    assert _extract(samples, pku_root, cache, _small("multilevel")).rows_written == 22
    assert check_cache(cache) == []


_KILL_AT_CREATION = textwrap.dedent("""
    import os, signal, sys
    from featcache import cache_rewrite
    real = cache_rewrite.create_feature_datasets
    def killed(f, config, dim, provenance, attrs=None):
        group = f.require_group("features/" + config["id"])
        group.create_dataset("emb", shape=(len(f["images/key"]), dim), dtype="f4")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    cache_rewrite.create_feature_datasets = killed
    sys.argv = ["featcache", *sys.argv[1:]]
    import cli
    cli.main()
""")


@pytest.mark.slow
def test_kill_9_while_the_datasets_are_allocated(pku_root, tmp_path):
    samples = load_dataset(None, pku_root)
    cache = tmp_path / "c.h5"
    first = _extract(samples, pku_root, cache)
    killed = subprocess.run([sys.executable, "-c", _KILL_AT_CREATION, "extract", "--root", str(pku_root),
                             "--backbone", "resnet18", "--random-weights", "--image-size", "32", "--pool",
                             "multilevel", "--workers", "0", "--quiet", "--cache", str(cache)], cwd=REPO,
                            capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL
    assert len(_temporaries(cache)) == 1  # the half-written new file, beside an intact cache
    assert check_cache(cache) == [] and list(_state(cache)) == [first.backbone_id]
    resumed = _extract(samples, pku_root, cache, _small("multilevel"))
    assert resumed.rows_written == 22 and _temporaries(cache) == []


@pytest.mark.slow
def test_a_half_created_backbone_of_an_older_version_is_listed_dropped_and_redone(pku_root, tmp_path):
    samples = load_dataset(None, pku_root)
    cache = tmp_path / "c.h5"
    first = _extract(samples, pku_root, cache)
    bid = _small("multilevel").id
    with h5py.File(cache, "r+") as f:  # what an interrupted 0.1.0 left: datasets, no attributes
        f.require_group(f"features/{bid}").create_dataset("emb", shape=(22, 1920), dtype="f4")
    runner = CliRunner()
    shown = runner.invoke(cli.main, ["info", "--cache", str(cache)])
    assert shown.exit_code == 0 and f"{bid}: HALF CREATED" in shown.output
    checked = runner.invoke(cli.main, ["info", "--check", "--cache", str(cache)])
    assert checked.exit_code == 2 and f"backbone {bid} is half created" in checked.output
    assert "Traceback" not in checked.output
    repaired = runner.invoke(cli.main, ["repair", "--cache", str(cache)])
    assert repaired.exit_code == 0 and f"dropped half-created backbone {bid}" in repaired.output
    assert check_cache(cache) == [] and list(_state(cache)) == [first.backbone_id]
    with h5py.File(cache, "r+") as f:
        f.require_group(f"features/{bid}").create_dataset("done", shape=(22,), dtype=bool)
    assert _extract(samples, pku_root, cache, _small("multilevel")).rows_written == 22  # a rerun drops and redoes it
    assert check_cache(cache) == []


def test_check_finds_non_finite_done_rows_and_repair_has_them_extracted_again(pku_root, tmp_path):
    samples = load_dataset(None, pku_root)
    cache = tmp_path / "c.h5"
    first = _extract(samples, pku_root, cache)
    good = _state(cache)[first.backbone_id][0]
    with h5py.File(cache, "r+") as f:
        f[f"features/{first.backbone_id}/emb"][3] = np.nan
    assert check_cache(cache) == [f"backbone {first.backbone_id}: 1 rows marked done are not finite "
                                  "(`featcache repair` marks them to be extracted again)"]
    result = repair(cache)
    assert result.rows_reset == {first.backbone_id: 1} and check_cache(cache) == []
    again = _extract(samples, pku_root, cache)
    assert again.rows_written == 1
    np.testing.assert_allclose(_state(cache)[first.backbone_id][0], good, atol=1e-6)


# --------------------------------------------------------------------------------------------- one writer per file

_HOLD = textwrap.dedent("""
    import sys, time
    from featcache.cache_lock import lock_cache
    with lock_cache(sys.argv[1]):
        print("held", flush=True)
        time.sleep(30)
""")


def test_a_symlink_and_its_target_share_one_writer(pku_root, tmp_path):
    cache, link = tmp_path / "c.h5", tmp_path / "link.h5"
    link.symlink_to(cache)
    env = dict(os.environ, HDF5_USE_FILE_LOCKING="FALSE")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(cache)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FeatcacheError, match="link.h5 is being written by another featcache process"):
            _extract(load_dataset(None, pku_root), pku_root, link)
    finally:
        holder.kill()
        holder.wait()
    assert _extract(load_dataset(None, pku_root), pku_root, link).rows_written == 22
    assert link.is_symlink() and h5py.is_hdf5(cache)  # the symlink still points at the cache, now complete
    with lock_cache(link):  # released on exit: the lock file left beside the cache holds nothing
        pass


def test_a_lock_file_nobody_holds_does_not_block(tmp_path):
    lock = Path(str(tmp_path / "c.h5") + ".lock")
    lock.write_text("")  # left by a process killed with -9: nobody holds it
    with lock_cache(tmp_path / "c.h5"):
        assert lock.exists()
        with pytest.raises(FeatcacheError, match="being written by another featcache process"):
            with lock_cache(tmp_path / "c.h5"):
                pass
    with lock_cache(tmp_path / "c.h5"):  # released again
        pass


def test_a_rewritten_cache_has_the_mode_of_any_new_file(pku_root, tmp_path):
    """The temporary file renamed over the cache is created as any new file is (0o666 less the umask), not private."""
    cache = tmp_path / "c.h5"
    store.create_cache(cache, load_dataset(None, pku_root), pku_root)
    (tmp_path / "plain").touch()
    assert cache.stat().st_mode == (tmp_path / "plain").stat().st_mode
    assert _temporaries(cache) == []


def test_readers_see_the_old_cache_while_a_backbone_is_added(pku_root, tmp_path, monkeypatch):
    samples = load_dataset(None, pku_root)
    cache = tmp_path / "c.h5"
    first = _extract(samples, pku_root, cache)
    real = cache_rewrite.create_feature_datasets
    seen = []

    def look(f, config, dim, provenance, attrs=None):
        group = real(f, config, dim, provenance, attrs)
        seen.append(sorted(cache_info(cache)["backbones"]))  # `info` during the creation of the new backbone
        return group

    monkeypatch.setattr(cache_rewrite, "create_feature_datasets", look)
    _extract(samples, pku_root, cache, _small("multilevel"))
    assert seen == [[first.backbone_id]]


# ------------------------------------------------------------------------------------------ provenance compared

@pytest.mark.slow  # over 0.7 s: run by CI and make test-all
def test_info_check_fit_and_bench_notice_images_changed_on_disk(pku_root, tmp_path, monkeypatch):
    """An image rotated in place after extraction: `info --check` said "ok" and `fit` ran on the old features without
    a word; only the next `extract` noticed. Now info --check fails naming it, fit and bench warn once and run, by a
    stat per image (no read); a missing image is a note; a moved cache (its root gone) one short note."""
    from regressors.fit import bench, fit

    samples = load_dataset(None, pku_root)
    cache = tmp_path / "c.h5"
    _extract(samples, pku_root, cache)
    runner = CliRunner()
    ok = runner.invoke(cli.main, ["info", "--check", "--cache", str(cache)])
    assert ok.exit_code == 0 and ok.output.splitlines()[-1].endswith("images unchanged on disk"), ok.output
    target = pku_root / "All" / "SD_1000_00.jpg"
    shutil.copyfile(pku_root / "All" / "MJ_1001_10.jpg", target)  # other pixels under the same name
    line = ("1 images changed on disk since their features were extracted (size or modification time; first: "
            "All/SD_1000_00.jpg); run featcache extract to update their features")
    checked = runner.invoke(cli.main, ["info", "--check", "--cache", str(cache)])
    assert checked.exit_code == 2 and f"problem    {line}" in checked.output, checked.output
    assert checked.output.splitlines()[-1] == f"error: {cache}: 1 problem(s): {line}"
    reads = []
    monkeypatch.setattr(image_changes, "image_hashes", lambda *a: reads.append(a))  # only stat calls

    def about_the_cache(caught):  # not the default modes' warnings
        return [str(w.message) for w in caught if str(w.message).startswith(f"{cache}: ")]

    with pytest.warns(FeatcacheWarning) as caught:
        outcome = fit(str(cache), regressors=["ridge"], floors=False, folds=3, labels="cache")
    assert about_the_cache(caught) == [f"{cache}: {line}"] and f"{cache}: {line}" in outcome.notes
    with pytest.warns(FeatcacheWarning) as caught:
        bench(str(cache), regressors=["ridge"], floors=False, folds=3, labels="cache")
    assert about_the_cache(caught) == [f"{cache}: {line}"] and not reads
    (pku_root / "All" / "MJ_1000_00.jpg").unlink()  # missing: a note for info --check, nothing for fit
    checked = runner.invoke(cli.main, ["info", "--check", "--cache", str(cache)])
    assert checked.exit_code == 2 and f"note       1 images with features are missing or empty under " \
        f"{pku_root.resolve()} (first: All/MJ_1000_00.jpg); their features are kept" in checked.output
    with pytest.warns(FeatcacheWarning) as caught:
        fit(str(cache), regressors=["ridge"], floors=False, folds=3, labels="cache")
    assert about_the_cache(caught) == [f"{cache}: {line}"]
    moved = tmp_path / "moved"
    pku_root.rename(moved)  # the images' folder gone: nothing to compare with, one short note
    note = f"images not compared with their files ({pku_root.resolve()}, where they were extracted, is not there)"
    checked = runner.invoke(cli.main, ["info", "--check", "--cache", str(cache)])
    assert checked.exit_code == 0 and f"note       {note}" in checked.output, checked.output
    assert checked.output.splitlines()[-1] == "check      ok: every done row finite, tables and attributes complete"
    with pytest.warns(FeatcacheWarning) as caught:
        fit(str(cache), regressors=["ridge"], floors=False, folds=3, labels="cache")
    assert about_the_cache(caught) == [f"{cache}: {note}"]
    moved.rename(pku_root)


def test_other_pixels_under_the_same_names_are_detected(pku_root, tmp_path):
    samples = load_dataset(None, pku_root)
    cache = tmp_path / "c.h5"
    _extract(samples, pku_root, cache)
    other = tmp_path / "other"
    make_pku(other, seed=1)  # the same names and layout, other pixels
    with pytest.raises(FeatcacheError, match=r"another list of images .* images are under .*other, not .*pku"):
        _extract(load_dataset(None, other), other, cache)


def test_an_image_replaced_in_place_is_extracted_again(pku_root, tmp_path):
    samples = load_dataset(None, pku_root)
    cache = tmp_path / "c.h5"
    first = _extract(samples, pku_root, cache)
    before = _state(cache)[first.backbone_id][0]
    target = pku_root / "All" / "SD_1000_00.jpg"
    (pku_root / "All" / "MJ_1001_10.jpg").replace(target)  # other pixels under the same name
    with pytest.warns(FeatcacheWarning, match=r"1 images changed on disk .*SD_1000_00.jpg.*keeping the features of "
                                              r"21 unchanged"):
        again = _extract(load_dataset(None, pku_root), pku_root, cache)
    assert again.rows_written == 1
    after = _state(cache)[first.backbone_id][0]
    row = load_dataset(None, pku_root).distinct_images()[0].index("All/SD_1000_00.jpg")
    assert not np.allclose(after[row], before[row])
    np.testing.assert_array_equal(np.delete(after, row, axis=0), np.delete(before, row, axis=0))


@pytest.mark.slow
def test_after_a_decode_error_removing_the_bad_rows_reuses_the_written_ones(pku_root, tmp_path):
    samples = load_dataset(None, pku_root)
    bad = pku_root / "All" / "DALLE_1000_00.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    cache = tmp_path / "c.h5"
    with pytest.raises(FeatcacheError, match="remove their rows from the annotation, and run the same command"):
        _extract(samples, pku_root, cache, batch_size=4)
    with h5py.File(cache, "r") as f:
        keys = f["images/key"].asstr()[()].tolist()
        written = dict(zip(keys, f[f"features/{_small().id}/emb"][()]))
    lines = (pku_root / "annotation.csv").read_text().splitlines()
    (pku_root / "annotation.csv").write_text("\n".join(l for l in lines if "DALLE_1000_00" not in l) + "\n")
    with pytest.warns(FeatcacheWarning, match=r"the image list changed \(0 added, 1 removed\).*features of 21"):
        result = _extract(load_dataset(None, pku_root), pku_root, cache)
    assert (result.rows_total, result.rows_written, result.rows_done_before) == (21, 0, 21)
    assert check_cache(cache) == []
    with h5py.File(cache, "r") as f:  # every kept row moved to its image's new index
        keys = f["images/key"].asstr()[()].tolist()
        emb = f[f"features/{_small().id}/emb"][()]
    assert "All/DALLE_1000_00.jpg" not in keys and len(keys) == 21
    assert [k for k in written if k != "All/DALLE_1000_00.jpg"] == keys  # later images moved up one index
    for i, key in enumerate(keys):
        np.testing.assert_array_equal(emb[i], written[key])


def test_a_cache_without_features_is_replaced_when_the_images_change(pku_root, tmp_path):
    samples = load_dataset(None, pku_root)
    cache = tmp_path / "c.h5"
    store.create_cache(cache, samples, pku_root)
    other = tmp_path / "other"
    make_pku(other, i2i_prompts=1)
    with pytest.warns(FeatcacheWarning, match="the cache held no features yet, so it is replaced"):
        result = _extract(load_dataset(None, other), other, cache)
    assert result.rows_total == result.rows_written == len(load_dataset(None, other).distinct_images()[0]) == 17


def test_label_changes_are_reported_and_followed(pku_root, tmp_path):
    samples = load_dataset(None, pku_root)
    cache = tmp_path / "c.h5"
    first = _extract(samples, pku_root, cache)
    assert labels_changed(cache) == []
    path = pku_root / "annotation.csv"
    lines = path.read_text().splitlines()
    cells = lines[1].split(",")
    cells[-3] = "4.9999"
    path.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    changes = labels_changed(cache)
    assert len(changes) == 1 and changes[0].startswith("target MOS_q: 1 values differ (first: MJ_0_00.jpg")
    assert read_labels_from_annotation(cache).targets["MOS_q"][0] == pytest.approx(4.9999)
    with pytest.warns(FeatcacheWarning, match=r"labels or rows of annotation.csv changed.*keeping the features of 22"):
        again = _extract(load_dataset(None, pku_root), pku_root, cache)
    assert again.rows_written == 0 and labels_changed(cache) == []
    assert _state(cache)[first.backbone_id][1].all()


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only mount needs root")
def test_a_read_only_complete_cache_is_nothing_to_do(pku_root, tmp_path):
    with _tmpfs(tmp_path / "ro", "4m") as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here")
        cache = tmp_path / "ro" / "c.h5"
        samples = load_dataset(None, pku_root)
        _extract(samples, pku_root, cache)
        subprocess.run(["mount", "-o", "remount,ro", str(tmp_path / "ro")], check=True)
        result = _extract(samples, pku_root, cache)
        assert result.rows_written == 0 and result.rows_done_before == 22
        with pytest.raises(FeatcacheError, match=r"cannot create the lock file c.h5.lock .*the folder must be writ"):
            _extract(samples, pku_root, cache, _small("multilevel"))


def test_verify_recognises_a_copied_dataset_by_content(pku_root, tmp_path):
    import shutil
    import time

    samples = load_dataset(None, pku_root)
    cache = tmp_path / "c.h5"
    first = _extract(samples, pku_root, cache, verify=True)
    time.sleep(0.01)
    copy = tmp_path / "copy"
    shutil.copytree(pku_root, copy, copy_function=shutil.copy)  # same bytes, new modification times
    moved = load_dataset(None, copy)
    with pytest.raises(FeatcacheError, match=r"another list of images .*--verify compares contents"):
        _extract(moved, copy, cache)
    same = _extract(moved, copy, cache, verify=True)
    assert (same.rows_written, same.rows_done_before) == (0, 22)
    other = tmp_path / "other"
    make_pku(other, seed=1)  # other pixels under the same names: refused, also by content
    with pytest.raises(FeatcacheError, match="another list of images"):
        _extract(load_dataset(None, other), other, cache, verify=True)
    assert _state(cache)[first.backbone_id][1].all()


@pytest.mark.slow
def test_merge_interrupted_while_allocating_leaves_the_target_as_it_was(pku_root, tmp_path, monkeypatch):
    from featcache.merge import merge

    samples = load_dataset(None, pku_root)
    shard = tmp_path / "shard.h5"
    _extract(samples, pku_root, shard, shard=(0, 2))
    _extract(samples, pku_root, shard, _small("multilevel"), shard=(0, 2))
    target = tmp_path / "target.h5"
    merge([shard], target)  # both backbones, half their rows
    other = tmp_path / "other.h5"
    _extract(samples, pku_root, other, _small(size=48))
    before = _state(target)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_rewrite, "create_feature_datasets", interrupted)
    result = CliRunner().invoke(cli.main, ["merge", str(other), "--cache", str(target)])
    assert result.exit_code == 130 and "every row merged so far is kept" in result.output
    assert _temporaries(target) == [] and sorted(_state(target)) == sorted(before)
    monkeypatch.undo()
    merged = merge([other], target)
    assert merged.rows[_small(size=48).id] == (22, 22) and check_cache(target) == []


@pytest.mark.slow
def test_info_in_a_loop_never_fails_while_another_process_adds_a_backbone(pku_root, tmp_path):
    samples = load_dataset(None, pku_root)
    cache = tmp_path / "c.h5"
    first = _extract(samples, pku_root, cache)
    writer = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "extract", "--root", str(pku_root),
                               "--backbone", "resnet18", "--random-weights", "--image-size", "32", "--pool",
                               "multilevel", "--batch-size", "1", "--workers", "0", "--quiet", "--cache", str(cache)],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = set()
    while writer.poll() is None:
        info = cache_info(cache)  # must never raise while the other process rewrites and fills the cache
        seen.add(tuple(sorted((b, v["rows_done"]) for b, v in info["backbones"].items())))
        assert info["backbones"][first.backbone_id]["rows_done"] == 22
    assert writer.returncode == 0, writer.stderr.read()
    multilevel = _small("multilevel").id
    assert ((first.backbone_id, 22),) in seen  # before the new backbone was renamed in
    assert any(dict(s).get(multilevel) == 22 for s in seen) or cache_info(cache)["backbones"][multilevel][
        "rows_done"] == 22


def test_an_unreadable_object_under_features_is_reported_and_repair_keeps_the_rest(pku_root, tmp_path):
    samples = load_dataset(None, pku_root)
    cache = tmp_path / "c.h5"
    first = _extract(samples, pku_root, cache)
    with h5py.File(cache, "r+") as f:  # objects that cannot be opened, as a damaged file has
        f["features/broken"] = h5py.SoftLink("/nowhere")
        f["features/elsewhere"] = h5py.ExternalLink("missing.h5", "/group")
    for read in (cache_info, check_cache):  # a link is never followed: refused, naming the repair
        with pytest.raises(FeatcacheError, match=r"/features/broken is a soft link.*`featcache repair` drops it"):
            read(cache)
    assert repair(cache).dropped == ["broken", "elsewhere"]
    assert check_cache(cache) == [] and _state(cache)[first.backbone_id][1].all()


def test_merge_keeps_every_shards_image_hashes_and_refuses_before_writing(pku_root, tmp_path):
    """--verify shards: each hashed the images it extracted, so the merged cache holds every hash (it held the
    first shard's only, and a copy of the dataset was then refused as changed). Shards that disagree on the
    configuration are refused before --out exists; a merge into a cache made another way names no extract
    options (merge has none)."""
    from featcache.merge import merge

    samples = load_dataset(None, pku_root)
    shards = [tmp_path / f"s{i}.h5" for i in range(2)]
    for i, shard in enumerate(shards):
        _extract(samples, pku_root, shard, shard=(i, 2), verify=True)
    whole = tmp_path / "whole.h5"
    _extract(samples, pku_root, whole, verify=True)
    merged = tmp_path / "merged.h5"
    merge(shards, merged)
    with h5py.File(whole, "r") as a, h5py.File(merged, "r") as b:
        assert (a["images/sha256"][()] != b"").all()
        assert list(b["images/sha256"][()]) == list(a["images/sha256"][()])
    copy = tmp_path / "copy"
    shutil.copytree(pku_root, copy)
    again = _extract(load_dataset(None, copy), copy, merged, verify=True)  # recognised by content
    assert (again.rows_written, again.rows_done_before) == (0, 22)

    torch_path = tmp_path / "torch.h5"
    _extract(samples, pku_root, torch_path, shard=(1, 2), decode="gpu", device="cpu")
    with pytest.raises(FeatcacheError, match=r"another configuration \(decode.*differ\)"):
        merge([shards[0], torch_path], tmp_path / "new" / "mixed.h5")
    assert not (tmp_path / "new").exists()  # not even --out's folder
    before = _state(merged)
    with pytest.raises(FeatcacheError, match=r"another configuration \(decode.*differ\); use another --cache$"):
        merge([torch_path], merged)
    assert sorted(_state(merged)) == sorted(before)


def test_a_copied_database_is_compared_with_its_own_images(pku_root, tmp_path, monkeypatch):
    """The cache records the absolute root it was extracted from. In a copy of the database (cache and annotation
    beside each other), an image replaced in the copy went unnoticed: the original's files were compared. The
    images are now those under the root of the annotation the labels check finds."""
    from regressors.fit import fit

    samples = load_dataset(None, pku_root)
    _extract(samples, pku_root, pku_root / "featcache.h5")
    copy = tmp_path / "copy"
    shutil.copytree(pku_root, copy)  # copy2: the files keep their modification times
    monkeypatch.chdir(copy)
    runner = CliRunner()
    ok = runner.invoke(cli.main, ["info", "--check"])
    assert ok.exit_code == 0 and ok.output.splitlines()[-1].endswith("images unchanged on disk"), ok.output
    shutil.copyfile(copy / "All" / "MJ_1001_10.jpg", copy / "All" / "SD_1000_00.jpg")
    checked = runner.invoke(cli.main, ["info", "--check"])
    assert checked.exit_code == 2 and "1 images changed on disk" in checked.output, checked.output
    with pytest.warns(FeatcacheWarning, match=r"1 images changed on disk .*first: All/SD_1000_00.jpg"):
        fit("featcache.h5", regressors=["ridge"], floors=False, folds=3)
    original = runner.invoke(cli.main, ["info", "--check", "--cache", str(pku_root / "featcache.h5")])
    assert original.exit_code == 0, original.output  # the original's cache: the annotation beside it, its images
