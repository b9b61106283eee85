"""The HDF5 feature cache: one row per distinct image, many backbones per file, safe against kill -9.

Crash safety comes from the layout, not from luck: a new cache is written to a temporary file and renamed into
place; a backbone's `emb` and `done` datasets are allocated in full when created, so extraction afterwards only
overwrites raw bytes at fixed offsets (no HDF5 metadata changes). Rows are written and flushed before their `done`
flags, so a killed run leaves at worst rows that are computed again.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from filelock import FileLock, Timeout

from featcache import __version__
from featcache.errors import FeatcacheError
from featcache.samples import SampleTable

FORMAT = "featcache-cache"
FORMAT_VERSION = 1
STR = h5py.string_dtype()
CHUNK_BYTES = 1 << 20


@contextlib.contextmanager
def lock_cache(path: str | Path):
    """One writer per cache. The OS drops the lock when its process dies, so kill -9 leaves no stale lock."""
    lock = FileLock(str(path) + ".lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise FeatcacheError(f"{path} is being written by another featcache process; wait for it to finish "
                             "or use another --cache") from None
    try:
        yield
    finally:
        lock.release()


def _strings(values) -> np.ndarray:
    return np.array([str(v) for v in values], dtype=object)


def create_cache(path: str | Path, samples: SampleTable, root: str | Path, command: str = "") -> None:
    """Write the image and sample tables to a new cache, atomically."""
    path = Path(path)
    paths, gen, ref = samples.distinct_images()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs.update({
                "format": FORMAT, "format_version": FORMAT_VERSION, "tool_version": __version__,
                "dataset": samples.dataset, "annotation": str(samples.source), "root": str(Path(root).resolve()),
                "manifest_sha256": samples.manifest_hash(), "samples_sha256": samples.samples_hash(),
                "command": command,
            })
            images = f.create_group("images")
            images.create_dataset("key", data=_strings(paths), dtype=STR)
            images.create_dataset("path", data=_strings(paths), dtype=STR)
            group = f.create_group("samples")
            group.create_dataset("gen", data=gen)
            group.create_dataset("ref", data=ref)
            for name in ("key", "group", "generator", "subset"):
                group.create_dataset(name, data=_strings(getattr(samples, name)), dtype=STR)
            group.create_dataset("text_prompt", data=_strings(samples.text_prompt), dtype=STR)
            group.create_dataset("row", data=np.asarray(samples.rows, dtype=np.int64))
            targets = f.create_group("targets")
            targets.attrs["order"] = json.dumps(list(samples.targets))  # HDF5 lists members alphabetically
            for name, values in samples.targets.items():
                targets.create_dataset(name, data=np.asarray(values, dtype=np.float64))
            f.create_group("features")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def check_same_dataset(f: h5py.File, samples: SampleTable, path: str | Path) -> None:
    if f.attrs.get("format") != FORMAT:
        raise FeatcacheError(f"{path}: not a featcache cache")
    if f.attrs["manifest_sha256"] != samples.manifest_hash():
        raise FeatcacheError(f"{path} was built from another list of images than {Path(samples.source).name}; "
                             "use another --cache")
    if f.attrs["samples_sha256"] != samples.samples_hash():
        raise FeatcacheError(f"{path}: the labels or rows of {Path(samples.source).name} changed since the cache "
                             "was written; use another --cache (features can be copied with `featcache merge`)")


def _feature_dcpl() -> h5py.h5p.PropDCID:
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


def compare_configs(stored: dict, wanted: dict) -> list[str]:
    """Keys whose values differ, ignoring machine-specific paths."""
    def clean(config: dict) -> dict:
        config = json.loads(json.dumps(config))
        config.get("weights", {}).pop("file", None)
        return config

    a, b = clean(stored), clean(wanted)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def ensure_features(f: h5py.File, config: dict, dim: int | None, provenance: dict, path: str | Path) -> h5py.Group:
    """The group of one backbone id: checked against `config` if present, else created at full size."""
    bid = config["id"]
    name = f"features/{bid}"
    if name in f and "emb" in f[name]:
        group = f[name]
        stored = json.loads(group.attrs["config_json"])
        differing = compare_configs(stored, config)
        if differing:
            raise FeatcacheError(f"{path}: backbone id {bid} was written with another configuration "
                                 f"({', '.join(differing)} differ); use another --cache")
        return group
    if dim is None:
        raise FeatcacheError(f"internal: dimension needed to create {bid}")
    rows = len(f["images/key"])
    group = f.require_group(name)
    chunk_rows = max(1, min(rows, CHUNK_BYTES // (4 * dim)))
    group.create_dataset("emb", shape=(rows, dim), dtype="f4", chunks=(chunk_rows, dim), dcpl=_feature_dcpl(),
                         fillvalue=np.float32(np.nan))
    group.create_dataset("done", shape=(rows,), dtype=bool, dcpl=_feature_dcpl(), chunks=(min(rows, 65536),),
                         fillvalue=False)
    group.attrs["config_json"] = json.dumps(config, sort_keys=True)
    group.attrs["provenance_json"] = json.dumps(provenance, sort_keys=True)
    group.attrs["dim"] = dim
    for key, value in config["data_config"].items():
        group.attrs[f"data_{key}"] = value if not isinstance(value, list) else np.asarray(value)
    group.attrs["pool"] = config["pool"]
    group.attrs["weights_tag"] = config["weights"]["tag"]
    f.flush()
    return group


def backbone_ids(f: h5py.File) -> list[str]:
    found: list[str] = []

    def visit(name, obj):
        if isinstance(obj, h5py.Group) and "emb" in obj and "done" in obj:
            found.append(name)

    if "features" in f:
        f["features"].visititems(visit)
    return sorted(found)


def open_write(path: str | Path) -> h5py.File:
    """Open an existing cache for writing; a held HDF5 lock or a damaged file is a one-line error."""
    try:
        return h5py.File(path, "r+")
    except OSError as exc:
        raise FeatcacheError(f"{path}: cannot open the cache for writing ({str(exc).splitlines()[0]}); is it open "
                             "in another program, or not a featcache cache?") from exc


def open_read(path: str | Path) -> h5py.File:
    """Open for reading, also while an extraction writes it (rows not yet `done` are simply not used)."""
    path = Path(path)
    if not path.is_file():
        raise FeatcacheError(f"{path}: cache not found (run `featcache extract` first)")
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as exc:
        raise FeatcacheError(f"{path}: not a readable HDF5 cache ({exc})") from exc
    if f.attrs.get("format") != FORMAT:
        f.close()
        raise FeatcacheError(f"{path}: not a featcache cache")
    return f


@dataclass
class CachedSamples:
    """What stage 2 needs: samples, labels and the per-sample image indices."""

    key: np.ndarray
    group: np.ndarray
    generator: np.ndarray
    subset: np.ndarray
    text_prompt: np.ndarray
    gen: np.ndarray
    ref: np.ndarray
    targets: dict[str, np.ndarray]
    image_keys: np.ndarray

    def __len__(self) -> int:
        return len(self.key)


def read_samples(f: h5py.File) -> CachedSamples:
    s = f["samples"]
    return CachedSamples(
        key=s["key"].asstr()[()], group=s["group"].asstr()[()], generator=s["generator"].asstr()[()],
        subset=s["subset"].asstr()[()], text_prompt=s["text_prompt"].asstr()[()],
        gen=s["gen"][()], ref=s["ref"][()],
        targets={k: f["targets"][k][()] for k in json.loads(f["targets"].attrs.get("order", "[]"))
                 or list(f["targets"])},
        image_keys=f["images/key"].asstr()[()],
    )


def read_config(f: h5py.File, bid: str) -> dict:
    return json.loads(f[f"features/{bid}"].attrs["config_json"])


def read_provenance(f: h5py.File, bid: str) -> dict:
    return json.loads(f[f"features/{bid}"].attrs["provenance_json"])
