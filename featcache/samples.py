"""The data model: rated generated images, their optional image prompts, and the distinct images to run.

Adapters produce a standard frame (one row per rated image); `SampleTable.from_frame` validates it once, so every
database gets the same checks and the same one-line errors naming the annotation file and row.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pandas is imported where a table is parsed: a fit from the cache alone never needs it
    import pandas as pd

from featcache.errors import FeatcacheError, FeatcacheWarning

STANDARD_COLUMNS = ("key", "image", "prompt_image", "text_prompt", "group", "generator", "subset", "row")


@dataclass
class SampleTable:
    """Samples of one dataset. Paths are POSIX paths relative to `root`; `prompt_image` is '' without a prompt."""

    key: list[str]
    image: list[str]
    prompt_image: list[str]
    text_prompt: list[str]
    group: list[str]
    generator: list[str]
    subset: list[str]
    targets: dict[str, np.ndarray]
    rows: list[int] = field(default_factory=list)
    source: str = ""
    dataset: str = ""
    options: dict = field(default_factory=dict)  # the adapter options it was loaded with (kept in the cache)

    def __len__(self) -> int:
        return len(self.key)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, target_columns: dict[str, str], source: str, dataset: str,
                   drop_duplicates: bool = False) -> "SampleTable":
        """Validate a standard frame. `target_columns` maps target name -> column of `frame` holding raw values.

        `drop_duplicates` is for official files with a known repeated row: every row of a repeated key is dropped
        with a warning (which of two labels is right cannot be known); otherwise a repeated key is an error.
        """
        source_name = Path(source).name or source
        if drop_duplicates:
            repeated = frame["key"].astype(str).str.strip().duplicated(keep=False)
            if repeated.any():
                rows_dropped = ", ".join(str(r) for r in frame.loc[repeated, "row"])
                names = ", ".join(sorted(set(frame.loc[repeated, "key"].astype(str))))
                warnings.warn(f"{source_name}: rows {rows_dropped} repeat {names} with different labels; "
                              "all of them are dropped", FeatcacheWarning, stacklevel=2)
                frame = frame.loc[~repeated]
        missing = [c for c in STANDARD_COLUMNS if c not in frame.columns]
        if missing:
            raise FeatcacheError(f"internal: adapter frame lacks {missing}")
        if len(frame) == 0:
            raise FeatcacheError(f"{source_name}: no samples")
        rows = [int(r) for r in frame["row"]]
        image = [_safe_relpath(p, source_name, r, "image") for p, r in zip(frame["image"], rows)]
        prompt = [
            _safe_relpath(p, source_name, r, "image prompt") if _text(p) else ""
            for p, r in zip(frame["prompt_image"], rows)
        ]
        keys = [_text(k) for k in frame["key"]]
        seen: dict[str, int] = {}
        for k, r in zip(keys, rows):
            if not k:
                raise FeatcacheError(f"{source_name} row {r}: empty image name")
            if k in seen:
                raise FeatcacheError(f"{source_name} rows {seen[k]} and {r}: duplicate key {k!r}")
            seen[k] = r
        first_use: dict[str, int] = {}
        for i, path in enumerate(image):  # after normalisation: ./x.jpg, sub/../x.jpg and x.jpg are one image
            if path in first_use:
                j = first_use[path]
                raw_j, raw_i = _text(frame["image"].iloc[j]), _text(frame["image"].iloc[i])
                raise FeatcacheError(f"{source_name} rows {rows[j]} and {rows[i]}: {raw_j!r} and {raw_i!r} are the "
                                     f"same image {path!r}")
            first_use[path] = i
        targets = {name: _numeric(frame[col], name, rows, source_name) for name, col in target_columns.items()}
        if not targets:
            raise FeatcacheError(f"{source_name}: no target columns")
        subset = [_text(s) for s in frame["subset"]]
        return cls(
            key=keys,
            image=image,
            prompt_image=prompt,
            text_prompt=[_text(t) for t in frame["text_prompt"]],
            group=[_text(g) for g in frame["group"]],
            generator=[_text(g) for g in frame["generator"]],
            subset=subset,
            targets=targets,
            rows=rows,
            source=str(source),
            dataset=dataset,
        )

    def distinct_images(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Distinct images (generated first, then image prompts, in order of first use) and, per sample, the index of
        its generated image and of its image prompt (-1 without one)."""
        index: dict[str, int] = {}
        paths: list[str] = []

        def add(p: str) -> int:
            if p not in index:
                index[p] = len(paths)
                paths.append(p)
            return index[p]

        gen = np.array([add(p) for p in self.image], dtype=np.int64)
        prompt_image = np.array([add(p) if p else -1 for p in self.prompt_image], dtype=np.int64)
        return paths, gen, prompt_image

    def manifest_hash(self) -> str:
        """Hash of what the features depend on (the distinct images), so caches are never mixed silently."""
        paths, _, _ = self.distinct_images()
        return hashlib.sha256(json.dumps(paths).encode()).hexdigest()

    def samples_hash(self) -> str:
        """Hash of the labels and sample structure, to tell when an annotation changed under a cache."""
        payload = {
            "key": self.key,
            "image": self.image,
            "prompt": self.prompt_image,
            "group": self.group,
            "generator": self.generator,
            "subset": self.subset,
            "targets": {k: [repr(float(x)) for x in v] for k, v in sorted(self.targets.items())},
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return str(value).strip()


def _safe_relpath(value, source: str, row: int, what: str) -> str:
    """Normalise a path from an annotation and refuse one that leaves the dataset root."""
    raw = _text(value).replace("\\", "/")
    if not raw:
        raise FeatcacheError(f"{source} row {row}: empty {what} path")
    if any(ord(c) < 32 for c in raw):  # a NUL reached os.stat as a traceback; no file name holds these
        raise FeatcacheError(f"{source} row {row}: {what} path {raw!r} holds a control character")
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise FeatcacheError(f"{source} row {row}: {what} path {raw!r} is absolute; it must be inside the root")
    norm = posixpath.normpath(raw)
    if norm == ".." or norm.startswith("../"):
        raise FeatcacheError(f"{source} row {row}: {what} path {raw!r} escapes the dataset root")
    return norm


def _numeric(column: pd.Series, name: str, rows: list[int], source: str) -> np.ndarray:
    import pandas as pd

    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        i = int(bad[0])
        raw = column.iloc[i]
        shown = "empty" if _text(raw) == "" else repr(raw if not isinstance(raw, str) else raw.strip())
        more = f" ({len(bad)} rows in all)" if len(bad) > 1 else ""
        raise FeatcacheError(f"{source} row {rows[i]}: target {name} is {shown}, not a finite number{more}")
    return values
