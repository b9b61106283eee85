"""The HDF5 feature cache: one row per distinct image, many backbones per file, safe against kill -9, Ctrl-C and a
full disk.

The crash-safety rule (NOTES-stage1.md, "Crash safety"):

1. Every structural change (a new cache, a new backbone, merge adding a backbone, a changed image list, `repair`)
   writes a complete new file next to the cache (`.NAME.tmp-PID`, same folder), fsyncs it and renames it over the
   cache with `os.replace`. A crash, Ctrl-C or full disk at any moment leaves the old cache untouched and at worst a
   temporary file, which the next writer (or `featcache repair`) deletes. So the existing backbones stay readable and
   a new backbone is either absent or complete in its structure.
2. In place, only row bytes are written: a backbone's `emb` and `done` datasets are allocated in full when created, so
   extraction overwrites raw bytes at fixed offsets (no HDF5 metadata changes). Rows are written and flushed before
   their `done` flags, so a killed run leaves at worst rows that are computed again.
3. One writer per cache, keyed on the file's resolved real path (a symlink and its target share one lock), whatever
   HDF5_USE_FILE_LOCKING says. The lock is an flock on `REALPATH.lock`: the OS drops it when its process dies (kill -9
   leaves no stale lock) and the file is removed on exit.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from featcache import __version__
from featcache.decode import decode_option
from featcache.errors import FeatcacheError, FeatcacheWarning
from featcache.samples import SampleTable

FORMAT = "featcache-cache"
FORMAT_VERSION = 2  # 2 adds /images/size and /images/mtime_ns (version 1 caches are read and extended as they are)
STR = h5py.string_dtype()
CHUNK_BYTES = 1 << 20
COPY_ROWS = 4096
BACKBONE_ATTRS = ("config_json", "provenance_json", "dim")


# ---------------------------------------------------------------------------------------------------------- locks

def real_path(path: str | Path) -> Path:
    """The file itself: symlinks resolved, so every name of one file gets one lock and one temporary file."""
    return Path(os.path.realpath(path))


def check_is_cache_file(path: str | Path) -> None:
    """Refuse a file that is not HDF5, or HDF5 but not a cache, before anything is written next to it."""
    if not h5py.is_hdf5(path):
        raise FeatcacheError(f"{path}: cannot open the cache for writing (not an HDF5 file); is it open in another "
                             "program, or not a featcache cache?")
    open_read(path).close()


@contextlib.contextmanager
def lock_cache(path: str | Path):
    """One writer per cache file, keyed on its real path. Raises a one-line error when another process holds it or
    when the folder does not allow a lock file (read-only)."""
    target = real_path(path)
    lock_path = Path(str(target) + ".lock")
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise FeatcacheError(f"{path}: cannot create the lock file {lock_path.name} in {lock_path.parent} "
                                 f"({exc.strerror}); the folder must be writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise FeatcacheError(f"{path} is being written by another featcache process; wait for it to finish "
                                 "or use another --cache") from None
        try:  # the holder before us may have removed the file after we opened it: lock the file that is there
            same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield target
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        os.close(fd)


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete `.NAME.tmp-*` files left by a killed writer (call with the lock held: no live writer owns one)."""
    target = real_path(path)
    removed = []
    for tmp in target.parent.glob(f".{target.name}.tmp-*"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


# ------------------------------------------------------------------------------------------------- atomic writer

def is_disk_full(exc: BaseException) -> bool:
    return getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc) \
        or "Disk quota" in str(exc)


def disk_full_error(path: str | Path, what: str) -> FeatcacheError:
    return FeatcacheError(f"{path}: the disk is full ({what}); free some space and run the same command again")


def check_free_space(path: str | Path, needed: int, what: str) -> None:
    folder = real_path(path).parent
    free = shutil.disk_usage(folder).free
    if free < needed + (1 << 20):
        raise FeatcacheError(f"{path}: {what} needs about {needed / 2**20:.1f} MiB but {folder} has "
                             f"{free / 2**20:.1f} MiB free; nothing was changed")


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_h5(path: str | Path, what: str = "writing the cache"):
    """Yield a new HDF5 file that replaces `path` only when the block ends normally (temporary file in the same
    folder, fsync, os.replace). On any error, Ctrl-C included, the temporary file is removed and `path` is untouched;
    a full disk becomes a one-line error."""
    target = real_path(path)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    f = None
    try:
        f = h5py.File(tmp, "w")
        yield f
        f.close()
        f = None
        _fsync(tmp)
        os.replace(tmp, target)
        _fsync(target.parent, directory=True)
    except (OSError, RuntimeError, ValueError) as exc:  # h5py reports a failed write as any of these
        if is_disk_full(exc):
            raise disk_full_error(path, what) from None
        raise
    finally:
        if f is not None:
            with contextlib.suppress(Exception):
                f.close()
        with contextlib.suppress(OSError):
            tmp.unlink()


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
    """sha256 of each image's bytes (`--verify`); b'' where the file is missing."""
    from featcache.backbones.weights import sha256_file

    out = np.zeros(len(paths), dtype="S64")
    for i, rel in enumerate(paths):
        try:
            out[i] = sha256_file(Path(root) / rel).encode()
        except OSError:
            continue
    return out


def _write_tables(f: h5py.File, samples: SampleTable, root: str | Path, command: str, options: dict | None) -> None:
    paths, gen, prompt_image = samples.distinct_images()
    size, mtime = image_stats(root, paths)
    f.attrs.update({
        "format": FORMAT, "format_version": FORMAT_VERSION, "tool_version": __version__,
        "dataset": samples.dataset, "annotation": str(Path(samples.source).resolve()) if samples.source else "",
        "root": str(Path(root).resolve()), "dataset_options_json": json.dumps(options or {}, sort_keys=True),
        "manifest_sha256": samples.manifest_hash(), "samples_sha256": samples.samples_hash(),
        "annotation_sha256": _annotation_sha256(samples.source), "command": command,
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
        _write_tables(f, samples, root, command, options)


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


def _create_feature_datasets(f: h5py.File, config: dict, dim: int, provenance: dict,
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

    In-place creation is for building test fixtures and benchmarks; stage 1 adds backbones with `add_backbones`,
    which never changes the existing file's structure."""
    bid = config["id"]
    name = f"features/{bid}"
    if name in f and "emb" in f[name]:
        check_config(f, bid, config, path)
        return f[name]
    if dim is None:
        raise FeatcacheError(f"internal: dimension needed to create {bid}")
    group = _create_feature_datasets(f, config, dim, provenance)
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


def walk_backbones(f: h5py.File) -> tuple[list[str], list[str]]:
    """(complete backbone ids, half-created or unreadable group names) under /features.

    Walked group by group, each step guarded, so one damaged object (e.g. left by a full disk under an older
    version) is reported as such while every readable backbone stays listed, and `repair` can keep those."""
    complete: list[str] = []
    half: list[str] = []
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
                obj = group[name]
                if not isinstance(obj, h5py.Group):
                    continue
                has = [k for k in ("emb", "done") if k in obj]
                marked = any(a in obj.attrs for a in BACKBONE_ATTRS)
                if has or marked:
                    ok = len(has) == 2 and all(a in obj.attrs for a in BACKBONE_ATTRS)
                    ok = ok and len(obj["emb"].shape) == 2 and len(obj["done"].shape) == 1
                    (complete if ok else half).append(path)
                    continue
            except errors:
                half.append(path)
                continue
            walk(obj, path)

    walk(features, "")
    return sorted(complete), sorted(half)


def backbone_ids(f: h5py.File) -> list[str]:
    """Backbones whose datasets and attributes are complete (a half-created one is not listed)."""
    return walk_backbones(f)[0]


def half_created_backbones(f: h5py.File) -> list[str]:
    return walk_backbones(f)[1]


@dataclass
class NewBackbone:
    config: dict
    dim: int
    provenance: dict
    attrs: dict = field(default_factory=dict)


def rewrite_cache(path: str | Path, *, add: list[NewBackbone] = (),
                  samples: SampleTable | None = None, root: str | Path | None = None,
                  row_map: np.ndarray | None = None, command: str = "", options: dict | None = None,
                  what: str = "adding a backbone") -> None:
    """Write a new cache next to `path` and rename it in (call with the lock held).

    It holds every complete backbone of `path` (half-created ones are left out), plus the new, fully allocated backbones `add`. With
    `samples`, the tables are rebuilt from them and backbone rows are carried over through `row_map` (new image
    index -> old index or -1); rows not carried over are extracted again."""
    path = real_path(path)
    with h5py.File(path, "r", locking=False) as src:
        keep = backbone_ids(src)
        rows = len(samples.distinct_images()[0]) if samples is not None else len(src["images/key"])
        needed = sum(feature_bytes(rows, int(src[f"features/{b}"].attrs["dim"])) for b in keep)
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
                _write_tables(dst, samples, root, command, options)
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
                _create_feature_datasets(dst, new.config, new.dim, new.provenance, new.attrs)


def _carry_rows(src: h5py.File, dst: h5py.File, bid: str, row_map: np.ndarray) -> None:
    old = src[f"features/{bid}"]
    config = json.loads(old.attrs["config_json"])
    extra = {k: v for k, v in old.attrs.items() if k == "shard"}
    group = _create_feature_datasets(dst, config, int(old.attrs["dim"]), json.loads(old.attrs["provenance_json"]),
                                     extra)
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
    """Add backbones to an existing cache without touching its structure in place (see the module rule)."""
    rewrite_cache(path, add=new, what=f"adding {', '.join(n.config['id'] for n in new)}")


# ------------------------------------------------------------------------------------- comparing with the input

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
    if f.attrs.get("format") != FORMAT:
        f.close()
        raise FeatcacheError(f"{path}: not a featcache cache")
    return f


def open_read(path: str | Path) -> h5py.File:
    """Open for reading, also while an extraction writes it (rows not yet `done` are simply not used)."""
    path = Path(path)
    if not path.is_file():
        raise FeatcacheError(f"{path}: cache not found (run `featcache extract` first)")
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as exc:
        raise FeatcacheError(f"{path}: not a readable HDF5 cache ({str(exc).splitlines()[0]})") from exc
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
    ref: np.ndarray  # index of the image prompt (stage 2's name; stage 1 calls it prompt_image), -1 without one
    targets: dict[str, np.ndarray]
    image_keys: np.ndarray

    def __len__(self) -> int:
        return len(self.key)

    @property
    def prompt_image(self) -> np.ndarray:
        return self.ref


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
    """The backbone's recorded configuration; keys an older version did not record read as it worked then."""
    return with_config_defaults(json.loads(f[f"features/{bid}"].attrs["config_json"]))


def read_provenance(f: h5py.File, bid: str) -> dict:
    return json.loads(f[f"features/{bid}"].attrs["provenance_json"])


# ------------------------------------------------------------------------------------------------------- labels

def _annotation_sha256(source: str | None) -> str:
    from featcache.backbones.weights import sha256_file

    try:
        return sha256_file(source) if source and Path(source).is_file() else ""
    except OSError:
        return ""


@dataclass
class AnnotationSource:
    """The annotation file a labels check reads: `how` is given (--root, --annotation or featcache.toml), detected
    (in the current folder, as `extract` would find it) or stored (the path the cache recorded)."""

    dataset: str | None
    root: str
    annotation: str
    options: dict
    how: str

    def shown(self) -> str:
        """The file as the user would name it: relative to the current folder when inside it."""
        path = Path(self.annotation).resolve()
        try:
            return str(path.relative_to(Path.cwd().resolve()))
        except ValueError:
            return str(path)


def _stored_annotation(f: h5py.File) -> tuple[str | None, str, str, dict]:
    return (str(f.attrs.get("dataset", "")) or None, str(f.attrs.get("annotation", "")), str(f.attrs.get("root", "")),
            json.loads(f.attrs.get("dataset_options_json", "{}")))


TABLE_SUFFIXES = (".csv", ".xlsx", ".xls")  # every annotation file detection can find ends so


def dataset_root(path: str | Path, **given) -> str | None:
    """The root of the annotation `locate_annotation` finds for this cache (a copied database is its own root), or
    None when it finds none or refuses (the caller then keeps the recorded root)."""
    try:
        source = locate_annotation(path, **given)
    except FeatcacheError:
        return None
    return None if source is None else source.root


def locate_annotation(path: str | Path, root: str | Path | None = None, annotation: str | Path | None = None,
                      dataset: str | None = None, options: dict | None = None) -> AnnotationSource | None:
    """The annotation this invocation would use, found as `extract` finds it: `root`/`annotation`/`dataset` (from
    the command line or featcache.toml), else the annotation file beside the cache, else the one in the current
    folder (the same folder when the cache is the default ./featcache.h5), else (nothing detected) the path stored in
    the cache; None when none of them is there. A copied or moved database is so compared with its own annotation,
    not with the original's. The dataset adapter and its options default to the cache's. A folder holding a file of
    the stored annotation's name gives that file at once (no dataset adapter is imported)."""
    with open_read(path) as f:
        stored_dataset, stored_file, stored_root, stored_options = _stored_annotation(f)
    name = Path(stored_file).name if stored_file else ""
    dataset = dataset or stored_dataset
    options = stored_options if options is None else options
    if root is not None or annotation is not None:
        folder = Path(root if root is not None else ".")
        if not folder.is_dir():
            raise FeatcacheError(f"{folder}: dataset root is not a folder")
        if annotation is not None:
            found = Path(annotation)
            if not found.is_absolute() and not found.exists():
                found = folder / found
            if not found.is_file():
                raise FeatcacheError(f"{found}: annotation file not found")
            return AnnotationSource(dataset, str(folder), str(found), options, "given")
        return _annotation_in(folder, name, dataset, stored_dataset, options, "given", required=True)
    folders = dict.fromkeys([Path(path).resolve().parent, Path.cwd().resolve()])
    for folder in folders:
        source = _annotation_in(folder, name, dataset, stored_dataset, options, "detected")
        if source is not None:
            return source
    if stored_file and Path(stored_file).is_file() and Path(stored_root).is_dir():
        return AnnotationSource(dataset, stored_root, stored_file, options, "stored")
    return None


def _annotation_in(folder: Path, name: str, dataset: str | None, stored_dataset: str | None, options: dict, how: str,
                   required: bool = False) -> AnnotationSource | None:
    """The annotation file in `folder`: the stored annotation's name, else what detection finds (several: refused,
    as extract refuses them); None when there is none, unless `required` (then detection's one-line error)."""
    if name and (folder / name).is_file():
        return AnnotationSource(dataset, str(folder), str(folder / name), options, how)
    if not required and not any(p.suffix.lower() in TABLE_SUFFIXES and p.is_file() for p in folder.iterdir()):
        return None
    from featcache.datasets.registry import annotation_candidates, detect_dataset

    if not required and not annotation_candidates(folder):
        return None
    adapter, found = detect_dataset(folder)
    return AnnotationSource(adapter.name, str(folder), str(found), options if adapter.name == stored_dataset else {},
                            how)


def recorded_annotation(path: str | Path) -> str:
    """The annotation path the cache recorded when it was written ('' for an older cache)."""
    with open_read(path) as f:
        return _stored_annotation(f)[1]


def annotation_unchanged(path: str | Path, source: AnnotationSource | None = None) -> bool:
    """True when the annotation file (`source`'s, else the one the cache recorded) has the very bytes the cache's
    tables were made from: its labels cannot differ, so nothing needs parsing (no dataset adapter runs). False when
    unknown (an older cache, the file missing or changed)."""
    with open_read(path) as f:
        annotation = str(f.attrs.get("annotation", ""))
        stored = str(f.attrs.get("annotation_sha256", ""))
    return bool(stored) and stored == _annotation_sha256(source.annotation if source else annotation)


def read_labels_from_annotation(path: str | Path, source: AnnotationSource | None = None) -> SampleTable | None:
    """The samples as the annotation file says now: `source`'s file, else the dataset, annotation, root and options
    stored in the cache; None when that file is not there (another machine)."""
    from featcache.datasets import load_dataset

    if source is None:
        with open_read(path) as f:
            dataset, annotation, root, options = _stored_annotation(f)
        if not annotation or not Path(annotation).is_file() or not Path(root).is_dir():
            return None
        source = AnnotationSource(dataset, root, annotation, options, "stored")
    return load_dataset(source.dataset, source.root, source.annotation, source.options)


def labels_changed(path: str | Path, samples: SampleTable | None = None,
                   cached: CachedSamples | None = None) -> list[str]:
    """What differs between the cache's labels (`cached`, else read from `path`) and the annotation's (`samples`,
    else re-read from the annotation file): one line per target or per structural change; [] when equal or when
    the annotation is not there."""
    if samples is None:
        samples = read_labels_from_annotation(path)
        if samples is None:
            return []
    if cached is None:
        with open_read(path) as f:
            cached = read_samples(f)
    if list(cached.key) != list(samples.key):
        return [f"the samples differ ({len(cached)} in the cache, {len(samples)} in {Path(samples.source).name})"]
    changes = []
    for name in sorted(set(cached.targets) | set(samples.targets)):
        if name not in cached.targets or name not in samples.targets:
            changes.append(f"target {name} is only in the {'annotation' if name in samples.targets else 'cache'}")
            continue
        differ = np.flatnonzero(cached.targets[name] != samples.targets[name])
        if len(differ):
            i = int(differ[0])
            changes.append(f"target {name}: {len(differ)} values differ (first: {cached.key[i]} "
                           f"{cached.targets[name][i]:g} in the cache, {samples.targets[name][i]:g} now)")
    return changes


# ------------------------------------------------------------------------------------------------ check, repair

def check_cache(path: str | Path, require_complete: bool = False) -> list[str]:
    """Problems of a cache: half-created backbones, missing attributes, wrong shapes, `done` rows not finite, and
    with `require_complete` (`info --check`) rows not extracted yet (an interrupted run, a shard not merged)."""
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
            dim = int(group.attrs["dim"])
            emb, done = group["emb"], group["done"]
            if emb.shape != (images, dim) or done.shape != (images,):
                problems.append(f"backbone {bid}: shape {emb.shape}/{done.shape}, expected ({images}, {dim})")
                continue
            try:
                json.loads(group.attrs["config_json"])
                json.loads(group.attrs["provenance_json"])
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
    """Drop half-created backbones (by rewriting the cache), mark non-finite `done` rows for extraction again, and
    delete temporary files left by killed writers."""
    with lock_cache(path) as target:
        temporaries = [str(p) for p in remove_stale_temporaries(target)]
        with open_read(path) as f:
            complete, half = walk_backbones(f)
        if half:
            rewrite_cache(target, what="dropping half-created backbones")
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
