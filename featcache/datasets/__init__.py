"""Dataset adapters: each database's own files -> a validated SampleTable. Importing registers them all."""

from featcache.datasets import agiqa, aigciqa2023, generic_csv, pku  # noqa: F401  (registration)
from featcache.datasets.registry import (
    DatasetAdapter,
    detect_dataset,
    get_adapter,
    list_datasets,
    load_dataset,
    register_dataset,
)

__all__ = ["DatasetAdapter", "detect_dataset", "get_adapter", "list_datasets", "load_dataset", "register_dataset"]
