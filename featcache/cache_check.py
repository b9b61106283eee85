"""`featcache info --check` and `featcache repair`: what is wrong with a cache, and the repairs that keep every
complete backbone."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from featcache.atomic_write import remove_stale_temporaries
from featcache.cache_lock import lock_cache
from featcache.cache_rewrite import rewrite_cache
from featcache.errors import FeatcacheError
from featcache.store import COPY_ROWS, open_read, open_write, read_attr, walk_backbones
from featcache.untrusted import printable


def check_cache(path: str | Path, require_complete: bool = False) -> list[str]:
    """Problems of a cache: half-created backbones, missing attributes, wrong shapes, `done` rows not finite, and
    with `require_complete` (`info --check`) rows not extracted yet (an interrupted run, a shard not merged). A
    cache that is not self-contained, or whose attributes cannot be read at all, is a one-line FeatcacheError."""
    try:
        return _problems(path, require_complete)
    except (KeyError, ValueError, TypeError) as exc:
        raise FeatcacheError(f"{path}: the cache is damaged ({type(exc).__name__}: "
                             f"{printable(str(exc).splitlines()[0] if str(exc) else '')}); it cannot be read") from None


def _problems(path: str | Path, require_complete: bool) -> list[str]:
    problems = []
    with open_read(path) as f:
        try:
            images = len(f["images/key"])
            samples = len(f["samples/key"])
            gen, prompt_image = f["samples/gen"][()], f["samples/ref"][()]
        except KeyError as exc:
            return [f"table missing ({exc})"]
        if len(gen) != samples or gen.min(initial=0) < 0 or gen.max(initial=0) >= images or \
                prompt_image.max(initial=-1) >= images:
            problems.append("samples/gen or samples/ref (image prompts) points outside /images")
        for name in ("format_version", "manifest_sha256", "samples_sha256", "root"):
            if name not in f.attrs:
                problems.append(f"attribute {name} missing")
        complete, half = walk_backbones(f)
        problems += [f"backbone {b} is half created (run `featcache repair`)" for b in half]
        for bid in complete:
            group = f[f"features/{bid}"]
            dim = read_attr(group, "dim", int, path)
            emb, done = group["emb"], group["done"]
            if emb.shape != (images, dim) or done.shape != (images,):
                problems.append(f"backbone {bid}: shape {emb.shape}/{done.shape}, expected ({images}, {dim})")
                continue
            try:
                json.loads(read_attr(group, "config_json", str, path))
                json.loads(read_attr(group, "provenance_json", str, path))
            except ValueError:
                problems.append(f"backbone {bid}: unreadable config or provenance")
            bad = int(nonfinite_done_rows(group).sum())
            if bad:
                problems.append(f"backbone {bid}: {bad} rows marked done are not finite (`featcache repair` marks "
                                "them to be extracted again)")
            missing = images - int(done[()].sum()) if require_complete else 0
            if missing:
                problems.append(f"backbone {bid}: {missing} of {images} rows not extracted yet (run the same "
                                "`featcache extract` again, or merge the missing shards)")
    return problems


def nonfinite_done_rows(group: h5py.Group) -> np.ndarray:
    """(M,) bool: rows marked done whose features are not finite, read in blocks of COPY_ROWS rows."""
    done = group["done"][()]
    bad = np.zeros_like(done)
    for start in range(0, len(done), COPY_ROWS):
        flags = done[start:start + COPY_ROWS]
        if flags.any():
            rows = group["emb"][start:start + COPY_ROWS]
            bad[start:start + COPY_ROWS] = flags & ~np.isfinite(rows).all(axis=1)
    return bad


@dataclass
class RepairResult:
    dropped: list[str]
    rows_reset: dict[str, int]
    temporaries: list[str]


def repair(path: str | Path) -> RepairResult:
    """Drop half-created or damaged backbones (`featcache.store.backbone_problem`: their datasets never read) and
    links under /features, by rewriting the cache, never following a link; mark non-finite `done` rows for
    extraction again, and delete temporary files left by killed writers."""
    with lock_cache(path) as target:
        temporaries = [str(p) for p in remove_stale_temporaries(target)]
        with open_read(path, repairing=True) as f:
            complete, half = walk_backbones(f)
        if half:
            rewrite_cache(target, what="dropping half-created backbones", repairing=True)
        reset = {}
        if complete:
            with open_write(target) as f:
                for bid in complete:
                    group = f[f"features/{bid}"]
                    bad = nonfinite_done_rows(group)
                    if bad.any():
                        group["done"][np.flatnonzero(bad)] = False
                        reset[bid] = int(bad.sum())
    return RepairResult(half, reset, temporaries)
