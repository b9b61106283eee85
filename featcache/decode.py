"""JPEG decoding with torch on the extraction device (nvjpeg on CUDA, libjpeg on the CPU), then the backbone's view
(centre crop, native resolution or K crops: `featcache.backbones.views`) and normalisation as torch ops there: the
same float tensors the PIL path gives the model.

The CPU path ("pil") decodes and resizes every image in DataLoader workers with Pillow. The torch path ("torch") has
the workers only read the files' bytes; the main process decodes a whole batch of JPEGs at once on the device. Files
that are not 8-bit RGB/grey JPEGs, and JPEGs the torch decoder refuses, take the PIL path one by one, so a bad file is
reported exactly as on the CPU path.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

from featcache.errors import FeatcacheError

if TYPE_CHECKING:  # the CLI reads DECODE_HELP without importing torch
    import torch

    from featcache.backbones.views import InputView

DECODE_CHOICES = ("auto", "cpu", "gpu")
DECODE_HELP = ("Where JPEGs are decoded: cpu = Pillow in the worker processes; gpu = torchvision on --device (nvjpeg "
               "on CUDA; with --device cpu, torchvision's libjpeg in the main process); auto = gpu on CUDA, else cpu. "
               "Other formats always use Pillow")


def resolve_decode(decode: str | None, device: torch.device) -> str:
    """'auto' | 'cpu' | 'gpu' -> the recorded decode path: 'pil' (Pillow in workers) or 'torch' (on `device`)."""
    name = (decode or "auto").strip().lower()
    if name not in DECODE_CHOICES:
        raise FeatcacheError(f"--decode {decode!r}: choose {', '.join(DECODE_CHOICES)}")
    if name == "auto":
        return "torch" if device.type == "cuda" else "pil"
    return "torch" if name == "gpu" else "pil"


def decode_option(path: str) -> str:
    """The --decode value that reproduces a recorded decode path ('pil' or 'torch')."""
    return "gpu" if path == "torch" else "cpu"


class EncodedJpeg(NamedTuple):
    """A worker's payload on the torch path: the file's bytes, decoded later in the main process."""

    data: torch.Tensor  # 1-d uint8


class PackedPayloads(NamedTuple):
    """A batch's payloads as two tensors, so a batch crosses from a worker to the main process in two shared-memory
    hand-overs (torch hands each tensor over separately), not one per image."""

    spans: list[tuple[int, int, int]]  # per image: (0, start, end) into `jpegs`, or (1, k, 0) for pixels[k]
    jpegs: torch.Tensor  # every JPEG's bytes, end to end (1-d uint8)
    pixels: torch.Tensor | None  # images Pillow decoded in the worker, stacked


def pack_payloads(payloads: list) -> PackedPayloads:
    """Worker side: `EncodedJpeg`s and pixel tensors -> one `PackedPayloads`."""
    import torch

    spans, chunks, pixels, offset = [], [], [], 0
    for payload in payloads:
        if isinstance(payload, EncodedJpeg):
            spans.append((0, offset, offset + len(payload.data)))
            chunks.append(payload.data)
            offset += len(payload.data)
        else:
            spans.append((1, len(pixels), 0))
            pixels.append(payload)
    jpegs = torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.uint8)
    return PackedPayloads(spans, jpegs, torch.stack(pixels) if pixels else None)


def unpack_payloads(packed: PackedPayloads) -> list:
    """Main-process side: back to a list of `EncodedJpeg`s (views of the one buffer) and pixel tensors."""
    return [EncodedJpeg(packed.jpegs[a:b]) if kind == 0 else packed.pixels[a] for kind, a, b in packed.spans]


def decode_jpegs(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """(3, H, W) uint8 tensors on `device`; None where the decoder refuses a file (it is then retried with Pillow).

    One batched call (what makes nvjpeg fast); if it fails, each file alone, to find the bad ones."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    if not encoded:
        return []
    try:
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        if device.type == "cuda":  # nvjpeg may still be writing into the failed call's buffers
            torch.cuda.synchronize(device)
        out: list[torch.Tensor | None] = []
        for data in encoded:
            try:
                out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(None)
        return out


TORCH_RESIZE = "pillow-two-pass"  # recorded with the torch path's features: how its resize is done


class TorchPreprocess:
    """A backbone's input pixels from a stack of decoded images, as tensor ops on the images' device.

    `view` (`featcache.backbones.views`): CENTRE is timm's eval transform: shorter side to
    floor(input_size / crop_pct) (antialiased, the data config's interpolation), centre crop, scale to [0, 1],
    normalise. 'native' and 'crops' follow the shared geometry (`native_size`; `crop_source_size` and
    `crop_boxes`). Every resize is torchvision's antialiased resize in float, done as Pillow does it (the width
    first, then the height, each pass rounded to 8 bits): the pixels stay within 1 level of the Pillow path's when
    reducing and within 2 when enlarging (a crops view enlarges an image smaller than the crop). `output_shape`
    gives each view's shape."""

    def __init__(self, data_config: dict, device: torch.device, view: InputView | None = None):
        import torch
        from torchvision.transforms import InterpolationMode

        from featcache.backbones.views import CENTRE

        self.view = CENTRE if view is None else view
        self.input_size = int(data_config["input_size"])
        self.resize = math.floor(self.input_size / data_config["crop_pct"])  # as timm's transforms_imagenet_eval
        self.interpolation = InterpolationMode(str(data_config["interpolation"]))
        self.mean = torch.tensor(data_config["mean"], device=device).view(3, 1, 1)
        self.std = torch.tensor(data_config["std"], device=device).view(3, 1, 1)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The shorter side to `resize`, the longer scaled and truncated, as torchvision's Resize(int) computes it."""
        if height <= width:
            return self.resize, int(self.resize * width / height)
        return int(self.resize * height / width), self.resize

    def output_shape(self, height: int, width: int) -> tuple[int, ...]:
        """The shape one `height` x `width` image gives (`featcache.backbones.views.item_shape`)."""
        from featcache.backbones.views import item_shape

        return item_shape(self.view, self.input_size, height, width)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """(..., 3, H, W) uint8 -> (..., *output_shape(H, W)) float32, on the image's device; a stack of same-sized
        images gives the same numbers as each image alone."""
        if self.view.kind == "native":
            return self._native(image)
        if self.view.kind == "crops":
            return self._crops(image)
        return self._centre(image)

    def _normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """8-bit values -> float32 as torchvision's ToTensor then Normalize compute them (in place: no copies)."""
        return pixels.float().div_(255.0).sub_(self.mean).div_(self.std)

    def _resized(self, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(..., 3, H, W) uint8 -> (..., 3, *size) float32 holding 8-bit values: torchvision's antialiased resize,
        the width first, then the height, each pass rounded to 8 bits (as Pillow resizes)."""
        from torchvision.transforms.functional import resize

        pixels = image.float()
        height, width = pixels.shape[-2:]
        for step in ([height, size[1]], [size[0], size[1]]):  # Pillow: horizontal pass, then vertical
            if list(pixels.shape[-2:]) != step:
                pixels = resize(pixels, step, interpolation=self.interpolation, antialias=True)
                pixels = pixels.round_().clamp_(0, 255)  # each pass in 8 bits
        return pixels

    def _centre(self, image: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.functional import center_crop

        pixels = self._resized(image, self.resized_size(*image.shape[-2:]))
        pixels = center_crop(pixels, [self.input_size, self.input_size])
        return (pixels / 255.0).sub_(self.mean).div_(self.std)

    def _native(self, image: torch.Tensor) -> torch.Tensor:
        from featcache.backbones.views import native_size

        height, width = image.shape[-2:]
        return self._normalise(self._resized(image, native_size(height, width, self.view.max_side)))

    def _crops(self, image: torch.Tensor) -> torch.Tensor:
        import torch

        from featcache.backbones.views import crop_boxes, crop_source_size

        height, width = image.shape[-2:]
        size = self.input_size
        source = self._resized(image, crop_source_size(height, width, size, self.view.max_side))
        boxes = crop_boxes(*source.shape[-2:], size, self.view.crops, self.view.seed)
        crops = torch.stack([source[..., top:top + size, left:left + size] for top, left in boxes], dim=-4)
        return self._normalise(crops)
