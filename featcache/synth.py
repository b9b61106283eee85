"""`featcache synth`: a controlled quality benchmark in the PKU-AIGIQA-4K layout, from any folder of photos.

Each photo gives one content group. Its image prompt is a centre crop; its "generated" images are views whose
framing drifts from the prompt's by a known amount `drift` in [0, 1], carrying one distortion at a known `level`
in 0..4. Two thirds of the photos are image-to-image (the prompt is written), the rest text-to-image (no prompt).

Synthetic labels, exact by construction:
- MOS_q (quality)        = 5 - level                       (1..5)
- MOS_a (authenticity)   = 5 - level * weight(distortion)  (colour shift and pixelation look least natural)
- MOS_c (correspondence) = 5 - 4 * drift                   (only a method that sees the prompt can know it)
Generators differ in their level distribution (GEN2 distorts more), as real generators differ in quality.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from featcache.errors import FeatcacheError
from featcache.images import load_rgb
from featcache.outputs import write_bytes_atomically

DISTORTIONS = {  # name -> authenticity weight per level
    "blur": 0.5, "noise": 0.7, "jpeg": 0.6, "pixelate": 0.9, "contrast": 0.4, "colour": 0.9,
}
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
I2I_GENERATORS = ("GEN1", "GEN2")
T2I_GENERATORS = ("GEN1", "GEN2", "GEN3")
LEVEL_WEIGHTS = {"GEN1": (0.3, 0.25, 0.2, 0.15, 0.1), "GEN2": (0.1, 0.15, 0.2, 0.25, 0.3),
                 "GEN3": (0.2, 0.2, 0.2, 0.2, 0.2)}


@dataclass
class SynthResult:
    out: Path
    annotation: Path
    photos: int
    samples: int
    i2i_samples: int


def distort(image: Image.Image, kind: str, level: int, rng: np.random.Generator) -> Image.Image:
    """Apply distortion `kind` at `level` (0 = none, 4 = strongest)."""
    if level == 0:
        return image
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(radius=0.8 * level))
    if kind == "noise":
        array = np.asarray(image, dtype=np.float64) + rng.normal(0.0, 7.0 * level, (*image.size[::-1], 3))
        return Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8))
    if kind == "jpeg":
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=(60, 25, 12, 5)[level - 1])
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    if kind == "pixelate":
        w, h = image.size
        factor = 1 + 2 * level
        return image.resize((max(1, w // factor), max(1, h // factor)), Image.BILINEAR).resize((w, h), Image.NEAREST)
    if kind == "contrast":
        return ImageEnhance.Contrast(image).enhance(1.0 - 0.2 * level)
    if kind == "colour":
        array = np.asarray(image, dtype=np.float64) + np.array([12.0, 0.0, -12.0]) * level
        return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
    raise FeatcacheError(f"unknown distortion {kind!r}")


def _window(width: int, height: int, drift: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A square crop whose centre and size move away from the centred prompt crop in proportion to `drift`."""
    base = 0.7 * min(width, height)
    angle = rng.uniform(0, 2 * np.pi)
    size = base * (1.0 + 0.3 * drift * rng.choice([-1.0, 1.0]))
    size = min(size, min(width, height))
    cx = width / 2 + np.cos(angle) * drift * 0.3 * base
    cy = height / 2 + np.sin(angle) * drift * 0.3 * base
    left = int(round(np.clip(cx - size / 2, 0, width - size)))
    top = int(round(np.clip(cy - size / 2, 0, height - size)))
    return left, top, left + int(round(size)), top + int(round(size))


def find_photos(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FeatcacheError(f"{folder}: photo folder not found")
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    if len(photos) < 3:
        raise FeatcacheError(f"{folder}: needs at least 3 photos ({len(photos)} found)")
    return photos


def own_folder(out: str | Path, *parts: str) -> Path:
    """The folder `out/parts...`, created where missing. Refused with one line when `out` or any folder on the way is
    not a folder, when a folder under `out` is a symbolic link, or when the result lies outside `out` once links are
    followed: files are written there, and a planted link must not send them elsewhere. `out` itself may be a link
    (the caller's own choice)."""
    out = Path(out)
    folder = out
    try:
        out.mkdir(parents=True, exist_ok=True)
        for part in parts:
            folder = folder / part
            if folder.is_symlink():
                raise FeatcacheError(f"{folder} is a symbolic link; nothing is written through it (remove it, or "
                                     "choose another --out)")
            folder.mkdir(exist_ok=True)
    except FileExistsError:
        raise FeatcacheError(f"{folder} is a file, not a folder") from None
    except OSError as exc:
        raise FeatcacheError(f"{folder}: cannot create the folder ({exc.strerror})") from None
    if not folder.is_dir():
        raise FeatcacheError(f"{folder} is a file, not a folder")
    real_out = os.path.realpath(out).rstrip(os.sep) + os.sep
    if parts and not os.path.realpath(folder).startswith(real_out):
        raise FeatcacheError(f"{folder} lies outside {out}; nothing is written there")
    return folder


def _write_file(path: Path, data: bytes) -> None:
    """`write_bytes_atomically`, with a folder at `path` or an unwritable folder as one line."""
    if path.is_dir() and not path.is_symlink():
        raise FeatcacheError(f"{path} is a folder; it is not replaced (remove it, or choose another --out)")
    try:
        write_bytes_atomically(path, data)
    except OSError as exc:
        raise FeatcacheError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _write_image(path: Path, image: Image.Image, fmt: str, **options) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    _write_file(path, buffer.getvalue())


def synth(photos: str | Path, out: str | Path, *, views: int = 4, size: int = 256, seed: int = 0,
          overwrite: bool = True) -> SynthResult:
    """Write out/All, out/I2I/Image_prompt and out/annotation.csv (with the recipe's columns).

    `overwrite=False` (the CLI's default) refuses a folder that already holds files, so an existing database is never
    replaced by accident. Every file is written with `featcache.outputs.write_bytes_atomically` (a symbolic link at
    its name is replaced, never written through), and every folder under `out` it writes into is refused, with one
    line, when it is a symbolic link or lies outside `out` (`own_folder`). `out` itself is the caller's choice."""
    if views < 1 or size < 8:
        raise FeatcacheError(f"synth needs views >= 1 and size >= 8 (got views {views}, size {size})")
    paths = find_photos(photos)
    out = Path(out)
    if not overwrite and out.is_dir() and any(out.iterdir()):
        raise FeatcacheError(f"{out} already holds files; choose an empty or new --out, or pass --overwrite")
    if out.exists() and not out.is_dir():
        raise FeatcacheError(f"{out} is a file, not a folder")
    all_folder = own_folder(out, "All")
    prompt_folder = own_folder(out, "I2I", "Image_prompt")
    kinds = list(DISTORTIONS)
    rows = []
    for index, path in enumerate(paths):
        photo = load_rgb(path)
        is_i2i = index % 3 != 2
        prompt_name = f"{index}.png" if is_i2i else ""
        pid = index if is_i2i else 1000 + index
        if is_i2i:
            prompt = photo.crop(_window(*photo.size, 0.0, np.random.default_rng([seed, index])))
            _write_image(prompt_folder / prompt_name, prompt.resize((size, size), Image.BICUBIC), "PNG")
        for generator in I2I_GENERATORS if is_i2i else T2I_GENERATORS:
            for k in range(views):
                rng = np.random.default_rng([seed, index, int(generator[-1]), k])
                drift = float(rng.uniform(0.0, 1.0))
                level = int(rng.choice(5, p=LEVEL_WEIGHTS[generator]))
                kind = kinds[int(rng.integers(len(kinds)))]
                view = photo.crop(_window(*photo.size, drift, rng)).resize((size, size), Image.BICUBIC)
                name = f"{generator}_{pid}_{k}0.jpg"
                _write_image(all_folder / name, distort(view, kind, level, rng), "JPEG", quality=95)
                rows.append({
                    "Image_prompt": prompt_name, "Text_prompt": f"a photo like {path.stem}",
                    "Generated_image": name, "MOS_q": 5.0 - level,
                    "MOS_a": round(5.0 - level * DISTORTIONS[kind], 4), "MOS_c": round(5.0 - 4.0 * drift, 4),
                    "distortion": kind if level else "none", "level": level, "drift": round(drift, 4),
                    "source_photo": path.name,
                })
    rows = [r for r in rows if r["Image_prompt"]] + [r for r in rows if not r["Image_prompt"]]  # I2I first, as PKU
    annotation = out / "annotation.csv"
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    _write_file(annotation, text.getvalue().encode("utf-8"))
    n_i2i = sum(1 for r in rows if r["Image_prompt"])
    return SynthResult(out, annotation, len(paths), len(rows), n_i2i)


SKIMAGE_PHOTOS = ("astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png",
                  "grass.png", "gravel.png", "hubble_deep_field.jpg", "moon.png", "motorcycle_left.png",
                  "rocket.jpg")


def bundled_photos(dest: str | Path) -> Path:
    """Copy the natural photos that ship inside scikit-image (no network) into `dest`, which is created where
    missing and refused when it is a symbolic link. Each file is written with `write_bytes_atomically`: a link at
    its name is replaced, never written through."""
    try:
        import skimage.data
    except ImportError:
        raise FeatcacheError("the demo's photos ship in scikit-image: pip install 'featcache[demo]'") from None
    source = Path(skimage.data.__file__).parent
    dest = Path(dest)
    if dest.is_symlink():
        raise FeatcacheError(f"{dest} is a symbolic link; the photos are not written through it")
    own_folder(dest)
    found = 0
    for name in SKIMAGE_PHOTOS:
        if (source / name).is_file():
            _write_file(dest / name, (source / name).read_bytes())
            found += 1
    if found < 3:
        raise FeatcacheError(f"{source}: scikit-image ships too few sample photos ({found})")
    return dest
