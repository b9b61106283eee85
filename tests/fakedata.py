"""Tiny datasets in the PKU-AIGIQA-4K layout, made on the fly (no files from ../shared are copied)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ANNOTATIONS = SHARED / "annotations"
KODAK = SHARED / "kodak"
HEADER = "Image_prompt,Text_prompt,Generated_image,MOS_q,MOS_a,MOS_c"


def _image(rng, size) -> Image.Image:
    h, w = size
    base = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR), dtype=np.float64)
    noise = rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8))


def make_pku(root: Path, i2i_prompts: int = 2, t2i_prompts: int = 2, per_generator: int = 2,
             size=(40, 56), seed: int = 0) -> Path:
    """I2I: each image prompt used by MJ and SD; T2I: SD, MJ, DALLE per text prompt. Returns the annotation."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "All").mkdir(parents=True, exist_ok=True)
    (root / "I2I" / "Image_prompt").mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(i2i_prompts):
        _image(rng, (size[0] + 8, size[1] + 8)).save(root / "I2I" / "Image_prompt" / f"{p}.jpg")
        for g in ("MJ", "SD"):
            for k in range(per_generator):
                name = f"{g}_{p}_{k}0.jpg"
                _image(rng, size).save(root / "All" / name)
                q, a, c = rng.uniform(1, 5, 3)
                rows.append(f'{p}.jpg,"a photo, edited",{name},{q:.4f},{a:.4f},{c:.4f}')
    for pid in range(1000, 1000 + t2i_prompts):
        for g in ("SD", "MJ", "DALLE"):
            for k in range(per_generator):
                name = f"{g}_{pid}_{k}0.jpg"
                _image(rng, size).save(root / "All" / name)
                q, a, c = rng.uniform(1, 5, 3)
                rows.append(f',"a corgi, happy",{name},{q:.4f},{a:.4f},{c:.4f}')
    path = root / "annotation.csv"
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path
