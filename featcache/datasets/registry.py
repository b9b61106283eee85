"""Dataset adapters as a table: name -> how to find its annotation and turn it into samples.

The registry, not each adapter, reads the annotation table and checks the declared columns; a loader receives the
table (string cells, a `row` column) and returns a SampleTable. One file per adapter, registered by decorator.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from featcache.datasets.tables import read_header, read_table, require_columns
from featcache.errors import FeatcacheError, unknown_name
from featcache.samples import SampleTable

if TYPE_CHECKING:
    import pandas as pd

Loader = Callable[[Path, "pd.DataFrame", Path, dict], SampleTable]  # (root, table, annotation, options)


@dataclass(frozen=True, kw_only=True)
class DatasetAdapter:
    """One database's adapter: its name, the annotation file names detection looks for, a line for `datasets`, the
    loader, and the columns every load checks."""

    name: str
    annotation_names: tuple[str, ...]
    description: str
    loader: Loader
    columns: tuple[str, ...] = ()  # a header holding these columns is this database's; checked on every load
    names: tuple[str, ...] | None = None  # headerless files: the column names, in order
    required: Callable[[dict], list[str]] | None = None  # extra columns that depend on the options (adapter csv)

    def read(self, annotation: Path, options: dict) -> "pd.DataFrame":
        """The annotation as a table of strings, with every declared column present (else a one-line error)."""
        extra = self.required(options) if self.required else []
        table = read_table(annotation, header=self.names is None, names=list(self.names) if self.names else None)
        require_columns(table, list(dict.fromkeys([*self.columns, *extra])), annotation)
        return table

    def present(self, root: Path) -> list[Path]:
        """This adapter's annotation files in `root`: alternatives for one file (a spreadsheet and its CSV export)."""
        return [root / name for name in self.annotation_names if (root / name).is_file()]

    def matches(self, path: Path) -> bool:
        """True when the file's header has this adapter's columns (headerless adapters: as many columns as names)."""
        if self.names is not None:
            return len(read_header(path)) == len(self.names)
        return not self.columns or set(self.columns) <= set(read_header(path))


_ADAPTERS: dict[str, DatasetAdapter] = {}


def register_dataset(name: str, annotation_names: tuple[str, ...], description: str, columns: tuple[str, ...] = (),
                     names: tuple[str, ...] | None = None, required: Callable[[dict], list[str]] | None = None):
    """Register `loader(root, table, annotation, options)`. `columns`: the header columns the registry checks
    (and detection looks for); `names`: column names of a headerless file; `required(options)`: more columns."""
    def decorate(loader: Loader) -> Loader:
        if name in _ADAPTERS:
            raise FeatcacheError(f"internal: dataset adapter {name!r} registered twice")
        _ADAPTERS[name] = DatasetAdapter(name=name, annotation_names=tuple(annotation_names),
                                         description=description, loader=loader, columns=tuple(columns),
                                         names=tuple(names) if names else None, required=required)
        return loader

    return decorate


def list_datasets() -> list[DatasetAdapter]:
    return list(_ADAPTERS.values())


def get_adapter(name: str) -> DatasetAdapter:
    if name not in _ADAPTERS:
        raise unknown_name("dataset", name, _ADAPTERS)
    return _ADAPTERS[name]


def annotation_candidates(root: Path) -> list[tuple[Path, DatasetAdapter]]:
    """The files detection could load as `root`'s annotation, each with its adapter. Files with an adapter's name
    and header (with that adapter's other names present: they are one file's alternatives); else any table whose
    header fits an adapter; else the first adapter's name present, loaded to say which columns it lacks. So a
    database's other tables (a train/test split, a prompt list) are no candidates beside its named file."""
    root = Path(root)
    adapters = list(_ADAPTERS.values())
    owners = [a for a in adapters if any(a.matches(p) for p in a.present(root))]
    if owners:
        return [(p, a) for a in owners for p in a.present(root)]
    tables = sorted(p for p in root.iterdir() if p.suffix.lower() in (".csv", ".xlsx", ".xls") and p.is_file())
    fitting = [(p, next((a for a in adapters if a.columns and a.matches(p)), None)) for p in tables]
    if any(a for _, a in fitting):
        return [(p, a) for p, a in fitting if a is not None]
    return next(([(p, a)] for a in adapters for p in a.present(root)), [])


def _one(root: Path, candidates: list[tuple[Path, DatasetAdapter]], hint: str) -> tuple[DatasetAdapter, Path]:
    """The only candidate; several are refused, since picking one silently ignores edits to the others."""
    if len(candidates) > 1:
        listing = ", ".join(f"{p.name}: {a.name}" for p, a in sorted(candidates, key=lambda c: c[0].name))
        raise FeatcacheError(f"{os.path.abspath(root)}: several annotation files match ({listing}); {hint}")
    path, adapter = candidates[0]
    return adapter, path


def detect_dataset(root: Path) -> tuple[DatasetAdapter, Path]:
    """Find which database lives in `root` and its annotation file; several candidates are refused."""
    candidates = annotation_candidates(root)
    if not candidates:
        expected = ", ".join(f"{n} ({a.name})" for a in _ADAPTERS.values() for n in a.annotation_names)
        raise FeatcacheError(
            f"no annotation file found in {root}: expected one of {expected}; "
            "pass --dataset and --annotation, or write a featcache.toml"
        )
    return _one(root, candidates, "pass --annotation FILE (and --dataset NAME)")


def _adapter_for(annotation: Path, root: Path) -> DatasetAdapter:
    """--annotation without --dataset: the database its name and header say, else the one the folder says."""
    adapters = list(_ADAPTERS.values())
    named = [a for a in adapters if annotation.name in a.annotation_names]
    for adapter in [*named, *(a for a in adapters if a.columns)]:
        if adapter.matches(annotation):
            return adapter
    if named:
        return named[0]
    try:
        return detect_dataset(root)[0]
    except FeatcacheError:  # "no annotation file found in ." although the user named one
        raise FeatcacheError(f"{annotation}: its name and header fit no known database; pass --dataset NAME (a "
                             "headerless file: --dataset aigiqa-20k; any table: --dataset csv with --col)") from None


def load_dataset(name: str | None, root: str | Path, annotation: str | Path | None = None,
                 options: dict | None = None) -> SampleTable:
    """Load samples of dataset `name` (detected from `root` when None)."""
    root = Path(root)
    if not root.is_dir():
        raise FeatcacheError(f"{root}: dataset root is not a folder")
    adapter = get_adapter(name) if name is not None else None
    if annotation is not None:
        found = Path(annotation)
        if not found.is_absolute() and not found.exists():
            found = root / found
        if adapter is None:
            if not found.is_file():
                raise FeatcacheError(f"{found}: annotation file not found")
            adapter = _adapter_for(found, root)
    elif adapter is None:
        adapter, found = detect_dataset(root)
    else:
        present = adapter.present(root)
        if not present:
            raise FeatcacheError(
                f"{root}: no annotation for {adapter.name} (looked for {', '.join(adapter.annotation_names)}); "
                "pass --annotation FILE"
            )
        _, found = _one(root, [(p, adapter) for p in present], "pass --annotation FILE")
    options = dict(options or {})
    table = adapter.read(Path(found), options)
    samples = adapter.loader(root, table, Path(found), options)
    samples.options = options
    return samples
