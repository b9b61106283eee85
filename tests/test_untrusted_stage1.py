"""The hostile corpus of stage 1: caches, annotations, lock files, temporary files and image folders crafted by
someone else. Each case is built here (small, no network) and must end in one line and exit 2 through the command
line, with nothing written or read outside the folders the user named (docs/security.md)."""

import csv
import os
import shutil
import stat
import zipfile

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from featcache import untrusted
from featcache.annotation_lookup import read_labels_from_annotation
from featcache.atomic_write import real_path
from featcache.cache_check import check_cache, repair
from featcache.cache_lock import lock_cache, lock_file
from featcache.datasets import load_dataset
from featcache.errors import FeatcacheError
from featcache.info import format_info, cache_info
from featcache.outputs import write_text_atomically
from featcache.store import annotation_sha256, create_cache, ensure_features, open_read
from tests.fakedata import make_pku

BID = "toy.random/paper/4"
EXTRACT = ["extract", "--backbone", "resnet18", "--random-weights", "--image-size", "32", "--workers", "0", "--quiet"]


def _config(bid=BID):
    return {"id": bid, "arch": "toy", "weights": {"source": "random", "tag": "random"}, "feature": "gap",
            "pool": "paper", "precision": "fp32",
            "data_config": {"input_size": 4, "crop_pct": 1.0, "resize": 4, "interpolation": "bilinear",
                            "mean": [0.5] * 3, "std": [0.5] * 3}}


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A database (22 distinct images) with a complete cache of one toy backbone."""
    root = tmp_path_factory.mktemp("template") / "data"
    make_pku(root)
    samples = load_dataset(None, root)
    cache = root / "featcache.h5"
    create_cache(cache, samples, root)
    with h5py.File(cache, "r+") as f:
        group = ensure_features(f, _config(), 4, {"command": "featcache extract"}, cache)
        group["emb"][:] = np.ones((22, 4), dtype=np.float32)
        group["done"][:] = True
    return root


@pytest.fixture
def data(template, tmp_path, monkeypatch):
    """A fresh copy of the template as the working directory, with an `outside` folder beside it."""
    root = tmp_path / "data"
    shutil.copytree(template, root)
    (tmp_path / "outside").mkdir()
    monkeypatch.chdir(root)
    return root


def _run(args):
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2, (args, result.output, result.exception)
    assert "Traceback" not in result.output and not isinstance(result.exception, (AssertionError, TypeError))
    errors = [line for line in result.output.splitlines() if line.startswith(("error:", "Error:"))]
    assert len(errors) == 1, result.output
    return errors[0]


def _replace_emb(cache, **kwargs):
    with h5py.File(cache, "r+") as f:
        del f[f"features/{BID}/emb"]
        if "virtual" in kwargs:
            f.create_virtual_dataset(f"features/{BID}/emb", kwargs["virtual"], fillvalue=0)
        else:
            f.create_dataset(f"features/{BID}/emb", dtype="f4", **kwargs)


# ---------------------------------------------------------------------------------------------- the cache file

READERS = [["info"], ["info", "--check"], ["repair"], ["merge", "featcache.h5", "--cache", "merged.h5"]]


@pytest.mark.parametrize("command", READERS, ids=lambda c: " ".join(c[:2]))
def test_external_storage_is_refused_and_never_written(data, command):
    victim = data.parent / "outside" / "x.bin"
    victim.write_bytes(b"secret\n" * 20)
    _replace_emb(data / "featcache.h5", shape=(22, 4), external=[(str(victim), 0, h5py.h5f.UNLIMITED)])
    line = _run(command)
    assert "/features/toy.random/paper/4/emb is stored in another file" in line and "it is not read" in line
    assert victim.read_bytes() == b"secret\n" * 20
    assert not (data / "merged.h5").exists()


def test_fit_reads_no_external_storage(data):
    text = data.parent / "outside" / "notes.txt"
    text.write_bytes(b"0123456789abcdef" * 22)
    _replace_emb(data / "featcache.h5", shape=(22, 4), external=[(str(text), 0, h5py.h5f.UNLIMITED)])
    assert "is stored in another file" in _run(["fit", "--cache", "featcache.h5", "--mode", "nr", "--out", "run"])
    assert not (data / "run").exists()


def test_extract_never_writes_through_external_storage(data):
    victim = data.parent / "outside" / "x.bin"
    _replace_emb(data / "featcache.h5", shape=(22, 4), external=[(str(victim), 0, h5py.h5f.UNLIMITED)])
    with h5py.File(data / "featcache.h5", "r+") as f:
        f[f"features/{BID}/done"][:] = False
    assert "is stored in another file" in _run(EXTRACT)
    assert not victim.exists()


def test_external_and_soft_links_are_refused_without_being_followed(data):
    other = data.parent / "outside" / "other.h5"
    with h5py.File(other, "w") as f:
        f["key"] = np.array([b"stolen"] * 22)
    with h5py.File(data / "featcache.h5", "r+") as f:
        del f["images/key"]
        f["images/key"] = h5py.ExternalLink(str(other), "/key")
    assert "/images/key is a link to another file; it is not read" in _run(["info"])
    with h5py.File(data / "featcache.h5", "r+") as f:
        del f["images/key"]
        f["images/key"] = h5py.SoftLink("/images/path")
    assert "/images/key is a soft link; it is not read" in _run(["info", "--check"])


def test_a_link_under_features_names_repair_which_drops_it_unread(data):
    other = data.parent / "outside" / "other.h5"
    with h5py.File(other, "w") as f:
        g = f.create_group("g")
        g["emb"], g["done"] = np.zeros((22, 4), "f4"), np.ones(22, bool)
        g.attrs.update({"config_json": "{}", "provenance_json": "{}", "dim": 4})
    with h5py.File(data / "featcache.h5", "r+") as f:
        f["features/elsewhere"] = h5py.ExternalLink(str(other), "/g")
    assert "/features/elsewhere is a link to another file (`featcache repair` drops it)" in _run(["info"])
    assert repair(data / "featcache.h5").dropped == ["elsewhere"]
    assert check_cache(data / "featcache.h5") == []


def test_a_virtual_dataset_is_refused(data):
    other = data.parent / "outside" / "v.h5"
    with h5py.File(other, "w") as f:
        f["data"] = np.full((22, 4), 7, dtype="f4")
    layout = h5py.VirtualLayout(shape=(22, 4), dtype="f4")
    layout[:] = h5py.VirtualSource(str(other), "data", shape=(22, 4))
    _replace_emb(data / "featcache.h5", virtual=layout)
    assert "emb is a virtual dataset" in _run(["info", "--check"])
    assert "emb is a virtual dataset" in _run(["merge", "featcache.h5", "--cache", "merged.h5"])


def test_a_declared_shape_the_file_cannot_hold_is_refused_before_allocation(data):
    """emb declared (22, 80M) float32 (7 GB) in a file of a few hundred KB: refused on open, nothing allocated."""
    _replace_emb(data / "featcache.h5", shape=(22, 80_000_000), chunks=(1, 4096))
    assert os.path.getsize(data / "featcache.h5") < 1 << 20
    line = _run(["info", "--check"])
    assert "emb declares shape (22, 80000000)" in line and "more than the file can hold" in line
    assert "more than the file can hold" in _run(EXTRACT)


def test_a_cycle_of_groups_is_refused_not_recursed(data):
    with h5py.File(data / "featcache.h5", "r+") as f:
        f["features/loop/back"] = f["features"]
    assert "is linked from more than one place" in _run(["info"])
    assert "is linked from more than one place" in _run(["repair"])


def test_a_missing_table_is_one_line(data):
    with h5py.File(data / "featcache.h5", "r+") as f:
        del f["samples/gen"]
    assert "sample tables are damaged" in _run(["info"])


def test_a_damaged_backbone_attribute_is_one_line(data):
    with h5py.File(data / "featcache.h5", "r+") as f:
        f[f"features/{BID}"].attrs["config_json"] = "{not json"
    assert "the cache is damaged" in _run(["info"])


def test_a_genuine_cache_opens(data):
    open_read(data / "featcache.h5").close()
    assert check_cache(data / "featcache.h5", require_complete=True) == []


# ---------------------------------------------------------------------------------------------- lock and temp files

def test_a_dangling_lock_symlink_is_refused_and_creates_nothing(data):
    target = data.parent / "outside" / "created.txt"
    lock_file(data / "featcache.h5").symlink_to(target)
    assert "is a symlink; it is not followed" in _run(["repair"])
    with pytest.raises(FeatcacheError, match="is a symlink"), lock_cache(data / "featcache.h5"):
        pass
    assert not target.exists()


def test_a_planted_temporary_symlink_is_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".scores.csv.tmp").symlink_to(victim)
    write_text_atomically(out / "scores.csv", "image,score\na.jpg,1\n")
    assert victim.read_text() == "keep me\n"
    assert (out / "scores.csv").read_text() == "image,score\na.jpg,1\n" and not (out / "scores.csv").is_symlink()
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(out / "scores.csv").st_mode) == 0o666 & ~umask  # not mkstemp's private 0o600
    assert sorted(p.name for p in out.iterdir()) == [".scores.csv.tmp", "scores.csv"]  # no temporary left


# ---------------------------------------------------------------------------------------------- annotations

def _xlsx(path, far_cell=None):
    """The CSV annotation beside `path` as an xlsx (the CSV removed), with one more cell at `far_cell`."""
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    with open(path.parent / "annotation.csv", newline="") as handle:
        for record in csv.reader(handle):
            sheet.append(record)
    if far_cell:
        sheet[far_cell] = "x"
    book.save(path)
    (path.parent / "annotation.csv").unlink()


def test_an_xlsx_declaring_a_huge_sheet_is_refused_before_parsing(data):
    """One cell at XFD1048576 in a few KB: refused from the sheet's declared dimension, before any reader runs."""
    (data / "featcache.h5").unlink()
    _xlsx(data / "annotation.xlsx", far_cell="XFD1048576")
    assert os.path.getsize(data / "annotation.xlsx") < 20_000
    line = _run(EXTRACT)
    assert "annotation.xlsx: sheet" in line and "17179869184 cells, over the limit of 50000000" in line
    assert "FEATCACHE_MAX_SHEET_CELLS" in line


def test_spreadsheet_limits_are_lifted_by_environment(data, monkeypatch):
    (data / "featcache.h5").unlink()
    _xlsx(data / "annotation.xlsx")
    load_dataset(None, data)  # within the default limits
    monkeypatch.setenv("FEATCACHE_MAX_SHEET_BYTES", "1000")
    assert "over the limit of 1000; set FEATCACHE_MAX_SHEET_BYTES" in _run(EXTRACT)
    monkeypatch.setenv("FEATCACHE_MAX_SHEET_BYTES", "")
    monkeypatch.setenv("FEATCACHE_MAX_SHEET_CELLS", "20")
    with pytest.raises(FeatcacheError, match="over the limit of 20; set FEATCACHE_MAX_SHEET_CELLS"):
        load_dataset(None, data)


def test_a_zip_bomb_member_is_refused_from_its_declared_size(tmp_path):
    path = tmp_path / "annotation.xlsx"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("xl/worksheets/sheet1.xml", b"\0" * (2 << 20))
    os.environ["FEATCACHE_MAX_SHEET_BYTES"] = str(1 << 20)
    try:
        with pytest.raises(FeatcacheError, match="unpacks to 2097152 bytes, over the limit of 1048576"):
            untrusted.check_annotation_file(path)
    finally:
        del os.environ["FEATCACHE_MAX_SHEET_BYTES"]


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_only_regular_files_are_read_as_annotations(data, kind):
    (data / "featcache.h5").unlink()
    special = data / "table.csv"
    if kind == "fifo":
        os.mkfifo(special)
    else:
        special.symlink_to(kind)
    line = _run([*EXTRACT, "--annotation", "table.csv"])  # returns: a FIFO is never opened, /dev/zero never read
    assert "table.csv" in line and ("not a regular file" in line or "annotation file not found" in line)


def test_a_recorded_system_file_is_never_read(data):
    """A cache recording /proc/self/pagemap (endless) or a FIFO as its annotation: treated as absent, not read."""
    fifo = data.parent / "outside" / "fifo"
    os.mkfifo(fifo)
    for recorded in ("/proc/self/pagemap", str(fifo), "/dev/zero"):
        with h5py.File(data / "featcache.h5", "r+") as f:
            f.attrs["annotation"] = recorded
        assert annotation_sha256(recorded) == ""
        assert not untrusted.is_regular_file(recorded)
        (data / "annotation.csv").rename(data / "moved.csv")  # nothing beside the cache: the recorded path is asked
        try:
            assert read_labels_from_annotation(data / "featcache.h5") is None
        finally:
            (data / "moved.csv").rename(data / "annotation.csv")


# ---------------------------------------------------------------------------------------------- printed text

def test_info_shows_escape_sequences_escaped(data):
    with h5py.File(data / "featcache.h5", "r+") as f:
        f.attrs["dataset"] = "pku\x1b]0;owned\x07"
        f[f"features/{BID}"].attrs["provenance_json"] = '{"command": "x\\u001b[2J\\u001b[31mred", "torch": "\\r"}'
    result = CliRunner().invoke(cli.main, ["info"])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output and "\r" not in result.output
    assert "pku\\x1b]0;owned\\x07" in result.output and "command x\\x1b[2J\\x1b[31mred" in result.output
    assert format_info(cache_info(data / "featcache.h5")).count("\n") == result.output.count("\n") - 1


def test_printable_keeps_text_and_escapes_controls():
    assert untrusted.printable("a b\tc é 文") == "a b\tc é 文"
    assert untrusted.printable("a\nb\x00\x9b\u202e") == "a\\nb\\x00\\x9b\\u202e"
    assert untrusted.printable("a\x1b[2J\r\u200bb") == "a\\x1b[2J\\r\\u200bb"  # format characters too
    assert untrusted.printable("a\nb", newlines=True) == "a\nb"


# ---------------------------------------------------------------------------------------------- image folders

def test_an_image_symlink_leaving_the_root_is_refused_once(data):
    (data / "featcache.h5").unlink()
    image = data / "All" / "SD_1000_00.jpg"
    outside = data.parent / "outside" / "private.jpg"
    shutil.copy(image, outside)
    image.unlink()
    image.symlink_to(outside)
    line = _run(EXTRACT)
    assert "1 image path(s) under" in line and "leave the dataset root" in line and "All/SD_1000_00.jpg" in line


def test_an_image_symlink_inside_the_root_is_followed(tmp_path):
    root = tmp_path / "r"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.jpg").write_bytes(b"x")
    (root / "y.jpg").symlink_to(root / "a" / "x.jpg")
    link_root = tmp_path / "link"
    link_root.symlink_to(root)
    untrusted.check_inside_root(link_root, ["y.jpg", "a/x.jpg"])  # the root itself may be a symlink
    assert real_path(link_root / "y.jpg") == real_path(root / "a" / "x.jpg")


def test_a_non_numeric_dimension_is_one_line(data):
    with h5py.File(data / "featcache.h5", "r+") as f:
        f[f"features/{BID}"].attrs["dim"] = "four"
    assert "the cache is damaged" in _run(["info", "--check"])
    with pytest.raises(FeatcacheError, match="the cache is damaged"):
        check_cache(data / "featcache.h5")


def test_a_shard_without_its_hashes_is_one_line(data):
    shutil.copy(data / "featcache.h5", data / "shard.h5")
    with h5py.File(data / "shard.h5", "r+") as f:
        del f.attrs["manifest_sha256"]
    assert "was built from other images or labels" in _run(["merge", "featcache.h5", "shard.h5", "--cache", "m.h5"])
    assert not (data / "m.h5").exists()


def test_verify_never_hashes_an_image_outside_the_root(tmp_path):
    from featcache.store import image_hashes

    root = tmp_path / "r"
    root.mkdir()
    (root / "in.jpg").write_bytes(b"in")
    (tmp_path / "secret.jpg").write_bytes(b"secret")
    (root / "out.jpg").symlink_to(tmp_path / "secret.jpg")
    hashes = image_hashes(root, ["in.jpg", "out.jpg"])
    assert len(hashes[0]) == 64 and hashes[1] == b""


def test_error_lines_show_escape_sequences_from_files_escaped(tmp_path):
    """A name read from a file reaches an error line escaped: no terminal escape sequence is printed raw."""
    import cli

    (tmp_path / "annotation.csv").write_text("Generated_image,MOS_q,\x1b]0;pwned\x07\na.jpg,1,2\n")
    result = CliRunner().invoke(cli.main, ["extract", "--root", str(tmp_path), "--backbone", "resnet18",
                                           "--random-weights", "--cache", str(tmp_path / "c.h5")])
    assert result.exit_code == 2 and "\x1b" not in result.output and "\x07" not in result.output, result.output
    assert "\\x1b]0;pwned\\x07" in result.output  # named, escaped


def test_every_line_the_cli_prints_goes_through_printable(capsys):
    """cli.echo (cli_support.echo) is the only printer of cli.py and cli_support.py: escape sequences escaped, tabs
    and line breaks kept."""
    import inspect

    import cli
    import cli_support

    cli.echo("a\x1b]0;t\x07\tb\nc")
    assert capsys.readouterr().out == "a\\x1b]0;t\\x07\tb\nc\n"
    source = inspect.getsource(cli) + inspect.getsource(cli_support)
    assert source.count("click.echo(") == 1  # inside cli_support.echo


@pytest.mark.parametrize("view", ["crops", [1, 2], 7, {"kind": "weird"}, {"crops": 3}])
def test_info_shows_a_recorded_view_that_is_not_a_view_as_unreadable(tmp_path, view):
    import json

    from tests.fakedata import make_cache

    path = make_cache(tmp_path)
    with h5py.File(path, "r+") as f:
        group = f["features/toy.random/paper/4"]
        group.attrs["config_json"] = json.dumps(dict(json.loads(group.attrs["config_json"]), input=view))
    assert f"data unreadable view {view!r}" in format_info(cache_info(path))
