"""The fold rows of a results.json (`folds`): checked as untrusted input, attached to their summary rows, and read
as per-fold values for the paired test and the SDs of the tables.

A fold row names its configuration (regressor, mode, target, and backbone in a bench), its repeat and fold, every
metric of that fold (a finite number or null), `failed`, and the fold's training and test sizes.
"""

from __future__ import annotations

import math

import numpy as np

from regressors.inference import corrected_resampled_t

FOLD_METRICS = ("srcc", "plcc", "plcc_logistic", "krcc", "rmse")
CORRELATIONS = ("srcc", "plcc", "plcc_logistic", "krcc")
MAX_FOLD_ROWS = 2_000_000  # far above any grid (a large bench writes some 10,000)
_WHOLE = 2 ** 53


def folds_problem(folds, config: dict) -> str | None:
    """What is wrong with a results.json's `folds` list, in words naming the row and key; None when nothing is."""
    if not isinstance(folds, list):
        return "its folds are not a list"
    if len(folds) > MAX_FOLD_ROWS:
        return f"{len(folds)} fold rows, more than {MAX_FOLD_ROWS}"
    for i, row in enumerate(folds):
        if not isinstance(row, dict):
            return f"fold row {i} is not an object"
        for key in ("regressor", "mode", "target"):
            if not isinstance(row.get(key), str):
                return f"fold row {i}: {key} is not text"
        if not isinstance(row.get("backbone") or config.get("backbone"), (str, list, type(None))):
            return f"fold row {i}: backbone is not text"
        for key in ("repeat", "fold", "n_train", "n_test"):
            value = row.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _WHOLE:
                return f"fold row {i}: {key} {str(value)[:40]!r} is not a whole number from 0"
        if not isinstance(row.get("failed", False), bool):
            return f"fold row {i}: failed {str(row.get('failed'))[:40]!r} is not true or false"
        for key in FOLD_METRICS:
            value = row.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    isinstance(value, int) and abs(value) > _WHOLE) or not math.isfinite(value)):
                return f"fold row {i}: {key} {str(value)[:40]!r} is not a finite number or null"
    return None


def attach_folds(rows: list[dict], folds: list[dict], backbone_of) -> None:
    """Give each summary row `_folds`: {(repeat, fold): fold row} of its configuration; `backbone_of(row)` names
    the backbone of a summary or fold row as the table keys it."""
    index: dict[tuple, dict] = {}
    for fold in folds:
        key = (backbone_of(fold), fold["regressor"], fold["mode"], fold["target"])
        index.setdefault(key, {})[(fold["repeat"], fold["fold"])] = fold
    for row in rows:
        row["_folds"] = index.get((backbone_of(row), row["regressor"], row["mode"], row["target"]), {})


def fold_value(fold: dict, metric: str) -> float:
    """A fold's value of a metric as the means count it: a failed fold's correlations are 0; null is NaN."""
    if metric in CORRELATIONS and fold.get("failed"):
        return 0.0
    value = fold.get(metric)
    return float(value) if value is not None else float("nan")


def paired_p(a: dict, b: dict, metric: str) -> float:
    """Two-sided p of the corrected resampled t-test (`inference.corrected_resampled_t`) over the per-fold
    differences of `metric` between two configurations' fold rows ({(repeat, fold): row}), paired by (repeat,
    fold); NaN when fewer than 2 folds pair or a value is undefined."""
    shared = sorted(set(a) & set(b))
    if len(shared) < 2:
        return float("nan")
    differences = np.array([fold_value(a[k], metric) - fold_value(b[k], metric) for k in shared])
    n_train = float(np.mean([a[k]["n_train"] for k in shared]))
    n_test = float(np.mean([a[k]["n_test"] for k in shared]))
    return corrected_resampled_t(differences, n_train, n_test, [repeat for repeat, _ in shared])


def fold_sd(folds: dict, metric: str) -> tuple[float, str, int]:
    """(sample SD, what it is over, how many): with several repeats, the SD of the repeats' fold means; with one,
    the SD of its folds' values (failed folds as the means count them). NaN with fewer than 2, an undefined
    value, or one test fold per repeat (a single split: its repeats test that fold again; `over` is then "folds",
    how many 1)."""
    repeats: dict[int, list[float]] = {}
    for (repeat, _), row in sorted(folds.items()):
        repeats.setdefault(repeat, []).append(fold_value(row, metric))
    if repeats and all(len(v) == 1 for v in repeats.values()):
        return float("nan"), "folds", 1
    if len(repeats) > 1:
        values, over = [float(np.mean(v)) for v in repeats.values()], "repeats"
    else:
        values, over = next(iter(repeats.values()), []), "folds"
    if len(values) < 2 or not np.isfinite(values).all():
        return float("nan"), over, len(values)
    return float(np.std(values, ddof=1)), over, len(values)
