"""Structural changes of a cache, each a complete new file renamed over the old one (`atomic_h5`): adding
backbones, following a changed image list or annotation, dropping half-created backbones. Call with the cache's
lock held (`featcache.cache_lock.lock_cache`)."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from featcache.atomic_write import atomic_h5, check_free_space, real_path
from featcache.errors import FeatcacheError, FeatcacheWarning
from featcache.image_changes import CacheComparison, compare_with_cache
from featcache.samples import SampleTable
from featcache.store import (
    COPY_ROWS,
    backbone_ids,
    create_cache,
    create_feature_datasets,
    feature_bytes,
    open_read,
    read_attr,
    write_tables,
)


@dataclass(kw_only=True)
class NewBackbone:
    """A backbone to add to a cache: its configuration (with its `id`), feature dimension, provenance and any extra
    group attributes (e.g. `shard`). Its `emb` and `done` datasets are allocated in full."""

    config: dict
    dim: int
    provenance: dict
    attrs: dict = field(default_factory=dict)


def rewrite_cache(path: str | Path, *, add: list[NewBackbone] = (),
                  samples: SampleTable | None = None, root: str | Path | None = None,
                  row_map: np.ndarray | None = None, command: str = "", options: dict | None = None,
                  what: str = "adding a backbone", repairing: bool = False) -> None:
    """Write a new cache next to `path` and rename it in (call with the lock held); `what` names the change in a
    refusal for lack of space (checked first) or a full-disk error.

    The new file holds every complete backbone of `path` (half-created ones are left out) plus the backbones `add`.
    With `samples`, the tables are rebuilt from them and backbone rows are carried over through `row_map` (new image
    index -> old index or -1); rows not carried over are extracted again. `repairing`: `path` may hold links
    under /features (`featcache.store.open_read`); they are left out like half-created backbones."""
    path = real_path(path)
    with open_read(path, repairing) as src:  # a self-contained cache: only its own data is copied
        keep = backbone_ids(src)
        rows = len(samples.distinct_images()[0]) if samples is not None else len(src["images/key"])
        needed = sum(feature_bytes(rows, read_attr(src[f"features/{b}"], "dim", int, path)) for b in keep)
        needed += sum(feature_bytes(rows, n.dim) for n in add) + (1 << 20)
        check_free_space(path, needed, what)
        with atomic_h5(path, what) as dst:
            if samples is None:
                for key, value in src.attrs.items():
                    dst.attrs[key] = value
                for name in ("images", "samples", "targets"):
                    src.copy(src[name], dst, name=name)
                dst.create_group("features")
            else:
                write_tables(dst, samples, root, command, options)
                if "images/sha256" in src:  # the content hashes of the images kept
                    kept = np.flatnonzero(row_map >= 0)
                    hashes = dst["images/sha256"][()]
                    hashes[kept] = src["images/sha256"][()][row_map[kept]]
                    dst["images/sha256"][...] = hashes
            for bid in keep:
                parent, _, leaf = f"features/{bid}".rpartition("/")
                if samples is None:
                    src.copy(src[f"features/{bid}"], dst.require_group(parent), name=leaf)
                else:
                    _carry_rows(src, dst, bid, row_map)
            for new in add:
                create_feature_datasets(dst, new.config, new.dim, new.provenance, new.attrs)


def _carry_rows(src: h5py.File, dst: h5py.File, bid: str, row_map: np.ndarray) -> None:
    old = src[f"features/{bid}"]
    config = json.loads(read_attr(old, "config_json", str, src.filename))
    extra = {k: read_attr(old, k, str, src.filename) for k in old.attrs if k == "shard"}
    group = create_feature_datasets(dst, config, read_attr(old, "dim", int, src.filename),
                                     json.loads(read_attr(old, "provenance_json", str, src.filename)), extra)
    old_done = old["done"][()]
    for start in range(0, len(row_map), COPY_ROWS):
        new_rows = np.arange(start, min(start + COPY_ROWS, len(row_map)))
        sources = row_map[new_rows]
        usable = sources >= 0
        usable[usable] = old_done[sources[usable]]
        if not usable.any():
            continue
        dst_rows, src_rows = new_rows[usable], sources[usable]
        uniq, inverse = np.unique(src_rows, return_inverse=True)
        block = old["emb"][int(uniq[0]):int(uniq[-1]) + 1]  # one contiguous read
        group["emb"][dst_rows] = block[uniq - uniq[0]][inverse]
        group["done"][dst_rows] = True


def add_backbones(path: str | Path, new: list[NewBackbone]) -> None:
    """Add backbones to an existing cache by writing a new file (the existing one is never changed in structure)."""
    rewrite_cache(path, add=new, what=f"adding {', '.join(n.config['id'] for n in new)}")


def bring_up_to_date(path: str | Path, samples: SampleTable, root: str | Path, command: str = "",
                     options: dict | None = None, verify: bool = False,
                     state: CacheComparison | None = None) -> None:
    """Make the cache at `path` describe `samples` (call with the lock held).

    Same images and labels: nothing to do. A cache without features yet: replaced. Images under another root whose
    files differ: refused (another dataset). Otherwise (rows added or removed, images changed, labels edited): the
    cache is rebuilt with the new tables, keeping the rows of every unchanged image. `state`: the comparison of this
    very file (unchanged since) with `samples`, when the caller already made it; else it is made here."""
    if state is None:
        with open_read(path) as f:
            state = compare_with_cache(f, samples, root, verify)
    if state.same:
        return
    why = "; ".join(state.reasons)
    if not state.has_features:
        warnings.warn(f"{path}: {why}; the cache held no features yet, so it is replaced", FeatcacheWarning,
                      stacklevel=2)
        create_cache(path, samples, root, command, options)
        return
    if state.root_changed and state.images_changed:
        raise FeatcacheError(f"{path} was built from another list of images than {Path(samples.source).name} "
                             f"({why}); use another --cache")
    kept = int((state.row_map >= 0).sum())
    warnings.warn(f"{path}: {why}; the cache now follows {Path(samples.source).name}, keeping the features of "
                  f"{kept} unchanged images", FeatcacheWarning, stacklevel=2)
    rewrite_cache(path, samples=samples, root=root, row_map=state.row_map, command=command, options=options,
                  what="updating the image list")


