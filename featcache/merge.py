"""Merge shard caches (extracted on separate machines) into one cache equal to an unsharded run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from featcache.errors import FeatcacheError
from featcache.atomic_write import atomic_h5, real_path, remove_stale_temporaries
from featcache.cache_lock import lock_cache
from featcache.cache_rewrite import NewBackbone, add_backbones
from featcache.store import (
    COPY_ROWS,
    backbone_ids,
    check_config,
    check_is_cache_file,
    compare_configs,
    open_read,
    open_write,
    read_attr,
)


@dataclass
class MergeResult:
    out: str
    rows: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (rows done, rows total)


def merge(shards: list[str | Path], out: str | Path) -> MergeResult:
    """Copy every done row of every shard into `out` (created from the first shard, or extended if present).

    `out` is only changed structurally by writing a new file and renaming it in (`featcache.atomic_write`)."""
    if not shards:
        raise FeatcacheError("merge needs at least one shard cache")
    name = Path(out)
    out = real_path(out)
    if any(real_path(s) == out for s in shards):
        raise FeatcacheError(f"{name}: --cache must not be one of the shards")
    if out.exists():
        check_is_cache_file(name)  # not HDF5, or HDF5 but not a cache: a one-line error before anything is written
    sources = [open_read(s) for s in shards]
    try:
        first = sources[0]
        for path, f in zip(shards, sources):
            for attr in ("manifest_sha256", "samples_sha256"):
                value = read_attr(f, attr, str, path, None)
                if value is None or value != read_attr(first, attr, str, shards[0], None):
                    raise FeatcacheError(f"{path} was built from other images or labels than {shards[0]}")
        wanted = sorted({b for f in sources for b in backbone_ids(f)})
        configs = {bid: _agreed_config(bid, shards, sources) for bid in wanted}  # shards that disagree: refused
        try:  # before anything is written, not even --out's folder
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FeatcacheError(f"{name}: cannot create the folder {out.parent} ({exc.strerror})") from None
        with lock_cache(name):
            remove_stale_temporaries(out)
            present: set[str] = set()
            if out.exists():
                with open_read(out) as target:
                    if read_attr(target, "manifest_sha256", str, name, None) != \
                            read_attr(first, "manifest_sha256", str, shards[0], None):
                        raise FeatcacheError(f"{name} exists and was built from other images than the shards")
                    if target["images/key"].shape != first["images/key"].shape:
                        raise FeatcacheError(f"{name} exists and holds {len(target['images/key'])} images, "
                                             f"{shards[0]} {len(first['images/key'])}")
                    present = set(backbone_ids(target))
                    for bid in sorted(present & set(wanted)):
                        check_config(target, bid, configs[bid], name, advise_options=False)
            else:
                _copy_tables(first, out)
            result = MergeResult(str(name))
            new = [_new_backbone(bid, shards, sources) for bid in wanted if bid not in present]
            if new:
                add_backbones(out, new)
            with open_write(out) as target:
                for bid in wanted:
                    result.rows[bid] = _merge_backbone(bid, shards, sources, target)
                _merge_image_hashes(sources, target)
        return result
    finally:
        for f in sources:
            f.close()


def _copy_tables(source: h5py.File, out: Path) -> None:
    with atomic_h5(out, "creating the merged cache") as f:
        f.attrs.update(dict(source.attrs))
        for name in ("images", "samples", "targets"):
            source.copy(source[name], f, name=name)
        f.create_group("features")


def _holders(bid: str, names, sources) -> list:
    holders = [(n, f) for n, f in zip(names, sources) if bid in backbone_ids(f)]
    config = _config(holders[0][1], bid)
    shape = holders[0][1][f"features/{bid}/emb"].shape
    for name, f in holders[1:]:
        if f[f"features/{bid}/emb"].shape != shape:  # open_read checked each against its own /images
            raise FeatcacheError(f"{name}: /features/{bid}/emb has shape {f[f'features/{bid}/emb'].shape}, expected "
                                 f"{shape} as in {holders[0][0]}; the shards do not hold the same images")
        differing = compare_configs(_config(f, bid), config)
        if differing:
            raise FeatcacheError(f"{name}: backbone {bid} was extracted with another configuration "
                                 f"({', '.join(differing)} differ) than in {holders[0][0]}")
    return holders


def _agreed_config(bid: str, names, sources) -> dict:
    """The configuration of `bid`, which every shard holding it must share."""
    holders = _holders(bid, names, sources)
    return _config(holders[0][1], bid)


def _config(f: h5py.File, bid: str) -> dict:
    """The configuration `bid` was extracted with, as recorded (a cache open_read accepted holds it as a JSON
    object)."""
    return json.loads(read_attr(f[f"features/{bid}"], "config_json", str, f.filename))


def _merge_image_hashes(sources, target: h5py.File) -> None:
    """The images' content hashes (`extract --verify`): each shard hashed the images it extracted, so each fills
    the hashes still empty (the first shard's tables alone held a fraction of them)."""
    if "images/sha256" not in target:
        return
    hashes = target["images/sha256"][()]
    for f in sources:
        if "images/sha256" in f and len(f["images/sha256"]) == len(hashes):
            theirs = f["images/sha256"][()]
            fill = (hashes == b"") & (theirs != b"")
            hashes[fill] = theirs[fill]
    target["images/sha256"][...] = hashes
    target.flush()


def _new_backbone(bid: str, names, sources) -> NewBackbone:
    holders = _holders(bid, names, sources)
    group = holders[0][1][f"features/{bid}"]
    provenance = json.loads(read_attr(group, "provenance_json", str, holders[0][0]))
    provenance["merged_from"] = [str(n) for n, _ in holders]
    return NewBackbone(config=_config(holders[0][1], bid), dim=read_attr(group, "dim", int, holders[0][0]),
                       provenance=provenance)


def _merge_backbone(bid: str, names, sources, target: h5py.File) -> tuple[int, int]:
    holders = _holders(bid, names, sources)
    group = target[f"features/{bid}"]
    done = group["done"][()]
    for name, f in holders:
        emb = f[f"features/{bid}/emb"]
        if emb.shape != group["emb"].shape:  # open_read checked each against its own /images
            raise FeatcacheError(f"{name}: /features/{bid}/emb has shape {emb.shape}, expected "
                                 f"{group['emb'].shape} as in the merged cache; re-extract this shard")
        shard_done = f[f"features/{bid}/done"][()]
        for start in range(0, len(done), COPY_ROWS):
            stop = min(start + COPY_ROWS, len(done))
            new = shard_done[start:stop] & ~done[start:stop]
            if not new.any():
                continue
            rows = start + np.flatnonzero(new)
            group["emb"][rows] = emb[rows]
            target.flush()
            group["done"][rows] = True
            target.flush()
            done[rows] = True
    return int(done.sum()), len(done)
