"""Transfer across databases: train on all of one cache, test on all of another, for every ordered pair.

Protocol (what transfer.json calls `protocol`): for each mode, target and ordered pair (source, test) of different
caches, one head of the regressor is trained on every sample of the source that the mode can use (FR: those with
an image prompt) and scored on every such sample of the test cache; its hyper-parameters are chosen inside the
source (held-out prompt groups, as in cross-validation). The logistic PLCC maps the test predictions through the
4-parameter logistic fitted on the source: the head's predictions of its own training rows against the source
labels, so nothing is fitted on the test database. The diagonal is each source's own cross-validated score
(`cv.cross_validate`: the same regressor and mode, prompt-disjoint folds and repeats as `featcache fit`), fold
means with failed folds counted as 0. RMSE is not reported: the predictions are on the source's label scale, and
databases rate on scales of their own.

Uncertainty: each transfer cell's SRCC, PLCC and logistic PLCC carry a 95% percentile interval over the test
database's prompt groups (`inference.group_bootstrap_interval`, whole groups resampled with replacement, the head
and its logistic fixed, 1000 resamples seeded with the run's seed); a diagonal cell carries its cross-validation's
pooled SRCC and PLCC and their intervals (`cv.cross_validate`'s summary row), beside the fold means.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featcache.errors import FeatcacheError, FeatcacheWarning
from regressors.cache_data import CacheData, cached_backbone_ids, load_cache, resolve_backbone_id
from regressors.cv import check_jobs, cross_validate
from regressors.design import content_groups, design_matrix
from regressors.fitting import Member, fit_members
from regressors.inference import BOOTSTRAP_SAMPLES, LEVEL, PooledPredictions, group_bootstrap_interval
from regressors.metrics import logistic4, quality_metrics
from regressors.modes import get_mode
from regressors.heads_io import savable_regressors
from regressors.registry import get_regressor
from regressors.report import finite_or_null

SCALES_NOTE = ("Labels on different scales are expected: SRCC is scale-free; PLCC is unchanged by a linear rescaling "
               "of either side; the logistic PLCC maps the predictions (on the source's scale) through the logistic "
               "fitted on the source, so a non-linear difference between the scales lowers it; no RMSE is reported "
               "(the predictions are on the source's scale).")
METRICS = ("srcc", "plcc", "plcc_logistic", "krcc")
TRANSFER_DEFAULTS = {"folds": 5, "repeats": 1, "seed": 0}
INTERVAL_METRICS = ("srcc", "plcc", "plcc_logistic")
INTERVAL_KEYS = tuple(f"{m}_ci_{side}" for m in INTERVAL_METRICS for side in ("low", "high"))
POOLED_KEYS = tuple(f"{m}_pooled" for m in INTERVAL_METRICS)
INTERVALS = (f"{LEVEL:.0%} percentile interval over the test database's prompt groups (regressors.design."
             f"content_groups), {BOOTSTRAP_SAMPLES} resamples of whole groups with replacement, the head and its "
             "logistic fixed: how the score moves with the test prompts sampled, not with the training database; "
             "the logistic PLCC's is the PLCC interval of the predictions mapped through the source's logistic. On "
             "the diagonal: the cross-validation's pooled SRCC and PLCC (all out-of-fold predictions of a repeat, "
             "mean over the repeats) with the same bootstrap over the source's prompt groups; the cross-validation "
             "has no pooled logistic PLCC (each fold maps through its own curve), so its value and interval there "
             "are null")


@dataclass
class TransferResults:
    """config (caches, backbone, modes, targets and their names per cache, regressor, seed, CV settings,
    protocol, scales note), labels (per cache and target: n, min, max, mean, sd) and cells (one per mode x
    target x source x test; `protocol` 'transfer' off the diagonal, 'cv' on it)."""

    config: dict
    labels: list[dict] = field(default_factory=list)
    cells: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"kind": "transfer", "config": self.config, "labels": self.labels, "cells": self.cells}


def database_names(paths: list[str]) -> list[str]:
    """Each cache's name in the tables: its file stem, or the path as given where two stems coincide."""
    stems = [Path(p).stem for p in paths]
    return [stem if stems.count(stem) == 1 else str(p) for stem, p in zip(stems, paths)]


def check_caches(paths: list[str]) -> None:
    """At least two caches, each a file, no file given twice (under any spelling)."""
    if len(paths) < 2:
        raise FeatcacheError(f"transfer needs at least two caches (got {len(paths)}): a source and a test database")
    for p in paths:
        if not Path(p).is_file():
            raise FeatcacheError(f"{p}: cache not found")
    for i, a in enumerate(paths):
        for b in paths[:i]:
            if os.path.samefile(a, b):
                raise FeatcacheError(f"{a} and {b} are the same cache; transfer needs different databases")


def _which_cache(token: str, paths: list[str], entry: str) -> int:
    """The cache a --target-map side names: its path as given, the same file, its file name or its stem."""
    hits = [i for i, p in enumerate(paths) if token in (str(p), Path(p).name, Path(p).stem)]
    if not hits and Path(token).is_file():
        hits = [i for i, p in enumerate(paths) if os.path.samefile(token, p)]
    if len(hits) > 1:
        listed = ", ".join(paths[i] for i in hits)
        raise FeatcacheError(f"--target-map {entry}: {token!r} names several caches ({listed}); name the cache by "
                             "its path")
    if not hits:
        raise FeatcacheError(f"--target-map {entry}: {token!r} is none of the caches ({', '.join(paths)}); name a "
                             "cache by its path or file stem")
    return hits[0]


def parse_target_map(entries: list[str], paths: list[str]) -> list[tuple[tuple[int, str], tuple[int, str]]]:
    """`A:MOS_q=B:mos_quality` entries as ((cache index, name), (cache index, name)) pairs: the two names are the
    same quantity. A and B are caches' paths, file names or stems; a side's name follows its last colon."""
    pairs = []
    for entry in entries:
        sides = entry.split("=")
        parsed = []
        for side in sides:
            token, colon, name = side.rpartition(":")
            if not colon or not token or not name:
                parsed = None
                break
            parsed.append((token, name))
        if len(sides) != 2 or parsed is None:
            raise FeatcacheError(f"--target-map {entry!r}: expected CACHE:TARGET=CACHE:TARGET (e.g. "
                                 "A:MOS_q=B:mos_quality, A and B the caches' file stems or paths)")
        (ta, na), (tb, nb) = parsed
        a, b = _which_cache(ta, paths, entry), _which_cache(tb, paths, entry)
        if a == b:
            raise FeatcacheError(f"--target-map {entry}: both sides name {paths[a]}; map a target of one cache to "
                                 "a target of another")
        pairs.append(((a, na), (b, nb)))
    return pairs


def target_names(datas: list[CacheData], wanted: list[str] | None, pairs: list, names: list[str]) -> list[dict]:
    """Per target (named as the first cache names it), its name in every cache: the one --target-map links it to,
    else the same name. `wanted` None: every target of the first cache found in every cache (the others left out
    with a warning); named: each must be found, else one line naming the cache that lacks it."""
    for (a, na), (b, nb) in pairs:
        for i, name in ((a, na), (b, nb)):
            if name not in datas[i].targets:
                raise FeatcacheError(f"--target-map: {datas[i].path} has no target {name!r} (its targets: "
                                     f"{', '.join(datas[i].targets)})")
    linked: dict[tuple[int, str], set] = {}
    for x, y in pairs:  # groups of (cache, name) that name one quantity (a chain A=B, B=C joins all three)
        group = linked.get(x, {x}) | linked.get(y, {y})
        for node in group:
            linked[node] = group
    out, left_out = [], []
    for name in (datas[0].targets if wanted is None else wanted):
        if wanted is not None and name not in datas[0].targets:
            raise FeatcacheError(f"--target {name}: {datas[0].path} has no such target (its targets: "
                                 f"{', '.join(datas[0].targets)}); --target names targets as the first cache does")
        group = linked.get((0, name), set())
        per_cache, missing = [], None
        for i, data in enumerate(datas):
            mapped = sorted(n for j, n in group if j == i)
            if len(mapped) > 1:
                raise FeatcacheError(f"--target-map links {name!r} to several targets of {data.path}: "
                                     f"{', '.join(mapped)}")
            found = mapped[0] if mapped else (name if name in data.targets else None)
            if found is None and missing is None:
                missing = i
            per_cache.append(found)
        if missing is not None:
            if wanted is not None:
                raise FeatcacheError(f"target {name} is not in {datas[missing].path} (its targets: "
                                     f"{', '.join(datas[missing].targets)}); map it with --target-map "
                                     f"{names[0]}:{name}={names[missing]}:NAME")
            left_out.append(f"{name} (not in {datas[missing].path})")
            continue
        out.append({"target": name, "names": per_cache})
    if not out:
        listed = "; ".join(f"{d.path} has {', '.join(d.targets)}" for d in datas)
        raise FeatcacheError(f"no target is in every cache ({listed}); map them with --target-map "
                             f"{names[0]}:NAME={names[1]}:NAME")
    if left_out:
        warnings.warn(f"left out of the default targets: {', '.join(left_out)}", FeatcacheWarning, stacklevel=3)
    return out


def common_backbone(paths: list[str], backbone: str | None) -> str:
    """The backbone id `backbone` resolves to in every cache (`resolve_backbone_id`), which must be the same one;
    else one line naming the ids each cache has."""
    ids = [cached_backbone_ids(p) for p in paths]
    resolved, failed = [], []
    for p, have in zip(paths, ids):
        try:
            resolved.append(resolve_backbone_id(have, backbone, p))
        except FeatcacheError:
            failed.append(p)
    if failed or len(set(resolved)) > 1:
        listed = "; ".join(f"{p} has {', '.join(have) or 'no features'}" for p, have in zip(paths, ids))
        asked = f"--backbone {backbone}" if backbone else "one backbone id"
        raise FeatcacheError(f"no common backbone: {asked} must name the same id in every cache ({listed}); "
                             "extract it into each cache with the same options")
    return resolved[0]


def check_regressor(regressor: str) -> None:
    """A feature-reading regressor that a head can be saved for (ridge, svr, mlp): the label-only floors read
    each database's own generators and prompts, which another database does not share."""
    spec = get_regressor(regressor)
    if not spec.can_be_saved:
        what = "a zero-shot row fits nothing to" if spec.zero_shot else "a label-only floor cannot"
        raise FeatcacheError(f"--regressor {regressor}: {what} transfer to another database; "
                             f"choose one of {', '.join(savable_regressors())}")


def check_mode(data: CacheData, mode: str) -> None:
    if get_mode(mode).needs_prompt_image and not (data.samples.prompt_image >= 0).any():
        raise FeatcacheError(f"--mode {mode}: {data.path} has no sample with an image prompt; use --mode nr (or pr)")


def label_stats(data: CacheData, name: str, database: str, target: str) -> dict:
    y = data.target(name)
    return {"database": database, "target": target, "name": name, "n": int(len(y)), "min": float(np.min(y)),
            "max": float(np.max(y)), "mean": float(np.mean(y)), "sd": float(np.std(y))}


def transfer(caches: list[str], backbone: str | None = None, modes: list[str] | None = None,
             targets: list[str] | None = None, regressor: str = "ridge", target_map: list[str] | None = None, *,
             folds: int = 5, repeats: int = 1, seed: int = 0, jobs: int | str = 1, device: str = "cpu",
             backend: str | None = None) -> TransferResults:
    """Every ordered pair (source, test) of `caches` x mode x target: train on all of the source, score on all of
    the test cache (SRCC, PLCC, logistic PLCC with the logistic fitted on the source, KRCC); the diagonal is the
    source's cross-validated score (`cv.cross_validate`, `folds` x `repeats`, prompt-disjoint). Every input is
    checked before anything is fitted. Seeded: the same inputs give the same numbers whatever `jobs`."""
    caches = [str(c) for c in caches]
    check_caches(caches)
    check_jobs(jobs)
    check_regressor(regressor)
    modes = ["nr"] if modes is None else list(modes)
    if not modes:
        raise FeatcacheError("--mode: give at least one mode, or leave the option out for nr")
    for mode in modes:
        get_mode(mode)
    names = database_names(caches)
    pairs = parse_target_map(target_map or [], caches)
    bid = common_backbone(caches, backbone)
    datas = [load_cache(c, bid) for c in caches]
    for data in datas:
        for mode in modes:
            check_mode(data, mode)
    chosen = target_names(datas, targets, pairs, names)
    if get_regressor(regressor).uses_device:
        from featcache.devices import resolve_device

        device = str(resolve_device(device))
    config = {"caches": caches, "databases": names, "backbone": bid, "modes": modes,
              "targets": [{"target": t["target"], "names": dict(zip(names, t["names"]))} for t in chosen],
              "regressor": regressor, "seed": seed, "cv": {"split": "group", "folds": folds, "repeats": repeats,
                                                           "seed": seed},
              "logistic_fitted_on": "the source's training predictions against its labels",
              "rmse": "not reported: the predictions are on the source's label scale",
              "protocol": __doc__.split("\n\n", 1)[1].split("\n\nUncertainty")[0].strip(),
              "scales_note": SCALES_NOTE,
              "intervals": {"method": INTERVALS, "level": LEVEL, "resamples": BOOTSTRAP_SAMPLES, "seed": seed}}
    results = TransferResults(config)
    results.labels = [label_stats(d, t["names"][i], names[i], t["target"]) for t in chosen
                      for i, d in enumerate(datas)]
    matrices = {(i, mode): design_matrix(d, mode) for i, d in enumerate(datas) for mode in modes}
    for mode in modes:
        for s, source in enumerate(datas):
            cv_rows = _diagonal(source, mode, chosen, s, regressor, folds=folds, repeats=repeats,
                                seed=seed, jobs=jobs, backend=backend, device=device,
                                warn_folds=mode == modes[0])  # the same folds in every mode: warned once
            off = _off_diagonal(datas, s, mode, chosen, regressor, matrices, seed, device)
            for t in chosen:
                for k in range(len(datas)):
                    cell = cv_rows[t["target"]] if k == s else off[(t["target"], k)]
                    results.cells.append({"mode": mode, "target": t["target"], "source": names[s], "test": names[k],
                                          "source_target": t["names"][s], "test_target": t["names"][k], **cell})
    return results


def _off_diagonal(datas: list[CacheData], s: int, mode: str, chosen: list[dict], regressor: str, matrices: dict,
                  seed: int, device: str) -> dict:
    """{(target, test index): cell}: one head per target trained on all of the source's rows of `mode` (the
    targets share one fit where the regressor batches them), its predictions of every other cache's rows scored
    against that cache's labels."""
    x_source, rows = matrices[(s, mode)]
    tests = [k for k in range(len(datas)) if k != s]
    x = np.concatenate([x_source] + [matrices[(k, mode)][0] for k in tests])
    bounds = np.cumsum([len(x_source)] + [len(matrices[(k, mode)][0]) for k in tests])
    groups = content_groups(datas[s])[rows]
    test_groups = {k: content_groups(datas[k])[matrices[(k, mode)][1]] for k in tests}
    members = [Member(np.arange(len(rows)), datas[s].target(t["names"][s])[rows], np.arange(len(rows), len(x)),
                      groups, seed) for t in chosen]
    out = {}
    for t, member, f in zip(chosen, members, fit_members(regressor, x, members, device)):
        train_sd = float(np.std(member.y_train))
        for j, k in enumerate(tests):
            pred = f.pred[bounds[j] - len(x_source):bounds[j + 1] - len(x_source)]
            y_test = datas[k].target(t["names"][k])[matrices[(k, mode)][1]]
            metrics = quality_metrics(y_test, pred, train_sd, f.logistic)
            intervals = (dict.fromkeys(INTERVAL_KEYS, float("nan")) if metrics["failed"] else
                         transfer_intervals(y_test, pred, test_groups[k], f.logistic, seed))
            out[(t["target"], k)] = {"protocol": "transfer", **{m: metrics[m] for m in METRICS}, **intervals,
                                     "ci_groups": int(len(np.unique(test_groups[k]))),
                                     "failed": metrics["failed"], "n_train": int(len(rows)),
                                     "n_test": int(len(y_test)), "chosen": f.chosen,
                                     "logistic_fitted": f.logistic is not None, "seconds": round(f.seconds, 4)}
    return out


def transfer_intervals(y_test: np.ndarray, pred: np.ndarray, groups: np.ndarray, logistic: np.ndarray | None,
                       seed: int, samples: int = BOOTSTRAP_SAMPLES) -> dict:
    """`<metric>_ci_low` and `<metric>_ci_high` (INTERVAL_KEYS) of one head's predictions `pred` of a test
    database's labels `y_test`: `inference.group_bootstrap_interval` over `groups` (the test samples' prompt groups),
    `samples` resamples seeded with `seed`. The logistic PLCC's is the PLCC interval of `pred` mapped through
    `logistic` (the source's curve; None, or a mapping that is not finite or is constant: the plain PLCC's, as
    `metrics.plcc_after_logistic` falls back). NaN with fewer than 3 groups."""
    pooled = PooledPredictions(np.asarray(y_test, dtype=np.float64), np.asarray(pred, dtype=np.float64)[None, :],
                               np.asarray(groups))
    mapped = pooled
    if logistic is not None:
        with np.errstate(over="ignore"):
            values = logistic4(pooled.y_pred, *logistic)
        if np.isfinite(values).all() and np.ptp(values) > 0:
            mapped = PooledPredictions(pooled.y_true, values, pooled.groups)
    out = {}
    for metric, which, data in (("srcc", "srcc", pooled), ("plcc", "plcc", pooled), ("plcc_logistic", "plcc", mapped)):
        low, high = group_bootstrap_interval(data, which, samples=samples, seed=seed)
        out[f"{metric}_ci_low"], out[f"{metric}_ci_high"] = low, high
    return out


def _diagonal(source: CacheData, mode: str, chosen: list[dict], s: int, regressor: str,
              **options) -> dict:
    """{target: cell}: the source's cross-validated fold means (failed folds counted as 0) and their SDs, and its
    pooled SRCC and PLCC with their intervals (the summary row's; the logistic PLCC's null)."""
    names = [t["names"][s] for t in chosen]
    result = cross_validate(source, [mode], names, [regressor], split="group", **options)
    out = {}
    for t, name in zip(chosen, names):
        row = next(r for r in result.summary if r["target"] == name and r["mode"] == mode)
        out[t["target"]] = {"protocol": "cv", **{m: row[f"{m}_mean"] for m in METRICS},
                            **{f"{m}_sd": row[f"{m}_std"] for m in ("srcc", "plcc")}, "sd_over": row["std_over"],
                            **{f"{m}_pooled": row.get(f"{m}_pooled", float("nan")) for m in INTERVAL_METRICS},
                            **{k: row.get(k, float("nan")) for k in INTERVAL_KEYS},
                            "ci_groups": row.get("ci_groups", 0),
                            "n_folds": row["n_folds"], "n_failed": row["n_failed"], "n_train": row["n_train"],
                            "n_test": row["n_test"]}
    return out


OUTPUT_FILES = {"json": "transfer.json", "csv": "transfer.csv", "table": "transfer.md", "latex": "transfer.tex"}
CSV_COLUMNS = ("mode", "target", "source", "test", "source_target", "test_target", "protocol", *METRICS,
               *INTERVAL_KEYS, *POOLED_KEYS, "ci_groups", "failed", "n_train", "n_test", "n_folds", "n_failed")


def write_transfer(results: TransferResults, folder: str | Path, run_info: dict | None = None) -> dict[str, Path]:
    """transfer.json (`TransferResults.to_dict`, undefined numbers as null, `run` = `run_info`), transfer.csv (one
    row per cell), transfer.md and transfer.tex (`transfer_table.render_transfer` with the intervals) into `folder`,
    created with its missing parents; each file written atomically. A failure removes the folders it created (when
    empty)."""
    import json

    from featcache.outputs import write_text_atomically
    from regressors.report import missing_folders, remove_if_empty
    from regressors.safe_text import csv_text
    from regressors.transfer_table import render_transfer

    folder = Path(folder)
    created = missing_folders(folder)
    payload = finite_or_null({**results.to_dict(), **({"run": run_info} if run_info else {})})
    paths = {key: folder / name for key, name in OUTPUT_FILES.items()}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomically(paths["json"], json.dumps(payload, indent=2, default=str) + "\n")
        rows = [[cell.get(k, "") if cell.get(k) is not None else "" for k in CSV_COLUMNS] for cell in payload["cells"]]
        write_text_atomically(paths["csv"], csv_text(CSV_COLUMNS, rows))
        write_text_atomically(paths["table"], render_transfer(payload, fmt="md", ci=True))
        write_text_atomically(paths["latex"], render_transfer(payload, fmt="latex", ci=True))
    except OSError as exc:
        remove_if_empty(created)
        raise FeatcacheError(f"--out {folder}: cannot write the results ({exc.strerror or exc})") from None
    return paths
