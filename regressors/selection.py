"""Nested selection: the score of "choose the configuration, then fit it" as one procedure, never read off the
test folds.

For every outer fold of every repeat (the run's own folds, `cv.plan`) and every target, the configurations of one
sample set (backbone x mode x feature-reading regressor; modes scored on every sample and modes scored on the
samples with an image prompt are separate sets, `modes.scores_prompted_samples`; label-only floors never compete)
are compared by an inner K-fold cross-validation on that outer fold's training rows alone. The inner folds keep
whole groups on one side: prompt groups when the outer split is prompt-disjoint (`splits.prompt_disjoint`),
prompt x generator (sibling) groups otherwise. Each inner fit runs the candidate's own hyper-parameter selection
on the groups the run's own fits hold out (prompt groups, sibling groups under `cross`, samples under `kfold` and
`paper`), through the harness of `cv` (`fitting.fit_members`, joblib over --jobs). The criterion is the mean
inner-fold SRCC, a failed inner fold counting 0; scores equal to TIE_DECIMALS decimals go to the earlier candidate in the
`candidates` order (backbones as the run lists them, then modes, then regressors). The chosen configuration's outer
test predictions (fitted on the whole outer training rows by the run itself) are that fold's predictions of the
procedure; its outer score is summarised as every cell is (`summaries.summarize`: failed folds count 0), with a
95% interval by bootstrap over prompt groups of its pooled out-of-fold predictions, all repeats, a repeat whose
every chosen fold failed counting 0 (`intervals.pooled_intervals`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from featcache.errors import FeatcacheError, FeatcacheWarning
from regressors.cache_data import CacheData
from regressors.cv import CVResults, OutOfFold, member_chunks, task_cost, fitted_tasks, Task, trained_on_device, plan, selection_rows
from regressors.design import content_groups, design_matrix, label_codes, mode_rows
from regressors.fitting import Member
from regressors.inference import BOOTSTRAP_SAMPLES, pooled_predictions
from regressors.intervals import pooled_intervals
from regressors.metrics import CORRELATIONS, counted, prediction_failed, spearman
from regressors.modes import scores_prompted_samples
from regressors.registry import competes, floor_names, get_regressor
from regressors.splits import Fold, SplitRequest, get_split, make_folds, prompt_disjoint
from regressors.summaries import summarize

INNER_FOLDS = 3  # the default inner K: every inner fit multiplies the run's fits by about this much
TIE_DECIMALS = 12  # inner scores equal to this many decimals are ties
SAMPLE_SETS = {False: "all", True: "prompted"}  # scores_prompted_samples(mode) -> the sample set's name
SET_DOC = {"all": "every sample", "prompted": "samples with an image prompt"}
CRITERION = (f"mean inner-fold SRCC (a failed inner fold counts 0); scores equal to {TIE_DECIMALS} decimals go to "
             "the earlier candidate in `candidates` order")
INTERVAL = (f"95% percentile interval of the pooled out-of-fold SRCC (mean over repeats), {BOOTSTRAP_SAMPLES} "
            "bootstrap draws of whole prompt groups, each with its predictions of every repeat; a repeat whose "
            "every fold failed counts 0, as in srcc_pooled (`inference.group_bootstrap_interval`)")


@dataclass(frozen=True)
class Candidate:
    backbone: str
    mode: str
    regressor: str

    def as_dict(self) -> dict:
        return {"backbone": self.backbone, "mode": self.mode, "regressor": self.regressor}


def check_inner_folds(inner_folds: int) -> None:
    if isinstance(inner_folds, bool) or not isinstance(inner_folds, int) or inner_folds < 2:
        raise FeatcacheError(f"--inner-folds {inner_folds}: use a whole number of at least 2")


def check_selectable(regressors: list[str]) -> None:
    """Refuse --select before any fitting when no feature-reading regressor would compete."""
    if not any(competes(r) for r in regressors):
        raise FeatcacheError("--select chooses among feature-reading regressors, and this run fits only label-only "
                             "floors; add --regressor ridge (or svr, mlp)")


def nested_selection(datas: dict[str, CacheData], results: CVResults, *, inner_folds: int = INNER_FOLDS,
                     jobs: int | str = "auto", backend: str | None = None, device: str = "cpu",
                     on_progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """One entry per sample set and target of a finished run (`results`, from `cv.cross_validate` or a merged
    bench): the candidates, the configuration chosen in each outer fold with every candidate's inner score, how
    often each was chosen (the counts add up to the outer folds), and the outer metrics of the procedure with their
    interval. `datas`: the run's backbones by id (one for fit), sharing samples, labels and hence folds. The outer
    test labels are read only to score the chosen configuration's predictions, after every choice is made. A
    sample set whose outer training rows cannot fill `inner_folds` group folds is left out with a warning."""
    check_inner_folds(inner_folds)
    config = results.config
    check_selectable(config["regressors"])
    backbones = list(datas)
    first = datas[backbones[0]]
    regressors = [r for r in config["regressors"] if competes(r)]
    modes, targets, seed = config["modes"], config["targets"], config["seed"]
    split, hold_out = config["split"], config["hold_out_prompts"]
    outer = _outer_folds(first, config)
    groups = content_groups(first)
    disjoint = prompt_disjoint(split, hold_out)
    inner_groups = groups if disjoint else label_codes(first, np.arange(len(first.samples)), groups)[:, 1]
    grouping = "prompt groups" if disjoint else "prompt x generator (sibling) groups"
    labels = {t: first.target(t) for t in targets}
    plans = []
    for prompted, name in SAMPLE_SETS.items():
        set_modes = [m for m in modes if scores_prompted_samples(m) == prompted]
        candidates = [Candidate(b, m, r) for b in backbones for m in set_modes for r in regressors]
        if not candidates:
            continue
        inner, why = _inner_folds(first, set_modes[0], outer, inner_groups, inner_folds, seed, name)
        if inner is None:
            warnings.warn(f"--select: the {name} sample set ({', '.join(set_modes)}) left out of the selection: "
                          f"{why}", FeatcacheWarning, stacklevel=2)
            continue
        plans.append((name, candidates, inner))
    if not plans:
        return []
    # each inner fit chooses its hyper-parameters on the groups the run's own fits hold out (`cv.plan`)
    hyper_groups = groups if disjoint else inner_groups if split == "cross" else None
    scores, fits = _inner_scores(datas, config, outer, plans, labels, hyper_groups, jobs, backend, device,
                                 on_progress)
    entries = []
    for name, candidates, inner in plans:
        for target in targets:
            entries.append(_entry(results, config, name, target, candidates, outer, scores, fits, inner_folds,
                                  grouping, seed))
    return entries


def _outer_folds(data: CacheData, config: dict) -> list[Fold]:
    """The run's fold assignment, rebuilt by `cv.plan` from the run's own options (a floor's tasks are the
    cheapest to plan: no design matrix)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FeatcacheWarning)  # the run has warned already
        folds, _ = plan(data, config["modes"], config["targets"], [floor_names()[0]], split=config["split"],
                        folds=config["folds"], repeats=config["repeats"], seed=config["seed"],
                        subset=config["subset"], train_on=config["train_on"], test_on=config["test_on"],
                        hold_out_prompts=config["hold_out_prompts"], warn_folds=False)
    return folds


def _inner_folds(data: CacheData, mode: str, outer: list[Fold], inner_groups: np.ndarray, k: int, seed: int,
                 name: str) -> tuple[list[list[Fold]] | None, str]:
    """Per outer fold, the inner group folds over its training rows that the set's modes can use (every mode of a
    set uses the same rows; seeded with the outer repeat's seed); (None, why) when some outer fold's training
    rows cannot fill k group folds."""
    s = data.samples
    out = []
    for fold in outer:
        try:
            rows = mode_rows(data, mode, fold.train)
            out.append(make_folds(SplitRequest(rows, inner_groups, s.subset, s.generator, k, seed + fold.repeat),
                                  "group", 1))
        except FeatcacheError:
            rows = mode_rows(data, mode, fold.train) if (s.prompt_image[fold.train] >= 0).any() else fold.train[:0]
            where = f"fold {fold.fold + 1}" + (f" of repeat {fold.repeat + 1}" if fold.repeat else "")
            return None, (f"outer {where} trains on {len(rows)} such samples in {len(np.unique(inner_groups[rows]))}"
                          f" groups, too few for {k} inner folds of at least 4 test samples; lower --inner-folds")
    return out, ""


def _inner_scores(datas: dict[str, CacheData], config: dict, outer: list[Fold], plans: list, labels: dict,
                  hyper_groups: np.ndarray | None, jobs, backend, device, on_progress) -> tuple[dict, dict]:
    """Fit every candidate on every inner fold; (mean inner SRCC per (set, target, outer index, candidate),
    [inner members fitted, their seconds] per (set, target)). Sets of one candidate are not fitted."""
    seed = config["seed"]
    trained_on = trained_on_device(device, [c.regressor for _, cands, _ in plans for c in cands])
    spread = trained_on is None or trained_on.partition(":")[0] == "cpu"
    tasks: list[Task] = []
    inputs: dict[tuple, tuple] = {}
    for name, candidates, inner in plans:
        if len(candidates) < 2:
            continue
        for cand in candidates:
            if (cand.backbone, cand.mode) not in inputs:  # one design matrix per backbone and mode
                data = datas[cand.backbone]
                rows = mode_rows(data, cand.mode, selection_rows(data, config["subset"]))
                position = np.full(len(data.samples), -1)
                position[rows] = np.arange(len(rows))
                inputs[(cand.backbone, cand.mode)] = design_matrix(data, cand.mode, rows)[0], position
            x, position = inputs[(cand.backbone, cand.mode)]
            members, meta = [], []
            for index, folds in enumerate(inner):
                for fold in folds:
                    groups = hyper_groups[fold.train] if hyper_groups is not None else None
                    for target in config["targets"]:
                        y = labels[target]
                        members.append(Member(position[fold.train], y[fold.train], position[fold.test], groups,
                                              seed + outer[index].repeat))
                        # meta[1]: the inner training set, which `member_chunks` batches by (repeat, fold)
                        meta.append((target, Fold(index, fold.fold, fold.train, fold.test), y[fold.test],
                                     float(np.std(y[fold.train])), (name, target, index, cand)))
            reg = get_regressor(cand.regressor)
            for chunk in member_chunks(reg, meta, spread):
                task = Task(cand.regressor, cand.mode, x, [members[i] for i in chunk], [meta[i] for i in chunk])
                task.cost = task_cost(reg, task)
                task.blocks = datas[cand.backbone].blocks
                tasks.append(task)
    per_fold: dict[tuple, dict[int, float]] = {}
    fits: dict[tuple, list] = {}
    total = sum(len(t.members) for t in tasks)
    done = 0
    if on_progress and total:
        on_progress(0, total)
    for index, fitted in fitted_tasks(tasks, jobs, backend, device):
        for (_, fold, y_test, train_sd, key), member in zip(tasks[index].meta, fitted):
            failed = prediction_failed(member.pred, train_sd) or np.ptp(y_test) == 0
            per_fold.setdefault(key, {})[fold.fold] = 0.0 if failed else counted(spearman(y_test, member.pred),
                                                                                  False)
            tally = fits.setdefault(key[:2], [0, 0.0])
            tally[0] += 1
            tally[1] += member.seconds
        done += len(tasks[index].members)
        if on_progress:
            on_progress(done, total)
    # averaged in inner-fold order, whatever order the tasks finished in: the same scores whatever --jobs
    scores = {key: float(np.mean([values[k] for k in sorted(values)])) for key, values in per_fold.items()}
    return scores, fits


def choose(scores: list[float]) -> int:
    """The index of the highest score; scores equal to TIE_DECIMALS decimals go to the earliest."""
    return int(np.argmax(np.round(np.asarray(scores, dtype=np.float64), TIE_DECIMALS)))  # argmax: first maximum


def _entry(results: CVResults, config: dict, name: str, target: str, candidates: list[Candidate],
           outer: list[Fold], scores: dict, fits: dict, inner_folds: int, grouping: str, seed: int) -> dict:
    own = config["backbone"] if isinstance(config["backbone"], str) else ""  # fit: rows carry no backbone
    rows = {(r.get("backbone", own), r["regressor"], r["mode"], r["repeat"], r["fold"]): r
            for r in results.folds if r["target"] == target}
    preds = {(p.backbone or own, p.regressor, p.mode, p.repeat, p.fold): p
             for p in results.predictions if p.target == target}
    counts = [0] * len(candidates)
    chosen_rows, chosen_preds, per_fold = [], [], []
    for index, fold in enumerate(outer):
        first = preds[(candidates[0].backbone, candidates[0].regressor, candidates[0].mode, fold.repeat, fold.fold)]
        if not np.isin(first.rows, fold.test).all():
            raise FeatcacheError(f"--select: the folds rebuilt from the run's options differ from the run's own "
                                 f"(repeat {fold.repeat + 1}, fold {fold.fold + 1}); the selection cannot be scored")
        inner = [scores[(name, target, index, c)] for c in candidates] if len(candidates) > 1 else None
        pick = choose(inner) if inner else 0
        counts[pick] += 1
        c = candidates[pick]
        key = (c.backbone, c.regressor, c.mode, fold.repeat, fold.fold)
        row, pred = rows[key], preds[key]  # read only now, after the choice
        chosen_rows.append(dict(row, regressor="selected", mode=name))
        chosen_preds.append(OutOfFold("selected", name, target, fold.repeat, fold.fold, pred.rows, pred.y_true,
                                      pred.y_pred))
        per_fold.append({"repeat": fold.repeat, "fold": fold.fold, "chosen": c.as_dict(),
                         "inner_srcc": [round(v, 6) for v in inner] if inner else None,
                         "srcc": counted(row["srcc"], row["failed"]), "failed": bool(row["failed"])})
    summary = summarize(chosen_rows, chosen_preds, results.samples, single=get_split(config["split"]).single,
                        seed=seed)[0]
    repeats = sorted({p.repeat for p in chosen_preds})
    of_repeat = [[p for p in chosen_preds if p.repeat == r] for r in repeats]
    pooled = pooled_predictions([np.concatenate([p.rows for p in ps]) for ps in of_repeat],
                                [np.concatenate([p.y_true for p in ps]) for ps in of_repeat],
                                [np.concatenate([p.y_pred for p in ps]) for ps in of_repeat],
                                np.asarray(results.samples["group"]))
    failed = [all(r["failed"] for r in chosen_rows if r["repeat"] == rep) for rep in repeats]  # 0, as summarize
    interval = pooled_intervals(pooled, failed, seed, metrics=("srcc",))
    low, high = interval["srcc_ci_low"], interval["srcc_ci_high"]
    n_fits, seconds = fits.get((name, target), [0, 0.0])
    metrics = {key: summary[key] for metric in (*CORRELATIONS, "rmse") for key in (f"{metric}_mean",
                                                                                    f"{metric}_std")}
    return {"target": target, "sample_set": name, "sample_set_doc": SET_DOC[name],
            "candidates": [c.as_dict() for c in candidates], "inner_folds": inner_folds, "inner_grouping": grouping,
            "criterion": CRITERION, "folds": per_fold,
            "counts": [dict(c.as_dict(), count=n) for c, n in zip(candidates, counts)],
            **metrics, "std_over": summary["std_over"], "srcc_pooled": summary["srcc_pooled"],
            "plcc_pooled": summary["plcc_pooled"], "srcc_ci_low": low, "srcc_ci_high": high, "interval": INTERVAL,
            "n_folds": summary["n_folds"], "n_failed": summary["n_failed"], "n_test": summary["n_test"],
            "inner_fits": n_fits, "inner_seconds": round(seconds, 3)}


def chosen_text(entry: dict) -> str:
    """How often each configuration was chosen, most often first (ties in `candidates` order): 'nr ridge 4/5, pr
    ridge 1/5'; the backbone named when candidates span several."""
    several = len({c["backbone"] for c in entry["candidates"]}) > 1
    picked = sorted((c for c in entry["counts"] if c["count"]), key=lambda c: -c["count"])  # stable: order kept
    total = sum(c["count"] for c in entry["counts"])
    return ", ".join(f"{c['backbone'] + ' ' if several else ''}{c['mode']} {c['regressor']} {c['count']}/{total}"
                     for c in picked)


def selection_line(entry: dict) -> str:
    """One line per entry, for the command line: the outer score of the procedure and what it chose."""
    failed = f", {entry['n_failed']} failed" if entry["n_failed"] else ""
    return (f"nested selection, {entry['target']} ({SET_DOC[entry['sample_set']]}): SRCC {_number(entry['srcc_mean'])}"
            f" over {entry['n_folds']} outer folds{failed}; pooled {_number(entry['srcc_pooled'])} "
            f"[{_number(entry['srcc_ci_low'])}, {_number(entry['srcc_ci_high'])}]; chose {chosen_text(entry)}")


def _number(value) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"
