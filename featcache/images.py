"""Decode any image file a database may hold into RGB, safely, inside DataLoader workers."""

from __future__ import annotations

import contextlib
import io
import math
import os
import threading
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from featcache.errors import FeatcacheError

DEFAULT_MAX_PIXELS = 100_000_000  # 10k x 10k; AIGC images are at most a few megapixels
ImageFile.LOAD_TRUNCATED_IMAGES = False


def find_missing(root: Path, paths: list[str]) -> list[str]:
    """Paths (relative to root) that do not exist or are empty files."""
    bad = []
    for rel in paths:
        try:
            if os.stat(root / rel).st_size == 0:
                bad.append(rel)
        except OSError:
            bad.append(rel)
    return bad


def check_files_present(root: Path, paths: list[str]) -> None:
    missing = find_missing(root, paths)
    if missing:
        shown = ", ".join(missing[:3])
        raise FeatcacheError(
            f"{len(missing)} of {len(paths)} image files are missing or empty under {root} (first: {shown})"
        )


def load_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS,
             draft_short_side: int | None = None) -> Image.Image:
    """Open an image as 8-bit RGB: alpha is composited on white, 16-bit is scaled (not clipped), CMYK converted.

    `draft_short_side`: a JPEG whose shorter side is at least twice this is decoded by libjpeg at 1/2, 1/4 or 1/8
    scale, its shorter side staying >= this (JPEG draft mode): several times faster, pixels slightly different."""
    path = Path(path)
    try:
        with _own_pixel_limit():
            im = Image.open(path)
        with im:
            width, height = im.size
            _check_pixels(path, width, height, max_pixels)
            if draft_short_side and im.format == "JPEG":
                _draft(im, draft_short_side)
            im.load()
            return _to_rgb(im)
    except FeatcacheError:
        raise
    except Image.DecompressionBombError as exc:
        raise FeatcacheError(f"{path}: {exc}") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise FeatcacheError(f"{path}: cannot decode image ({exc})") from exc


def _check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise FeatcacheError(
            f"{path}: {width}x{height} pixels exceeds the limit of {max_pixels} "
            "(decompression bomb?); raise --max-pixels if it is genuine"
        )


def _draft(im: Image.Image, short_side: int) -> None:
    """Ask libjpeg for the smallest DCT scale (1/2, 1/4, 1/8) that keeps the shorter side >= `short_side`."""
    width, height = im.size
    if min(width, height) < 2 * short_side:
        return
    ratio = min(width, height) / short_side  # PIL picks the power of two <= min(width // w, height // h)
    im.draft("RGB", (math.ceil(width / ratio), math.ceil(height / ratio)))


JPEG_MAGIC = b"\xff\xd8\xff"


def read_jpeg_bytes(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray | None:
    """The file's bytes, for decoding with torchvision (nvjpeg on CUDA), when it is an 8-bit RGB or grey JPEG within
    `max_pixels`; None for anything else (other formats, CMYK, unreadable headers): those take `load_rgb`, which
    converts them and reports bad files exactly as the CPU path does."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            if handle.read(len(JPEG_MAGIC)) != JPEG_MAGIC:
                return None  # other formats are read once, by Pillow
            data = JPEG_MAGIC + handle.read()
    except OSError:
        return None
    try:
        with _own_pixel_limit(), Image.open(io.BytesIO(data)) as im:  # reads the header only
            if im.format != "JPEG" or im.mode not in ("RGB", "L") or im.width * im.height > max_pixels:
                return None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return np.frombuffer(bytearray(data), dtype=np.uint8)  # writable, so torch.from_numpy shares it


_PIXEL_LIMIT_LOCK = threading.Lock()
_pixel_limit_state = {"holders": 0, "saved": None}


@contextlib.contextmanager
def _own_pixel_limit():
    """Pillow's own bomb check (a warning above 89 MP, an error above 179 MP) is off while opening: --max-pixels
    decides, with our message. Counted under a lock: extract's decode thread opens files while the main thread does,
    and two unguarded save/restore pairs can leave Pillow's limit off for good."""
    with _PIXEL_LIMIT_LOCK:
        if _pixel_limit_state["holders"] == 0:
            _pixel_limit_state["saved"] = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _pixel_limit_state["holders"] += 1
    try:
        yield
    finally:
        with _PIXEL_LIMIT_LOCK:
            _pixel_limit_state["holders"] -= 1
            if _pixel_limit_state["holders"] == 0:
                Image.MAX_IMAGE_PIXELS = _pixel_limit_state["saved"]


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if im.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(np.round(array * 255.0 / peak), 0, 255).astype(np.uint8)
        return Image.fromarray(array).convert("RGB")
    if im.mode == "F":
        array = np.clip(np.asarray(im, dtype=np.float64), 0.0, 1.0 if np.asarray(im).max() <= 1.0 else 255.0)
        scale = 255.0 if array.max() <= 1.0 else 1.0
        return Image.fromarray(np.round(array * scale).astype(np.uint8)).convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("LA", "La", "PA"):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "RGBa"):
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im.convert("RGBA")).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")
