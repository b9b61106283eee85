"""95% intervals of every summary row, computed once at fit time from the kept out-of-fold predictions.

Each row (regressor x mode x target of one run) gets the percentile interval of its pooled SRCC, PLCC and RMSE
(all out-of-fold predictions of a repeat, averaged over the repeats) from `inference.group_bootstrap_interval`:
whole prompt groups resampled with replacement, each bringing its predictions of every repeat, 1000 resamples
drawn from the run's seed. Every row of a run draws the same groups (common random numbers), and the numbers depend
only on the predictions, never on --jobs.

Keys set on each summary row (null where undefined: fewer than 3 groups, or a prediction that is not finite):
`srcc_ci_low`, `srcc_ci_high`, `plcc_ci_low`, `plcc_ci_high`, `rmse_ci_low`, `rmse_ci_high`, `ci_level` (0.95),
`ci_groups` (the prompt groups resampled), and `rmse_pooled`, the point estimate of the RMSE interval (those of
the correlations are `srcc_pooled` and `plcc_pooled`); `config["intervals"]` states the method.
A repeat whose every fold failed counts as 0 in the pooled correlations (as `srcc_pooled` counts it), so the
correlation intervals scale by the share of repeats that did not fail; RMSE takes every repeat as it is.
"""

from __future__ import annotations

import hashlib

import numpy as np

from regressors.inference import BOOTSTRAP_SAMPLES, INTERVAL_METRICS, LEVEL, PooledPredictions, \
    group_bootstrap_interval, point_estimate, pooled_predictions

INTERVAL_KEYS = tuple(f"{metric}_ci_{side}" for metric in INTERVAL_METRICS for side in ("low", "high"))
METHOD = ("95% percentile interval of the pooled metric (all out-of-fold predictions of a repeat, mean over the "
          "repeats), resampling whole prompt groups with replacement, each with its predictions of every repeat")


def add_intervals(results, *, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES) -> None:
    """Set the interval keys (INTERVAL_KEYS, `ci_level`, `ci_groups`) on every row of `results.summary` (a
    `cv.CVResults` whose `predictions` and `samples["group"]` are those of its summary) and `config["intervals"]`.
    Deterministic for a given `seed`; the rows' other keys are left as they are."""
    groups = np.asarray(results.samples["group"])
    by_key: dict[tuple, list] = {}
    for p in results.predictions:
        by_key.setdefault((p.regressor, p.mode, p.target), []).append(p)
    all_failed: dict[tuple, dict[int, bool]] = {}
    for row in results.folds:
        repeats = all_failed.setdefault((row["regressor"], row["mode"], row["target"]), {})
        repeats[row["repeat"]] = repeats.get(row["repeat"], True) and bool(row.get("failed"))
    done: dict[bytes, dict] = {}  # the floors give the same predictions in several rows: each computed once
    for row in results.summary:
        key = (row["regressor"], row["mode"], row["target"])
        failed = {rep for rep, bad in all_failed.get(key, {}).items() if bad}
        pooled, repeats = _pooled(by_key.get(key, []), groups)
        same = _fingerprint(pooled, [rep in failed for rep in repeats])
        if same not in done:
            done[same] = pooled_intervals(pooled, [rep in failed for rep in repeats], seed, samples)
        row.update(done[same])
    results.config["intervals"] = {"method": METHOD, "level": LEVEL, "resamples": samples, "seed": seed}


def _pooled(predictions: list, groups: np.ndarray) -> tuple[PooledPredictions | None, list[int]]:
    """One configuration's out-of-fold predictions (`cv.OutOfFold`, every fold of every repeat) aligned on its
    samples, and its repeats in order; None without predictions."""
    repeats = sorted({p.repeat for p in predictions})
    if not repeats:
        return None, []
    parts = {rep: [p for p in predictions if p.repeat == rep] for rep in repeats}
    return pooled_predictions([np.concatenate([p.rows for p in parts[rep]]) for rep in repeats],
                              [np.concatenate([p.y_true for p in parts[rep]]) for rep in repeats],
                              [np.concatenate([p.y_pred for p in parts[rep]]) for rep in repeats], groups), repeats


def _fingerprint(pooled: PooledPredictions | None, failed: list[bool]) -> bytes:
    """Equal for equal inputs of `pooled_intervals` (the same numbers bit for bit), so their intervals are equal."""
    digest = hashlib.sha256(repr(failed).encode())
    if pooled is not None:
        for array in (pooled.y_true, pooled.y_pred):
            digest.update(repr(array.shape).encode() + np.ascontiguousarray(array, dtype=np.float64).tobytes())
        digest.update(repr(pooled.groups.tolist()).encode())
    return digest.digest()


def pooled_intervals(pooled: PooledPredictions | None, failed: list[bool], seed: int,
                     samples: int = BOOTSTRAP_SAMPLES, metrics: tuple[str, ...] = INTERVAL_METRICS) -> dict:
    """The interval keys of one configuration; `failed[i]`: every fold of repeat i failed (0 in the pooled
    correlations). `metrics`: those resampled (the others' keys NaN)."""
    out: dict = {key: float("nan") for key in INTERVAL_KEYS}
    out.update(ci_level=LEVEL, ci_groups=0, rmse_pooled=float("nan"))
    if pooled is None:
        return out
    out["ci_groups"] = pooled.n_groups
    if np.isfinite(pooled.y_pred).all():
        out["rmse_pooled"] = point_estimate(pooled, "rmse")
    kept = [i for i, bad in enumerate(failed) if not bad]
    share = len(kept) / len(failed)
    for metric in metrics:
        if metric == "rmse":
            low, high = group_bootstrap_interval(pooled, metric, samples=samples, seed=seed)
        elif not kept:
            low = high = 0.0
        else:
            some = pooled if share == 1 else PooledPredictions(pooled.y_true, pooled.y_pred[kept], pooled.groups)
            low, high = (share * v for v in group_bootstrap_interval(some, metric, samples=samples, seed=seed))
        out[f"{metric}_ci_low"], out[f"{metric}_ci_high"] = float(low), float(high)
    return out
