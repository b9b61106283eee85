"""One cross-validation harness for every regressor, mode and target.

Protocol (what results.json calls `protocol`): one fold assignment per selection and repeat, shared by every
mode; each mode uses the samples of those folds it can use (FR: samples with an image prompt), and a mode that
cannot fill every fold (fewer image-prompt groups than folds) is refused before any fitting. Each mode is compared
with its reference trained on the same rows (FR and FR-diff: nr-prompted, NR on the samples with an image prompt,
fitted with NR; PR and PR-diff: NR) by the corrected resampled t-test over the per-fold SRCC differences (Nadeau
and Bengio: the overlap of the training sets widens the variance, so repeats do not shrink p). Hyper-parameters
are chosen inside each training fold, on held-out prompt groups when the split is prompt-disjoint (`group`, and
`cross` with --hold-out-prompts), on held-out prompt x generator groups under `cross` without it (siblings never
split across inner folds). Every fold is reported; a fold whose predictions are constant is failed and
counts as 0 in every correlation mean. PLCC after the logistic: the 4-parameter logistic, constrained increasing,
is fitted in each fold on the training data only (the fitted model's predictions of its own training rows
against their labels) and applied to that fold's test predictions, so no test label shapes the mapping; a fold
whose training predictions admit no increasing curve reports its plain PLCC. Out-of-fold predictions are kept,
so pooled, per-generator and paired figures come from the same numbers.
"""

from __future__ import annotations

import contextlib
import numbers
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from featcache.errors import FeatcacheError, FeatcacheWarning
from regressors.cache_data import CacheData
from regressors.design import content_groups, design_matrix, label_codes, mode_rows
from regressors.fitting import Member, fit_members
from regressors.intervals import add_intervals
from regressors.metrics import quality_metrics
from regressors.modes import get_mode, with_matched_references
from regressors.registry import check_regressors, get_regressor
from regressors.splits import SplitRequest, check_mode_folds, folds_missing_a_subset, get_split, make_folds, \
    prompt_disjoint, subset_mask
from regressors.summaries import breakdown, paired_comparisons, summarize


@dataclass
class OutOfFold:
    """Test predictions of one fitted member: which samples, their labels, the predictions."""

    regressor: str
    mode: str
    target: str
    repeat: int
    fold: int
    rows: np.ndarray
    y_true: np.ndarray
    y_pred: np.ndarray
    backbone: str = ""  # set by bench, which merges several backbones


@dataclass
class CVResults:
    config: dict
    folds: list[dict] = field(default_factory=list)
    summary: list[dict] = field(default_factory=list)
    comparisons: list[dict] = field(default_factory=list)
    breakdown: list[dict] = field(default_factory=list)
    predictions: list[OutOfFold] = field(default_factory=list)
    samples: dict = field(default_factory=dict)  # key, group, generator, subset arrays for predictions.csv
    selection: list[dict] | None = None  # regressors.selection's entries, when the run asked for --select

    def to_dict(self) -> dict:
        return {"config": self.config, "folds": self.folds, "summary": self.summary,
                "comparisons": self.comparisons, "breakdown": self.breakdown,
                **({"selection": self.selection} if self.selection is not None else {})}


MULTIPROCESSING_REFUSED = ("backend 'multiprocessing' can hang once torch or BLAS threads ran in this process; "
                           "use loky (the default), threading, dask or ray")
DASK_CONNECT_SECONDS = 20  # DASK_SCHEDULER_ADDRESS unreachable: a one-line error after this long


def backend_context(backend: str | None):
    """joblib's own backends reach a cluster; the optional extras bring them."""
    from joblib import parallel_config

    if backend in (None, "", "loky", "threading", "multiprocessing"):  # multiprocessing: refused by fitted_tasks
        return parallel_config(backend=backend) if backend else contextlib.nullcontext()
    if backend == "dask":
        try:
            from dask.distributed import Client, get_client
        except ImportError:
            raise FeatcacheError("--backend dask needs dask.distributed: pip install 'featcache[dask]'") from None
        try:
            running = get_client().status == "running"  # a client that failed to connect stays the default
        except ValueError:
            running = False
        if not running:  # the scheduler of DASK_SCHEDULER_ADDRESS, else a local cluster
            import dask

            address = dask.config.get("scheduler-address", None)
            try:
                if address:
                    Client(address, timeout=DASK_CONNECT_SECONDS)
                else:
                    _IN_PROCESS_CLIENTS.append(None)  # starting: a Ctrl-C now must also exit at once
                    _IN_PROCESS_CLIENTS[-1] = Client(processes=False)
            except Exception as exc:  # unreachable (OSError), malformed (ValueError), tls:// without a context ...
                if _IN_PROCESS_CLIENTS and _IN_PROCESS_CLIENTS[-1] is None:
                    _IN_PROCESS_CLIENTS.pop()
                raise FeatcacheError(f"--backend dask: cannot reach the scheduler at {address} "
                                     f"(DASK_SCHEDULER_ADDRESS): {str(exc).splitlines()[0]}") from None
        return parallel_config(backend="dask")
    if backend == "ray":
        try:
            from ray.util.joblib import register_ray
        except ImportError:
            raise FeatcacheError("--backend ray needs ray: pip install 'featcache[ray]'") from None
        register_ray()
        return parallel_config(backend="ray")
    raise FeatcacheError(f"unknown --backend {backend!r}; choose loky, dask or ray (or threading in Python)")


def selection_rows(data: CacheData, subset: str) -> np.ndarray:
    return np.flatnonzero(subset_mask(data.samples.subset, data.samples.generator, subset))


@dataclass
class Task:
    """Members of one regressor and mode fitted together (`member_chunks`), with what each member's results mean."""

    regressor: str
    mode: str
    inputs: np.ndarray  # the mode's design matrix (or the floors' label codes) over the mode's samples
    members: list[Member]
    meta: list[tuple]  # (target, fold, test rows, y_test, train sd, n_train)
    cost: float = 0.0  # rough seconds on one core (RegressorSpec.cost): parallel runs start the longest first
    blocks: tuple[int, ...] | None = None  # a fusion's block widths (CacheData.blocks), see fitting.fit_members


AUTO_PARALLEL_SECONDS = 10.0  # --jobs auto: every usable core from this much estimated fitting (RegressorSpec.cost)


_IN_PROCESS_CLIENTS: list = []  # dask clients of local clusters started here (None: starting); workers are threads


def in_process_cluster() -> bool:
    """Whether this process started (or is starting) a local dask cluster, whose worker threads may be inside a
    fit that nothing can interrupt (see cli's Ctrl-C handling)."""
    return bool(_IN_PROCESS_CLIENTS)


def silence_in_process_clusters() -> None:
    """No more log lines (dask's cancelled tasks, closed comms, rescheduled keys: its loggers have levels of their
    own) under the one line a Ctrl-C prints; the process is about to exit."""
    import logging

    logging.disable(logging.CRITICAL)


def close_in_process_clusters(timeout: float = 2.0) -> None:
    """Close the local clusters started here, waiting for busy worker threads at most `timeout`, and remove
    their scratch folders, which a cluster that does not close in time leaves behind."""
    import shutil

    silence_in_process_clusters()
    while _IN_PROCESS_CLIENTS:
        client = _IN_PROCESS_CLIENTS.pop()
        if client is None:  # interrupted while starting: nothing to close by hand
            continue
        folders = []
        try:
            cluster = client.cluster
            if cluster is not None:
                parts = [getattr(cluster, "scheduler", None), *getattr(cluster, "workers", {}).values()]
                folders = [f for f in (getattr(part, "local_directory", None) for part in parts) if f]
            client.close(timeout=timeout)
            if cluster is not None:
                cluster.close(timeout=timeout)
        except Exception:  # a cluster that will not close in time: the process exits anyway
            pass
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
            try:
                os.remove(str(folder) + ".dirlock")
            except OSError:
                pass


def check_jobs(jobs: int | str) -> None:
    if jobs == "auto":
        return
    if isinstance(jobs, bool) or not isinstance(jobs, numbers.Integral) or jobs == 0 or jobs < -1:
        raise FeatcacheError(f"--jobs {jobs}: use a positive number, -1 for every core, or auto")


def resolve_jobs(jobs: int | str, backend: str | None, tasks: list) -> int:
    """'auto' (the default): one process when the run's estimated single-core fitting time is under
    AUTO_PARALLEL_SECONDS (each worker process imports numpy, scikit-learn or torch anew: seconds that a small
    run does not win back), else every usable core. -1: every usable core. Never more processes than tasks. With a
    cluster backend (dask, ray), 'auto' and -1 mean every worker the cluster has."""
    from featcache.devices import usable_cores

    cluster = backend not in (None, "", "loky", "threading")
    if jobs == "auto":
        if cluster:
            return -1
        if len(tasks) < 2 or sum(task.cost for task in tasks) < AUTO_PARALLEL_SECONDS:
            return 1
        jobs = -1
    if jobs == -1:
        return -1 if cluster else max(1, min(usable_cores(), len(tasks)))
    return max(1, min(int(jobs), len(tasks)))


def plan(data: CacheData, modes: list[str], targets: list[str], regressors: list[str], *, split: str = "group",
         folds: int = 5, repeats: int = 1, seed: int = 0, subset: str = "all", train_on: str | None = None,
         test_on: str | None = None, hold_out_prompts: bool = False, groups: np.ndarray | None = None,
         spread: bool = False, leave_out_unfillable: bool = False, leave_out_constant: bool = False,
         warn_folds: bool = True):
    """The folds and the fitting tasks of a run, without fitting anything (so the caller can count them).
    `groups`: the content groups of `design.content_groups`, when the caller has them already. `spread`: the
    device-trained regressors train on the CPU, so their cells are split by fold: CPU workers then share a cell
    (one worker's thread would otherwise train a whole cell while the other cores wait), and the stacks are the
    same whatever --jobs (a stack's make-up moves float32 sums in the last bits). `leave_out_unfillable` and
    `leave_out_constant`: the modes, or the targets, are defaults, and one that cannot be fitted is left out with a
    warning instead of refused. The matched reference of a mode compared with NR (`modes.with_matched_references`:
    `nr-prompted` for FR and FR-diff) is fitted too whenever `nr` is. `warn_folds`: warn of `--split group` folds
    that test no sample of a subset (a caller fitting several backbones on the same samples, hence the same folds,
    warns for the first only)."""
    check_regressors(regressors)
    for mode in modes:
        get_mode(mode)
    labels = {t: data.target(t) for t in targets}
    s = data.samples
    selection = selection_rows(data, subset)
    targets = _targets_that_vary(labels, selection, targets, subset, leave_out_constant)
    groups = content_groups(data) if groups is None else groups
    request = SplitRequest(selection, groups, s.subset, s.generator, folds, seed, train_on, test_on,
                           hold_out_prompts, what=f"--subset {subset}")
    fold_list = make_folds(request, split, repeats)
    usable = {mode: mode_rows(data, mode, selection) for mode in modes}
    modes = _modes_that_fill(request, split, fold_list, usable, modes, leave_out_unfillable)
    asked = set(modes)
    modes = with_matched_references(modes)  # each added one uses the rows of a mode that fills every fold
    usable.update({mode: mode_rows(data, mode, selection) for mode in modes if mode not in usable})
    # --split group stratifies by T2I/I2I, which reaches every fold only with enough groups of each
    if split == "group" and warn_folds:
        for note in folds_missing_a_subset(request, fold_list):
            warnings.warn(note, FeatcacheWarning, stacklevel=3)
    needs_features = any(get_regressor(r).reads_features and not get_regressor(r).zero_shot for r in regressors)
    inner_groups = prompt_disjoint(split, hold_out_prompts)  # the inner selection holds out groups too
    tasks: list[Task] = []
    for mode in modes:
        rows = usable[mode]
        x = design_matrix(data, mode, rows)[0] if needs_features else None
        codes = label_codes(data, rows, groups)
        position = np.full(len(s), -1)
        position[rows] = np.arange(len(rows))
        y_of = {target: labels[target][rows] for target in targets}
        groups_of = groups[rows]
        for name in regressors:
            reg = get_regressor(name)
            if not reg.reads_features and mode not in asked:  # an added reference: its floors are those of the
                continue                                       # mode it is the reference of (the same rows)
            if reg.zero_shot:  # once per run, on the samples with an image prompt (the first such mode asked)
                if mode != next((m for m in modes if m in asked and get_mode(m).needs_prompt_image), None):
                    continue
                inputs = x if mode == "fr" and x is not None else design_matrix(data, "fr", rows)[0]
            else:
                inputs = x if reg.reads_features else codes
            members, meta = [], []
            for fold in fold_list:
                train = position[fold.train][position[fold.train] >= 0]
                test = position[fold.test][position[fold.test] >= 0]
                for target in targets:
                    y = y_of[target]
                    member_groups = groups_of[train] if inner_groups else (  # cross: siblings held out together
                        codes[train, 1] if split == "cross" else None)
                    members.append(Member(train, y[train], test, member_groups, seed + fold.repeat))
                    meta.append((target, fold, rows[test], y[test], float(np.std(y[train])), int(len(train))))
            for chunk in member_chunks(reg, meta, spread):
                task = Task(name, mode, inputs, [members[i] for i in chunk], [meta[i] for i in chunk])
                task.cost = task_cost(reg, task)
                task.blocks = data.blocks
                tasks.append(task)
    return fold_list, tasks


def _modes_that_fill(request: SplitRequest, split: str, fold_list: list, usable: dict, modes: list[str],
                     leave_out: bool) -> list[str]:
    """Every fold of every mode is fitted, so a mode that cannot fill one (FR with fewer image-prompt groups than
    folds) is refused, not reported as failed; `leave_out` (the default modes, `featcache fit` as typed): left out
    with a one-line warning instead, the others kept."""
    kept, reasons = [], []
    for mode in modes:
        try:
            if get_mode(mode).needs_prompt_image:
                check_mode_folds(request, split, fold_list, usable[mode], mode, "an image prompt")
        except FeatcacheError as exc:
            if not leave_out:
                raise
            reasons.append((mode, str(exc)))
            continue
        kept.append(mode)
    for mode, reason in reasons:
        why = reason.split(": ", 1)[1].replace(f" or leave {mode} out of --mode", " to include it")
        why = why.replace(f"; leave {mode} out of --mode", "")
        warnings.warn(f"{mode} left out of the default modes: {why}", FeatcacheWarning, stacklevel=2)
    if not kept:
        raise FeatcacheError(reasons[0][1])
    return kept


def _targets_that_vary(labels: dict, selection: np.ndarray, targets: list[str], subset: str,
                       leave_out: bool) -> list[str]:
    """A target with one value over the selected samples cannot be fitted or ranked: every fold would fail and
    the table show 0.000 +- 0.000 with an RMSE of 0. Refused when asked for by --target; `leave_out` (the
    default targets, every one in the cache): left out with a one-line warning, the others kept. A target constant
    only within some training folds is fitted: those folds fail and are counted."""
    kept, reasons = [], []
    for target in targets:
        values = labels[target][selection]
        if len(values) and np.all(values == values[0]):
            reasons.append((target, f"is {values[0]:g} for all {len(values)} samples of --subset {subset}; a "
                                    "constant target cannot be fitted or ranked"))
            continue
        kept.append(target)
    if reasons and not leave_out:
        raise FeatcacheError(f"--target {reasons[0][0]} {reasons[0][1]}; leave it out of --target")
    if not kept:
        others = ", ".join(target for target, _ in reasons[1:])
        raise FeatcacheError(f"target {reasons[0][0]} {reasons[0][1]}" + (f" (so are {others}: no target in the "
                                                                            "cache varies)" if others else ""))
    for target, reason in reasons:
        warnings.warn(f"{target} left out of the default targets: it {reason}", FeatcacheWarning, stacklevel=3)
    return kept


def task_cost(reg, task: Task) -> float:
    """Rough single-core seconds of fitting a task (`RegressorSpec.cost`, else members x rows x width / 1e9): the
    order parallel runs start tasks in and what --jobs auto weighs."""
    rows = float(np.mean([len(m.train) for m in task.members]))
    width = task.inputs.shape[1] if task.inputs.ndim == 2 else 1
    if reg.cost is None:
        return len(task.members) * rows * width / 1e9
    return float(reg.cost(len(task.members), rows, width))


def member_chunks(reg, meta: list[tuple], spread: bool = False) -> list[list[int]]:
    """Members fitted together: all of a cell for stacked regressors (a fold's when `spread` and the regressor is
    device-trained, i.e. on the CPU), a fold's targets for ridge and the SVR, else one each."""
    if reg.batch == "cell" and not (spread and reg.uses_device):
        return [list(range(len(meta)))] if meta else []
    if reg.batch in ("fold", "cell"):
        by_fold: dict[tuple, list[int]] = {}
        for i, m in enumerate(meta):
            by_fold.setdefault((m[1].repeat, m[1].fold), []).append(i)
        return list(by_fold.values())
    return [[i] for i in range(len(meta))]


def _parallel(jobs: int, backend: str | None) -> bool:
    return jobs != 1 or backend not in (None, "")


def trained_on_device(device: str, regressors: list[str]) -> str | None:
    """The device the run's torch regressors trained on, recorded with the results ('auto' resolved); None when
    none of them is in the run."""
    if not any(get_regressor(r).uses_device for r in regressors):
        return None
    from featcache.devices import resolve_device

    return str(resolve_device(device))


def fitted_tasks(tasks: list[Task], jobs: int | str, backend: str | None, device: str):
    """(task index, fitted members) as tasks finish. Several jobs or a backend: through joblib, the costliest
    tasks dispatched first (the longest-processing-time rule: no worker starts a long task while the others run
    out of work). Else a plain loop in order, in this thread."""
    from featcache import interrupts

    jobs = resolve_jobs(jobs, backend, tasks)
    if not _parallel(jobs, backend):
        for index, task in enumerate(tasks):
            interrupts.check()  # a Ctrl-C that Python dropped (see featcache.interrupts)
            yield index, _run_task(index, task, device)[1]
        return
    from joblib import Parallel, delayed
    from joblib.parallel import get_active_backend

    order = sorted(range(len(tasks)), key=lambda i: -tasks[i].cost)
    with backend_context(backend):
        active = get_active_backend()[0]
        if type(active).__name__ == "MultiprocessingBackend":  # forks a process whose torch or BLAS threads ran:
            # the children can hang (asked for by `backend=` or set by the caller's parallel_config)
            raise FeatcacheError(MULTIPROCESSING_REFUSED)
        # backends built on multiprocessing (ray's among them) cannot yield results as they come: all at the end
        unordered = getattr(active, "supports_return_generator", False)
        parent = os.getpid()
        for result in Parallel(n_jobs=jobs, return_as="generator_unordered" if unordered else "list")(
                delayed(_run_task)(i, tasks[i], device, parent) for i in order):
            interrupts.check()
            yield result


def _run_task(index: int, task: Task, device: str,
              parent: int | None = None) -> tuple[int, list[tuple[np.ndarray, dict, float]]]:
    if parent is not None and parent != os.getpid():
        _leave_ctrl_c_to_the_parent()
    return index, fit_members(task.regressor, task.inputs, task.members, device, task.blocks)


def _leave_ctrl_c_to_the_parent() -> None:
    """In a worker process: a terminal's Ctrl-C reaches the whole process group, and each loky worker printed a
    KeyboardInterrupt traceback (two screens of them) under the parent's one line; the parent stops the run and
    its workers, so the worker ignores SIGINT. Only from a process's main thread (a thread cannot set signals)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


LOGISTIC_FITTED_ON = "training predictions of each fold"  # config key: fitting.training_logistic, per member


def cross_validate(data: CacheData, modes: list[str], targets: list[str], regressors: list[str], *,
                   split: str = "group", folds: int = 5, repeats: int = 1, seed: int = 0, subset: str = "all",
                   train_on: str | None = None, test_on: str | None = None, hold_out_prompts: bool = False,
                   jobs: int | str = "auto", backend: str | None = None, device: str = "cpu",
                   on_progress: Callable[[int, int], None] | None = None,
                   leave_out_unfillable: bool = False, leave_out_constant: bool = False,
                   warn_folds: bool = True) -> CVResults:
    """Fit every regressor x mode x target on every fold; `on_progress(done, total)` after each fitted member.
    With `nr`, the matched reference of FR and FR-diff (`nr-prompted`) is fitted as well (config['modes'] lists
    every mode fitted). `leave_out_unfillable`: `modes` are defaults, and one that cannot fill every fold is left
    out with a warning instead of refused; `leave_out_constant`: likewise for `targets`, a target with one value
    over the selection (config['targets']). `warn_folds`: as in `plan`."""
    check_jobs(jobs)
    groups = content_groups(data)
    trained_on = trained_on_device(device, regressors)
    spread = trained_on is None or trained_on.partition(":")[0] == "cpu"  # only device-trained regressors spread
    _, tasks = plan(data, modes, targets, regressors, split=split, folds=folds, repeats=repeats, seed=seed,
                             subset=subset, train_on=train_on, test_on=test_on, hold_out_prompts=hold_out_prompts,
                             groups=groups, spread=spread, leave_out_unfillable=leave_out_unfillable,
                             leave_out_constant=leave_out_constant, warn_folds=warn_folds)
    modes = list(dict.fromkeys(task.mode for task in tasks))  # less any left out, plus the matched references
    targets = [target for target in targets if any(m[0] == target for task in tasks for m in task.meta)]
    spec = get_split(split)
    config = {"cache": data.path, "backbone": data.backbone_id, "modes": modes, "targets": targets,
              "regressors": regressors, "split": split, "split_doc": spec.doc, "folds": folds,
              "repeats": repeats, "seed": seed, "subset": subset, "train_on": train_on, "test_on": test_on,
              "hold_out_prompts": hold_out_prompts, "logistic_fitted_on": LOGISTIC_FITTED_ON,
              "device": trained_on, "protocol": __doc__.split("\n\n", 1)[1].strip()}
    results = CVResults(config)
    s = data.samples
    results.samples = {"key": s.key, "group": groups, "generator": s.generator, "subset": s.subset}
    total = sum(len(t.members) for t in tasks)
    done = 0
    if on_progress:
        on_progress(0, total)
    fitted: list = [None] * len(tasks)
    with contextlib.closing(fitted_tasks(tasks, jobs, backend, device)) as finished:  # closed (and the backend left)
        for index, members in finished:  # even when on_progress raises
            fitted[index] = members
            done += len(tasks[index].members)
            if on_progress:
                on_progress(done, total)
    for task, members in zip(tasks, fitted):  # in plan order, whatever order the tasks finished in
        for (target, fold, test_rows, y_test, train_sd, n_train), (pred, chosen, seconds, _, logistic) in zip(
                task.meta, members):
            metrics = quality_metrics(y_test, pred, train_sd, logistic)
            results.folds.append({"regressor": task.regressor, "mode": task.mode, "target": target,
                                  "repeat": fold.repeat, "fold": fold.fold, **metrics, "n_train": n_train,
                                  "n_test": int(len(test_rows)), "chosen": chosen, "seconds": round(seconds, 4)})
            results.predictions.append(OutOfFold(task.regressor, task.mode, target, fold.repeat, fold.fold,
                                                 test_rows, y_test, pred))
    order = {(r, m, t): i for i, (r, m, t) in enumerate((r, m, t) for m in modes for t in targets
                                                        for r in regressors)}
    results.folds.sort(key=lambda r: (order[(r["regressor"], r["mode"], r["target"])], r["repeat"], r["fold"]))
    results.summary = summarize(results.folds, results.predictions, results.samples, single=spec.single,
                                seed=seed)
    add_intervals(results, seed=seed)
    results.comparisons = paired_comparisons(results.predictions, modes, results.folds)
    results.breakdown = breakdown(results.predictions, results.samples)
    return results
