"""Design matrices per mode, built from cached rows only, and the label codes the floors read."""

from __future__ import annotations

import re

import numpy as np

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


def normalised_text(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).strip().lower()


def content_groups(data: CacheData) -> np.ndarray:
    """Integer group per sample: the cached group (prompt id or image-prompt file) joined with the normalised
    text prompt of text-to-image samples, so two prompt ids carrying the same text (PKU-AIGIQA-4K ids 1099 and
    1196) are one group and never sit on both sides of a prompt-disjoint split. Image-to-image samples keep their
    image prompt as the group (their text is an edit instruction many prompts share)."""
    samples = data.samples
    _, group_code = np.unique(samples.group.astype(str), return_inverse=True)
    parent = np.arange(group_code.max() + 1 if len(group_code) else 0)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_by_text: dict[str, int] = {}
    for code, text, prompt in zip(group_code.tolist(), samples.text_prompt.tolist(), samples.prompt_image.tolist()):
        key = normalised_text(text)
        if not key or prompt >= 0:
            continue
        if key in first_by_text:
            a, b = find(first_by_text[key]), find(code)
            if a != b:
                parent[max(a, b)] = min(a, b)
        else:
            first_by_text[key] = code
    roots = np.array([find(c) for c in group_code.tolist()], dtype=np.int64)
    return np.unique(roots, return_inverse=True)[1]


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
