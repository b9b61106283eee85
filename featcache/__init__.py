"""featcache: extract frozen-backbone features of AI-generated images once, fit quality heads on them many times."""

__version__ = "0.1.0"

from featcache.errors import FeatcacheError  # noqa: E402

__all__ = ["FeatcacheError", "__version__"]
