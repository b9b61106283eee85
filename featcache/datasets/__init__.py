"""Dataset adapters: each database's own files -> a validated SampleTable.

Every module of this package is imported here, so an adapter is one self-registering file (`@register_dataset`)
and needs no edit anywhere else.
"""

import importlib
import pkgutil

from featcache.datasets.registry import (
    DatasetAdapter,
    detect_dataset,
    get_adapter,
    list_datasets,
    load_dataset,
    register_dataset,
)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["DatasetAdapter", "detect_dataset", "get_adapter", "list_datasets", "load_dataset", "register_dataset"]
