"""Caches whose backbone datasets or attributes do not match what featcache writes: `emb` not of shape (rows of
/images, recorded dim), `done` not (rows of /images,), datasets declaring more than they store, attributes of the
wrong type. Every reader refuses them on open with one line naming the dataset or attribute (no traceback, nothing
allocated from a declared shape); `repair` drops a damaged backbone and keeps the cache."""

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from featcache.store import backbone_ids, open_read
from tests.test_untrusted_stage1 import BID, EXTRACT, _run, data, template  # noqa: F401 (fixtures)

GROUP = f"features/{BID}"
FIT = ["fit", "--cache", "featcache.h5", "--mode", "nr", "--regressor", "ridge", "--out", "run"]
BENCH = ["bench", "--cache", "featcache.h5", "--mode", "nr", "--regressor", "ridge", "--out", "runb"]
MERGE = ["merge", "featcache.h5", "--cache", "merged.h5"]


def _replace(cache, name, **kwargs):
    with h5py.File(cache, "r+") as f:
        del f[f"{GROUP}/{name}"]
        f.create_dataset(f"{GROUP}/{name}", **kwargs)


def _set_attr(cache, where, name, value):
    with h5py.File(cache, "r+") as f:
        f[where].attrs[name] = value


# damage of one backbone -> what the one line says
BACKBONE_DAMAGE = {
    "emb with 5 rows": (lambda c: _replace(c, "emb", data=np.ones((5, 4), "f4")),
                        "emb has shape (5, 4) of float32, expected shape (22, 4)"),
    "emb 7 wide": (lambda c: _replace(c, "emb", data=np.ones((22, 7), "f4")),
                   "emb has shape (22, 7) of float32, expected shape (22, 4)"),
    "emb of strings": (lambda c: _replace(c, "emb", data=np.array([b"a"] * 22)), "emb has shape (22,)"),
    "emb scalar": (lambda c: _replace(c, "emb", data=1.0), "emb has shape () of float64"),
    "emb of integers": (lambda c: _replace(c, "emb", data=np.ones((22, 4), "i4")), "emb has shape (22, 4) of int32"),
    "done 2-d": (lambda c: _replace(c, "done", data=np.ones((22, 3), bool)),
                 "done has shape (22, 3) of bool, expected shape (22,)"),
    "emb declared, not stored": (lambda c: _replace(c, "emb", shape=(22, 4), dtype="f4", chunks=(1, 4)),
                                 "emb stores 0 of its 352 bytes"),
    "dim as an array": (lambda c: _set_attr(c, GROUP, "dim", np.arange(3)),
                        "attribute dim of /features/toy.random/paper/4 is an array of shape (3,), not int"),
    "dim as a float": (lambda c: _set_attr(c, GROUP, "dim", 4.0), "attribute dim of /features/toy.random/paper/4 is "
                       "of type float64, not int"),
    "config as an array": (lambda c: _set_attr(c, GROUP, "config_json", np.arange(3)),
                           "attribute config_json of /features/toy.random/paper/4 is an array"),
    "provenance not JSON": (lambda c: _set_attr(c, GROUP, "provenance_json", "{oops"), "is not JSON"),
    "a third dataset": (lambda c: _add(c, f"{GROUP}/extra"), "holds extra besides emb and done"),
}


def _add(cache, name):
    with h5py.File(cache, "r+") as f:
        f.create_dataset(name, data=np.zeros(3))


@pytest.mark.parametrize("case", list(BACKBONE_DAMAGE))
def test_a_damaged_backbone_is_one_line_for_every_reader_and_repair_drops_it(data, case):
    damage, said = BACKBONE_DAMAGE[case]
    damage(data / "featcache.h5")
    for args in (["info"], ["info", "--check"], FIT, BENCH, MERGE):
        line = _run(args)
        assert said in line and f"run `featcache repair` to drop backbone {BID}" in line, (args, line)
    assert not (data / "merged.h5").exists()
    repaired = CliRunner().invoke(cli.main, ["repair"])
    assert repaired.exit_code == 0 and BID in repaired.output, repaired.output
    with open_read(data / "featcache.h5") as f:
        assert backbone_ids(f) == []


def test_a_damaged_backbone_stops_extract_before_it_writes(data):
    BACKBONE_DAMAGE["emb with 5 rows"][0](data / "featcache.h5")
    before = (data / "featcache.h5").read_bytes()
    assert "emb has shape (5, 4)" in _run(EXTRACT)
    assert (data / "featcache.h5").read_bytes() == before


@pytest.mark.parametrize("dim", [4, 48_000_000])
def test_a_huge_declared_emb_the_file_does_not_store_is_refused_before_allocation(data, dim):
    """emb declared (22, 48M) float32 (4.2 GB) beside a padding dataset that lifts the file within the declared-size
    ratio; its recorded dim either disagrees or was set to match. Nothing is allocated: refused on open."""
    cache = data / "featcache.h5"
    with h5py.File(cache, "r+") as f:
        f.create_dataset("pad", data=np.random.default_rng(0).integers(0, 255, 4_500_000, dtype=np.uint8))
        del f[f"{GROUP}/emb"]
        f.create_dataset(f"{GROUP}/emb", shape=(22, 48_000_000), dtype="f4", chunks=(1, 1_000_000), fillvalue=1.0)
        f[GROUP].attrs["dim"] = dim
    for args in (["info"], ["info", "--check"], FIT, BENCH, MERGE):
        line = _run(args)
        assert "emb declares shape (22, 48000000) (4224000000 bytes) but stores only 0 bytes" in line, (args, line)
        assert "`featcache repair` drops its backbone" in line


@pytest.mark.parametrize("name, value, said", [
    ("format", np.arange(3), "attribute format of / is an array of shape (3,), not str"),
    ("format_version", "2", "attribute format_version of / is of type str, not int"),
    ("root", np.arange(3), "attribute root of / is an array"),
    ("manifest_sha256", np.float64(1.0), "attribute manifest_sha256 of / is of type float64, not str"),
])
def test_root_attributes_of_the_wrong_type_are_one_line(data, name, value, said):
    _set_attr(data / "featcache.h5", "/", name, value)
    for args in (["info"], ["info", "--check"], FIT, BENCH, MERGE, ["repair"]):
        assert said in _run(args), args


def test_sample_indices_outside_the_images_are_one_line_in_fit(data):
    with h5py.File(data / "featcache.h5", "r+") as f:
        gen = f["samples/gen"][()]
        gen[0] = 22
        f["samples/gen"][...] = gen
    assert "/samples/gen points outside the 22 rows of /images" in _run(FIT)
    assert "/samples/gen points outside the 22 rows of /images" in _run(BENCH)


def test_an_images_table_shorter_than_the_keys_is_one_line(data):
    with h5py.File(data / "featcache.h5", "r+") as f:
        del f["images/path"]
        f.create_dataset("images/path", data=np.array(["a.jpg"] * 5, dtype=object), dtype=h5py.string_dtype())
    for args in (["info"], FIT, MERGE):
        assert "/images/path does not have the 22 rows of /images/key" in _run(args), args


def test_a_shard_with_another_number_of_images_is_one_line_in_merge(data):
    """Each shard is consistent in itself (and claims the same images), but holds 21 rows, not 22."""
    shard = data / "shard.h5"
    with h5py.File(data / "featcache.h5", "r") as src, h5py.File(shard, "w") as f:
        f.attrs.update(dict(src.attrs))
        for name in ("samples", "targets"):
            src.copy(src[name], f, name=name)
        for name, table in src["images"].items():
            f.create_dataset(f"images/{name}", data=table[:21], dtype=table.dtype)
        group = f.create_group(GROUP)
        group.attrs.update(dict(src[GROUP].attrs))
        group.create_dataset("emb", data=np.ones((21, 4), "f4"))
        group.create_dataset("done", data=np.ones(21, bool))
    line = _run(["merge", "featcache.h5", "shard.h5", "--cache", "merged.h5"])
    assert f"shard.h5: /features/{BID}/emb has shape (21, 4), expected (22, 4) as in featcache.h5" in line
    assert not (data / "merged.h5").exists()
