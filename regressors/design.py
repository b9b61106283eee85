"""Design matrices per mode, built from cached rows only, and the label codes the floors read."""

from __future__ import annotations

import numpy as np

from featcache import grouping
from featcache.errors import FeatcacheError
from regressors.cache_data import CacheData
from regressors.modes import features_for_mode, get_mode


def mode_rows(data: CacheData, mode: str, rows: np.ndarray) -> np.ndarray:
    """The samples a mode can use: modes that need an image prompt drop the samples without one."""
    spec = get_mode(mode)
    rows = np.asarray(rows)
    if spec.needs_prompt_image:
        has = data.samples.prompt_image[rows] >= 0
        if not has.any():
            raise FeatcacheError(f"--mode {mode}: no sample of this selection has an image prompt; "
                                 "use --mode pr (or nr), or --subset i2i")
        return rows[has]
    return rows


def design_matrix(data: CacheData, mode: str, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(X, sample indices) for `mode` over the samples in `rows` (all by default)."""
    rows = mode_rows(data, mode, np.arange(len(data.samples)) if rows is None else np.asarray(rows))
    gen, prompt = data.samples.gen[rows], data.samples.prompt_image[rows]
    has_prompt = prompt >= 0
    needed = np.unique(np.concatenate([gen, prompt[has_prompt]]))
    missing = needed[~data.done[needed]]
    if len(missing):
        raise FeatcacheError(f"{data.path}: {len(missing)} images of {data.backbone_id} needed here are not "
                             f"extracted yet (first: {data.samples.image_keys[missing[0]]}); run `featcache "
                             "extract` with the same options to finish them")
    x = features_for_mode(data.emb[gen], data.emb[np.where(has_prompt, prompt, 0)], has_prompt, mode)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise FeatcacheError(f"{data.path}: {int(bad.sum())} feature rows of {data.backbone_id} hold NaN or inf "
                             f"(first sample: {data.samples.key[rows[np.argmax(bad)]]}); run `featcache repair` "
                             "on the cache, then extract again")
    return x, rows


def content_groups(data: CacheData) -> np.ndarray:
    """Integer group per sample, the unit a prompt-disjoint split keeps on one side (see
    `featcache.grouping.content_groups`)."""
    return grouping.content_groups(data.samples)


LABEL_COLUMNS = ("generator", "sibling", "prompt")


def label_codes(data: CacheData, rows: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """The floors' input: integer codes of generator, sibling (the cached group, i.e. prompt id or image prompt,
    x generator: the official definition of siblings) and content group per sample."""
    samples = data.samples
    groups = content_groups(data) if groups is None else groups
    _, generator_code = np.unique(samples.generator.astype(str), return_inverse=True)
    _, cached_group = np.unique(samples.group.astype(str), return_inverse=True)
    sibling_code = cached_group * (generator_code.max() + 1) + generator_code
    return np.stack([generator_code[rows], sibling_code[rows], groups[rows]], axis=1).astype(np.float64)
