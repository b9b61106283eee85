"""Commands that write into a folder someone else may have prepared (`synth --out`, `demo --out`) never write
through a planted symbolic link, and `predict --root` refuses database images that leave the root, as extract does."""

import os

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from featcache.errors import FeatcacheError
from featcache.synth import bundled_photos, own_folder, synth
from tests.fakedata import noisy_image


def _photos(folder, n=3):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        noisy_image(rng, (32, 40)).save(folder / f"p{i}.png")
    return folder


def _victim(tmp_path, name="victim.txt"):
    victim = tmp_path / name
    victim.write_text("precious\n")
    return victim


def _run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def test_synth_replaces_a_planted_link_at_a_file_instead_of_writing_through_it(tmp_path):
    photos = _photos(tmp_path / "photos")
    out = tmp_path / "syn"
    out.mkdir()
    victim = _victim(tmp_path)
    os.symlink(victim, out / "annotation.csv")
    made = synth(photos, out, views=1, size=16)
    assert victim.read_text() == "precious\n"
    assert not (out / "annotation.csv").is_symlink()
    assert (out / "annotation.csv").read_text(encoding="utf-8").startswith("Image_prompt,")
    assert made.samples == 2 * 2 + 3  # the benchmark was still written, in out
    assert not [p for p in out.rglob("*.tmp")]


@pytest.mark.parametrize("parts", [("All",), ("I2I",), ("I2I", "Image_prompt")])
def test_synth_refuses_a_planted_folder_link_before_writing(tmp_path, parts):
    photos = _photos(tmp_path / "photos")
    out = tmp_path / "syn"
    (out / parts[0]).parent.mkdir(parents=True, exist_ok=True)
    if len(parts) == 2:
        (out / parts[0]).mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, out.joinpath(*parts))
    result = _run("synth", "--photos", photos, "--out", out, "--overwrite", "--views", "1", "--size", "16")
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "is a symbolic link" in result.output
    assert list(elsewhere.iterdir()) == []
    assert not (out / "annotation.csv").exists()


def test_own_folder_refuses_a_file_and_a_folder_reached_through_a_linked_parent(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "All").write_text("")
    with pytest.raises(FeatcacheError, match="is a file, not a folder"):
        own_folder(out, "All")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "x").mkdir(parents=True)
    os.symlink(elsewhere, out / "I2I")
    with pytest.raises(FeatcacheError, match="I2I is a symbolic link"):
        own_folder(out, "I2I", "x")
    linked_out = tmp_path / "linked"
    os.symlink(out, linked_out)  # --out itself may be a link: the user's own choice
    assert own_folder(linked_out, "new").is_dir() and (out / "new").is_dir()


def test_synth_refuses_a_folder_at_a_file_name_with_one_line(tmp_path):
    photos = _photos(tmp_path / "photos")
    out = tmp_path / "syn"
    (out / "annotation.csv").mkdir(parents=True)
    result = _run("synth", "--photos", photos, "--out", out, "--overwrite", "--views", "1", "--size", "16")
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "annotation.csv is a folder" in result.output


def test_bundled_photos_replace_links_and_refuse_a_linked_folder(tmp_path):
    pytest.importorskip("skimage")
    dest = tmp_path / "photos"
    dest.mkdir()
    victim = _victim(tmp_path)
    os.symlink(victim, dest / "astronaut.png")
    bundled_photos(dest)
    assert victim.read_text() == "precious\n"
    assert not (dest / "astronaut.png").is_symlink() and (dest / "astronaut.png").stat().st_size > 1000
    linked = tmp_path / "linked"
    os.symlink(tmp_path / "elsewhere", linked)
    with pytest.raises(FeatcacheError, match="symbolic link"):
        bundled_photos(linked)
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("planted", ["synth", "photos"])
def test_demo_refuses_a_linked_synth_or_photos_folder_before_writing(tmp_path, planted):
    import featcache.backbones

    out = tmp_path / "demo"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, out / planted)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(featcache.backbones, "load_backbone", lambda *a, **k: pytest.fail("extraction started"))
        result = _run("demo", "--out", out, "--views", "1", "--quiet")
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and f"{planted} is a symbolic link" in result.output
    assert list(elsewhere.iterdir()) == []


def test_demo_rerun_replaces_planted_file_links_without_writing_through_them(tmp_path, monkeypatch):
    """A non-empty --out is accepted (a rerun into demo-out must work); links at its file names are replaced."""
    import featcache.backbones
    from regressors.demo import run_demo

    monkeypatch.setattr(featcache.backbones, "load_backbone", lambda *a, **k: pytest.fail("extraction started"))
    photos = _photos(tmp_path / "photos")
    out = tmp_path / "demo"
    (out / "synth").mkdir(parents=True)
    victim = _victim(tmp_path)
    os.symlink(victim, out / "synth" / "annotation.csv")
    with pytest.raises(FeatcacheError, match="too few for 50 folds"):  # stops after synth, before extraction
        run_demo(out, photos=photos, views=1, folds=50, jobs=1, progress=False, echo=lambda line: None)
    assert victim.read_text() == "precious\n"
    assert not (out / "synth" / "annotation.csv").is_symlink()
    assert (out / "synth" / "annotation.csv").read_text(encoding="utf-8").startswith("Image_prompt,")


def test_predict_root_refuses_an_image_link_that_leaves_the_root(tmp_path):
    photos = _photos(tmp_path / "photos")
    db = tmp_path / "db"
    made = synth(photos, db, views=1, size=16)
    outside = tmp_path / "outside.jpg"
    image = sorted((db / "All").iterdir())[0]
    outside.write_bytes(image.read_bytes())
    head = tmp_path / "missing-head.safetensors"
    control = _run("predict", "--root", db, "--head", head, "--out", tmp_path / "s.csv")
    assert control.exit_code == 2 and "leave the dataset root" not in control.output  # the head is the problem
    image.unlink()
    os.symlink(outside, image)
    result = _run("predict", "--root", db, "--head", head, "--out", tmp_path / "s.csv")
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1
    assert "1 image path(s) under" in result.output and "leave the dataset root" in result.output
    assert image.name in result.output and made.samples > 1
    assert not (tmp_path / "s.csv").exists()
