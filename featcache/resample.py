"""Pillow's antialiased resize of 8-bit images (`Image.resize` with a resampling filter), reproduced as integer tensor
ops that run on any torch device.

Pillow resamples in two separable passes, the width first, then the height, each rounded to 8 bits. Each output pixel
is a weighted sum of the input pixels within the filter's support (widened by the scale when reducing, not when
enlarging), its weights normalised to sum to 1 and quantised to `PRECISION_BITS` fixed-point bits; the sum is rounded
half up and clipped to [0, 255]. The weights here are computed by the same formulas in float64 and the sums are done
in int32, as Pillow does them, so the output equals Pillow's for the same input pixels.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Callable

import numpy as np

from featcache.errors import FeatcacheError

if TYPE_CHECKING:
    import torch

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point weights: the sum of 8-bit pixels x weights fits a signed int32


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _bicubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _box(x: np.ndarray) -> np.ndarray:
    return np.where((x > -0.5) & (x <= 0.5), 1.0, 0.0)


def _sinc(x: np.ndarray) -> np.ndarray:
    scaled = x * math.pi
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(x == 0.0, 1.0, np.sin(scaled) / scaled)


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where((x >= -3.0) & (x < 3.0), _sinc(x) * _sinc(x / 3), 0.0)


_HAMMING_A, _HAMMING_B = float(np.float32(0.54)), float(np.float32(0.46))  # Pillow writes them as C floats


def _hamming(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    scaled = x * math.pi
    with np.errstate(invalid="ignore", divide="ignore"):
        inside = np.sin(scaled) / scaled * (_HAMMING_A + _HAMMING_B * np.cos(scaled))
    return np.where(x == 0.0, 1.0, np.where(x >= 1.0, 0.0, inside))


# name (as a data config's `interpolation`) -> (support at scale 1, the filter, elementwise on float64 arrays)
FILTERS: dict[str, tuple[float, Callable[[np.ndarray], np.ndarray]]] = {
    "bilinear": (1.0, _bilinear),
    "bicubic": (2.0, _bicubic),
    "lanczos": (3.0, _lanczos),
    "box": (0.5, _box),
    "hamming": (1.0, _hamming),
}


def check_filter(interpolation: str) -> None:
    """A one-line FeatcacheError unless `interpolation` is one of Pillow's resampling filters reproduced here."""
    if interpolation not in FILTERS:
        raise FeatcacheError(f"interpolation {interpolation!r}: the torch path resizes with Pillow's filters "
                             f"({', '.join(FILTERS)}); use --decode cpu")


@functools.lru_cache(maxsize=512)
def pillow_weights(in_size: int, out_size: int, interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    """The weights of one pass from `in_size` to `out_size` pixels: (first input index per output pixel, shape
    (out_size,); int32 fixed-point weights of the input pixels first, first + 1, ..., shape (out_size, taps), zero
    past each pixel's support). Pillow's own formulas, in float64."""
    check_filter(interpolation)
    support, kernel = FILTERS[interpolation]
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)  # enlarging keeps the filter's own support; reducing widens it
    support = support * filterscale
    taps = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale
    first = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)  # C's (int): toward zero
    count = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - first
    offsets = np.arange(taps)
    position = (first[:, None] + offsets[None, :]).astype(np.float64)
    argument = (position - center[:, None] + 0.5) * (1.0 / filterscale)
    weights = np.where(offsets[None, :] < count[:, None], kernel(argument), 0.0)
    total = np.zeros(out_size)
    for k in range(taps):  # summed in Pillow's order
        total = total + weights[:, k]
    weights = np.divide(weights, total[:, None], out=weights.copy(), where=total[:, None] != 0.0)
    scaled = weights * (1 << PRECISION_BITS)
    fixed = np.where(weights < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int32)
    return first, fixed


def _rows(pixels: torch.Tensor, size: int, interpolation: str) -> torch.Tensor:
    """One pass over the rows (dim -2) of a contiguous (..., R, C) uint8 tensor -> (..., size, C) uint8.

    Each tap gathers whole rows (contiguous copies, in 8 bits) into reused buffers and accumulates in place."""
    import torch

    rows, columns = pixels.shape[-2:]
    lead = pixels.shape[:-2]
    images = pixels.numel() // (rows * columns)
    first, fixed = pillow_weights(int(rows), int(size), interpolation)
    taps = fixed.shape[1]
    index = np.minimum(first[:, None] + np.arange(taps)[None, :], rows - 1)  # past the edge: weight 0
    index = (np.arange(images)[:, None, None] * rows + index[None]).reshape(images * size, taps)
    device = pixels.device
    index = torch.from_numpy(index).to(device)
    weight = torch.from_numpy(np.tile(fixed, (images, 1))).to(device)
    values = pixels.reshape(images * rows, columns)
    total = torch.full((images * size, columns), 1 << (PRECISION_BITS - 1), dtype=torch.int32, device=device)
    gathered = torch.empty((images * size, columns), dtype=torch.uint8, device=device)
    widened = torch.empty_like(total)
    for k in range(taps):
        torch.index_select(values, 0, index[:, k], out=gathered)
        widened.copy_(gathered)
        total.addcmul_(widened, weight[:, k:k + 1])
    total.bitwise_right_shift_(PRECISION_BITS).clamp_(0, 255)  # rounded half up (the 1 << 21 above), clipped
    return total.to(torch.uint8).view(*lead, size, columns)


def pillow_resize(pixels: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """(..., H, W) uint8 -> (..., height, width) uint8 on the same device, equal to Pillow's
    `Image.resize((width, height), filter)` of each image (an enlargement too). A pass whose side does not change is
    skipped, as Pillow skips it."""
    check_filter(interpolation)
    height, width = int(size[0]), int(size[1])
    if pixels.shape[-1] != width:  # the width first, as rows of the transposed image
        pixels = _rows(pixels.transpose(-1, -2).contiguous(), width, interpolation).transpose(-1, -2)
    if pixels.shape[-2] != height:
        pixels = _rows(pixels.contiguous(), height, interpolation)
    return pixels.contiguous()
