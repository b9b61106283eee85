"""Design matrices per mode, built from cached rows only (no image is read again).

g = generated-image feature, p = image-prompt feature (rows of /features/<id>/emb picked by /samples/gen, ref).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np

from featcache.errors import FeatcacheError, unknown_name
from featcache.store import CachedSamples, backbone_ids, open_read, read_samples

MODES = {
    "nr": "g (no reference: the generated image alone)",
    "fr": "concat(g, p), samples with an image prompt only (full reference)",
    "pr": "masked mean of g and p; g where there is no prompt (partial reference, the paper's)",
    "fr-diff": "concat(g, p, |g - p|), samples with an image prompt only",
    "pr-diff": "concat(g, p or 0, |g - p| or 0, has-prompt flag)",
}
FLOORS = ("generator-mean", "sibling-mean")


@dataclass
class CacheData:
    """One backbone's features with the samples and labels of the cache."""

    path: str
    backbone_id: str
    samples: CachedSamples
    emb: np.ndarray  # (M, D) float32
    done: np.ndarray  # (M,) bool

    @property
    def targets(self) -> list[str]:
        return list(self.samples.targets)

    def target(self, name: str) -> np.ndarray:
        if name not in self.samples.targets:
            raise unknown_name("target", name, self.targets, f" in {self.path}")
        return self.samples.targets[name]


def resolve_backbone_id(ids: list[str], wanted: str | None, path: str) -> str:
    """An exact id, a unique id containing `wanted` (a registry name or a prefix), or the only one present."""
    if not ids:
        raise FeatcacheError(f"{path} holds no features yet; run `featcache extract --backbone NAME` first")
    if wanted is None:
        if len(ids) == 1:
            return ids[0]
        raise FeatcacheError(f"{path} holds several backbones; pass --backbone with one of: {', '.join(ids)}")
    if wanted in ids:
        return wanted
    from featcache.backbones import BACKBONES

    arch = BACKBONES[wanted].arch if wanted in BACKBONES else wanted
    matches = [i for i in ids if i.startswith(wanted) or i.split("/")[0].split(".")[0] == arch]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise FeatcacheError(f"--backbone {wanted!r} matches several ids in {path}: {', '.join(matches)}; "
                             "pass the full id")
    close = difflib.get_close_matches(wanted, ids, n=1, cutoff=0.4)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise FeatcacheError(f"backbone {wanted!r} is not in {path}; {hint}present: {', '.join(ids)}")


def load_cache(path: str, backbone: str | None = None, labels_only: bool = False) -> CacheData:
    """Samples, labels and one backbone's rows. `labels_only` (floors only) accepts a cache with no features."""
    with open_read(path) as f:
        ids = backbone_ids(f)
        if labels_only and not ids:
            samples = read_samples(f)
            m = len(samples.image_keys)
            return CacheData(str(path), "", samples, np.zeros((m, 0), np.float32), np.zeros(m, bool))
        bid = resolve_backbone_id(ids, backbone, path)
        group = f[f"features/{bid}"]
        return CacheData(str(path), bid, read_samples(f), group["emb"][()], group["done"][()])


def mode_rows(data: CacheData, mode: str, rows: np.ndarray) -> np.ndarray:
    """The samples a mode can use: FR modes need an image prompt."""
    _check_mode(mode)
    if mode in ("fr", "fr-diff"):
        has = data.samples.ref[rows] >= 0
        if not has.any():
            raise FeatcacheError(f"--mode {mode}: no sample of this selection has an image prompt; "
                                 "use --mode pr (or nr), or --subset i2i")
        return rows[has]
    return rows


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise unknown_name("mode", mode, MODES)


def design_matrix(data: CacheData, mode: str, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(X, sample indices) for `mode` over the samples in `rows` (all by default); FR drops prompt-less samples."""
    rows = mode_rows(data, mode, np.arange(len(data.samples)) if rows is None else np.asarray(rows))
    gen, ref = data.samples.gen[rows], data.samples.ref[rows]
    has = ref >= 0
    needed = np.concatenate([gen, ref[has]])
    missing = ~data.done[needed]
    if missing.any():
        key = data.samples.image_keys[needed[np.argmax(missing)]]
        raise FeatcacheError(f"{data.path}: {int(missing.sum())} rows of {data.backbone_id} needed here are not "
                             f"extracted yet (first: {key}); run `featcache extract` to finish them")
    x = features_for_mode(data.emb[gen], data.emb[np.where(has, ref, 0)], has, mode)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise FeatcacheError(f"{data.path}: {int(bad.sum())} feature rows of {data.backbone_id} hold NaN or inf "
                             f"(first sample: {data.samples.key[rows[np.argmax(bad)]]}); re-extract them")
    return x, rows


def features_for_mode(g: np.ndarray, p: np.ndarray, has: np.ndarray, mode: str) -> np.ndarray:
    """The mode's input from generated features g, prompt features p (any value where `has` is False)."""
    g = g.astype(np.float64)
    p = np.where(has[:, None], p, 0.0).astype(np.float64)
    if mode == "nr":
        x = g
    elif mode == "fr":
        x = np.concatenate([g, p], axis=1)
    elif mode == "pr":
        x = np.where(has[:, None], (g + p) / 2.0, g)
    elif mode == "fr-diff":
        x = np.concatenate([g, p, np.abs(g - p)], axis=1)
    else:  # pr-diff
        diff = np.where(has[:, None], np.abs(g - p), 0.0)
        x = np.concatenate([g, p, diff, has[:, None].astype(np.float64)], axis=1)
    return x


def label_codes(data: CacheData, rows: np.ndarray) -> np.ndarray:
    """The label-only floors' input: integer codes of (generator) and (group, generator), as a 2-column matrix."""
    samples = data.samples
    _, generator_code = np.unique(samples.generator, return_inverse=True)
    siblings = np.char.add(np.char.add(samples.group.astype(str), "\x1f"), samples.generator.astype(str))
    _, sibling_code = np.unique(siblings, return_inverse=True)
    return np.stack([generator_code[rows], sibling_code[rows]], axis=1).astype(np.float64)
