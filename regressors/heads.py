"""Train a head on every selected sample of a cache, save it, and score new images with it."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from featcache.errors import FeatcacheError
from featcache.store import open_read, read_config, read_provenance
from regressors.cache_data import CacheData
from regressors.design import content_groups, design_matrix
from regressors.fitting import fit_estimator
from regressors.heads_io import check_savable, load_head, save_head
from regressors.modes import features_for_mode, get_mode
from regressors.registry import get_regressor
from regressors.splits import subset_mask


def fit_and_save_head(data: CacheData, mode: str, target: str, regressor: str, path: str | Path, *,
                      subset: str = "all", seed: int = 0, device: str = "cpu") -> dict:
    check_savable(regressor)
    selection = np.flatnonzero(subset_mask(data.samples.subset, data.samples.generator, subset))
    x, rows = design_matrix(data, mode, selection)
    y = data.target(target)[rows]
    model = fit_estimator(get_regressor(regressor).factory(seed, device), x, y, content_groups(data)[rows])
    with open_read(data.path) as f:
        config, provenance = read_config(f, data.backbone_id), read_provenance(f, data.backbone_id)
    metadata = {"backbone_id": data.backbone_id, "backbone_config": config,
                "backbone_name": provenance.get("backbone_name", config["arch"]),
                "pool": config["pool"], "image_size": config["data_config"]["input_size"],
                "mode": mode, "target": target, "subset": subset, "n_train": int(len(rows)),
                "feature_dim": int(data.emb.shape[1]), "seed": seed, "cache": data.path}
    save_head(model, regressor, path, metadata)
    return metadata


def predict_paths(head: str | Path, root: str | Path, images: list[str], prompts: list[str], *,
                  backbone: str | None = None, weights: str | None = None, mode: str | None = None,
                  device: str = "auto", batch_size: int = 32, workers: int = 0) -> tuple[np.ndarray, dict]:
    """Scores of `images` (paths relative to root; prompts '' where none) with a saved head."""
    from featcache.backbones import load_backbone
    from featcache.extract import compute_features

    model, meta = load_head(head)
    if mode is not None and mode != meta["mode"]:
        raise FeatcacheError(f"{head} was trained for --mode {meta['mode']}, not {mode}")
    name = backbone or meta["backbone_name"]
    source = meta["backbone_config"]["weights"]
    if weights is None and source["source"] == "file":
        weights = source.get("file")
    model_backbone = load_backbone(name, meta["pool"], weights, source["source"] == "random", meta["image_size"])
    if model_backbone.id != meta["backbone_id"]:
        raise FeatcacheError(f"{head} was trained on backbone {meta['backbone_id']}; {name} gives "
                             f"{model_backbone.id}. Use the head's own backbone")
    has = np.array([bool(p) for p in prompts])
    if get_mode(meta["mode"]).needs_prompt_image and not has.all():
        raise FeatcacheError(f"{head} is a {meta['mode']} head: every image needs --prompt-image "
                             "(a pr head accepts images with or without one)")
    distinct = sorted(set(images) | {p for p in prompts if p})
    index = {p: i for i, p in enumerate(distinct)}
    emb = compute_features(model_backbone, root, distinct, batch_size=batch_size, workers=workers, device=device)
    if emb.shape[1] != meta["feature_dim"]:
        raise FeatcacheError(f"{head}: features have {emb.shape[1]} dimensions, the head expects "
                             f"{meta['feature_dim']}")
    g = emb[[index[p] for p in images]]
    prompt_features = emb[[index[q] if q else 0 for q in prompts]]
    scores = np.asarray(model.predict(features_for_mode(g, prompt_features, has, meta["mode"])), np.float64)
    if not np.isfinite(scores).all():
        raise FeatcacheError(f"{head}: the head gives non-finite scores (damaged weights?)")
    return scores, meta


def write_scores(path: str | Path, images: list[str], prompts: list[str], scores: np.ndarray, target: str) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "prompt_image", target])
        for image, prompt, score in zip(images, prompts, scores):
            writer.writerow([image, prompt, f"{score:.6f}"])
