"""Which annotation file belongs to a cache, and whether its labels still match the cache's."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from featcache.errors import FeatcacheError
from featcache.samples import SampleTable
from featcache.store import CachedSamples, annotation_sha256, open_read, read_samples
from featcache.untrusted import is_regular_file


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
    not with the original's. A stored path that is not a regular file (a FIFO, a device, /proc) counts as not
    there. The dataset adapter and its options default to the cache's. A folder holding a file of
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
    if stored_file and is_regular_file(stored_file) and Path(stored_root).is_dir():
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
    return bool(stored) and stored == annotation_sha256(source.annotation if source else annotation)


def read_labels_from_annotation(path: str | Path, source: AnnotationSource | None = None) -> SampleTable | None:
    """The samples as the annotation file says now: `source`'s file, else the dataset, annotation, root and options
    stored in the cache; None when that file is not there (another machine)."""
    from featcache.datasets import load_dataset

    if source is None:
        with open_read(path) as f:
            dataset, annotation, root, options = _stored_annotation(f)
        if not annotation or not is_regular_file(annotation) or not Path(root).is_dir():
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
