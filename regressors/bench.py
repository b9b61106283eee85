"""`featcache bench`: a grid of backbones x modes x targets x regressors over one cache, into one table."""

from __future__ import annotations

from featcache.store import backbone_ids, open_read
from regressors.cv import CVResults, cross_validate
from regressors.design import load_cache, resolve_backbone_id


def run_bench(cache: str, backbones: list[str] | None, modes: list[str], targets: list[str] | None,
              regressors: list[str], **cv_options) -> CVResults:
    """Every backbone in `backbones` (all in the cache by default); rows gain a `backbone` column."""
    with open_read(cache) as f:
        ids = backbone_ids(f)
    chosen = [resolve_backbone_id(ids, b, cache) for b in backbones] if backbones else ids
    merged = None
    for bid in chosen:
        data = load_cache(cache, bid)
        result = cross_validate(data, modes, targets or data.targets, regressors, **cv_options)
        for row in result.folds + result.summary:
            row["backbone"] = bid
        result.predictions = {(f"{bid} {k[0]}", k[1], k[2]): v for k, v in result.predictions.items()}
        if merged is None:
            merged = result
            merged.config = dict(result.config, backbone=chosen)
        else:
            merged.folds += result.folds
            merged.summary += result.summary
            merged.predictions.update(result.predictions)
    return merged
