"""Decode any image file a database may hold into RGB, safely, inside DataLoader workers."""

from __future__ import annotations

import contextlib
import os
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


def load_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image as 8-bit RGB: alpha is composited on white, 16-bit is scaled (not clipped), CMYK converted."""
    path = Path(path)
    try:
        with _own_pixel_limit():
            im = Image.open(path)
        with im:
            width, height = im.size
            if width * height > max_pixels:
                raise FeatcacheError(
                    f"{path}: {width}x{height} pixels exceeds the limit of {max_pixels} "
                    "(decompression bomb?); raise --max-pixels if it is genuine"
                )
            im.load()
            return _to_rgb(im)
    except FeatcacheError:
        raise
    except Image.DecompressionBombError as exc:
        raise FeatcacheError(f"{path}: {exc}") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise FeatcacheError(f"{path}: cannot decode image ({exc})") from exc


@contextlib.contextmanager
def _own_pixel_limit():
    """Pillow's own bomb check (a warning above 89 MP, an error above 179 MP) is off while opening: --max-pixels
    decides, with our message."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


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
