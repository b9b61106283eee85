"""`featcache fit` and `featcache bench` as Python functions: every decision (default modes, targets and
regressors for the selection and the cache, labels-only runs, save-head checks) is made here, not in the CLI."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from featcache.errors import FeatcacheError, FeatcacheWarning
from regressors.cache_data import CacheData, cached_backbone_ids, load_cache, resolve_backbone_id
from regressors.cv import CVResults, check_jobs, cross_validate, selection_rows
from regressors.heads import fit_and_save_head
from regressors.heads_io import check_savable
from regressors.modes import default_modes
from regressors.registry import check_regressors, default_regressors, get_regressor, labels_only, with_floors
from regressors.selection import INNER_FOLDS, check_inner_folds, check_selectable, nested_selection
from regressors.splits import get_split, subset_mask

LABEL_SOURCES = ("check", "cache", "annotation")
CV_DEFAULTS = {"split": "group", "folds": 5, "repeats": 1, "seed": 0, "subset": "all", "train_on": None,
               "test_on": None, "hold_out_prompts": False, "jobs": "auto", "backend": None, "device": "auto"}


def modes_for(data: CacheData, subset: str = "all", split: str = "group", train_on: str | None = None,
              test_on: str | None = None, extras: bool = False) -> list[str]:
    """Default modes that fit the selection: FR and PR only where both training and test samples can hold an
    image prompt (so `--subset t2i`, a T2I-only cache or `--split cross --train-on t2i` get NR alone)."""
    get_split(split)
    s = data.samples
    rows = selection_rows(data, subset)
    has = s.prompt_image >= 0
    if split == "cross" and train_on and test_on:
        train = rows[subset_mask(s.subset[rows], s.generator[rows], train_on)]
        test = rows[subset_mask(s.subset[rows], s.generator[rows], test_on)]
        return default_modes(bool(has[train].any()), bool(has[test].any()), extras)
    return default_modes(bool(has[rows].any()), bool(has[rows].any()), extras)


def located_annotation(data: CacheData, annotation_from: dict | None = None) -> tuple:
    """(the annotation `featcache.annotation_lookup.locate_annotation` finds for this cache or None, the error it
    raised or None): looked up once, for both the labels check and the images check."""
    from featcache.annotation_lookup import locate_annotation

    try:
        return locate_annotation(data.path, **(annotation_from or {})), None
    except FeatcacheError as exc:
        return None, exc


def current_labels(data: CacheData, labels: str = "check", root: str | None = None, annotation: str | None = None,
                   dataset: str | None = None, options: dict | None = None, located: tuple | None = None) -> list[str]:
    """Compare the cached labels with the annotation file this invocation would use before anything is fitted:
    `root`/`annotation`/`dataset` (command line or featcache.toml), else the one in the current folder, else the
    one the cache recorded (`featcache.annotation_lookup.locate_annotation`); none found: a warning that nothing was
    checked.

    check: a difference is a one-line error; cache: keep the cached labels (differences, or an annotation that
    cannot be read, are warnings: the annotation is not needed); annotation: fit on the annotation's labels (same
    samples required). `located`: `located_annotation`'s answer, when the caller has it. Returns the warnings'
    lines."""
    from featcache.annotation_lookup import (annotation_unchanged, labels_changed, read_labels_from_annotation,
                                             recorded_annotation)

    if labels not in LABEL_SOURCES:
        from featcache.errors import unknown_name

        raise unknown_name("label source", labels, LABEL_SOURCES)
    if located is None:
        located = located_annotation(data, dict(root=root, annotation=annotation, dataset=dataset, options=options))
    source, error = located
    try:
        if error is not None:
            raise error
        if source is None:
            stored = recorded_annotation(data.path)
            where = "none beside the cache or in the current folder, and " + (
                f"{stored}, which the cache was made from, is not there" if stored else "the cache recorded none")
            if labels == "annotation":
                raise FeatcacheError(f"--labels annotation: no annotation file found for {data.path} ({where}); "
                                     "pass --root or --annotation")
            return _notes([f"{data.path}: labels not checked against any annotation file ({where}); pass --root "
                           "or --annotation to check them"] if labels == "check" else [])
        if labels != "annotation" and annotation_unchanged(data.path, source):
            return []
        fresh = read_labels_from_annotation(data.path, source)
    except FeatcacheError as exc:
        if labels != "cache":
            raise
        return _notes([f"cached labels kept without comparing them with the annotation ({exc})"])
    shown = source.shown()
    changes = labels_changed(data.path, fresh, data.samples)
    same_samples = list(fresh.key) == list(data.samples.key)
    if labels == "annotation":
        if not same_samples:
            raise FeatcacheError(f"{data.path}: {changes[0]}; --labels annotation needs the same samples: run "
                                 "`featcache extract` again to rebuild the cache (its rows are kept)")
        data.samples.targets = {name: np.asarray(v, dtype=np.float64) for name, v in fresh.targets.items()}
        return _notes([f"fitting the labels of {shown}, not the cache's: {change}" for change in changes])
    if not changes:
        return []
    if labels == "cache":
        return _notes([f"cached labels kept although {shown} differs: {change}" for change in changes])
    if not same_samples:
        raise FeatcacheError(f"{data.path}: {shown} lists other samples than the cache ({changes[0]}); is it "
                             "another database's annotation? pass --root or --annotation to name this cache's, "
                             "--labels cache to keep the cached labels, or run `featcache extract` again to rebuild "
                             "the cache (its rows are kept)")
    raise FeatcacheError(f"{data.path}: the labels in {shown} changed since the cache was written "
                         f"({'; '.join(changes[:2])}); pass --labels annotation to fit the new labels, --labels cache "
                         "to keep the cached ones, or run `featcache extract` again to rebuild the cache (its rows "
                         "are kept)")


def current_images(data: CacheData, annotation_from: dict | None = None, located: tuple | None = None) -> list[str]:
    """One warning when images that have features changed on disk since their extraction (size or modification
    time: one stat per image, no read; the fit still runs on the cached features), one short note when the folder
    they were extracted from is not there (a moved cache: nothing compared); missing images say nothing (the
    features are there). The images are those under the root of the annotation the labels check reads (a copied
    database's own, not the original's; none found: the recorded root). Returns the warnings' lines."""
    from featcache.image_changes import images_on_disk

    source, _ = located_annotation(data, annotation_from) if located is None else located
    disk = images_on_disk(data.path, source.root if source is not None else None)
    if disk is None:  # a version 1 cache recorded nothing to compare with
        return []
    line = disk.changed_line() or disk.root_missing_line()
    return _notes([f"{data.path}: {line}"] if line else [])


def _notes(lines: list[str]) -> list[str]:
    """Each line is a one-line warning (the CLI prints `warning: ...`), and is returned too."""
    for line in lines:
        warnings.warn(line, FeatcacheWarning, stacklevel=3)
    return lines


def check_names(kind: str, names: list[str]) -> list[str]:
    if not names:
        raise FeatcacheError(f"--{kind}: give at least one name, or leave the option out for the default")
    return names


def check_options(options: dict, regressors: list[str]) -> None:
    """Refuse bad options before any data is read or any head fitted."""
    check_jobs(options["jobs"])
    if any(get_regressor(r).uses_device for r in regressors):
        from featcache.devices import resolve_device

        resolve_device(options["device"])
    get_split(options["split"])


@dataclass
class FitOutcome:
    results: CVResults
    data: CacheData
    head: dict | None = None
    head_path: str | None = None
    notes: list[str] = field(default_factory=list)


def check_head_path(path: str | Path) -> None:
    """Before any fitting: the folder must exist and be writable (a failure after the CV loses minutes)."""
    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise FeatcacheError(f"--save-head {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise FeatcacheError(f"--save-head {path}: folder {folder} is not writable")


def run_regressors(regressors: list[str] | None, floors: bool = True) -> tuple[list[str], list[str]]:
    """(the regressors asked for, the regressors fitted): the default grid when none are named, and the three
    label-only floors added to any list unless `floors` is False (`--no-floors`; the default grid then keeps
    only its feature-reading regressors)."""
    if regressors is None:
        regressors = [r for r in default_regressors() if floors or get_regressor(r).reads_features]
    asked = check_regressors(regressors)
    return asked, with_floors(asked, floors)


def fit(cache: str, backbone: str | None = None, modes: list[str] | None = None, targets: list[str] | None = None,
        regressors: list[str] | None = None, *, save_head: str | None = None, labels: str = "check",
        annotation_from: dict | None = None, floors: bool = True, select: bool = False,
        inner_folds: int = INNER_FOLDS, on_progress: Callable[[int, int], None] | None = None,
        block_weights: bool = True, **cv) -> FitOutcome:
    """Cross-validate heads on one backbone of a cache, or on a fusion `A+B` of several (`cache_data.load_cache`),
    and optionally save one head trained on everything. `block_weights`: a fusion's blocks are weighted to equal
    total variance inside each training fold (`preprocess.block_weights`, docs/fusion.md); False: per-feature
    standardisation only.
    `annotation_from`: root, annotation, dataset, options of the annotation the labels are compared with
    (`current_labels`; by default the one in the current folder, else the cache's). The label-only floors are
    fitted beside whatever `regressors` names unless `floors=False`; `save_head` saves the one regressor named.
    `select`: also score the nested selection of mode x regressor per target (`selection.nested_selection`, with
    `inner_folds` inner folds) into `results.selection`."""
    options = {**CV_DEFAULTS, **cv}
    asked, regressors = run_regressors(regressors, floors)
    check_options(options, regressors)
    if select:
        check_inner_folds(inner_folds)
        check_selectable(regressors)
    data = load_cache(cache, backbone, labels_only=labels_only(regressors), check_labels=labels != "annotation")
    data.weigh_blocks = block_weights
    located = located_annotation(data, annotation_from)
    notes = current_labels(data, labels, **(annotation_from or {}), located=located)
    notes += current_images(data, located=located) if not labels_only(regressors) else []  # only features go stale
    default_targets = targets is None
    targets = data.targets if default_targets else check_names("target", targets)
    defaults = modes is None
    modes = modes_for(data, options["subset"], options["split"], options["train_on"], options["test_on"]) \
        if defaults else check_names("mode", modes)
    if save_head:
        if len(modes) != 1 or len(targets) != 1 or len(asked) != 1:
            raise FeatcacheError("--save-head needs exactly one --mode, one --target and one --regressor")
        check_savable(asked[0])
        check_head_path(save_head)
    results = cross_validate(data, modes, targets, regressors, on_progress=on_progress,
                             leave_out_unfillable=defaults, leave_out_constant=default_targets, **options)
    _record_fusion(results, {data.backbone_id: list(data.parts)}, block_weights)
    if select:
        results.selection = _selected({data.backbone_id: data}, results, inner_folds, options, on_progress)
    outcome = FitOutcome(results, data, notes=notes)
    if save_head:
        outcome.head = fit_and_save_head(data, modes[0], targets[0], asked[0], save_head,
                                         subset=options["subset"], seed=options["seed"], device=options["device"])
        outcome.head_path = str(save_head)
    return outcome


def bench(cache: str, backbones: list[str] | None = None, modes: list[str] | None = None,
          targets: list[str] | None = None, regressors: list[str] | None = None, *, labels: str = "check",
          annotation_from: dict | None = None, floors: bool = True, select: bool = False,
          inner_folds: int = INNER_FOLDS, on_progress: Callable[[int, int], None] | None = None,
          block_weights: bool = True, **cv) -> CVResults:
    """Every backbone in `backbones` (all in the cache by default, unfused; each may be a fusion `A+B`, see `fit`
    for `block_weights`) into one result; rows gain a `backbone`. The
    label-only floors are fitted beside whatever `regressors` names unless `floors=False`. `select`: also score
    the nested selection of backbone x mode x regressor per target (`selection.nested_selection`) into
    `selection`."""
    options = {**CV_DEFAULTS, **cv}
    regressors = run_regressors(regressors, floors)[1]
    check_options(options, regressors)
    if select:
        check_inner_folds(inner_folds)
        check_selectable(regressors)
    ids = cached_backbone_ids(cache)
    chosen = list(dict.fromkeys(resolve_backbone_id(ids, b, cache) for b in backbones)) if backbones else ids
    if not chosen:
        raise FeatcacheError(f"{cache} holds no features yet; run `featcache extract --backbone NAME` first")
    merged: CVResults | None = None
    done_before = 0
    defaults = None  # every backbone of a cache has the same samples: the default modes (and warnings) once
    default_targets = None  # likewise the default targets
    checked = None  # the labels, compared with the annotation once: every backbone has the same samples
    loaded: dict[str, CacheData] = {}  # kept for --select, which fits every backbone again on inner folds
    fused: dict[str, list[str]] = {}  # backbone id -> its parts (not the rows: one backbone in memory at a time)
    for bid in chosen:
        data = load_cache(cache, bid, check_labels=labels != "annotation")
        data.weigh_blocks = block_weights
        fused[data.backbone_id] = list(data.parts)
        if select:
            loaded[bid] = data
        if checked is None:
            located = located_annotation(data, annotation_from)
            current_labels(data, labels, **(annotation_from or {}), located=located)
            if not labels_only(regressors):
                current_images(data, located=located)
            checked = data.samples.targets
        data.samples.targets = checked  # the annotation's, with --labels annotation
        chosen_targets = check_names("target", targets) if targets is not None else default_targets or data.targets
        chosen_modes = check_names("mode", modes) if modes is not None else defaults or modes_for(
            data, options["subset"], options["split"], options["train_on"], options["test_on"])

        def progress(done, total, offset=done_before, backbones=len(chosen)):
            if on_progress and (offset == 0 or done > 0):  # every backbone fits as many heads as the first
                on_progress(offset + done, total * backbones if offset == 0 else None)

        # the same samples, so the same folds: their warning once, not per backbone
        result = cross_validate(data, chosen_modes, chosen_targets, regressors, on_progress=progress,
                                leave_out_unfillable=modes is None and defaults is None,
                                leave_out_constant=targets is None and default_targets is None,
                                warn_folds=bid == chosen[0], **options)
        if modes is None:  # as left for the first backbone (the later ones get no warning), less the matched
            defaults = [m for m in result.config["modes"] if m in chosen_modes]  # references the run adds itself
        if targets is None:
            default_targets = result.config["targets"]
        done_before += len(result.predictions)  # fitted members, as counted by progress
        for collection in (result.folds, result.summary, result.comparisons, result.breakdown):
            for row in collection:
                row["backbone"] = bid
        for p in result.predictions:
            p.backbone = bid
        if merged is None:
            merged = result
            merged.config = dict(result.config, backbone=chosen)
        else:
            merged.folds += result.folds
            merged.summary += result.summary
            merged.comparisons += result.comparisons
            merged.breakdown += result.breakdown
            merged.predictions += result.predictions
    _record_fusion(merged, fused, block_weights)
    if select:
        merged.selection = _selected(loaded, merged, inner_folds, options, on_progress)
    return merged


def _record_fusion(results: CVResults, parts: dict[str, list[str]], block_weights: bool) -> None:
    """A run with a fused backbone records each fusion's parts (`config.fused`: fused id -> part ids, in order) and
    how its blocks were scaled (`config.block_weights`: 'equal' or 'none'); runs without one record neither."""
    fusions = {bid: ids for bid, ids in parts.items() if len(ids) > 1}
    if fusions:
        results.config["fused"] = fusions
        results.config["block_weights"] = "equal" if block_weights else "none"


def _selected(datas: dict[str, CacheData], results: CVResults, inner_folds: int, options: dict,
              on_progress: Callable[[int, int], None] | None) -> list[dict]:
    """The nested selection of a finished run; its inner fits continue the run's progress count."""
    offset = sum(1 for _ in results.predictions)  # members fitted so far, as the progress counted them

    def progress(done, total):
        if on_progress and done > 0:
            on_progress(offset + done, offset + total)

    return nested_selection(datas, results, inner_folds=inner_folds, jobs=options["jobs"],
                            backend=options["backend"], device=options["device"], on_progress=progress)

