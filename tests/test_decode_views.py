"""The torch decode path's native and crops views against the Pillow path's pixels: torchvision's decode_jpeg (libjpeg
here, nvjpeg on CUDA), then `TorchPreprocess` with a view, compared with a reference written with Pillow and
torchvision's public transforms following the shared geometry of `featcache.backbones.views`."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from featcache.backbones.views import CENTRE, InputView, crop_boxes, crop_source_size, native_size
from featcache.decode import TorchPreprocess, decode_jpegs
from tests.fakedata import noisy_image

pytestmark = pytest.mark.filterwarnings(
    "ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning")

CPU = torch.device("cpu")
# a timm-like configuration (bicubic, mean and std 0.5) and the paper's (bilinear, ImageNet statistics), at small
# sizes to keep the tests fast
BICUBIC = {"input_size": 64, "crop_pct": 0.875, "interpolation": "bicubic", "mean": [0.5, 0.5, 0.5],
           "std": [0.5, 0.5, 0.5]}
BILINEAR = {"input_size": 48, "crop_pct": 48 / 56, "interpolation": "bilinear", "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225]}
# (height, width): under the crop size, between it and max_side, over max_side; portrait and landscape; odd sides
SIZES = [(40, 57), (33, 250), (81, 70), (97, 150), (201, 131), (75, 301)]
MAX_SIDE = 96


def _jpegs(folder, sizes, seed=0) -> list:
    rng = np.random.default_rng(seed)
    paths = []
    for k, size in enumerate(sizes):
        paths.append(folder / f"{k}.jpg")
        noisy_image(rng, size).save(paths[-1], quality=90)
    return paths


def _decoded(path) -> torch.Tensor:
    data = torch.from_numpy(np.frombuffer(path.read_bytes(), dtype=np.uint8).copy())
    return decode_jpegs([data], CPU)[0]


def _pillow(path, config: dict, view: InputView) -> torch.Tensor:
    """The Pillow path's pixels: Image.resize with the data config's filter, the view's crops, ToTensor, Normalize."""
    image = Image.open(path).convert("RGB")
    resample = Image.Resampling[config["interpolation"].upper()]
    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(config["mean"], config["std"])])
    width, height = image.size
    size = config["input_size"]
    if view.kind == "native":
        new_height, new_width = native_size(height, width, view.max_side)
    else:
        new_height, new_width = crop_source_size(height, width, size, view.max_side)
    if (new_width, new_height) != image.size:
        image = image.resize((new_width, new_height), resample)
    if view.kind == "native":
        return to_tensor(image)
    boxes = crop_boxes(new_height, new_width, size, view.crops, view.seed)
    return torch.stack([to_tensor(image.crop((left, top, left + size, top + size))) for top, left in boxes])


def _one_level(config: dict) -> float:
    return 1 / 255 / min(config["std"])


@pytest.mark.parametrize("config", [BICUBIC, BILINEAR], ids=["bicubic", "bilinear"])
@pytest.mark.parametrize("view", [InputView(kind="native", max_side=MAX_SIDE),
                                  InputView(kind="crops", crops=5, max_side=MAX_SIDE)], ids=["native", "crops5"])
def test_views_on_the_torch_path_agree_with_pillow(tmp_path, config, view):
    preprocess = TorchPreprocess(config, CPU, view)
    exact = total = 0
    for path in _jpegs(tmp_path, SIZES):
        decoded = _decoded(path)
        ours = preprocess(decoded)
        reference = _pillow(path, config, view)
        assert ours.dtype == torch.float32 and tuple(ours.shape) == tuple(reference.shape), path.name
        assert tuple(ours.shape) == preprocess.output_shape(*decoded.shape[-2:])
        enlarged = min(decoded.shape[-2:]) < config["input_size"] and view.kind == "crops"
        levels = 2 if enlarged else 1  # torchvision's float resize, each pass rounded, against Pillow's fixed point
        assert (ours - reference).abs().max() <= (levels + 0.01) * _one_level(config), path.name
        exact += int(((ours - reference).abs() < 1e-6).sum())
        total += reference.numel()
    assert exact > 0.8 * total  # most values equal: the differences are roundings


def test_output_shapes_follow_the_shared_geometry():
    native = TorchPreprocess(BICUBIC, CPU, InputView(kind="native", max_side=MAX_SIDE))
    assert native.output_shape(201, 131) == (3, 147, 96)  # shorter side to 96, the longer truncated
    assert native.output_shape(40, 57) == (3, 40, 57)  # never enlarged
    crops = TorchPreprocess(BICUBIC, CPU, InputView(kind="crops", crops=5, max_side=MAX_SIDE))
    assert crops.output_shape(40, 57) == (5, 3, 64, 64)
    assert TorchPreprocess(BICUBIC, CPU).output_shape(201, 131) == (3, 64, 64)
    image = torch.zeros((2, 3, 40, 57), dtype=torch.uint8)
    assert tuple(crops(image).shape) == (2, 5, 3, 64, 64)  # a small image enlarged so the crops fit
    assert tuple(native(image).shape) == (2, 3, 40, 57)


@pytest.mark.parametrize("view", [CENTRE, InputView(kind="native", max_side=MAX_SIDE),
                                  InputView(kind="crops", crops=3, max_side=MAX_SIDE)], ids=lambda v: v.kind)
def test_a_stack_gives_the_numbers_of_each_image_alone(view):
    stack = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 3, 131, 100), dtype=np.uint8))
    preprocess = TorchPreprocess(BICUBIC, CPU, view)
    together = preprocess(stack)
    for k in range(3):
        assert torch.equal(preprocess(stack[k]), together[k])


def test_the_centre_view_is_the_float_two_pass_resize_and_centre_crop():
    """The centre crop keeps its recorded resize ('pillow-two-pass': torchvision's float resize, each pass rounded)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import center_crop, resize

    def two_pass(image, config):
        pixels = image.float()
        height, width = pixels.shape[-2:]
        short = int(config["input_size"] / config["crop_pct"])
        new = (short, int(short * width / height)) if height <= width else (int(short * height / width), short)
        for size in ([height, new[1]], list(new)):
            if list(pixels.shape[-2:]) != size:
                pixels = resize(pixels, size, interpolation=InterpolationMode(config["interpolation"]),
                                antialias=True).round().clamp(0, 255)
        pixels = center_crop(pixels, [config["input_size"]] * 2)
        mean, std = torch.tensor(config["mean"]).view(3, 1, 1), torch.tensor(config["std"]).view(3, 1, 1)
        return (pixels / 255.0 - mean) / std

    rng = np.random.default_rng(2)
    for config in (BICUBIC, BILINEAR):
        for height, width in [(100, 140), (141, 100), (64, 64), (37, 90)]:
            image = torch.from_numpy(rng.integers(0, 256, (3, height, width), dtype=np.uint8))
            expected = two_pass(image, config)
            assert torch.equal(TorchPreprocess(config, CPU)(image), expected)
            assert torch.equal(TorchPreprocess(config, CPU, CENTRE)(image), expected)
