"""The HDF5 feature cache's format: one row per distinct image, many backbones per file.

Layout: /images (key, path, size, mtime_ns, sha256), /samples (gen, ref, key, group, generator, subset,
text_prompt, row), /targets/<name>, /features/<backbone id>/{emb, done} with the backbone's configuration and
provenance in its attributes. Writes keep the cache readable after kill -9, Ctrl-C or a full disk:

1. Every structural change (a new cache, a new backbone, a changed image list, `repair`) writes a complete new file
   and renames it over the cache (`featcache.atomic_write.atomic_h5`, `featcache.cache_rewrite`).
2. In place, only row bytes are written: a backbone's `emb` and `done` are allocated in full when created, so
   extraction overwrites raw bytes at fixed offsets (no HDF5 metadata changes). Rows are flushed before their `done`
   flags, so a killed run leaves at worst rows that are computed again.
3. One writer per cache (`featcache.cache_lock.lock_cache`); readers open without HDF5's file locking.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from featcache import __version__
from featcache.atomic_write import atomic_h5
from featcache.decode import decode_option
from featcache.errors import FeatcacheError
from featcache.samples import SampleTable
from featcache.untrusted import check_self_contained, printable

FORMAT = "featcache-cache"
FORMAT_VERSION = 2  # 2 adds /images/size and /images/mtime_ns; version 1 caches are read and extended as they are
STR = h5py.string_dtype()
CHUNK_BYTES = 1 << 20
COPY_ROWS = 4096
BACKBONE_ATTRS = ("config_json", "provenance_json", "dim")
# The type of every attribute featcache writes at the root and on a backbone group (checked on open).
ROOT_ATTR_TYPES = {"format": str, "format_version": int, "tool_version": str, "dataset": str, "annotation": str,
                   "root": str, "dataset_options_json": str, "manifest_sha256": str, "samples_sha256": str,
                   "annotation_sha256": str, "command": str}
BACKBONE_ATTR_TYPES = {"config_json": str, "provenance_json": str, "dim": int, "shard": str}
_MISSING = object()


def read_attr(obj, name: str, kind: type, path: str | Path, default=_MISSING):
    """Attribute `name` of a group or file as a `kind` (str or int), `default` when it is absent (absent without a
    default: KeyError). Any other type (an array, bytes, a float) is a one-line FeatcacheError naming it."""
    try:
        value = obj.attrs.get(name, _MISSING)
    except (OSError, RuntimeError, TypeError, ValueError) as exc:
        raise FeatcacheError(f"{path}: attribute {name} of {obj.name} cannot be read ({exc}); the cache is "
                             "damaged") from None
    if value is _MISSING:
        if default is _MISSING:
            raise KeyError(f"attribute {name} of {obj.name} missing")
        return default
    if kind is str and isinstance(value, str):
        return value
    if kind is int and isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    shown = f"an array of shape {value.shape}" if isinstance(value, np.ndarray) else f"of type {type(value).__name__}"
    raise FeatcacheError(f"{path}: attribute {name} of {obj.name} is {shown}, not {kind.__name__}; the cache is "
                         "damaged or was not written by featcache")


def check_is_cache_file(path: str | Path) -> None:
    """Refuse a file that is not HDF5, or HDF5 but not a cache, before anything is written next to it."""
    if not h5py.is_hdf5(path):
        raise FeatcacheError(f"{path}: cannot open the cache for writing (not an HDF5 file); is it open in another "
                             "program, or not a featcache cache?")
    open_read(path).close()


# ------------------------------------------------------------------------------------------------------- tables

def _strings(values) -> np.ndarray:
    return np.array([str(v) for v in values], dtype=object)


def image_stats(root: str | Path, paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(size in bytes, mtime in ns) of each image; -1 where the file is missing."""
    size = np.full(len(paths), -1, dtype=np.int64)
    mtime = np.full(len(paths), -1, dtype=np.int64)
    root = Path(root)
    for i, rel in enumerate(paths):
        try:
            st = os.stat(root / rel)
        except OSError:
            continue
        size[i], mtime[i] = st.st_size, st.st_mtime_ns
    return size, mtime


def image_hashes(root: str | Path, paths: list[str]) -> np.ndarray:
    """sha256 of each image's bytes (`--verify`); b'' where the file is missing or its real path leaves the real
    root (never read: `extract` refuses it, `featcache.untrusted.check_inside_root`)."""
    from featcache.backbones.weights import sha256_file

    out = np.zeros(len(paths), dtype="S64")
    inside = os.path.realpath(root).rstrip(os.sep) + os.sep
    for i, rel in enumerate(paths):
        if not os.path.realpath(os.path.join(root, rel)).startswith(inside):
            continue
        try:
            out[i] = sha256_file(Path(root) / rel).encode()
        except OSError:
            continue
    return out


def write_tables(f: h5py.File, samples: SampleTable, root: str | Path, command: str, options: dict | None) -> None:
    paths, gen, prompt_image = samples.distinct_images()
    size, mtime = image_stats(root, paths)
    f.attrs.update({
        "format": FORMAT, "format_version": FORMAT_VERSION, "tool_version": __version__,
        "dataset": samples.dataset, "annotation": str(Path(samples.source).resolve()) if samples.source else "",
        "root": str(Path(root).resolve()), "dataset_options_json": json.dumps(options or {}, sort_keys=True),
        "manifest_sha256": samples.manifest_hash(), "samples_sha256": samples.samples_hash(),
        "annotation_sha256": annotation_sha256(samples.source), "command": command,
    })
    images = f.create_group("images")
    images.create_dataset("key", data=_strings(paths), dtype=STR)
    images.create_dataset("path", data=_strings(paths), dtype=STR)
    images.create_dataset("size", data=size)
    images.create_dataset("mtime_ns", data=mtime)
    images.create_dataset("sha256", data=np.zeros(len(paths), dtype="S64"))  # filled by extract --verify
    group = f.create_group("samples")
    group.create_dataset("gen", data=gen)
    group.create_dataset("ref", data=prompt_image)  # the image prompt; the name stays for compatibility
    for name in ("key", "group", "generator", "subset"):
        group.create_dataset(name, data=_strings(getattr(samples, name)), dtype=STR)
    group.create_dataset("text_prompt", data=_strings(samples.text_prompt), dtype=STR)
    group.create_dataset("row", data=np.asarray(samples.rows, dtype=np.int64))
    targets = f.create_group("targets")
    targets.attrs["order"] = json.dumps(list(samples.targets))  # HDF5 lists members alphabetically
    for name, values in samples.targets.items():
        targets.create_dataset(name, data=np.asarray(values, dtype=np.float64))
    f.create_group("features")


def create_cache(path: str | Path, samples: SampleTable, root: str | Path, command: str = "",
                 options: dict | None = None) -> None:
    """Write the image and sample tables to a new cache, atomically."""
    with atomic_h5(path, "creating the cache") as f:
        write_tables(f, samples, root, command, options)


# ---------------------------------------------------------------------------------------------------- backbones

def _feature_dcpl() -> h5py.h5p.PropDCID:
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


# Configuration keys added after caches were first written, with the value every older cache was made with: an old
# cache reads as made with --decode cpu --no-jpeg-draft (what extract then follows when neither option is given).
CONFIG_DEFAULTS = {"decode": "pil", "jpeg_draft": False}
# What to pass to reproduce a stored value, for the refusal message.
_CONFIG_OPTIONS = {
    "decode": lambda v: f"--decode {decode_option(v)}",
    "jpeg_draft": lambda v: "--jpeg-draft" if v else "--no-jpeg-draft",
    "precision": lambda v: f"--precision {v}",
}


def with_config_defaults(config: dict) -> dict:
    """A backbone configuration with the keys older versions did not record, at the values they were made with."""
    config = {**CONFIG_DEFAULTS, **config}
    if config["jpeg_draft"] and "jpeg_draft_rule" not in config:
        config["jpeg_draft_rule"] = "pillow-request"  # drafted before the rule was recorded: see images.DRAFT_RULES
    return config


def compare_configs(stored: dict, wanted: dict) -> list[str]:
    """Keys whose values differ, ignoring machine-specific paths."""
    def clean(config: dict) -> dict:
        config = with_config_defaults(json.loads(json.dumps(config)))
        config.get("weights", {}).pop("file", None)
        return config

    a, b = clean(stored), clean(wanted)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def feature_bytes(rows: int, dim: int) -> int:
    return rows * dim * 4 + rows


def create_feature_datasets(f: h5py.File, config: dict, dim: int, provenance: dict,
                             attrs: dict | None = None) -> h5py.Group:
    bid = config["id"]
    rows = len(f["images/key"])
    group = f.require_group(f"features/{bid}")
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
    for key, value in (attrs or {}).items():
        group.attrs[key] = value
    return group


def ensure_features(f: h5py.File, config: dict, dim: int | None, provenance: dict, path: str | Path) -> h5py.Group:
    """The group of one backbone id: checked against `config` if present, else created at full size in place.

    In-place creation is for building test fixtures and benchmarks; `extract` and `merge` add backbones with
    `featcache.cache_rewrite.add_backbones`, which never changes the existing file's structure."""
    bid = config["id"]
    name = f"features/{bid}"
    if name in f and "emb" in f[name]:
        check_config(f, bid, config, path)
        return f[name]
    if dim is None:
        raise FeatcacheError(f"internal: dimension needed to create {bid}")
    group = create_feature_datasets(f, config, dim, provenance)
    f.flush()
    return group


def check_config(f: h5py.File, bid: str, config: dict, path: str | Path, advise_options: bool = True) -> None:
    """Refuse to extend backbone `bid` with another configuration; `advise_options`: name the extract options that
    would match it (merge has none)."""
    from featcache.decode import TORCH_RESIZE

    group = f[f"features/{bid}"]
    if "config_json" not in group.attrs:
        raise FeatcacheError(f"{path}: backbone {bid} was only half created (an interrupted run of an older "
                             "version); run `featcache repair` first")
    stored = read_config(f, bid)
    differing = compare_configs(stored, config)
    if "decode" in differing:  # the torch path's resize goes with the decode path
        differing = [k for k in differing if k != "torch_resize"]
    if "jpeg_draft" in differing:  # and the draft rule with drafting
        differing = [k for k in differing if k != "jpeg_draft_rule"]
    if differing == ["torch_resize"]:
        raise FeatcacheError(f"{path}: backbone id {bid} was decoded on the torch path by an earlier featcache, which "
                             "resized in one float pass (this one resizes as Pillow does), so it is not extended; its "
                             "rows can still be fitted; extract into another --cache")
    if differing:
        options = [_CONFIG_OPTIONS[k](stored[k]) for k in differing if k in _CONFIG_OPTIONS and k in stored]
        # an earlier one-pass torch path cannot be matched by any option (its resize is refused just above)
        stale_torch = stored.get("decode") == "torch" and stored.get("torch_resize") != TORCH_RESIZE
        how = f", or pass {' '.join(options)} as it was made" \
            if advise_options and not stale_torch and len(options) == len(differing) else ""
        raise FeatcacheError(f"{path}: backbone id {bid} was written with another configuration "
                             f"({', '.join(differing)} differ); use another --cache{how}")


def backbone_problem(f: h5py.File, bid: str) -> str | None:
    """What makes backbone `bid` (its datasets and attributes all present) unreadable, or None: an attribute of the
    wrong type or JSON that is not an object, `emb` not of shape (rows of /images, dim) and floating point, `done`
    not of shape (rows of /images,) and boolean. Checked before any read of `emb`, which could otherwise allocate
    a declared shape the file does not hold."""
    group = f[f"features/{bid}"]
    for name, kind in BACKBONE_ATTR_TYPES.items():
        try:
            value = read_attr(group, name, kind, f.filename, None)
            if name.endswith("_json") and not isinstance(json.loads(value), dict):
                raise ValueError("not an object")
        except FeatcacheError as exc:
            return str(exc).removeprefix(f"{f.filename}: ").split(";")[0]
        except ValueError as exc:
            return f"attribute {name} of /features/{bid} is not JSON ({str(exc).splitlines()[0]})"
    extra = sorted(set(group) - {"emb", "done"})
    if extra:
        return f"/features/{bid} holds {extra[0]} besides emb and done"
    rows, dim = len(f["images/key"]), read_attr(group, "dim", int, f.filename)
    for name, shape, kinds, what in (("emb", (rows, dim), "f", "floating point"), ("done", (rows,), "b", "boolean")):
        dataset = group[name]
        if not isinstance(dataset, h5py.Dataset) or dataset.shape != shape or dataset.dtype.kind not in kinds:
            got = f"has shape {dataset.shape} of {dataset.dtype}" if isinstance(dataset, h5py.Dataset) \
                else "is a group"
            return (f"/features/{bid}/{name} {got}, expected shape {shape} ({what}: the {rows} rows of /images"
                    + (f", dim {dim} as recorded)" if name == "emb" else ")"))
        declared, stored = dataset.size * dataset.dtype.itemsize, dataset.id.get_storage_size()
        if stored < declared:  # featcache allocates both in full on creation
            return f"/features/{bid}/{name} stores {stored} of its {declared} bytes"
    return None


def walk_backbones(f: h5py.File, broken: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """(complete backbone ids, half-created or unreadable group names) under /features.

    Walked group by group, each step guarded, so one damaged object is reported as such while every readable
    backbone stays listed, and `repair` can keep those. Soft and external links are listed as damaged, never
    followed. A backbone with all its datasets and attributes but one of them unreadable (`backbone_problem`) is
    listed as damaged, and its problem put in `broken` (id -> problem) when given."""
    complete: list[str] = []
    half: list[str] = []
    broken = {} if broken is None else broken
    errors = (RuntimeError, KeyError, OSError, ValueError)
    try:
        features = f["features"] if "features" in f else None
    except errors:
        return complete, ["features"]
    if features is None:
        return complete, half

    def walk(group, prefix: str) -> None:
        try:
            names = list(group.keys())
        except errors:
            half.append(prefix or "features")
            return
        for name in names:
            path = f"{prefix}/{name}" if prefix else name
            try:
                if not isinstance(group.get(name, getlink=True), h5py.HardLink):
                    half.append(path)  # never followed: it could lead into another file
                    continue
                obj = group[name]
                if not isinstance(obj, h5py.Group):
                    continue
                has = [k for k in ("emb", "done") if k in obj]
                marked = any(a in obj.attrs for a in BACKBONE_ATTRS)
                if has or marked:
                    ok = len(has) == 2 and all(a in obj.attrs for a in BACKBONE_ATTRS)
                    problem = backbone_problem(f, path) if ok else None
                    if problem:
                        broken[path] = problem
                    (complete if ok and not problem else half).append(path)
                    continue
            except (FeatcacheError, *errors):
                half.append(path)
                continue
            walk(obj, path)

    walk(features, "")
    return sorted(complete), sorted(half)


def backbone_ids(f: h5py.File) -> list[str]:
    """Backbones whose datasets and attributes are complete (a half-created one is not listed)."""
    return walk_backbones(f)[0]


# ---------------------------------------------------------------------------------------------------- open/read

def open_write(path: str | Path) -> h5py.File:
    """Open an existing cache for writing rows; a held HDF5 lock or a damaged file is a one-line error."""
    try:
        f = h5py.File(path, "r+")
    except OSError as exc:
        if isinstance(exc, PermissionError) or "ermission denied" in str(exc) or "read-only" in str(exc):
            raise FeatcacheError(f"{path}: the cache is read-only; cannot write to it") from exc
        raise FeatcacheError(f"{path}: cannot open the cache for writing ({str(exc).splitlines()[0]}); is it open "
                             "in another program, or not a featcache cache?") from exc
    return _checked(f, path)


def _checked(f: h5py.File, path: str | Path, repairing: bool = False) -> h5py.File:
    """`f` when it is a featcache cache in one self-contained file (`featcache.untrusted.check_self_contained`);
    else closed and refused with one line."""
    try:
        if read_attr(f, "format", str, path, "") != FORMAT:
            raise FeatcacheError(f"{path}: not a featcache cache")
        check_self_contained(f, path, repairing)
        for name, kind in ROOT_ATTR_TYPES.items():
            read_attr(f, name, kind, path, None)
        _check_tables(f, path)
        broken: dict[str, str] = {}
        walk_backbones(f, broken)
        if broken and not repairing:
            bid, problem = sorted(broken.items())[0]
            raise FeatcacheError(f"{path}: the cache is damaged: {printable(problem)}; run `featcache repair` to "
                                 f"drop backbone {printable(bid)}, then extract it again")
    except BaseException:
        f.close()
        raise
    return f


def _check_tables(f: h5py.File, path: str | Path) -> None:
    """/images/key one-dimensional, and every other /images table as long (their rows index the features)."""
    try:
        key = f["images/key"]
        if not isinstance(key, h5py.Dataset) or len(key.shape) != 1:
            raise ValueError("/images/key is not a one-dimensional table")
        for name, table in f["images"].items():
            if not isinstance(table, h5py.Dataset) or table.shape != key.shape:
                raise ValueError(f"/images/{name} does not have the {key.shape[0]} rows of /images/key")
    except (KeyError, ValueError) as exc:
        raise FeatcacheError(f"{path}: the cache's image table is damaged ({printable(str(exc).strip(chr(39)))}); "
                             "it cannot be read") from None


def open_read(path: str | Path, repairing: bool = False) -> h5py.File:
    """Open for reading, also while an extraction writes it (rows not yet `done` are simply not used). Refused with
    one line unless the file is self-contained (`featcache.untrusted.check_self_contained`; `repairing`: links
    under /features are let through for `repair` to drop)."""
    path = Path(path)
    if not path.is_file():
        raise FeatcacheError(f"{path}: cache not found (run `featcache extract` first)")
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as exc:
        raise FeatcacheError(f"{path}: not a readable HDF5 cache ({str(exc).splitlines()[0]})") from exc
    return _checked(f, path, repairing)


@dataclass
class CachedSamples:
    """What stage 2 needs: samples, labels and the per-sample image indices."""

    key: np.ndarray
    group: np.ndarray
    generator: np.ndarray
    subset: np.ndarray
    text_prompt: np.ndarray
    gen: np.ndarray
    ref: np.ndarray  # index of the image prompt (stage 2's name; stage 1 calls it prompt_image), -1 without one
    targets: dict[str, np.ndarray]
    image_keys: np.ndarray

    def __len__(self) -> int:
        return len(self.key)

    @property
    def prompt_image(self) -> np.ndarray:
        return self.ref


def read_samples(f: h5py.File) -> CachedSamples:
    """The sample table; a table missing or of the wrong kind is a one-line error naming the cache."""
    try:
        return _read_samples(f)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FeatcacheError(f"{f.filename}: the cache's sample tables are damaged ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}); it cannot be read") from None


def _read_samples(f: h5py.File) -> CachedSamples:
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
    """The backbone's recorded configuration; keys an older version did not record read as it worked then."""
    return with_config_defaults(json.loads(read_attr(f[f"features/{bid}"], "config_json", str, f.filename)))


def read_provenance(f: h5py.File, bid: str) -> dict:
    return json.loads(read_attr(f[f"features/{bid}"], "provenance_json", str, f.filename))


def annotation_sha256(source: str | None) -> str:
    """sha256 of the annotation file's bytes; '' when there is none, it cannot be read or is not a regular file."""
    from featcache.backbones.weights import sha256_file

    from featcache.untrusted import is_regular_file

    try:
        return sha256_file(source) if source and is_regular_file(source) else ""
    except OSError:
        return ""
