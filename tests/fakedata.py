"""Tiny datasets in the PKU-AIGIQA-4K layout, made on the fly (no files from ../shared are copied)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ANNOTATIONS = SHARED / "annotations"
KODAK = SHARED / "kodak"
HEADER = "Image_prompt,Text_prompt,Generated_image,MOS_q,MOS_a,MOS_c"


def noisy_image(rng, size) -> Image.Image:
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
        noisy_image(rng, (size[0] + 8, size[1] + 8)).save(root / "I2I" / "Image_prompt" / f"{p}.jpg")
        for g in ("MJ", "SD"):
            for k in range(per_generator):
                name = f"{g}_{p}_{k}0.jpg"
                noisy_image(rng, size).save(root / "All" / name)
                q, a, c = rng.uniform(1, 5, 3)
                rows.append(f'{p}.jpg,"a photo, edited",{name},{q:.4f},{a:.4f},{c:.4f}')
    for pid in range(1000, 1000 + t2i_prompts):
        for g in ("SD", "MJ", "DALLE"):
            for k in range(per_generator):
                name = f"{g}_{pid}_{k}0.jpg"
                noisy_image(rng, size).save(root / "All" / name)
                q, a, c = rng.uniform(1, 5, 3)
                rows.append(f',"a corgi, happy",{name},{q:.4f},{a:.4f},{c:.4f}')
    path = root / "annotation.csv"
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def _toy_config(bid):
    return {"id": bid, "arch": "toy", "weights": {"source": "random", "tag": "random"}, "feature": "gap",
            "pool": "paper", "precision": "fp32",
            "data_config": {"input_size": 4, "crop_pct": 1.0, "resize": 4, "interpolation": "bilinear",
                            "mean": [0.5] * 3, "std": [0.5] * 3}}


def make_cache(tmp_path, i2i_prompts=6, t2i_prompts=10, per=4, dim=6, seed=0, backbones=("toy.random/paper/4",)):
    """A cache with planted features (no images): MOS_q is read off feature 0 with noise. I2I: each prompt x MJ, SD x `per`; T2I: each prompt x SD, MJ x `per`."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(i2i_prompts):
        for g in ("MJ", "SD"):
            for k in range(per):
                q = rng.uniform(1, 5)
                rows.append(f"{p}.jpg,edit,{g}_{p}_{k}.jpg,{q:.4f},{6 - q:.4f},{q / 2 + 1:.4f}")
    for pid in range(1000, 1000 + t2i_prompts):
        for g in ("SD", "MJ"):
            for k in range(per):
                q = rng.uniform(1, 5)
                rows.append(f',"prompt {pid}",{g}_{pid}_{k}0.jpg,{q:.4f},{6 - q:.4f},{q / 2 + 1:.4f}')
    (tmp_path / "annotation.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    from featcache.datasets import load_dataset
    from featcache.store import create_cache, ensure_features

    samples = load_dataset(None, tmp_path)
    path = tmp_path / "c.h5"
    create_cache(path, samples, tmp_path)
    paths, gen, ref = samples.distinct_images()
    mos = samples.targets["MOS_q"]
    emb = rng.normal(size=(len(paths), dim))
    emb[gen, 0] = mos + rng.normal(0, 0.4, len(gen))
    with h5py.File(path, "r+") as f:
        for bid in backbones:
            group = ensure_features(f, _toy_config(bid), dim, {}, path)
            group["emb"][:] = emb
            group["done"][:] = True
    return path


def fit_nr_run(root, regressors: str, *extra: str):
    """A fake cache in `root` and `featcache fit` on it through the CLI (NR, MOS_q, 3 folds, no figures) into
    root/run; `extra` options appended. Returns click's result."""
    from click.testing import CliRunner

    import cli

    make_cache(root)
    return CliRunner().invoke(cli.main, ["fit", "--cache", str(root / "c.h5"), "--mode", "nr", "--target", "MOS_q",
                                         "--regressor", regressors, "--folds", "3", "--quiet", "--no-figures",
                                         "--out", str(root / "run"), *extra])


def add_backbone(cache: Path, bid: str, emb: np.ndarray, done: np.ndarray | None = None) -> None:
    """Write `emb` (images x D) as backbone `bid` of a cache made by `make_cache` (done: all rows unless given)."""
    from featcache.store import ensure_features

    with h5py.File(cache, "r+") as f:
        group = ensure_features(f, _toy_config(bid), emb.shape[1], {}, cache)
        group["emb"][:] = emb
        group["done"][:] = True if done is None else done


def make_fused_cache(tmp_path, small: int = 3, large: int = 24, noise: float = 0.4, seed: int = 0,
                     small_id: str = "toy.random/paper/4", large_id: str = "toy.random/paper/native",
                     **cache) -> Path:
    """`make_cache` (feature 0 of `small_id` reads MOS_q with noise) plus a second backbone `large_id` of `large`
    columns: MOS_q read with more noise spread over its first quarter, the rest noise."""
    path = make_cache(tmp_path, dim=small, seed=seed, backbones=(small_id,), **cache)
    from featcache.store import open_read, read_samples

    with open_read(path) as f:
        samples = read_samples(f)
    rng = np.random.default_rng(seed + 1)
    m = len(samples.image_keys)
    emb = rng.normal(size=(m, large))
    mos = np.zeros(m)
    mos[samples.gen] = samples.targets["MOS_q"]
    signal = max(1, large // 4)
    emb[:, :signal] += (mos - mos.mean())[:, None] * 0.3 + rng.normal(0, noise * 3, (m, signal))
    add_backbone(path, large_id, emb)
    return path
