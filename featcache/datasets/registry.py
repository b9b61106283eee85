"""Dataset adapters as a table: name -> how to find its annotation and turn it into samples.

The registry, not each adapter, reads the annotation table and checks the declared columns; a loader receives the
table (string cells, a `row` column) and returns a SampleTable. One file per adapter, registered by decorator.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from featcache.datasets.tables import read_header, read_table, require_columns
from featcache.errors import FeatcacheError, unknown_name
from featcache.samples import SampleTable

if TYPE_CHECKING:
    import pandas as pd

Loader = Callable[[Path, "pd.DataFrame", Path, dict], SampleTable]  # (root, table, annotation, options)


@dataclass(frozen=True)
class DatasetAdapter:
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

    def find_annotation(self, root: Path, check_header: bool = False) -> Path | None:
        for name in self.annotation_names:
            if (root / name).is_file() and (not check_header or self.matches(root / name)):
                return root / name
        return None

    def matches(self, path: Path) -> bool:
        """True when the file's header has this adapter's columns (always, for adapters without a header)."""
        return self.names is not None or not self.columns or set(self.columns) <= set(read_header(path))


_ADAPTERS: dict[str, DatasetAdapter] = {}


def register_dataset(name: str, annotation_names: tuple[str, ...], description: str, columns: tuple[str, ...] = (),
                     names: tuple[str, ...] | None = None, required: Callable[[dict], list[str]] | None = None):
    """Register `loader(root, table, annotation, options)`. `columns`: the header columns the registry checks
    (and detection looks for); `names`: column names of a headerless file; `required(options)`: more columns."""
    def decorate(loader: Loader) -> Loader:
        if name in _ADAPTERS:
            raise FeatcacheError(f"internal: dataset adapter {name!r} registered twice")
        _ADAPTERS[name] = DatasetAdapter(name, tuple(annotation_names), description, loader, tuple(columns),
                                         tuple(names) if names else None, required)
        return loader

    return decorate


def list_datasets() -> list[DatasetAdapter]:
    return list(_ADAPTERS.values())


def get_adapter(name: str) -> DatasetAdapter:
    if name not in _ADAPTERS:
        raise unknown_name("dataset", name, _ADAPTERS)
    return _ADAPTERS[name]


def detect_dataset(root: Path) -> tuple[DatasetAdapter, Path]:
    """Find which database lives in `root`: a known annotation file name, else any table whose header fits."""
    for adapter in _ADAPTERS.values():
        found = adapter.find_annotation(root, check_header=True)
        if found is not None:
            return adapter, found
    tables = sorted(p for p in Path(root).iterdir() if p.suffix.lower() in (".csv", ".xlsx", ".xls"))
    for path in tables:
        for adapter in _ADAPTERS.values():
            if adapter.columns and adapter.matches(path):
                return adapter, path
    for adapter in _ADAPTERS.values():  # a known name with a broken header: its adapter says what is missing
        found = adapter.find_annotation(root)
        if found is not None:
            return adapter, found
    expected = ", ".join(f"{n} ({a.name})" for a in _ADAPTERS.values() for n in a.annotation_names)
    raise FeatcacheError(
        f"no annotation file found in {root}: expected one of {expected}; "
        "pass --dataset and --annotation, or write a featcache.toml"
    )


def load_dataset(name: str | None, root: str | Path, annotation: str | Path | None = None,
                 options: dict | None = None) -> SampleTable:
    """Load samples of dataset `name` (detected from `root` when None)."""
    root = Path(root)
    if not root.is_dir():
        raise FeatcacheError(f"{root}: dataset root is not a folder")
    if name is None:
        adapter, found = detect_dataset(root)
    else:
        adapter = get_adapter(name)
        found = adapter.find_annotation(root)
    if annotation is not None:
        found = Path(annotation)
        if not found.is_absolute() and not found.exists():
            found = root / found
    if found is None:
        raise FeatcacheError(
            f"{root}: no annotation for {adapter.name} (looked for {', '.join(adapter.annotation_names)}); "
            "pass --annotation FILE"
        )
    options = dict(options or {})
    table = adapter.read(Path(found), options)
    samples = adapter.loader(root, table, Path(found), options)
    samples.options = options
    return samples
