"""From fold rows and out-of-fold predictions to what a paper reports.

Summary: the mean over the folds of each repeat, then the mean over repeats; the ± is the SD across repeats when
there are several, else the SD across folds (population SD; none for a single split, paper or cross, however often
repeated: its repeats test the one fold again); intervals over
prompt groups come from `regressors.intervals`, for every split. Failed folds count as 0 in the correlation means
and are counted in `n_failed`. A fold whose RMSE is not finite (a diverged fit) makes the RMSE mean and SD not finite too
(null in results.json), counted in `n_rmse_nonfinite`; it is never left out of the mean.
"""

from __future__ import annotations

import numpy as np

from regressors.inference import CORRECTED_T, corrected_t
from regressors.metrics import CORRELATIONS, counted, pooled_correlations, srcc_counted
from regressors.modes import comparison_reference, get_mode, same_training_rows
from regressors.registry import REGRESSORS
from regressors.splits import MIN_TEST


def _keys(rows) -> dict[tuple, list]:
    out: dict[tuple, list] = {}
    for row in rows:
        key = (row["regressor"], row["mode"], row["target"]) if isinstance(row, dict) else \
            (row.regressor, row.mode, row.target)
        out.setdefault(key, []).append(row)
    return out


def summarize(folds: list[dict], predictions: list, samples: dict, *, single: bool = False,
              seed: int = 0) -> list[dict]:
    by_prediction = _keys(predictions)
    summary = []
    for (name, mode, target), rows in _keys(folds).items():
        entry: dict = {"regressor": name, "mode": mode, "target": target}
        repeats = sorted({r["repeat"] for r in rows})
        for metric in (*CORRELATIONS, "rmse"):
            per_repeat, per_fold = [], []
            for rep in repeats:
                values = [counted(r[metric], r["failed"]) if metric != "rmse" else float(r[metric])
                          for r in rows if r["repeat"] == rep]
                per_fold += values
                per_repeat.append(float(np.mean(values)) if values else float("nan"))
            finite = bool(np.isfinite(per_fold).all())  # correlations always (a failed fold counts as 0)
            entry[f"{metric}_mean"] = float(np.mean(per_repeat)) if finite else _not_finite(per_fold)
            if len(repeats) > 1 and not single:
                entry[f"{metric}_std"], over = float(np.std(per_repeat)) if finite else float("nan"), "repeats"
            elif not single and len(per_fold) > 1:
                entry[f"{metric}_std"], over = float(np.std(per_fold)) if finite else float("nan"), "folds"
            else:
                entry[f"{metric}_std"], over = float("nan"), "none"
        entry["n_rmse_nonfinite"] = int(sum(not np.isfinite(r["rmse"]) for r in rows))
        entry["std_over"] = over
        # a repeat whose every fold failed (constant predictions) pools to 0 too: each fold's constant sits at
        # its own training mean, and those offsets alone correlated with the labels (-0.076 over 5 failed folds)
        pooled = [{"srcc": 0.0, "plcc": 0.0} if all(r["failed"] for r in rows if r["repeat"] == rep)
                  else _pooled(by_prediction.get((name, mode, target), []), rep) for rep in repeats]
        for metric in ("srcc", "plcc"):
            entry[f"{metric}_pooled"] = float(np.mean([p[metric] for p in pooled])) if pooled else float("nan")
        entry["n_folds"] = len(rows)
        entry["n_failed"] = int(sum(bool(r["failed"]) for r in rows))
        entry["n_train"] = int(np.mean([r["n_train"] for r in rows]))
        entry["n_test"] = int(np.mean([r["n_test"] for r in rows]))
        entry["seconds"] = float(sum(r["seconds"] for r in rows))
        summary.append(entry)
    return summary


def _not_finite(values: list[float]) -> float:
    """The mean of fold values some of which are not finite (a diverged fit's RMSE): inf when each of those is
    +inf, else NaN; never the mean of the finite ones alone."""
    bad = [v for v in values if not np.isfinite(v)]
    return float("inf") if all(v == float("inf") for v in bad) else float("nan")


def _pooled(predictions: list, repeat: int) -> dict:
    chosen = [p for p in predictions if p.repeat == repeat]
    if not chosen:
        return {"srcc": 0.0, "plcc": 0.0}
    return pooled_correlations(np.concatenate([p.y_true for p in chosen]), np.concatenate([p.y_pred for p in chosen]))


def paired_comparisons(predictions: list, modes: list[str], folds: list[dict] = ()) -> list[dict]:
    """Each mode against its reference (`modes.comparison_reference`: the matched NR, else `nr`, else the first
    mode), same regressor and target, on the test samples both scored in each fold of every repeat.

    Per paired fold: the SRCC of each side on those samples (a fold that `folds` marks failed counts as 0, as in
    the table, and is listed in `failed_folds`; a fold that cannot be paired is listed in `folds_left_out` with the
    reason, never dropped unsaid). Over the K x R differences: their mean, population SD, and the corrected
    resampled t-test (`inference.corrected_t`, K R - 1 degrees of freedom; n_train: the mean training
    size from the fold rows, the smaller side's when the sides trained on different rows; NaN when the fold rows
    carry none) with the matching 95% interval of the mean difference. `n_test_samples`: the distinct samples
    tested over all paired folds and repeats. `matched_training`: both sides trained on the same rows of every
    fold; `isolates`: what the difference measures. A label-only floor is compared only where the two sides train
    on different rows (with the same rows its two sides are the same predictions)."""
    failed = {(r["regressor"], r["mode"], r["target"], r["repeat"], r["fold"]) for r in folds if r.get("failed")}
    n_train_of = {(r["regressor"], r["mode"], r["target"], r["repeat"], r["fold"]): r["n_train"] for r in folds
                  if r.get("n_train") is not None}
    by_fold: dict[tuple, object] = {(p.regressor, p.mode, p.target, p.repeat, p.fold): p for p in predictions}
    out = []
    for name, target in dict.fromkeys((p.regressor, p.target) for p in predictions):
        for mode in modes:
            reference = comparison_reference(mode, modes)
            if reference is None:
                continue
            matched = same_training_rows(mode, reference)
            if (matched and _label_only(name)) or _zero_shot(name):  # the same predictions on both sides
                continue
            pairs = list(dict.fromkeys(key[3:] for side in (mode, reference) for key in by_fold
                                       if key[:3] == (name, side, target)))  # the mode's folds in their order first
            if not pairs:
                continue
            paired = _paired_folds(by_fold, failed, name, target, mode, reference, pairs)
            n_train = [float(np.mean(values)) if values else float("nan") for values in (
                [n_train_of[(name, m, target, rep, fold)] for rep, fold in paired["folds"]
                 if (name, m, target, rep, fold) in n_train_of] for m in (mode, reference))]
            out.append({"regressor": name, "target": target, "mode": mode, "reference": reference,
                        "matched_training": matched,
                        "isolates": get_mode(mode).isolates if matched and reference == get_mode(mode).reference
                        else _isolates(mode, reference, matched),
                        "srcc_mode": _mean(paired["mode"]), "srcc_reference": _mean(paired["reference"]),
                        **_difference(np.subtract(paired["mode"], paired["reference"]), float(np.min(n_train)),
                                      paired["n_test"], [rep for rep, _ in paired["folds"]]),
                        "n_repeats": len({rep for rep, _ in paired["folds"]}),
                        "n_test_samples": len(paired["samples"]),
                        "failed_folds": paired["failed"], "folds_left_out": paired["left_out"]})
    return out


def _zero_shot(regressor: str) -> bool:
    spec = REGRESSORS.get(regressor)
    return bool(spec and spec.zero_shot)


def _label_only(regressor: str) -> bool:
    spec = REGRESSORS.get(regressor)
    return bool(spec and not spec.reads_features)


def _paired_folds(by_fold: dict, failed: set, name: str, target: str, mode: str, reference: str,
                  pairs: list) -> dict:
    """Fold by fold, the SRCC of the mode and of its reference on their shared test samples."""
    paired: dict = {"mode": [], "reference": [], "folds": [], "n_test": [], "samples": set(), "failed": [],
                    "left_out": []}
    for rep, fold in pairs:
        a, b = by_fold.get((name, mode, target, rep, fold)), by_fold.get((name, reference, target, rep, fold))
        if a is None or b is None:
            paired["left_out"].append({"repeat": rep, "fold": fold,
                                       "why": f"no predictions of {mode if a is None else reference}"})
            continue
        shared, ia, ib = np.intersect1d(a.rows, b.rows, return_indices=True)
        if len(shared) < MIN_TEST:
            paired["left_out"].append({"repeat": rep, "fold": fold,
                                       "why": f"{len(shared)} shared test samples, fewer than {MIN_TEST}"})
            continue
        for side, m, rows in ((a, mode, ia), (b, reference, ib)):
            if (name, m, target, rep, fold) in failed:
                paired["failed"].append({"repeat": rep, "fold": fold, "mode": m})
                value = 0.0
            else:
                value = srcc_counted(side.y_true[rows], side.y_pred[rows])
            paired["mode" if m == mode else "reference"].append(value)
        paired["folds"].append((rep, fold))
        paired["n_test"].append(len(shared))
        paired["samples"].update(shared.tolist())
    return paired


def _difference(diff: np.ndarray, n_train: float, n_test: list, repeats: list) -> dict:
    """Mean, population SD, the corrected resampled t p (`inference.corrected_t`) and its 95% interval of the
    per-fold differences."""
    n_test_mean = float(np.mean(n_test)) if n_test else float("nan")
    test = corrected_t(diff, n_train, n_test_mean, repeats)
    low, high = test.interval()
    return {"diff_mean": _mean(diff), "diff_std": float(np.std(diff)) if len(diff) else float("nan"),
            "test": CORRECTED_T, "p": test.p, "df": test.df, "diff_se": test.se, "diff_ci_low": low,
            "diff_ci_high": high, "n_folds": int(len(diff)), "n_train_mean": n_train, "n_test_mean": n_test_mean}


def _isolates(mode: str, reference: str, matched: bool) -> str:
    if matched:
        return f"{mode}'s inputs against {reference}'s, same training and test samples"
    return (f"{mode}'s inputs and training samples together against {reference}'s: the two train on different "
            "samples, so the difference mixes the inputs with the training set's size and make-up")


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def breakdown(predictions: list, samples: dict) -> list[dict]:
    """Pooled out-of-fold SRCC/PLCC per generator and per subset (T2I/I2I), averaged over repeats."""
    out = []
    for (name, mode, target), preds in _keys(predictions).items():
        repeats = sorted({p.repeat for p in preds})
        for by in ("generator", "subset"):
            labels = np.asarray(samples[by])
            values: dict[str, list] = {}
            for rep in repeats:
                chosen = [p for p in preds if p.repeat == rep]
                rows = np.concatenate([p.rows for p in chosen])
                y_true = np.concatenate([p.y_true for p in chosen])
                y_pred = np.concatenate([p.y_pred for p in chosen])
                for value in np.unique(labels[rows]):
                    mask = labels[rows] == value
                    corr = pooled_correlations(y_true[mask], y_pred[mask])
                    values.setdefault(str(value), []).append((corr["srcc"], corr["plcc"], int(mask.sum())))
            for value, items in values.items():
                out.append({"regressor": name, "mode": mode, "target": target, "by": by, "value": value,
                            "srcc": float(np.mean([i[0] for i in items])),
                            "plcc": float(np.mean([i[1] for i in items])), "n": items[0][2]})
    return out
