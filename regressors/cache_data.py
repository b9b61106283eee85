"""One backbone's cached features (or several fused: `A+B`) with the samples and labels: what stage 2 reads (no
image is opened again)."""

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
    parts: tuple[str, ...] = ()  # a fusion's backbone ids, in order (empty: one backbone)
    part_dims: tuple[int, ...] = ()  # the width of each part's block of `emb`
    weigh_blocks: bool = True  # False: a fusion's blocks are only standardised per feature, not weighted

    @property
    def blocks(self) -> tuple[int, ...] | None:
        """The per-image feature's block widths when it fuses several backbones and `weigh_blocks` (the estimators
        weight each block to equal total variance, `regressors.preprocess.block_weights`); else None."""
        return tuple(self.part_dims) if len(self.parts) > 1 and self.weigh_blocks else None

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


FUSE = "+"  # joins the parts of a fused backbone: `lite0/multilevel/224+lite0/multilevel/native`


def short_forms(bid: str) -> set[str]:
    """`tf_efficientnet_lite0.in1k/multilevel/native` answers to its arch, arch.tag, either with the pooling, and
    either with the pooling and the view (`tf_efficientnet_lite0/multilevel/native`)."""
    full_arch, pool, view = (bid.split("/") + ["", ""])[:3]
    arch = full_arch.split(".")[0]
    forms = {full_arch, arch, f"{full_arch}/{pool}", f"{arch}/{pool}"}
    if view:
        forms |= {f"{full_arch}/{pool}/{view}", f"{arch}/{pool}/{view}"}
    return forms


def is_fusion(wanted: str | None) -> bool:
    return bool(wanted) and FUSE in wanted


def resolve_backbone_id(ids: list[str], wanted: str | None, path: str) -> str:
    """An exact id, a registry name (`vgg19`, `lite0/multilevel`, `lite0/multilevel/native`), an arch, or a unique
    prefix; else the only one. A fusion `A+B` resolves each part (`resolve_fusion`) and returns the parts' full
    ids joined by '+'."""
    if not ids:
        raise FeatcacheError(f"{path} holds no features yet; run `featcache extract --backbone NAME` first")
    if wanted is None:
        if len(ids) == 1:
            return ids[0]
        raise FeatcacheError(f"{path} holds several backbones; pass --backbone with one of: {', '.join(ids)}")
    if wanted in ids:
        return wanted
    if is_fusion(wanted):
        return FUSE.join(resolve_fusion(ids, wanted, path))
    matches = _matches(ids, wanted)
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise FeatcacheError(f"--backbone {wanted!r} matches several ids in {path}: {', '.join(matches)}; "
                             f"{_narrower(wanted, matches)}")
    raise unknown_name("backbone", wanted, ids, f" in {path}",
                       aliases={form: i for i in ids for form in short_forms(i)})


def _matches(ids: list[str], wanted: str) -> list[str]:
    """The ids a short form names (`short_forms`, a registry name standing for its arch), else those it prefixes."""
    from featcache.backbones import BACKBONES

    name, _, rest = wanted.partition("/")
    arch = BACKBONES[name].arch if name in BACKBONES else name
    wanted_forms = {f"{arch}/{rest}" if rest else arch, wanted}
    matches = [i for i in ids if short_forms(i) & wanted_forms]
    return matches or [i for i in ids if i.startswith(wanted)]


def _narrower(wanted: str, matches: list[str]) -> str:
    """What to add to a short form that names several ids: the view where they differ in the view only (e.g.
    lite0/multilevel/native), else the pooling."""
    pools = {(m.split("/") + [""])[1] for m in matches}
    if len(pools) == 1 and wanted.count("/") <= 1:
        pool = next(iter(pools))
        stem = wanted if "/" in wanted else f"{wanted}/{pool}"
        views = [(m.split("/") + ["", ""])[2] for m in matches]
        return "add the view (" + " or ".join(f"{stem}/{v}" for v in views) + ") or pass the full id"
    name = wanted.split("/")[0]
    example = "/".join([name, *(matches[0].split("/") + ["", ""])[1:3]])
    return f"add the pooling and view (e.g. {example}) or pass the full id"


def resolve_fusion(ids: list[str], wanted: str, path: str) -> list[str]:
    """The full ids of each part of `A+B[+C]`, in the order given, each resolved as `resolve_backbone_id` resolves
    one name against the same cache. An empty part, a part that is missing or names several ids, and two parts
    naming one id are one-line errors."""
    names = [part.strip() for part in wanted.split(FUSE)]
    if any(not part for part in names):
        raise FeatcacheError(f"--backbone {wanted!r}: an empty part; write the fused backbones as A+B (e.g. "
                             "lite0/multilevel/224+lite0/multilevel/native)")
    resolved = []
    for part in names:
        try:
            resolved.append(resolve_backbone_id(ids, part, path))
        except FeatcacheError as exc:
            missing = "" if part in ids or _matches(ids, part) else (
                f"; extract it into {path} (`featcache extract --backbone NAME`) or fuse only backbones it holds")
            raise FeatcacheError(f"--backbone {wanted!r}: part {part!r}: {exc}{missing}") from None
    seen: dict[str, str] = {}
    for part, bid in zip(names, resolved):
        if bid in seen:
            raise FeatcacheError(f"--backbone {wanted!r}: {seen[bid]!r} and {part!r} both name {bid}; name each "
                                 "backbone once")
        seen[bid] = part
    return resolved


def backbone_query(name: str | None, pool: str | None) -> str | None:
    """`featcache.toml` may say backbone = "lite0" and pool = "multilevel": together they name one id (for a
    fusion, the pooling goes to each part that names none)."""
    if name and pool:
        return FUSE.join(part if "/" in part else f"{part}/{pool}" for part in name.split(FUSE))
    return name


def cached_backbone_ids(path: str) -> list[str]:
    with open_read(path) as f:
        return backbone_ids(f)


def load_cache(path: str, backbone: str | None = None, labels_only: bool = False,
               check_labels: bool = True) -> CacheData:
    """Samples, labels and one backbone's rows, or a fusion's (`A+B`: each part's rows concatenated per image in
    the order given, `backbone_id` the parts' full ids joined by '+'; `fused_features` says what is refused).
    `labels_only` (floors only) reads no features at all. `check_labels`: refuse labels that are not finite
    (False: the caller replaces them with the annotation's)."""
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
        parts = bid.split(FUSE) if bid not in ids else [bid]
        samples = read_samples(f)
        check_sample_rows(str(path), samples)
        if check_labels:
            check_finite_labels(str(path), samples.targets, samples.key)
        if len(parts) == 1:
            group = f[f"features/{bid}"]  # open_read checked its shapes: (images, dim) and (images,)
            return CacheData(str(path), bid, samples, group["emb"][()], group["done"][()])
        emb, done = fused_features(str(path), [(p, f[f"features/{p}/emb"], f[f"features/{p}/done"][()])
                                               for p in parts], samples.image_keys)
        return CacheData(str(path), bid, samples, emb, done, tuple(parts),
                         tuple(int(f[f"features/{p}/emb"].shape[1]) for p in parts))


def fused_features(path: str, parts: list[tuple], image_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(emb, done) of a fusion: `parts` are (id, emb dataset, done flags); the rows are concatenated per image in
    that order. Parts of different row counts, or whose done flags differ (an image extracted in one part and not
    in another), are a one-line error naming the part to extract."""
    first, first_emb, first_done = parts[0]
    for bid, emb, done in parts[1:]:
        if emb.shape[0] != first_emb.shape[0] or len(done) != len(first_done):
            raise FeatcacheError(f"{path}: {bid} has {emb.shape[0]} rows and {first} {first_emb.shape[0]}; the "
                                 "cache is damaged: extract it again")
        differ = np.flatnonzero(done != first_done)
        if len(differ):
            row = int(differ[0])
            short, other = (bid, first) if first_done[row] else (first, bid)
            raise FeatcacheError(f"{path}: {len(differ)} images are extracted in {other} but not in {short} (first: "
                                 f"{image_keys[row]}); finish the extraction of {short} (`featcache extract` with "
                                 "its options) before fusing")
    return np.concatenate([emb[()] for _, emb, _ in parts], axis=1), first_done.copy()


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
