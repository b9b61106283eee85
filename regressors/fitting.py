"""Fit many members (fold x target x seed of one regressor and mode) and predict their test samples.

A regressor's spec may name a batched fitter (`fit_members`): ridge solves every target of a fold from one
decomposition, the SVR fits a fold's targets from one kernel, the MLP trains the members it is given (a cell on
CUDA, a fold on the CPU) as one stacked model; the rest fit one by one. Every fitter returns one `Fitted` per
member: its test predictions and also its predictions of its own training rows (what cv fits the logistic
mapping on, so the test labels never shape it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from regressors.registry import get_regressor


@dataclass
class Member:
    train: np.ndarray  # positions in the task's input matrix
    y_train: np.ndarray
    test: np.ndarray
    groups: np.ndarray | None  # content groups of the training samples, for held-out-group selection
    seed: int


class Fitted(NamedTuple):
    """What fitting one member gives: predictions of its test rows, the hyper-parameters it chose inside its
    training rows, the seconds it took, its (in-sample) predictions of its training rows in `Member.train` order,
    and the logistic mapping fitted on those against the training labels (`training_logistic`; `fit_members` sets
    it, the fitters leave it None)."""

    pred: np.ndarray
    chosen: dict
    seconds: float
    train_pred: np.ndarray
    logistic: np.ndarray | None = None


def fit_members(regressor: str, X: np.ndarray, members: list[Member], device: str = "cpu",
                blocks: tuple[int, ...] | None = None) -> list[Fitted]:
    """The spec's own batched fitter when it names one (`RegressorSpec.fit_members`), else one by one; each
    result with its `training_logistic` (fitted here, so in the worker that fitted the member). `blocks`: the
    fused backbones' widths of X's per-image features (`CacheData.blocks`), handed to feature-reading
    regressors, which weight each block (`preprocess.block_weights`); None: one backbone."""
    spec = get_regressor(regressor)
    blocks = blocks if spec.reads_features and not spec.zero_shot else None  # a zero-shot row weighs none
    extra = {"blocks": blocks} if blocks else {}
    if spec.fit_members:
        import importlib

        module, _, function = spec.fit_members.partition(":")
        fitted = getattr(importlib.import_module(module), function)(X, members, device, **extra)
    else:
        fitted = [_one(regressor, X, m, device, blocks) for m in members]
    return [f._replace(logistic=training_logistic(m, f.train_pred)) for f, m in zip(fitted, members)]


def training_logistic(member: Member, train_pred: np.ndarray) -> np.ndarray | None:
    """The 4-parameter logistic (`metrics.fit_logistic`) mapping a member's predictions of its own training rows
    onto their labels: what cv maps the member's test predictions through before the logistic PLCC, so no test
    label shapes it. None where the training predictions are constant or admit no increasing curve."""
    from regressors.metrics import fit_logistic, prediction_failed

    y_train = np.asarray(member.y_train, dtype=np.float64)
    if prediction_failed(train_pred, float(np.std(y_train))):
        return None
    return fit_logistic(y_train, train_pred)


def fit_estimator(model, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None):
    """fit(X, y, groups=...) for estimators whose fit takes groups (held-out-group selection); plain fit else."""
    import inspect

    if groups is not None and "groups" in inspect.signature(model.fit).parameters:
        return model.fit(X, y, groups=groups)
    return model.fit(X, y)


def _one(regressor: str, X: np.ndarray, m: Member, device: str, blocks: tuple[int, ...] | None = None) -> Fitted:
    start = time.perf_counter()
    model = get_regressor(regressor).factory(m.seed, device)
    if blocks:
        model.set_params(blocks=blocks)
    model = fit_estimator(model, X[m.train], m.y_train, m.groups)
    pred = np.asarray(model.predict(X[m.test]), dtype=np.float64)
    seconds = time.perf_counter() - start
    return Fitted(pred, chosen(model), seconds, np.asarray(model.predict(X[m.train]), dtype=np.float64))


def _same_training_rows(members: list[Member]) -> list[list[int]]:
    """Positions of the members that share training rows and seed (a fold's targets), in first-seen order."""
    by_rows: dict[tuple, list[int]] = {}
    for i, m in enumerate(members):
        by_rows.setdefault((np.asarray(m.train).tobytes(), m.seed), []).append(i)
    return list(by_rows.values())


def ridge_by_fold(X: np.ndarray, members: list[Member], device: str = "cpu",
                  blocks: tuple[int, ...] | None = None) -> list[Fitted]:
    """Members with the same training rows (a fold's targets) share the scaler and one eigendecomposition."""
    from regressors.preprocess import DEFAULT_CLIP, FoldScaler
    from regressors.ridge_path import RIDGE_ALPHAS, inner_groups, ridge_path

    out: list[Fitted | None] = [None] * len(members)
    for indices in _same_training_rows(members):
        start = time.perf_counter()
        first = members[indices[0]]
        scaler = FoldScaler(DEFAULT_CLIP, blocks).fit(X[first.train])
        xs = scaler.transform(X[first.train])
        center = xs.mean(axis=0)
        y = np.stack([members[i].y_train for i in indices], axis=1)
        y_mean = y.mean(axis=0)
        alphas, coef, _ = ridge_path(xs - center, y - y_mean, np.asarray(RIDGE_ALPHAS, float),
                                     inner_groups(first.groups, len(first.train)))
        seconds = (time.perf_counter() - start) / len(indices)
        for t, i in enumerate(indices):
            intercept = y_mean[t] - float(center @ coef[:, t])
            pred = scaler.transform(X[members[i].test]) @ coef[:, t] + intercept
            out[i] = Fitted(pred, {"alpha": float(alphas[t])}, seconds, xs @ coef[:, t] + intercept)
    return out


def svr_by_fold(X: np.ndarray, members: list[Member], device: str = "cpu",
                blocks: tuple[int, ...] | None = None) -> list[Fitted]:
    """Members with the same training rows and seed (a fold's targets) share the scaler, the kernel and the
    inner-split kernel slices; each target still chooses its own C and epsilon."""
    from regressors.standardized import StandardizedSVR

    out: list[Fitted | None] = [None] * len(members)
    for indices in _same_training_rows(members):
        start = time.perf_counter()
        first = members[indices[0]]
        models = StandardizedSVR.fit_shared(X[first.train], [members[i].y_train for i in indices], first.groups,
                                            random_state=first.seed, blocks=blocks)
        preds = [np.asarray(model.predict(X[members[i].test]), np.float64) for model, i in zip(models, indices)]
        seconds = (time.perf_counter() - start) / len(indices)
        for model, pred, i in zip(models, preds, indices):
            out[i] = Fitted(pred, chosen(model), seconds, np.asarray(model.training_predictions_, np.float64))
    return out


def stacked_mlp(X: np.ndarray, members: list[Member], device: str = "cpu",
                blocks: tuple[int, ...] | None = None) -> list[Fitted]:
    from regressors.mlp import fit_mlp_members

    start = time.perf_counter()
    models = fit_mlp_members(X, [(m.train, m.y_train, m.groups, m.seed) for m in members], {"blocks": blocks},
                             device=device)
    seconds = (time.perf_counter() - start) / max(1, len(members))
    return [Fitted(np.asarray(model.predict(X[m.test]), np.float64), chosen(model), seconds,
                   np.asarray(model.predict(X[m.train]), np.float64)) for model, m in zip(models, members)]


def chosen(model) -> dict:
    """The hyper-parameters a fitted model chose inside its training fold (reported per fold)."""
    if hasattr(model, "chosen_"):
        return dict(model.chosen_)
    if hasattr(model, "best_epoch_"):
        return {"epochs": int(model.best_epoch_)}
    return {}
