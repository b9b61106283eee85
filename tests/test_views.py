"""The native and crops views on the Pillow path: pixels, JPEG drafting, batching by size, the crops' combination,
the refusal of fixed-size models, and extraction (resumable, shardable, batch-size invariant)."""

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import cli
from featcache.backbones import load_backbone, parse_view
from featcache.backbones.pooling import MultilevelPool, PaperPool, _mean_std
from featcache.backbones.views import InputView, crop_boxes, crop_source_size
from featcache.datasets import load_dataset
from featcache.errors import FeatcacheError
from featcache.extract import extract
from featcache.forward import Forwarding, batch_plan, compute_features, forward_batches
from featcache.image_rows import ImageRows, collate_rows
from featcache.merge import merge
from featcache.size_batches import pixel_budget, size_batches
from featcache.view_pixels import ViewTransform
from tests.fakedata import make_pku, noisy_image

LITE0 = {"input_size": 224, "crop_pct": 0.875, "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3}
CPU = torch.device("cpu")


def _mixed_sizes(root):
    """11 images of 3 sizes: the image prompt 48x64, generated 40x56, and every third generated one 64x40."""
    make_pku(root, i2i_prompts=1, t2i_prompts=1)
    rng = np.random.default_rng(1)
    for k, path in enumerate(sorted((root / "All").iterdir())):
        if k % 3 == 0:
            noisy_image(rng, (64, 40)).save(path)
    return load_dataset(None, root)


def _features(cache, bid):
    with h5py.File(cache, "r") as f:
        return f[f"features/{bid}/emb"][()], f[f"features/{bid}/done"][()], f[f"features/{bid}"].attrs["config_json"]


# ---- the crops' combination ----

def test_multilevel_combines_crops_as_the_statistics_of_all_their_positions():
    rng = torch.Generator().manual_seed(0)
    crops = [torch.randn(2, 3, 4, 5, generator=rng) * (k + 1) + k for k in range(4)]  # 4 crops, 3 channels
    pool = MultilevelPool.__new__(MultilevelPool)
    pool.levels = [{"module": "x", "num_chs": 3}, {"module": "y", "num_chs": 3}]
    per_crop = torch.stack([torch.cat([_mean_std(c, 3), _mean_std(2 * c, 3)], dim=1) for c in crops], dim=1)
    together = torch.cat(crops, dim=3)  # every crop's positions side by side
    expected = torch.cat([_mean_std(together, 3), _mean_std(2 * together, 3)], dim=1)
    torch.testing.assert_close(pool.combine_crops(per_crop), expected, rtol=1e-5, atol=1e-5)
    wrong = torch.cat([per_crop[:, :, :3].mean(1), per_crop[:, :, 3:6].mean(1)], dim=1)  # the mean of the stds
    assert not torch.allclose(wrong, expected[:, :6], atol=1e-3)
    assert torch.equal(PaperPool(None, "gap").combine_crops(per_crop), per_crop.mean(dim=1))


# ---- batching by size ----

def test_size_batches_hold_one_shape_within_the_budget():
    shapes = [(3, 40, 56), (3, 64, 40), (3, 40, 56), None, (3, 40, 56), (3, 64, 40), None, (3, 40, 56)]
    batches = size_batches(shapes, batch_size=2, budget=10**9)
    assert batches == [[0, 2], [4, 7], [1, 5], [3, 6]]
    assert sorted(i for b in batches for i in b) == list(range(len(shapes)))
    big = [(3, 1024, 1536)] * 32
    by_budget = size_batches(big, batch_size=32, budget=pixel_budget(32, 224))
    assert max(len(b) for b in by_budget) == 1  # 32 x 224^2 pixels hold one 1024x1536 image, not 32
    assert [len(b) for b in size_batches([(5, 3, 224, 224)] * 13, 32, pixel_budget(32, 224))] == [6, 6, 1]
    assert size_batches([(3, 4000, 4000)], 8, 100) == [[0]]  # larger than the budget: alone


# ---- pixels ----

def test_native_pixels_are_the_whole_image_resized_and_normalised():
    image = noisy_image(np.random.default_rng(0), (90, 120))
    view = ViewTransform(InputView("native", max_side=60), LITE0)
    pixels = view(image)
    assert pixels.shape == (3, 60, 80)
    from torchvision.transforms import functional as F

    expected = (F.to_tensor(image.resize((80, 60), Image.BICUBIC)) - 0.5) / 0.5
    torch.testing.assert_close(pixels, expected)
    assert ViewTransform(InputView("native"), LITE0)(image).shape == (3, 90, 120)  # under max_side: not resized


def test_crop_pixels_are_the_layouts_boxes_of_the_resized_image():
    image = noisy_image(np.random.default_rng(0), (300, 500))
    config = dict(LITE0, input_size=64)
    view = ViewTransform(InputView("crops", crops=5, max_side=100), config)
    crops = view(image)
    height, width = crop_source_size(300, 500, 64, 100)
    assert (height, width) == (100, 166) and crops.shape == (5, 3, 64, 64)
    whole = ViewTransform(InputView("native", max_side=100), config)(image)
    for crop, (top, left) in zip(crops, crop_boxes(height, width, 64, 5)):
        assert torch.equal(crop, whole[:, top:top + 64, left:left + 64])


def test_jpeg_draft_of_a_view_keeps_its_size_and_only_reduces(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (1040, 1100, 3), dtype=np.uint8)).save(tmp_path / "big.jpg", quality=92)
    noisy_image(rng, (100, 140)).save(tmp_path / "small.jpg", quality=92)
    view = ViewTransform(InputView("native", max_side=256), LITE0)

    def pixels(draft, name):
        rows = ImageRows(tmp_path, [name], [0], view, 10**9, view_draft=draft)
        tensor, error = rows.decode_with_pil(0)
        assert error == ""
        return tensor

    full, drafted = pixels(False, "big.jpg"), pixels(True, "big.jpg")
    assert full.shape == drafted.shape == (3, 256, 270)
    assert (full - drafted).abs().mean() < 0.05 and not torch.equal(full, drafted)  # 1/2 scale: 520 >= 2 x 256
    assert torch.equal(pixels(False, "small.jpg"), pixels(True, "small.jpg"))  # not resized: never drafted


def test_max_pixels_counts_the_crops_enlargement(tmp_path):
    Image.new("RGB", (4000, 2)).save(tmp_path / "strip.png")
    view = ViewTransform(InputView("crops", crops=2), dict(LITE0, input_size=64))
    tensor, error = ImageRows(tmp_path, ["strip.png"], [0], view, 200_000).decode_with_pil(0)
    assert tensor is None and "would be resized to 128000x64" in error


@pytest.mark.slow
def test_a_batch_mixing_sizes_is_forwarded_shape_by_shape(tmp_path):
    for k, size in enumerate([(40, 56), (56, 40), (40, 56)]):
        noisy_image(np.random.default_rng(k), size).save(tmp_path / f"{k}.png")
    backbone = load_backbone("resnet18", random_weights=True, view=InputView("native"))
    dataset = ImageRows(tmp_path, ["0.png", "1.png", "2.png"], [0, 1, 2], backbone.transform(), 10**9)
    rows, parts, errors = collate_rows([dataset[k] for k in range(3)])
    assert rows == [0, 1, 2] and [r for r, _ in parts] == [[0, 2], [1]] and errors == []
    forwarding = Forwarding(device=CPU, precision="fp32", batch_size=3, workers=0)
    extractor = backbone.extractor()
    plain = {tuple(r): f for r, f, _, _ in forward_batches(extractor, dataset, forwarding)}  # no plan: mixed
    planned = {tuple(r): f for r, f, _, _ in forward_batches(extractor, dataset, forwarding, None,
                                                             batch_plan(dataset, 3, 224))}
    assert set(plain) == set(planned) == {(0, 2), (1,)}
    for rows in plain:
        np.testing.assert_array_equal(plain[rows], planned[rows])


# ---- options ----

@pytest.mark.parametrize("args, message", [
    ((None, 0, None), "--crops 0: must be at least 1"),
    ((None, -1, None), "--crops -1"),
    (("native", 3, None), "choose one"),
    ((None, None, 800), "--max-side applies to --image-size native and --crops K only"),
    (("foo", None, None), "'native'"),
    (("native", None, 0), "--max-side 0"),
])
def test_contradicting_view_options_are_refused(args, message):
    from featcache.errors import FeatcacheError

    with pytest.raises(FeatcacheError, match=message.replace("(", r"\(")):
        parse_view(*args)


def test_the_view_is_in_the_id_the_config_and_the_dimension():
    native = load_backbone("lite0", "multilevel", view=parse_view("native")[1])
    size, view = parse_view("112", 5, 1536)
    crops = load_backbone("lite0", "multilevel", image_size=size, view=view)
    assert native.id.endswith("/multilevel/native") and crops.id.endswith("/multilevel/112x5@1536")
    assert native.config()["input"] == {"kind": "native", "max_side": 1024}
    assert crops.config()["input"]["crops"] == 5 and "input" not in load_backbone("lite0").config()


# ---- extraction ----

@pytest.mark.slow
def test_native_extraction_is_batch_size_and_worker_invariant_and_matches_compute_features(tmp_path):
    samples = _mixed_sizes(tmp_path / "data")
    view = parse_view("native", None, 36)[1]  # every image resized: three fed sizes
    one = extract(samples, tmp_path / "data", load_backbone("lite0", view=view), tmp_path / "a.h5", batch_size=1,
                  workers=0, device="cpu", progress=False)
    extract(samples, tmp_path / "data", load_backbone("lite0", view=view), tmp_path / "b.h5", batch_size=5,
            workers=2, device="cpu", progress=False)
    a, done, config = _features(tmp_path / "a.h5", one.backbone_id)
    b, _, _ = _features(tmp_path / "b.h5", one.backbone_id)
    assert one.backbone_id.endswith("/paper/native@36") and done.all() and '"input"' in config
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # CPU kernels differ by batch size in the last bits
    paths, _, _ = samples.distinct_images()
    again = compute_features(load_backbone("lite0", view=view), tmp_path / "data", paths, batch_size=1,
                             device="cpu")
    np.testing.assert_array_equal(again, a)
    from featcache.info import cache_info, format_info

    assert "data native, shorter side at most 36 " in format_info(cache_info(tmp_path / "a.h5"))


@pytest.mark.slow
def test_crops_extraction_resumes_and_shards_into_the_one_run(tmp_path):
    samples = _mixed_sizes(tmp_path / "data")
    root = tmp_path / "data"
    size, view = parse_view("32", 3)

    def run(cache, **kwargs):
        return extract(samples, root, load_backbone("lite0", "multilevel", image_size=size, view=view), cache,
                       device="cpu", workers=0, progress=False, **kwargs)

    whole = run(tmp_path / "whole.h5", batch_size=4)
    assert whole.backbone_id.endswith("/multilevel/32x3")
    first = run(tmp_path / "resumed.h5", batch_size=2, shard=(0, 2))  # an interrupted run: half the rows
    resumed = run(tmp_path / "resumed.h5", batch_size=3)
    assert resumed.rows_done_before == first.rows_written and resumed.rows_written == 11 - first.rows_written
    shards = [tmp_path / f"s{i}.h5" for i in range(2)]
    for i, shard in enumerate(shards):
        run(shard, batch_size=1, shard=(i, 2))
    merge(shards, tmp_path / "merged.h5")
    reference, _, _ = _features(tmp_path / "whole.h5", whole.backbone_id)
    from featcache.info import cache_info, format_info

    assert "data 3 crops of 32 (shorter side in [32, 1024], seed 0) " in format_info(cache_info(tmp_path / "whole.h5"))
    for other in ("resumed.h5", "merged.h5"):
        emb, done, _ = _features(tmp_path / other, whole.backbone_id)
        assert done.all()
        np.testing.assert_allclose(emb, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["swin_tiny_patch4_window7_224", "mixer_s16_224"])
def test_a_fixed_size_model_refuses_native_and_writes_nothing(tmp_path, monkeypatch, model):
    make_pku(tmp_path / "data", i2i_prompts=1, t2i_prompts=1)
    monkeypatch.chdir(tmp_path / "data")
    result = CliRunner().invoke(cli.main, ["extract", "--backbone", model, "--random-weights", "--image-size",
                                           "native", "--cache", "new/folder/c.h5", "--workers", "0", "--quiet"])
    assert result.exit_code == 2, result.output
    assert f"{model} needs a fixed input size" in result.output and "--crops K" in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("error:")]) == 1
    assert not (tmp_path / "data" / "new").exists()


@pytest.mark.slow
def test_a_vit_takes_native_sizes_through_timm_dynamic_img_size(tmp_path):
    for k, size in enumerate([(40, 56), (64, 40)]):
        noisy_image(np.random.default_rng(k), size).save(tmp_path / f"{k}.png")
    backbone = load_backbone("vit_tiny_patch16_224", random_weights=True, view=InputView("native"))
    features = compute_features(backbone, tmp_path, ["0.png", "1.png"], device="cpu")
    assert features.shape == (2, 192) and np.isfinite(features).all()
    from safetensors.torch import save_file

    save_file(backbone.extractor().model.state_dict(), str(tmp_path / "vit.safetensors"))
    from_file = load_backbone("vit_tiny_patch16_224", weights_file=tmp_path / "vit.safetensors",
                              view=InputView("native"))  # the weights file's load path takes timm's arguments too
    np.testing.assert_allclose(compute_features(from_file, tmp_path, ["0.png", "1.png"], device="cpu"), features,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("options", [("native", None, 36), ("32", 2, None)])
def test_the_torch_decode_path_gives_the_pillow_features_for_every_view(tmp_path, options):
    """Stacks of same-size images decoded and resized on the torch path (a small image enlarged for its crops) give
    the Pillow path's features up to the resize's rounding (pixels within 2 levels)."""
    names = []
    for k, size in enumerate([(40, 56), (64, 40), (40, 56)]):
        noisy_image(np.random.default_rng(k), size).save(tmp_path / f"{k}.jpg", quality=95)
        names.append(f"{k}.jpg")
    size, view = parse_view(*options)
    backbone = load_backbone("lite0", image_size=size, view=view)
    pil = compute_features(backbone, tmp_path, names, device="cpu", decode="cpu", jpeg_draft=False, batch_size=1)
    on_torch = compute_features(backbone, tmp_path, names, device="cpu", decode="gpu", batch_size=4)  # stacks
    assert on_torch.shape == pil.shape
    np.testing.assert_allclose(on_torch, pil, atol=0.05)
    assert np.corrcoef(on_torch.ravel(), pil.ravel())[0, 1] > 0.999


def test_extract_takes_the_view_in_the_backbone_short_form():
    """`--backbone lite0/multilevel/native` is `--backbone lite0 --pool multilevel --image-size native`, as fit
    names the id; a view part given again by its option must agree."""
    from cli_support import name_pool_and_view

    assert name_pool_and_view("lite0/multilevel/native", None, None, None, None) == \
        ("lite0", "multilevel", "native", None, None)
    assert name_pool_and_view("lite0/paper/224x5@1536", None, None, None, None) == ("lite0", "paper", "224", 5, 1536)
    assert name_pool_and_view("lite0/paper/224x5", None, "224", 5, None) == ("lite0", "paper", "224", 5, None)
    assert name_pool_and_view("lite0/multilevel", None, 448, None, None) == ("lite0", "multilevel", 448, None, None)
    assert name_pool_and_view("hf-hub:org/model", None, None, None, None)[0] == "hf-hub:org/model"
    size, view = parse_view(*name_pool_and_view("lite0/multilevel/native", None, None, None, None)[2:])
    assert load_backbone("lite0", "multilevel", image_size=size, view=view).id.endswith("/multilevel/native")
    with pytest.raises(FeatcacheError, match="names the view 224 but --image-size is 448"):
        name_pool_and_view("lite0/paper/224", None, 448, None, None)


def test_crops_over_max_pixels_are_refused_before_any_image_is_read(tmp_path):
    backbone = load_backbone("resnet18", random_weights=True, image_size=32, view=InputView("crops", crops=10**9))
    with pytest.raises(FeatcacheError, match="--crops 1000000000 of 32x32 feed 1024000000000 pixels per image"):
        compute_features(backbone, tmp_path, ["missing.png"], device="cpu")


def test_extract_help_names_the_view_short_form_and_the_crops_bound():
    text = " ".join(CliRunner().invoke(cli.main, ["extract", "--help"]).output.split())
    assert "lite0/multilevel/native, lite0/paper/224x5" in text and "--crops K " in text and "--max-side N " in text
    assert "and --crops K whose K crops hold more [100 megapixels]" in text
