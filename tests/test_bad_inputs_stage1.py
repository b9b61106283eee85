"""Every bad stage-1 input through the command line: exit code 2, no traceback, a message that says what to do.

BAD_INPUTS lists the cases; each entry is (name, setup, expected text).
`setup(root, tmp)` prepares the case in a fresh dataset folder (the working directory) and returns the arguments.
"""

import os
import shutil
import signal
import struct
import subprocess
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cli
from featcache.datasets import load_dataset
from featcache.store import create_cache, ensure_features
from tests.fakedata import make_pku

EXTRACT = ["extract", "--backbone", "resnet18", "--random-weights", "--image-size", "32", "--workers", "0", "--quiet"]


def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG that declares width x height pixels (1-bit grey) but holds almost no data: cheap to write and open."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _cache_with_nan_row(root, tmp):
    samples = load_dataset(None, root)
    create_cache(root / "featcache.h5", samples, root)
    config = {"id": "x.random/paper/8", "pool": "paper", "weights": {"tag": "random"},
              "data_config": {"input_size": 8}}
    with h5py.File(root / "featcache.h5", "r+") as f:
        group = ensure_features(f, config, 4, {}, root / "featcache.h5")
        group["emb"][:] = np.ones((22, 4), dtype=np.float32)
        group["emb"][5] = np.nan
        group["done"][:] = True
    return ["info", "--check"]


def _incomplete_cache(root, tmp):
    """What `merge` leaves when a shard is missing: some rows not extracted."""
    _cache_with_nan_row(root, tmp)
    with h5py.File(root / "featcache.h5", "r+") as f:
        f["features/x.random/paper/8/emb"][5] = 1.0
        f["features/x.random/paper/8/done"][11:] = False
    return ["info", "--check"]


def _image_changed_on_disk(root, tmp):
    """An image edited after its features were extracted (its modification time moved on)."""
    _cache_with_nan_row(root, tmp)
    with h5py.File(root / "featcache.h5", "r+") as f:
        f["features/x.random/paper/8/emb"][5] = 1.0
    image = root / "All" / "SD_1000_00.jpg"
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    return ["info", "--check"]


def _with_annotation(body):
    def setup(root, tmp):
        (root / "annotation.csv").write_text("Image_prompt,Text_prompt,Generated_image,MOS_q,MOS_a,MOS_c\n" + body)
        return EXTRACT
    return setup


def _spreadsheet_beside_the_csv(root, tmp):
    import pandas as pd

    pd.read_csv(root / "annotation.csv", dtype=str, keep_default_na=False).to_excel(root / "annotation.xlsx",
                                                                                     index=False)
    return EXTRACT


def _write(name, data):
    def setup(root, tmp):
        (root / name).write_bytes(data) if isinstance(data, bytes) else (root / name).write_text(data)
        return None
    return setup


def _hdf5_not_a_cache(root, tmp):
    with h5py.File(root / "plain.h5", "w") as f:
        f["x"] = np.zeros(3)
    return None


def _photos(root, tmp, n=4):
    folder = tmp / "photos"
    folder.mkdir(exist_ok=True)
    for i in range(n):
        (root / "All" / f"SD_1000_{i}0.jpg").replace(folder / f"p{i}.jpg") if i < 2 else \
            (root / "All" / f"MJ_1000_{i - 2}0.jpg").replace(folder / f"p{i}.jpg")
    return folder


def _other_weights(root):
    from safetensors.torch import save_file

    save_file({"conv1.weight": torch.zeros(64, 3, 5, 5)}, str(root / "other.safetensors"))


def _pickled_object(root):
    import pathlib

    torch.save({"path": pathlib.PurePosixPath("x")}, root / "object.pth")


def _truncate(name):
    def setup(root, tmp):
        path = root / "All" / name
        path.write_bytes(path.read_bytes()[:100])
        return EXTRACT
    return setup


def _bomb(root, tmp):
    _png_header(root / "All" / "SD_1000_00.jpg", 13500, 13500)  # 182 MP: above Pillow's own 179 MP refusal
    return EXTRACT


BAD_INPUTS = [
    ("workers -1", lambda r, t: EXTRACT + ["--workers", "-1"], "Invalid value for '--workers'"),
    ("image-size -5", lambda r, t: EXTRACT + ["--image-size", "-5"], "Invalid value for '--image-size'"),
    ("image-size 0", lambda r, t: EXTRACT + ["--image-size", "0"], "Invalid value for '--image-size'"),
    ("image-size foo", lambda r, t: EXTRACT + ["--image-size", "foo"], "Invalid value for '--image-size'"),
    ("crops 0", lambda r, t: EXTRACT + ["--crops", "0"], "--crops 0: must be at least 1"),
    ("crops -1", lambda r, t: EXTRACT + ["--crops", "-1"], "--crops -1: must be at least 1"),
    ("native and crops", lambda r, t: EXTRACT + ["--image-size", "native", "--crops", "3"], "choose one"),
    ("crops over max-pixels", lambda r, t: EXTRACT + ["--crops", "4", "--max-pixels", "4000"],
     "--crops 4 of 32x32 feed 4096 pixels per image, over the limit of 4000 pixels; use fewer crops"),
    ("crops 10**6", lambda r, t: EXTRACT + ["--crops", "1000000"], "--crops 1000000 of 32x32 feed 1024000000 pixels"),
    ("backbone view and crops disagree", lambda r, t: ["extract", "--backbone", "resnet18/paper/224x5",
                                                       "--random-weights", "--crops", "3", "--quiet"],
     "--backbone resnet18/paper/224x5 names the view 224x5 but --crops is 3; give it once"),
    ("centre view with a max-side", lambda r, t: ["extract", "--backbone", "resnet18/paper/32@512",
                                                  "--random-weights", "--workers", "0", "--quiet"],
     "--backbone resnet18/paper/32@512: the view 32@512 gives a --max-side, which applies to native and crops only"),
    ("max-side without native or crops", lambda r, t: EXTRACT + ["--max-side", "800"],
     "--max-side applies to --image-size native and --crops K only"),
    ("max-side 0", lambda r, t: EXTRACT + ["--image-size", "native", "--max-side", "0"], "--max-side 0"),
    ("batch-size 0", lambda r, t: EXTRACT + ["--batch-size", "0"], "Invalid value for '--batch-size'"),
    ("max-pixels 0", lambda r, t: EXTRACT + ["--max-pixels", "0"], "Invalid value for '--max-pixels'"),
    ("device foo", lambda r, t: EXTRACT + ["--device", "foo"], "--device 'foo': not a device"),
    ("device cuda:7", lambda r, t: EXTRACT + ["--device", "cuda:7"], "--device cuda:7"),
    ("precision fp8", lambda r, t: EXTRACT + ["--precision", "fp8"], "Invalid value for '--precision'"),
    ("pool unknown", lambda r, t: EXTRACT + ["--pool", "max"], "Invalid value for '--pool'"),
    ("shard 2/2", lambda r, t: EXTRACT + ["--shard", "2/2"], "need 0 <= I < N"),
    ("shard text", lambda r, t: EXTRACT + ["--shard", "half"], "expected I/N"),
    ("no backbone", lambda r, t: ["extract"], "--backbone is required"),
    ("unknown backbone", lambda r, t: ["extract", "--backbone", "resnet51"], "did you mean"),
    ("backbone in capitals", lambda r, t: ["extract", "--backbone", "VGG19"], "did you mean 'vgg19'"),
    ("unknown pretrained tag", lambda r, t: ["extract", "--backbone", "resnet50.a1_in1", "--random-weights"],
     "unknown pretrained tag 'a1_in1'; did you mean 'a1_in1k'? (pretrained tags of resnet50: a1_in1k,"),
    ("unknown dataset", lambda r, t: EXTRACT + ["--dataset", "agiqa3k"], "did you mean 'agiqa-3k'"),
    ("csv without --col", lambda r, t: EXTRACT + ["--dataset", "csv", "--annotation", "annotation.csv"],
     "needs --col image=COLUMN"),
    ("bad --col", lambda r, t: EXTRACT + ["--dataset", "csv", "--col", "picture=x"], "expected ROLE=COLUMN"),
    ("--col names a missing column", lambda r, t: EXTRACT + ["--dataset", "csv", "--annotation", "annotation.csv",
                                                             "--col", "image=file", "--col", "target=MOS_q"],
     "missing column(s) file"),
    ("weights file missing", lambda r, t: ["extract", "--backbone", "resnet18", "--weights", "nope.pth"],
     "weights file not found"),
    ("weights of another architecture",
     lambda r, t: _other_weights(r) or ["extract", "--backbone", "resnet18", "--weights", "other.safetensors"],
     "other.safetensors: weights do not fit resnet18: 1 of another shape (e.g. conv1.weight: [64, 3, 5, 5] in the "
     "file, [64, 3, 7, 7] in the model), 99 missing (e.g. bn1.weight)"),
    ("weights file of another kind", lambda r, t: ["extract", "--backbone", "resnet18", "--weights", "annotation.csv"],
     "annotation.csv: not a weights file (expected .safetensors, .pth, .pt, .bin, .ckpt, .npz)"),
    ("weights file of junk", lambda r, t: _write("junk.pth", b"\x80\x02junk" * 50)(r, t) or
     ["extract", "--backbone", "resnet18", "--weights", "junk.pth"], "junk.pth: not a readable weights file ("),
    ("weights file with pickled objects", lambda r, t: _pickled_object(r) or
     ["extract", "--backbone", "resnet18", "--weights", "object.pth"],
     "object.pth: not a readable weights file (it holds pickled objects, which featcache does not load: "
     "pathlib.PurePosixPath)"),
    ("random and file weights", lambda r, t: ["extract", "--backbone", "resnet18", "--random-weights", "--weights",
                                              "annotation.csv"], "exclude each other"),
    ("root missing", lambda r, t: EXTRACT + ["--root", "nowhere"], "dataset root is not a folder"),
    ("no annotation", lambda r, t: (r / "annotation.csv").unlink() or EXTRACT, "no annotation file found"),
    ("several annotation files", _spreadsheet_beside_the_csv,
     "several annotation files match (annotation.csv: pku-aigiqa-4k, annotation.xlsx: pku-aigiqa-4k); "
     "pass --annotation FILE (and --dataset NAME)"),
    ("missing column", lambda r, t: _write("annotation.csv", "Generated_image,MOS_q\nx.jpg,1\n")(r, t) or EXTRACT,
     "annotation.csv: missing column(s) MOS_a, MOS_c"),
    ("target not a number", _with_annotation(",t,SD_1000_00.jpg,good,2,3\n"), "target MOS_q is 'good'"),
    ("target after blank lines", _with_annotation(",t,SD_1000_00.jpg,1,2,3\n\n \n,t,SD_1000_10.jpg,good,2,3\n"),
     "annotation.csv row 5: target MOS_q is 'good'"),
    ("same image twice", _with_annotation(",t,SD_1000_00.jpg,1,2,3\n,t,./SD_1000_00.jpg,1,2,3\n"),
     "are the same image"),
    ("path escapes root", _with_annotation(",t,../../x.jpg,1,2,3\n"), "escapes the dataset root"),
    ("NUL byte in a name", _with_annotation(",t,SD_1000_00.jpg\0x,1,2,3\n"),
     "annotation.csv row 2: holds a NUL byte (\\x00), which no annotation field may hold"),
    ("image missing", lambda r, t: (r / "All" / "SD_1000_00.jpg").unlink() or EXTRACT, "missing or empty"),
    ("image undecodable", _truncate("MJ_1000_00.jpg"), "could not be read"),
    ("image over 179 MP", _bomb, "exceeds the limit of 100000000"),
    ("image the resize blows up", lambda r, t: _png_header(r / "All" / "SD_1000_00.jpg", 20000, 1) or
     EXTRACT + ["--max-pixels", "1000000"], "SD_1000_00.jpg: 20000x1 pixels would be resized to 720000x36 before the "
                                            "crop, over the limit of 1000000 pixels (aspect ratio 20000:1)"),
    ("cache is text", lambda r, t: _write("featcache.h5", b"not HDF5")(r, t) or EXTRACT,
     "cannot open the cache for writing"),
    ("cache is HDF5, not a cache", lambda r, t: _hdf5_not_a_cache(r, t) or EXTRACT + ["--cache", "plain.h5"],
     "not a featcache cache"),
    ("featcache.toml not TOML", lambda r, t: _write("featcache.toml", "backbone = [")(r, t) or ["extract"],
     "not valid TOML"),
    ("featcache.toml unknown key", lambda r, t: _write("featcache.toml", 'backbon = "lite0"')(r, t) or ["extract"],
     "unknown key(s) backbon"),
    ("featcache.toml quoted boolean",
     lambda r, t: _write("featcache.toml", 'jpeg_draft = "false"')(r, t) or ["extract"],
     'featcache.toml: jpeg_draft = "false": expected true or false (no quotes)'),
    ("featcache.toml quoted number", lambda r, t: _write("featcache.toml", 'workers = "2"')(r, t) or ["extract"],
     'featcache.toml: workers = "2": expected a whole number (no quotes)'),
    ("featcache.toml unknown column role",
     lambda r, t: _write("featcache.toml", '[columns]\nimage = "file"\ntarget = "mos"\ngrup = "prompt"')(r, t) or
     ["extract"], "featcache.toml: columns = {'image': 'file', 'target': 'mos', 'grup': 'prompt'}: unknown role(s) "
                  "grup (roles: image, prompt_image, text, group, generator, target, image_dir, prompt_dir)"),
    ("featcache.toml unknown device", lambda r, t: _write("featcache.toml", 'device = "foo"')(r, t) or ["extract"],
     'featcache.toml: device = "foo": expected auto, cpu, cuda or cuda:N'),
    ("featcache.toml unknown choice", lambda r, t: _write("featcache.toml", 'decode = "nvjpeg"')(r, t) or ["extract"],
     'featcache.toml: decode = "nvjpeg": expected one of auto, cpu, gpu'),
    ("merge --out onto HDF5 not a cache", lambda r, t: _cache_with_nan_row(r, t) and _hdf5_not_a_cache(r, t) or
     ["merge", "featcache.h5", "--cache", "plain.h5"], "plain.h5: not a featcache cache"),
    ("merge --out onto a text file", lambda r, t: _cache_with_nan_row(r, t) and _write("out.h5", "text")(r, t) or
     ["merge", "featcache.h5", "--cache", "out.h5"], "cannot open the cache for writing"),
    ("merge a shard that is not a cache", lambda r, t: _write("s.h5", "text")(r, t) or
     ["merge", "s.h5", "--cache", "m.h5"], "not a readable HDF5 cache"),
    ("merge --out is a shard", lambda r, t: _cache_with_nan_row(r, t) and
     ["merge", "featcache.h5", "--cache", "./featcache.h5"], "must not be one of the shards"),
    ("info: no cache", lambda r, t: ["info", "--cache", "missing.h5"], "cache not found"),
    ("info: not HDF5", lambda r, t: _write("x.h5", "text")(r, t) or ["info", "--cache", "x.h5"], "not a readable HDF5 cache"),
    ("info --check: NaN in a done row", _cache_with_nan_row, "1 rows marked done are not finite"),
    ("info --check: rows missing (a shard not merged)", _incomplete_cache,
     "backbone x.random/paper/8: 11 of 22 rows not extracted yet (run the same `featcache extract` again, or merge "
     "the missing shards)"),
    ("info --check: an image changed on disk", _image_changed_on_disk,
     "1 images changed on disk since their features were extracted (size or modification time; first: "
     "All/SD_1000_00.jpg); run featcache extract to update their features"),
    ("repair: no cache", lambda r, t: ["repair", "--cache", "missing.h5"], "cache not found"),
    ("synth --views 0", lambda r, t: ["synth", "--photos", str(_photos(r, t)), "--out", "s", "--views", "0"],
     "Invalid value for '--views'"),
    ("synth --size 0", lambda r, t: ["synth", "--photos", str(_photos(r, t)), "--out", "s", "--size", "0"],
     "Invalid value for '--size'"),
    ("synth over a database", lambda r, t: ["synth", "--photos", str(_photos(r, t)), "--out", "."],
     "already holds files; choose an empty or new --out, or pass --overwrite"),
    ("synth with 2 photos", lambda r, t: ["synth", "--photos", str(_photos(r, t, 2)), "--out", "s"],
     "needs at least 3 photos"),
]
if torch.cuda.is_available():
    BAD_INPUTS = [b for b in BAD_INPUTS if b[0] != "device cuda:7" or torch.cuda.device_count() <= 7]
else:
    BAD_INPUTS.append(("device cuda without a GPU", lambda r, t: EXTRACT + ["--device", "cuda"],
                       "torch sees no CUDA device"))


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One tiny dataset, copied for each case (copying is faster than encoding its JPEGs again)."""
    return make_pku(tmp_path_factory.mktemp("template") / "data").parent


@pytest.mark.parametrize("name,setup,expected", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, template, name, setup, expected):
    root = tmp_path / "data"
    shutil.copytree(template, root)
    monkeypatch.chdir(root)
    args = setup(root, tmp_path)
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2, (name, result.output, result.exception)
    assert "Traceback" not in result.output and not isinstance(result.exception, (AssertionError, TypeError))
    assert expected in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith(("error:", "Error:"))]
    assert len(errors) == 1, result.output  # one line says what is wrong


def test_a_genuine_huge_image_passes_with_max_pixels(tmp_path):
    """--max-pixels 500000000 really allows a 182 MP image once the process raised Pillow's limit, as the command
    does: the file then fails only because this test file holds no pixel data."""
    from PIL import Image

    from featcache.images import load_rgb, raise_pillow_limit
    from featcache.errors import FeatcacheError

    _png_header(tmp_path / "big.png", 13500, 13500)
    with pytest.raises(FeatcacheError, match="exceeds the limit of 100000000"):
        load_rgb(tmp_path / "big.png")
    before = Image.MAX_IMAGE_PIXELS
    try:
        raise_pillow_limit(500_000_000)
        with pytest.raises(FeatcacheError) as error:
            load_rgb(tmp_path / "big.png", max_pixels=500_000_000)
    finally:
        Image.MAX_IMAGE_PIXELS = before
    assert "cannot decode image" in str(error.value) and "limit" not in str(error.value)


@pytest.mark.slow
def test_a_killed_decoding_worker_is_a_one_line_error_and_keeps_rows(tmp_path, monkeypatch):
    import featcache.image_rows as image_rows_module

    root = tmp_path / "data"
    make_pku(root)
    monkeypatch.chdir(root)
    parent, real = os.getpid(), image_rows_module.load_rgb

    def oom_killer(path, max_pixels, *args):
        if os.getpid() != parent and Path(path).name == "DALLE_1001_10.jpg":
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, max_pixels, *args)

    monkeypatch.setattr(image_rows_module, "load_rgb", oom_killer)
    args = ["extract", "--backbone", "resnet18", "--random-weights", "--image-size", "32", "--workers", "1",
            "--batch-size", "2", "--quiet"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "a decoding worker process died" in result.output and "rows written so far are kept" in result.output
    with h5py.File(root / "featcache.h5", "r") as f:
        kept = int(f["features/resnet18.random/paper/32/done"][()].sum())
    assert 0 < kept < 22
    monkeypatch.setattr(image_rows_module, "load_rgb", real)
    again = CliRunner().invoke(cli.main, args)
    assert again.exit_code == 0 and f"wrote {22 - kept} rows" in again.output, again.output


def test_ctrl_c_outside_extract_does_not_promise_a_resume(tmp_path, monkeypatch):
    import featcache.info as info_module

    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(info_module, "cache_info", interrupted)
    result = CliRunner().invoke(cli.main, ["info", "--cache", str(tmp_path / "c.h5")])
    assert result.exit_code == 130 and result.output.strip() == "interrupted"
    assert "resume" not in result.output


def test_sigterm_ends_a_command_as_ctrl_c_does(tmp_path, monkeypatch):
    """SLURM and Kubernetes stop jobs with SIGTERM: the command's interrupted line, exit 143, and the process's own
    SIGTERM handler back afterwards."""
    import signal

    import featcache.info as info_module

    def terminated(path):
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(info_module, "cache_info", terminated)
    result = CliRunner().invoke(cli.main, ["info", "--cache", str(tmp_path / "c.h5")])
    assert result.exit_code == 143 and result.output.strip() == "interrupted"
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only mount needs root (root ignores chmod)")
def test_read_only_folder_for_extract_and_merge(tmp_path, monkeypatch):
    root = tmp_path / "data"
    make_pku(root)
    folder = tmp_path / "ro"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(folder)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        monkeypatch.chdir(root)
        runner = CliRunner()
        out = runner.invoke(cli.main, EXTRACT + ["--cache", str(folder / "c.h5")])
        assert out.exit_code == 2 and "Traceback" not in out.output
        assert "cannot create the lock file c.h5.lock" in out.output and "must be writable" in out.output
        assert runner.invoke(cli.main, EXTRACT).exit_code == 0
        merged = runner.invoke(cli.main, ["merge", "featcache.h5", "--cache", str(folder / "m.h5")])
        assert merged.exit_code == 2 and "cannot create the lock file m.h5.lock" in merged.output
    finally:
        subprocess.run(["umount", "-l", str(folder)])


def test_a_worker_killed_while_handing_over_a_batch_is_a_one_line_error(tmp_path, monkeypatch):
    """A worker killed while the main process reads a batch's shared memory from it shows as a reset connection
    instead of torch's dead-worker error: the same one-line error, the rows written kept."""
    import featcache.extract as extract_module
    from featcache.backbones import load_backbone
    from featcache.errors import FeatcacheError

    root = tmp_path / "data"
    make_pku(root)
    real = extract_module.forward_batches

    def killed_after_one_batch(*args, **kwargs):
        batches = real(*args, **kwargs)
        yield next(batches)
        batches.close()
        raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(extract_module, "forward_batches", killed_after_one_batch)
    backbone = load_backbone("resnet18", random_weights=True, image_size=32)
    with pytest.raises(FeatcacheError, match=r"^a decoding worker process died \(\[Errno 104\] Connection reset by "
                                             r"peer\); the 2 rows written so far are kept.*\(1 were running\)"):
        extract_module.extract(load_dataset(None, root), root, backbone, root / "c.h5", workers=1, batch_size=2,
                               progress=False)
    with h5py.File(root / "c.h5", "r") as f:
        assert int(f[f"features/{backbone.id}/done"][()].sum()) == 2
