"""How a cache relates to the images and annotation on disk now: which rows stay valid, which images changed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from featcache.samples import SampleTable
from featcache.store import backbone_ids, image_hashes, image_stats, open_read


@dataclass
class CacheComparison:
    """How the current annotation and image files relate to a cache."""

    same: bool
    reasons: list[str]
    row_map: np.ndarray  # new image index -> old image index whose features stay valid, or -1
    has_features: bool
    root_changed: bool
    images_changed: int  # images under the same name whose size or modification time differ


def rows_with_features(f: h5py.File) -> np.ndarray:
    """(images,) bool: rows marked done in at least one backbone."""
    any_done = np.zeros(len(f["images/key"]), dtype=bool)
    for bid in backbone_ids(f):
        any_done |= f[f"features/{bid}/done"][()]
    return any_done


def _compared_by(verify: bool) -> str:
    return "content or, where no hash is stored, size or modification time" if verify else \
        "size or modification time; --verify compares contents"


def changed_on_disk(f: h5py.File, root: str | Path, paths: list[str], row_map: np.ndarray, used: np.ndarray,
                    verify: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(changed, missing), both (len(paths),) bool, for the `used` paths (`paths[i]` is row `row_map[i]` of the
    cache, which must hold /images/size and /images/mtime_ns): changed, its size or modification time differ from
    the recorded ones (with `verify`, its sha256 where one is recorded: a full read); missing, the file is missing or
    empty (not a change: extract refuses it if its row is needed). Without `verify`, one stat per path, no read."""
    old_size, old_mtime = f["images/size"][()], f["images/mtime_ns"][()]
    size, mtime = image_stats(root, paths)
    differs = np.zeros(len(paths), dtype=bool)
    differs[used] = ((size[used] != old_size[row_map[used]]) | (mtime[used] != old_mtime[row_map[used]])) \
        & (size[used] > 0)
    if verify and "images/sha256" in f:
        stored = f["images/sha256"][()]
        hashed = used & (stored[np.maximum(row_map, 0)] != b"") & (size > 0)
        if hashed.any():
            rows = np.flatnonzero(hashed)
            now = image_hashes(root, [paths[i] for i in rows])
            differs[rows] = now != stored[row_map[rows]]
    return differs, used & (size <= 0)


@dataclass
class ImagesOnDisk:
    """How the images that have features compare with their files under the cache's root (`images_on_disk`)."""

    root: str
    root_missing: bool = False
    changed: int = 0
    first_changed: str = ""
    missing: int = 0
    first_missing: str = ""

    def changed_line(self) -> str:
        return (f"{self.changed} images changed on disk since their features were extracted (size or modification "
                f"time; first: {self.first_changed}); run featcache extract to update their features") \
            if self.changed else ""

    def missing_line(self) -> str:
        return (f"{self.missing} images with features are missing or empty under {self.root} (first: "
                f"{self.first_missing}); their features are kept") if self.missing else ""

    def root_missing_line(self) -> str:
        return f"images not compared with their files ({self.root}, where they were extracted, is not there)" \
            if self.root_missing else ""


def images_on_disk(path: str | Path, root: str | Path | None = None) -> ImagesOnDisk | None:
    """Compare the images that have features with their files under `root` (the dataset root this invocation found,
    as the labels check finds its annotation; by default the cache's recorded root) by size and modification time:
    one stat per image, no image read (sha256 is compared only by `extract --verify`). None for a version 1 cache
    (nothing recorded)."""
    with open_read(path) as f:
        if "images/size" not in f or "images/mtime_ns" not in f:
            return None
        result = ImagesOnDisk(str(Path(root).resolve()) if root is not None else str(f.attrs.get("root", "")))
        if not result.root or not Path(result.root).is_dir():
            result.root_missing = True
            return result
        paths = f["images/path"].asstr()[()].tolist()
        used = rows_with_features(f)
        changed, missing = changed_on_disk(f, result.root, paths, np.arange(len(paths)), used)
    if changed.any():
        result.changed, result.first_changed = int(changed.sum()), paths[int(np.flatnonzero(changed)[0])]
    if missing.any():
        result.missing, result.first_missing = int(missing.sum()), paths[int(np.flatnonzero(missing)[0])]
    return result


def compare_with_cache(f: h5py.File, samples: SampleTable, root: str | Path, verify: bool = False) -> CacheComparison:
    """With `verify`, images whose content hash is stored are compared by content (sha256) instead of size and
    modification time, so a copy of the dataset elsewhere (new times, same bytes) is recognised."""
    paths, _, _ = samples.distinct_images()
    old_paths = f["images/key"].asstr()[()].tolist()
    index = {p: i for i, p in enumerate(old_paths)}
    row_map = np.array([index.get(p, -1) for p in paths], dtype=np.int64)
    reasons = []
    root_changed = str(Path(root).resolve()) != str(f.attrs.get("root", ""))
    any_done = rows_with_features(f)
    has_features = bool(any_done.any())
    changed = 0
    known = row_map >= 0
    used = np.zeros(len(paths), dtype=bool)
    used[known] = any_done[row_map[known]]  # only images with features can go stale
    if "images/size" in f and "images/mtime_ns" in f:
        differs, _ = changed_on_disk(f, root, paths, row_map, used, verify)
        changed = int(differs.sum())
        if changed:
            first = paths[int(np.flatnonzero(differs)[0])]
            reasons.append(f"{changed} images changed on disk since their features were written "
                           f"({_compared_by(verify)}; first: {first})")
            row_map[differs] = -1
    elif root_changed and used.any():  # a version 1 cache: pixels cannot be compared; another root is other images
        changed = int(used.sum())
        row_map[:] = -1
    if root_changed and changed:
        reasons.insert(0, f"the images are under {Path(root).resolve()}, not {f.attrs.get('root', '')}")
    added, removed = int((np.array([p not in index for p in paths])).sum()), len(set(old_paths) - set(paths))
    if added or removed:
        reasons.append(f"the image list changed ({added} added, {removed} removed)")
    if f.attrs.get("samples_sha256") != samples.samples_hash() and not (added or removed):
        reasons.append(f"the labels or rows of {Path(samples.source).name} changed")
    same = not reasons and f.attrs.get("manifest_sha256") == samples.manifest_hash()
    return CacheComparison(same, reasons, row_map, has_features, root_changed, changed)


def refresh_image_stats(f: h5py.File, root: str | Path, rows: list[int], verify: bool = False) -> None:
    """Record the current size and mtime (and with `verify` the sha256) of the images about to be extracted
    (in place: fixed-size datasets)."""
    if "images/size" not in f or not rows:
        return
    paths = f["images/key"].asstr()[()]
    chosen = [paths[i] for i in rows]
    size, mtime = image_stats(root, chosen)
    index = np.asarray(rows)
    order = np.argsort(index)
    f["images/size"][index[order]] = size[order]
    f["images/mtime_ns"][index[order]] = mtime[order]
    if verify and "images/sha256" in f:
        f["images/sha256"][index[order]] = image_hashes(root, chosen)[order]
    f.flush()

