"""One backbone's cached features with the samples and labels: what stage 2 reads (no image is opened again)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featcache.errors import FeatcacheError, unknown_name
from featcache.store import CachedSamples, backbone_ids, open_read, read_samples


MAX_LABEL = 1e100


@dataclass
class CacheData:
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
        values = self.samples.targets[name]
        check_finite_labels(self.path, {name: values}, self.samples.key)
        peak = float(np.max(np.abs(values))) if len(values) else 0.0
        if peak > MAX_LABEL:
            row = int(np.argmax(np.abs(values)))
            raise FeatcacheError(f"{self.path}: target {name} reaches {peak:.3g} (sample {self.samples.key[row]}); "
                                 f"squares of labels above {MAX_LABEL:.0e} overflow: rescale the column")
        return values


def check_finite_labels(path: str, targets: dict, keys: np.ndarray) -> None:
    """Labels that are NaN or infinite (a cache edited by hand, or written by another program) are refused on load:
    every head fails on them (the SVR with a traceback) and the floors report garbage as failed folds."""
    for name, values in targets.items():
        bad = np.flatnonzero(~np.isfinite(np.asarray(values, dtype=np.float64)))
        if len(bad):
            i = int(bad[0])
            more = f" ({len(bad)} samples in all)" if len(bad) > 1 else ""
            raise FeatcacheError(f"{path}: sample {keys[i]}: target {name} is {float(values[i])}, not a finite "
                                 f"number{more}; the cache's labels were edited: pass --labels annotation to fit the "
                                 "annotation's labels")


def short_forms(bid: str) -> set[str]:
    """`tf_efficientnet_lite0.in1k/multilevel/224` answers to its arch, arch.tag, and either with the pooling."""
    full_arch, pool, _size = (bid.split("/") + ["", ""])[:3]
    arch = full_arch.split(".")[0]
    forms = {full_arch, arch, f"{full_arch}/{pool}", f"{arch}/{pool}"}
    return forms


def resolve_backbone_id(ids: list[str], wanted: str | None, path: str) -> str:
    """An exact id, a registry name (`vgg19`, `lite0/multilevel`), an arch, or a unique prefix; else the only one."""
    if not ids:
        raise FeatcacheError(f"{path} holds no features yet; run `featcache extract --backbone NAME` first")
    if wanted is None:
        if len(ids) == 1:
            return ids[0]
        raise FeatcacheError(f"{path} holds several backbones; pass --backbone with one of: {', '.join(ids)}")
    if wanted in ids:
        return wanted
    from featcache.backbones import BACKBONES

    name, _, pool = wanted.partition("/")
    arch = BACKBONES[name].arch if name in BACKBONES else name
    wanted_forms = {f"{arch}/{pool}" if pool else arch, wanted}
    matches = [i for i in ids if short_forms(i) & wanted_forms]
    if not matches:
        matches = [i for i in ids if i.startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise FeatcacheError(f"--backbone {wanted!r} matches several ids in {path}: {', '.join(matches)}; "
                             "add the pooling (e.g. lite0/multilevel) or pass the full id")
    raise unknown_name("backbone", wanted, ids, f" in {path}",
                       aliases={form: i for i in ids for form in short_forms(i)})


def backbone_query(name: str | None, pool: str | None) -> str | None:
    """`featcache.toml` may say backbone = "lite0" and pool = "multilevel": together they name one id."""
    if name and pool and "/" not in name:
        return f"{name}/{pool}"
    return name


def cached_backbone_ids(path: str) -> list[str]:
    with open_read(path) as f:
        return backbone_ids(f)


def load_cache(path: str, backbone: str | None = None, labels_only: bool = False,
               check_labels: bool = True) -> CacheData:
    """Samples, labels and one backbone's rows. `labels_only` (floors only) reads no features at all.
    `check_labels`: refuse labels that are not finite (False: the caller replaces them with the annotation's)."""
    with open_read(path) as f:
        ids = backbone_ids(f)
        if labels_only:
            samples = read_samples(f)
            if check_labels:
                check_finite_labels(str(path), samples.targets, samples.key)
            bid = resolve_backbone_id(ids, backbone, path) if ids and (backbone or len(ids) == 1) else ""
            m = len(samples.image_keys)
            return CacheData(str(path), bid, samples, np.zeros((m, 0), np.float32), np.zeros(m, bool))
        bid = resolve_backbone_id(ids, backbone, path)
        group = f[f"features/{bid}"]  # open_read checked its shapes: (images, dim) and (images,)
        samples = read_samples(f)
        check_sample_rows(str(path), samples)
        if check_labels:
            check_finite_labels(str(path), samples.targets, samples.key)
        return CacheData(str(path), bid, samples, group["emb"][()], group["done"][()])


def check_sample_rows(path: str, samples: CachedSamples) -> None:
    """Every sample table as long as /samples/key, and every image index (gen, ref) a row of /images (ref -1: no
    image prompt); else one line, before any row of the features is indexed."""
    n, images = len(samples.key), len(samples.image_keys)
    columns = {"group": samples.group, "generator": samples.generator, "subset": samples.subset,
               "text_prompt": samples.text_prompt, "gen": samples.gen, "ref": samples.ref, **samples.targets}
    for name, values in columns.items():
        if np.shape(values) != (n,):
            raise FeatcacheError(f"{path}: the cache's table {name} has shape {np.shape(values)}, expected ({n},) "
                                 "like /samples/key; the cache is damaged: extract it again")
    for name, values, low in (("gen", samples.gen, 0), ("ref", samples.ref, -1)):
        if not np.issubdtype(np.asarray(values).dtype, np.integer):
            raise FeatcacheError(f"{path}: /samples/{name} holds {np.asarray(values).dtype}, not image indices; the "
                                 "cache is damaged: extract it again")
        if n and (values.min() < low or values.max() >= images):
            raise FeatcacheError(f"{path}: /samples/{name} points outside the {images} rows of /images; the cache is "
                                 "damaged: extract it again")
