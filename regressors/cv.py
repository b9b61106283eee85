"""One cross-validation harness for every regressor, mode and target; folds and cells run through joblib."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
from joblib import Parallel, delayed, parallel_config

from featcache.errors import FeatcacheError
from regressors.design import CacheData, design_matrix, label_codes, mode_rows
from regressors.metrics import quality_metrics
from regressors.registry import get_regressor
from regressors.splits import make_folds, subset_mask

SUMMARY_METRICS = ("srcc", "plcc", "krcc", "rmse")


@dataclass
class CVResults:
    config: dict
    folds: list[dict] = field(default_factory=list)
    summary: list[dict] = field(default_factory=list)
    predictions: dict = field(default_factory=dict)  # (regressor, mode, target) -> (y_true, y_pred) of repeat 0

    def to_dict(self) -> dict:
        return {"config": self.config, "folds": self.folds, "summary": self.summary}


def backend_context(backend: str | None):
    """joblib's own backends reach a cluster; the optional extras bring them."""
    if backend in (None, "", "loky", "threading", "multiprocessing"):
        return parallel_config(backend=backend) if backend else contextlib.nullcontext()
    if backend == "dask":
        try:
            from dask.distributed import Client, get_client
        except ImportError:
            raise FeatcacheError("--backend dask needs dask.distributed: pip install 'featcache[dask]'") from None
        try:
            get_client()
        except ValueError:
            Client(processes=False)  # a local cluster when none is connected; set DASK_SCHEDULER_ADDRESS for yours
        return parallel_config(backend="dask")
    if backend == "ray":
        try:
            from ray.util.joblib import register_ray
        except ImportError:
            raise FeatcacheError("--backend ray needs ray: pip install 'featcache[ray]'") from None
        register_ray()
        return parallel_config(backend="ray")
    raise FeatcacheError(f"unknown --backend {backend!r}; choose loky, dask or ray")


def _fit_one(x_train, y_train, x_test, name: str, seed: int, device: str) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    model = get_regressor(name).factory(seed, device).fit(x_train, y_train)
    return model.predict(x_test), time.perf_counter() - start


def cross_validate(data: CacheData, modes: list[str], targets: list[str], regressors: list[str], *,
                   split: str = "group", folds: int = 5, repeats: int = 1, seed: int = 0, subset: str = "all",
                   train_on: str | None = None, test_on: str | None = None, jobs: int = 1,
                   backend: str | None = None, device: str = "cpu") -> CVResults:
    for name in regressors:
        get_regressor(name)
    labels = {t: data.target(t) for t in targets}
    s = data.samples
    selection = np.flatnonzero(subset_mask(s.subset, s.generator, subset))
    config = {"cache": data.path, "backbone": data.backbone_id, "modes": modes, "targets": targets,
              "regressors": regressors, "split": split, "folds": folds, "repeats": repeats, "seed": seed,
              "subset": subset, "train_on": train_on, "test_on": test_on}
    results = CVResults(config)
    tasks, meta = [], []
    needs_features = any(get_regressor(name).uses_features for name in regressors)
    for mode in modes:
        x, rows = design_matrix(data, mode, selection) if needs_features else (None, mode_rows(data, mode, selection))
        position = {int(r): i for i, r in enumerate(rows)}
        what = f"--subset {subset}" + (" (samples with an image prompt)" if mode.startswith("fr") else "")
        fold_list = [(fold, np.array([position[int(i)] for i in fold.train]),
                      np.array([position[int(i)] for i in fold.test]))
                     for fold in make_folds(rows, s.group, s.subset, s.generator, split, folds, repeats, seed,
                                            train_on, test_on, what)]
        codes = label_codes(data, rows)
        for target in targets:
            y = labels[target][rows]
            for name in regressors:
                inputs = x if get_regressor(name).uses_features else codes
                for fold, train, test in fold_list:
                    tasks.append(delayed(_fit_one)(inputs[train], y[train], inputs[test], name,
                                                   seed + fold.repeat, device))
                    meta.append((name, mode, target, fold, y[test]))
    with backend_context(backend):
        outputs = Parallel(n_jobs=jobs)(tasks)
    for (name, mode, target, fold, y_test), (pred, seconds) in zip(meta, outputs):
        row = {"regressor": name, "mode": mode, "target": target, "repeat": fold.repeat, "fold": fold.fold,
               **quality_metrics(y_test, pred), "n_train": int(len(fold.train)), "n_test": int(len(fold.test)),
               "seconds": round(seconds, 4)}
        results.folds.append(row)
        if fold.repeat == 0:
            true, predicted = results.predictions.get((name, mode, target), (np.empty(0), np.empty(0)))
            results.predictions[(name, mode, target)] = (np.concatenate([true, y_test]),
                                                         np.concatenate([predicted, pred]))
    results.summary = summarize(results.folds)
    return results


def summarize(folds: list[dict]) -> list[dict]:
    """Mean and std over folds and repeats, one row per regressor x mode x target, in first-seen order."""
    order: dict[tuple, list[dict]] = {}
    for row in folds:
        order.setdefault((row["regressor"], row["mode"], row["target"]), []).append(row)
    summary = []
    for (name, mode, target), rows in order.items():
        entry = {"regressor": name, "mode": mode, "target": target}
        for metric in SUMMARY_METRICS:
            values = np.array([r[metric] for r in rows], dtype=np.float64)
            finite = values[np.isfinite(values)]
            entry[f"{metric}_mean"] = float(finite.mean()) if len(finite) else float("nan")
            entry[f"{metric}_std"] = float(finite.std()) if len(finite) else float("nan")
        entry["n_folds"] = len(rows)
        entry["undefined_folds"] = int(sum(not np.isfinite(r["srcc"]) for r in rows))  # constant predictions
        entry["n_train"] = int(np.mean([r["n_train"] for r in rows]))
        entry["n_test"] = int(np.mean([r["n_test"] for r in rows]))
        entry["seconds"] = float(sum(r["seconds"] for r in rows))
        summary.append(entry)
    return summary
