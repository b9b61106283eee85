"""Merge shard caches (extracted on separate machines) into one cache equal to an unsharded run."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from featcache.errors import FeatcacheError
from featcache.store import backbone_ids, compare_configs, ensure_features, lock_cache, open_read, open_write

COPY_ROWS = 4096


@dataclass
class MergeResult:
    out: str
    rows: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (rows done, rows total)


def merge(shards: list[str | Path], out: str | Path) -> MergeResult:
    """Copy every done row of every shard into `out` (created from the first shard, or extended if present)."""
    if not shards:
        raise FeatcacheError("merge needs at least one shard cache")
    out = Path(out)
    if any(Path(s).resolve() == out.resolve() for s in shards):
        raise FeatcacheError(f"{out}: --out must not be one of the shards")
    sources = [open_read(s) for s in shards]
    try:
        first = sources[0]
        for path, f in zip(shards, sources):
            for attr in ("manifest_sha256", "samples_sha256"):
                if f.attrs[attr] != first.attrs[attr]:
                    raise FeatcacheError(f"{path} was built from other images or labels than {shards[0]}")
        with lock_cache(out):
            if not out.exists():
                _copy_tables(first, out)
            result = MergeResult(str(out))
            with open_write(out) as target:
                if target.attrs["manifest_sha256"] != first.attrs["manifest_sha256"]:
                    raise FeatcacheError(f"{out} exists and was built from other images than the shards")
                for bid in sorted({b for f in sources for b in backbone_ids(f)}):
                    result.rows[bid] = _merge_backbone(bid, shards, sources, target, out)
        return result
    finally:
        for f in sources:
            f.close()


def _copy_tables(source: h5py.File, out: Path) -> None:
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(dict(source.attrs))
            for name in ("images", "samples", "targets"):
                source.copy(source[name], f, name=name)
            f.create_group("features")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


def _merge_backbone(bid: str, names, sources, target: h5py.File, out: Path) -> tuple[int, int]:
    holders = [(n, f) for n, f in zip(names, sources) if f"features/{bid}/emb" in f]
    config = json.loads(holders[0][1][f"features/{bid}"].attrs["config_json"])
    for name, f in holders[1:]:
        differing = compare_configs(json.loads(f[f"features/{bid}"].attrs["config_json"]), config)
        if differing:
            raise FeatcacheError(f"{name}: backbone {bid} was extracted with another configuration "
                                 f"({', '.join(differing)} differ) than in {holders[0][0]}")
    source_group = holders[0][1][f"features/{bid}"]
    provenance = json.loads(source_group.attrs["provenance_json"])
    provenance["merged_from"] = [str(n) for n, _ in holders]
    group = ensure_features(target, config, int(source_group.attrs["dim"]), provenance, out)
    done = group["done"][()]
    for _, f in holders:
        shard_done = f[f"features/{bid}/done"][()]
        emb = f[f"features/{bid}/emb"]
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
