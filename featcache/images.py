"""Decode any image file a database may hold into 8-bit RGB, refusing files over a pixel limit before decoding them.

Every file is checked against the caller's `max_pixels` from its header, before any pixel is decoded, with a one-line
error naming the file. Importing this module changes no Pillow setting: Pillow's own decompression-bomb limit
(`PIL.Image.MAX_IMAGE_PIXELS`) still applies on top, and a process that admits larger genuine files raises it once
with `raise_pillow_limit` (the featcache command does, for --max-pixels)."""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from featcache.errors import FeatcacheError, named

DEFAULT_MAX_PIXELS = 100_000_000  # 10k x 10k; AIGC images are at most a few megapixels

# How JPEG draft mode decodes; recorded with a cache's features (`jpeg_draft_rule`), since it changes pixels.
# "same-geometry": the largest reduction (1/8, 1/4, 1/2) that keeps the shorter side >= the limit, then the resize
# of the backbone's transform done here, over the same source area as after a full decode (see `Draft`).
# "pillow-request" (what a cache without the key was drafted with): a size request that Pillow turns into a scale
# through min(W // w, H // h), which rounds odd sizes down, and the transform resizing the decoded pixels; such a
# cache resumes with the same pixels.
DRAFT_RULE = "same-geometry"
DRAFT_RULES = (DRAFT_RULE, "pillow-request")


@dataclass(frozen=True, kw_only=True)
class Draft:
    """JPEG draft decoding for one backbone's transform.

    libjpeg decodes a side the scale does not divide to ceil(side / scale) pixels, the last one partly covered
    (1535 px at 1/2: 768 pixels for 767.5), and a resize of those pixels would give another output size than the
    full decode's (384 x 256 instead of 383 x 256), moving the centre crop. So by the "same-geometry" rule the
    draft-decoded image is resized here to the size the full decode would get, over the box that is the whole source
    (Pillow's draft box), and the transform's own resize has nothing left to do."""

    short_side: int  # the decoded shorter side never goes under this
    resize: int | tuple[int, int]  # the transform's Resize size: the shorter side, or (height, width)
    resample: int  # its PIL filter
    rule: str = DRAFT_RULE

    def __post_init__(self):
        if self.rule not in DRAFT_RULES:  # a caller's mistake, not a file's
            raise ValueError(f"unknown JPEG draft rule {self.rule!r} (known: {', '.join(DRAFT_RULES)})")


def resized_size(width: int, height: int, size: int | tuple[int, int]) -> tuple[int, int]:
    """(width, height) after torchvision's Resize(size) without max_size: an int sets the shorter side and the
    longer one is truncated, int(size * long / short); a pair is (height, width)."""
    if not isinstance(size, int):
        if len(size) == 1:
            size = size[0]
        else:
            return int(size[1]), int(size[0])
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def raise_pillow_limit(max_pixels: int) -> None:
    """Let Pillow open genuine files of up to `max_pixels` in this process; it never lowers Pillow's limit.

    Pillow refuses a file over twice `PIL.Image.MAX_IMAGE_PIXELS` when it opens it, whatever `max_pixels` says. This
    process-wide setting is meant to be made once, at a process's start before it runs threads: the featcache command
    calls it, and decode worker processes inherit it. Library callers keep their own Pillow setting, and a file that
    Pillow refuses is a FeatcacheError naming it."""
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


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
        raise FeatcacheError(f"{len(missing)} of {len(paths)} image files are missing or empty under {root}: "
                             f"{named(missing)}")


def load_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, draft: Draft | None = None,
             resize: int | tuple[int, int] | None = None) -> Image.Image:
    """Open an image as 8-bit RGB: alpha is composited on white, 16-bit is scaled (not clipped), CMYK converted.

    `draft`: a JPEG whose shorter side stays >= `draft.short_side` at 1/2, 1/4 or 1/8 scale is decoded by libjpeg
    at the smallest such size (JPEG draft mode) and, by the "same-geometry" rule, returned already resized as the
    transform would resize the full decode: several times faster, pixels slightly different. `resize`: the transform's
    Resize size, whose output must stay within `max_pixels` too (see `check_resized_pixels`)."""
    path = Path(path)
    try:
        with Image.open(path) as im:  # reads the header only
            width, height = im.size
            _check_pixels(path, width, height, max_pixels)
            check_resized_pixels(path, width, height, resize if resize is not None else
                                 (draft.resize if draft is not None else None), max_pixels)
            box = _draft(im, draft) if draft is not None and im.format == "JPEG" else None
            im.load()
            rgb = _to_rgb(im)
        if box is not None:
            return rgb.resize(resized_size(width, height, draft.resize), draft.resample, box=box)
        return rgb
    except FeatcacheError:
        raise
    except Image.DecompressionBombError as exc:
        raise FeatcacheError(f"{path}: Pillow refuses it ({exc}); raise PIL.Image.MAX_IMAGE_PIXELS if it is genuine "
                             "(the featcache command raises it to --max-pixels)") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise FeatcacheError(f"{path}: cannot decode image ({exc})") from exc


def header_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) of the pixels `load_rgb` decodes, read from the file's header alone (no EXIF rotation is
    applied there, so the header's size is the decoded one); None when the header cannot be read (`load_rgb`
    reports that file)."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise FeatcacheError(
            f"{path}: {width}x{height} pixels exceeds the limit of {max_pixels} "
            "(decompression bomb?); raise --max-pixels if it is genuine"
        )


def check_resized_pixels(path: str | Path, width: int, height: int, resize: int | tuple[int, int] | None,
                         max_pixels: int) -> None:
    """Refuse an image that the transform's resize (shorter side to `resize`) would blow up past `max_pixels`, e.g. a
    tiny PNG of 12000x1 pixels that a resize to 256 turns into 3072000x256 before the centre crop."""
    if resize is None:
        return
    new_width, new_height = resized_size(width, height, resize)
    if new_width * new_height > max_pixels:
        raise FeatcacheError(f"{path}: {width}x{height} pixels would be resized to {new_width}x{new_height} before "
                             f"the crop, over the limit of {max_pixels} pixels (aspect ratio "
                             f"{max(width, height) / max(1, min(width, height)):.0f}:1); raise --max-pixels if it "
                             "is genuine")


def draft_scale(width: int, height: int, short_side: int) -> int:
    """The largest DCT scale (8, 4 or 2) whose decoded shorter side, ceil(side / scale) as libjpeg rounds, is
    still >= `short_side`; 1 when none is."""
    for scale in (8, 4, 2):
        if -(-min(width, height) // scale) >= short_side:
            return scale
    return 1


def _draft(im: Image.Image, draft: Draft) -> tuple[float, float, float, float] | None:
    """Ask libjpeg to decode at a reduced scale. Returns the whole source's box in the decoded pixels when the
    caller must resize (the "same-geometry" rule), else None."""
    width, height = im.size
    if draft.rule == "pillow-request":
        if min(width, height) < 2 * draft.short_side:
            return None
        ratio = min(width, height) / draft.short_side
        im.draft("RGB", (math.ceil(width / ratio), math.ceil(height / ratio)))
        return None
    scale = draft_scale(width, height, draft.short_side)
    if scale == 1:
        return None
    # Pillow takes the power of two <= min(W // w, H // h): exactly `scale` for this request
    drafted = im.draft("RGB", (width // scale, height // scale))
    if drafted is None or im.size == (width, height):  # not a single-tile JPEG: decoded in full
        return None
    return drafted[1]


JPEG_MAGIC = b"\xff\xd8\xff"


def read_jpeg_bytes(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS,
                    resize: int | tuple[int, int] | None = None) -> np.ndarray | None:
    """The file's bytes, for decoding with torchvision (nvjpeg on CUDA), when it is an 8-bit RGB or grey JPEG within
    `max_pixels`, also once resized to `resize`; None for anything else (other formats, CMYK, unreadable headers,
    too many pixels): those take `load_rgb`, which converts them and reports bad files as the Pillow path does."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            if handle.read(len(JPEG_MAGIC)) != JPEG_MAGIC:
                return None  # other formats are read once, by Pillow
            data = JPEG_MAGIC + handle.read()
    except OSError:
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            if im.format != "JPEG" or im.mode not in ("RGB", "L") or im.width * im.height > max_pixels:
                return None
            if resize is not None and math.prod(resized_size(im.width, im.height, resize)) > max_pixels:
                return None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return np.frombuffer(bytearray(data), dtype=np.uint8)  # writable, so torch.from_numpy shares it


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
