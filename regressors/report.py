"""Results on disk: results.json, results.csv, folds.csv, predictions.csv, the tables and report.md (figures:
regressors.figures).

Nothing here picks a configuration on the test folds: figures show the configuration asked for (`plot`, by
default the first feature-reading regressor of the run), and the only "best" in the report is labelled as the
highest test score, beside the best label-only floor, with failed configurations excluded, and said to stand apart
from the runner-up only when the corrected resampled t-test separates them (`regressors.marks`). Label-only floors
that give the same numbers are one row.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import stat
import tempfile
import time
from pathlib import Path

import numpy as np

from featcache.errors import FeatcacheError
from featcache.outputs import write_text_atomically
from regressors.cv import CVResults
from regressors.registry import get_regressor
from featcache.untrusted import printable

MANIFEST = ".featcache-run"
STAGING = ".featcache-new-"  # a run's outputs are written into such a folder inside --out, then moved in
OUTPUT_FILES = {"json": "results.json", "csv": "results.csv", "folds": "folds.csv", "predictions": "predictions.csv",
                "table": "table.md", "latex": "table.tex", "report": "report.md"}  # besides the figures


def _cell(row: dict, metric: str) -> str:
    mean, std = row.get(f"{metric}_mean", float("nan")), row.get(f"{metric}_std", float("nan"))
    if mean is None or not math.isfinite(mean):
        return "n/a"
    text = f"{mean:.3f}"
    return f"{text} ± {std:.3f}" if std is not None and math.isfinite(std) else text


def _pooled_cell(row: dict, metric: str = "srcc") -> str:
    """The pooled value with its 95% group-bootstrap interval (`regressors.intervals`), when the row has one."""
    text = number_cell(row.get(f"{metric}_pooled"))
    low, high = row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
    if "ci_level" in row and low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
        text += f" [{low:.2f}, {high:.2f}]"
    return text


def _folds_cell(row: dict) -> str:
    text = str(row["n_folds"])
    return text + (f" ({row['n_failed']} failed)" if row.get("n_failed") else "")


def number_cell(value) -> str:
    """A metric as the tables and figures show it: three decimals, or n/a."""
    return f"{value:.3f}" if value is not None and math.isfinite(value) else "n/a"


_SHOWN = ("srcc_mean", "srcc_std", "plcc_mean", "plcc_std", "plcc_logistic_mean", "plcc_logistic_std", "krcc_mean",
          "krcc_std", "rmse_mean", "rmse_std", "srcc_pooled", "srcc_ci_low", "srcc_ci_high", "n_folds", "n_failed",
          "n_train", "n_test")


def floors_once(summary: list[dict]) -> list[dict]:
    """The summary rows with the label-only floors of one backbone, mode and target whose every number the
    per-cell table shows coincides (`marks.same_numbers`: to 1e-12) as one row, its regressor "a = b = c"."""
    from regressors.marks import coinciding, floors_label

    floors: dict[tuple, list[dict]] = {}
    for row in summary:
        if not get_regressor(row["regressor"]).reads_features:
            floors.setdefault((row.get("backbone"), row["mode"], row["target"]), []).append(row)
    out, done = [], set()
    for row in summary:
        key = (row.get("backbone"), row["mode"], row["target"])
        if key not in floors or get_regressor(row["regressor"]).reads_features:
            out.append(row)
            continue
        if key in done:
            continue
        done.add(key)
        by_name = {r["regressor"]: r for r in floors[key]}
        for names in coinciding([(r["regressor"], _numbers(r)) for r in floors[key]]):
            out.append(dict(by_name[names[0]], regressor=floors_label(names)))
    return out


def format_table(summary: list[dict], markdown: bool = False) -> str:
    """A fixed-width (or Markdown) table of the summary rows; SRCC, PLCC, KRCC and RMSE as fold means ± SD, the
    pooled SRCC over all out-of-fold predictions with its 95% interval over prompt groups, failed folds named;
    floors of one cell that coincide as one row (`floors_once`)."""
    summary = floors_once(summary)
    with_backbone = any("backbone" in r for r in summary)
    header = (["backbone"] if with_backbone else []) + [
        "regressor", "mode", "target", "SRCC", "PLCC", "PLCC logistic", "KRCC", "RMSE", "SRCC pooled [95%]", "folds",
        "train/test"]
    rows = [([printable(r.get("backbone", ""))] if with_backbone else []) + [
        printable(r["regressor"]), printable(r["mode"]), printable(r["target"]), _cell(r, "srcc"), _cell(r, "plcc"),
        _cell(r, "plcc_logistic"), _cell(r, "krcc"), _cell(r, "rmse"), _pooled_cell(r), _folds_cell(r),
        f"{r['n_train']}/{r['n_test']}"] for r in summary]
    return _render(header, rows, markdown)


def _render(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


def highest_on_test(summary: list[dict], folds: list[dict] | None = None) -> list[dict]:
    """Per target and sample set (all samples; those with an image prompt, which FR scores alone), across
    backbones: the feature-reading row with the highest mean test SRCC among those with no failed fold (`model`),
    the `runner_up`, `p` of the corrected resampled t-test between them over `folds` (the run's fold rows),
    `separated` (p < 0.05; None when there is no runner-up, no fold rows, or fewer than 2 folds to pair:
    `unpaired`), `tied` (the rows the test does not
    separate from the model, when it is not separated), and the best label-only floor of the same backbone and
    sample set (`floor`; of any backbone when no model qualifies) with the floors that coincide with it (`floor_names`).
    An NR and an FR score are never compared: they come from other test samples. Chosen on the test folds: for
    orientation, not a result. `floors_fitted` False: the run had no floor at all (--no-floors)."""
    from regressors.fold_rows import attach_folds
    from regressors.marks import coinciding, contest
    from regressors.modes import scores_prompted_samples

    rows = [dict(r) for r in summary]
    if folds is not None:
        attach_folds(rows, folds, lambda r: str(r.get("backbone") or ""))
    out: dict[tuple, dict] = {}
    models: dict[tuple, list[dict]] = {}
    valid: dict[tuple, list[dict]] = {}
    for row in rows:
        prompted = scores_prompted_samples(row["mode"])
        key = (row["target"], prompted)
        floor = not get_regressor(row["regressor"]).reads_features
        entry = out.setdefault(key, {"backbone": "", "target": key[0], "prompted": prompted, "model": None,
                                     "runner_up": None, "p": float("nan"), "separated": None, "tied": [],
                                     "floor": None, "floor_names": [], "floors_fitted": False})
        entry["floors_fitted"] |= floor
        if row.get("n_failed") or row["srcc_mean"] is None or not math.isfinite(row["srcc_mean"]):
            continue
        (valid if floor else models).setdefault(key, []).append(row)
    for key, entry in out.items():
        candidates = models.get(key, [])
        outcome = contest([r["srcc_mean"] for r in candidates], [r.get("_folds") for r in candidates], "srcc")
        if outcome.best is not None:
            model = entry["model"] = candidates[outcome.best]
            entry["backbone"] = model.get("backbone", "")
        if outcome.runner_up is not None:
            entry["runner_up"] = candidates[outcome.runner_up]
            entry["unpaired"] = outcome.unpaired
            if not (outcome.untested or outcome.unpaired):
                entry["p"], entry["separated"] = outcome.p, outcome.bold
                entry["tied"] = [candidates[k] for k in outcome.tied if k != outcome.best]
        model = entry["model"]
        floors = [r for r in valid.get(key, []) if model is None or r.get("backbone") == model.get("backbone")]
        entry["floor"] = max(floors, key=lambda r: r["srcc_mean"], default=None)  # the first of equals
        if entry["floor"] is not None:
            same = [r for r in floors if (r["mode"], r.get("backbone")) == (entry["floor"]["mode"],
                                                                            entry["floor"].get("backbone"))]
            entry["floor_names"] = next(names for names in coinciding([(r["regressor"], _numbers(r)) for r in same])
                                        if entry["floor"]["regressor"] in names)
    return list(out.values())


def _numbers(row: dict) -> list:
    """The numbers of a summary row that the tables show, for `marks.same_numbers`."""
    return [float(row[k]) if isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool)
            else row.get(k) for k in _SHOWN]


def _highest_line(entry: dict) -> str:
    """One line of the report's highest test scores: the highest, whether the paired test separates it from the
    runner-up, and the best floor beside it."""
    def named(row: dict) -> str:
        where = f"{row['backbone']} " if row.get("backbone") else ""  # a bench's rows name their backbone
        return f"{where}{row['regressor']} {row['mode']} SRCC {row['srcc_mean']:.3f}"

    from regressors.marks import floors_label

    model, runner, floor = entry["model"], entry["runner_up"], entry["floor"]
    samples = " (samples with an image prompt)" if entry.get("prompted") else ""
    text = f"- {entry['target']}{samples}: "
    if model is None:
        text += "no feature-reading configuration without failed folds"
    else:
        text += named(model)
        if runner is None:
            text += " (the only feature-reading configuration without failed folds)"
        elif entry["separated"] is None:
            why = "fewer than 2 test folds to pair: a single split" if entry.get("unpaired") else "no fold rows"
            text += f"; runner-up {named(runner)}, not tested ({why})"
        elif entry["separated"]:
            text += (f", separated from the runner-up {named(runner)} by the corrected resampled t-test "
                     f"(p = {entry['p']:.3g})")
        else:
            tied = ", ".join(named(r) for r in entry["tied"])
            text += (f", not separated from the runner-up by the corrected resampled t-test (p = "
                     f"{number_cell(entry['p'])}): no single best; tied with it: {tied}")
    if floor:
        text += f"; best label-only floor {floors_label(entry['floor_names'])} {floor['mode']} SRCC " \
                f"{floor['srcc_mean']:.3f}"
    elif entry.get("floors_fitted"):
        text += "; no label-only floor of that mode without failed folds"
    else:
        text += "; no label-only floor beside it (run made with --no-floors)"
    return text


def format_comparisons(comparisons: list[dict], markdown: bool = True) -> str:
    """One row per paired comparison: both SRCCs on the shared test samples, the mean difference with its 95%
    interval, the corrected resampled t p, the folds paired and the distinct test samples; `matched training`
    says whether both sides trained on the same rows."""
    header = (["backbone"] if any("backbone" in c for c in comparisons) else []) + [
        "regressor", "target", "comparison", "matched training", "SRCC", "difference (95% interval)",
        "p (corrected t)", "folds", "distinct test samples"]
    rows = [([printable(c["backbone"])] if "backbone" in c else []) + [
        printable(c["regressor"]), printable(c["target"]), printable(f"{c['mode']} vs {c['reference']}"),
        "yes" if c["matched_training"] else "no", f"{c['srcc_mode']:.3f} vs {c['srcc_reference']:.3f}",
        f"{c['diff_mean']:+.3f} ({number_cell(c['diff_ci_low'])}, {number_cell(c['diff_ci_high'])})",
        _p_cell(c["p"]), _paired_folds_cell(c), str(c["n_test_samples"])] for c in comparisons]
    return _render(header, rows, markdown)


COMPARISONS_NOTE = (
    "Each mode against its reference on the test samples both scored, fold by fold: FR and FR-diff against "
    "nr-prompted (NR trained and tested on the samples with an image prompt), PR and PR-diff against NR, so both "
    "sides train on the same rows (*matched training*) and the difference isolates the image prompt's features. "
    "p: the corrected resampled t-test of Nadeau and Bengio over the per-fold SRCC differences (K x R - 1 degrees "
    "of freedom; its variance term adds test/train size for the overlap of the training sets, so repeats do not "
    "shrink p by themselves); the interval is the matching 95% t interval of the mean difference. A failed fold "
    "counts as 0, as in the table.")


def _p_cell(p) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _paired_folds_cell(comparison: dict) -> str:
    """The folds paired, with those failed (counted as 0, as in the table) or left out said in the cell."""
    failed = {(f["repeat"], f["fold"]) for f in comparison.get("failed_folds", [])}
    notes = ([f"{len(failed)} failed, as 0"] if failed else []) + \
        ([f"{len(comparison['folds_left_out'])} left out"] if comparison.get("folds_left_out") else [])
    return str(comparison["n_folds"]) + (f" ({'; '.join(notes)})" if notes else "")


def run_folder(out: str | Path | None, overwrite: bool = False, root: str | Path = "featcache-results") -> Path:
    """Where a run's outputs will go, checked before any fitting: `root/<date-time>-<id>/` by default; an explicit
    non-empty `out` is refused unless `overwrite`. Nothing is created or removed here: `write_results` creates the
    folder and replaces an earlier run's files only once the new ones are written, so a run that fails or is
    interrupted leaves no empty folder and loses nothing."""
    if out is None:
        folder = Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        _check_creatable(folder, "cannot create the results folder {folder} ({reason}); pass --out")
        return folder
    folder = Path(out)
    if folder.is_symlink() and not folder.exists():
        raise FeatcacheError(f"--out {folder}: a symbolic link to a missing folder")
    if folder.exists() and not folder.is_dir():
        raise FeatcacheError(f"--out {folder}: exists and is not a folder")
    if folder.is_dir():
        if any(not _stale_staging(p) for p in folder.iterdir()) and not overwrite:
            raise FeatcacheError(f"--out {folder} is not empty; pass --overwrite to replace an earlier run's "
                                 "files there, or leave --out out for a fresh run folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise FeatcacheError(f"--out {folder}: the folder is not writable")
        return folder
    _check_creatable(folder, "--out {folder}: cannot create the folder ({reason})")
    return folder


def _check_creatable(folder: Path, message: str) -> None:
    """The nearest existing parent must be a writable folder."""
    missing = missing_folders(folder)
    parent = (missing[-1] if missing else folder).absolute().parent
    if not parent.is_dir():
        raise FeatcacheError(message.format(folder=folder, reason=f"{parent} is not a folder"))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FeatcacheError(message.format(folder=folder, reason=f"{parent} is not writable"))


MANIFEST_MAX_BYTES = 1 << 20


def _replace_run(out: Path, staged: Path) -> None:
    """Move the files written into `staged` into `out`, after removing those an earlier run listed in its manifest
    that this run does not write, as long as each is one of the names a run writes (`removable_output`) and a file
    directly in `out`: a manifest is read as a list of candidates, never as permission to delete anything else. A
    manifest that is not a regular file of at most MANIFEST_MAX_BYTES lists nothing. The new manifest is written in
    the staging folder first (a full disk fails there, before anything moves) and renamed in last, so an
    interruption in between leaves a manifest that a later --overwrite can use (files named like this run's are
    replaced in place)."""

    manifest = out / MANIFEST
    earlier = _read_manifest(manifest)
    names = sorted(p.name for p in staged.iterdir())
    write_text_atomically(staged / MANIFEST, "\n".join(names) + "\n")
    for name in earlier:
        target = out / name
        if removable_output(name) and name not in names and target.resolve().parent == out.resolve() \
                and target.is_file():
            target.unlink()
    for name in names:
        os.replace(staged / name, out / name)
    os.replace(staged / MANIFEST, manifest)  # a rename needs no space


def _read_manifest(manifest: Path) -> list[str]:
    """The names an earlier run's manifest lists; none when it is missing, not a regular file, or too large."""
    try:
        info = os.stat(manifest)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MANIFEST_MAX_BYTES:
            return []
        with open(manifest, "rb") as handle:
            return handle.read(MANIFEST_MAX_BYTES).decode("utf-8", "replace").split("\n")
    except OSError:
        return []


def removable_output(name: str) -> bool:
    """Whether `--overwrite` may remove a file of this name from a run folder: one of the fixed outputs
    (OUTPUT_FILES) or a figure a run draws (`scatter_*.png`, `backbones_*.png`), a bare name (no folder)."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        return False
    return name in OUTPUT_FILES.values() or (name.startswith(("scatter_", "backbones_")) and name.endswith(".png"))


def write_results(results: CVResults, out: str | Path, title: str = "featcache fit", plot: str | None = None,
                  run_info: dict | None = None, figures: bool = True,
                  figure_list: list[tuple] | None = None) -> dict[str, Path]:
    """Every output of a run into `out`; a manifest lists them (what --overwrite may remove). Written into a
    staging folder inside `out` first and moved in when complete: a failure or Ctrl-C while writing (figures take
    seconds) leaves an earlier run's files as they were."""
    out = Path(out)
    created = missing_folders(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for stale in filter(_stale_staging, out.glob(STAGING + "*")):  # a run killed while writing (kill -9)
            shutil.rmtree(stale, ignore_errors=True)
        staged = Path(tempfile.mkdtemp(prefix=f"{STAGING}{os.getpid()}-", dir=out))
    except OSError as exc:
        raise FeatcacheError(f"--out {out}: cannot write the results ({exc.strerror or exc})") from None
    try:
        paths = _write_outputs(results, staged, title, plot, run_info, figures, figure_list)
        _replace_run(out, staged)
    except OSError as exc:
        where = f" ({Path(exc.filename).name})" if getattr(exc, "filename", None) else ""
        raise FeatcacheError(f"--out {out}: cannot write the results{where}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staged, ignore_errors=True)
        remove_if_empty(created)  # a failed or interrupted run leaves no empty folder
    return {key: out / path.name for key, path in paths.items()}


def missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, deepest first (what a run may create)."""
    missing = []
    for path in [folder, *folder.absolute().parents]:
        if path.exists() or path.is_symlink():
            break
        missing.append(Path(path))
    return missing


def remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders a failed run created (deepest first), as long as they are empty."""
    for path in folders:
        try:
            path.rmdir()
        except OSError:  # not empty, or already gone
            return


def _stale_staging(path: Path) -> bool:
    """A staging folder whose run is gone (its name carries the writer's pid; a live run's is left alone)."""
    return path.name.startswith(STAGING) and not _alive(path.name[len(STAGING):].partition("-")[0])


def _alive(pid: str) -> bool:
    """Whether the process that named a staging folder still runs (its folder is then not stale)."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def output_name(name: str) -> bool:
    """Whether a file name in a run folder is one that write_results writes (or may write: the figures)."""
    return name in (*OUTPUT_FILES.values(), MANIFEST) or name.startswith(("scatter_", "backbones_", STAGING))


def _write_outputs(results: CVResults, out: Path, title: str, plot: str | None, run_info: dict | None,
                   figures: bool, figure_list: list[tuple] | None) -> dict[str, Path]:
    from regressors.figures import draw_figures
    from regressors.tables import render_table, table_rows

    paths = {key: out / name for key, name in OUTPUT_FILES.items()}
    payload = results.to_dict()
    if run_info:
        payload["run"] = run_info
    write_text_atomically(paths["json"], json.dumps(_finite_or_null(payload), indent=2, default=_jsonable) + "\n")
    _write_csv(paths["csv"], results.summary)
    _write_csv(paths["folds"], [{**r, "chosen": json.dumps(r.get("chosen", {}))} for r in results.folds])
    write_predictions(paths["predictions"], results)
    rows = table_rows(results.config, results.summary, results.folds, "this run")
    table = render_table(rows, fmt="md")
    write_text_atomically(paths["table"], table)
    write_text_atomically(paths["latex"], render_table(rows, fmt="latex"))
    figure_lines = draw_figures(results, out, plot, paths, figure_list) if figures else []
    write_text_atomically(paths["report"], report_markdown(results, title, figure_lines, table))
    return paths


def report_markdown(results: CVResults, title: str, figure_lines: list[str], table: str = "") -> str:
    """The paper-layout table and floors first, then the highest test scores (labelled as such), the figures,
    the paired mode comparisons and the full per-cell table."""
    c = results.config
    lines = [f"# {title}", "", table, ""]
    lines += selection_markdown(results.selection)
    best = highest_on_test(results.summary, results.folds)
    if best:
        lines += ["## Highest test scores (picked on the test folds: orientation, not a result)", ""]
        lines += [_highest_line(entry) for entry in best] + [""]
    if figure_lines:
        lines += ["## Figures (repeat 0, out-of-fold predictions)", ""] + figure_lines
    if results.comparisons:
        lines += ["## Modes compared on the same test samples", "", COMPARISONS_NOTE, "",
                  format_comparisons(results.comparisons), ""]
    lines += ["## Every cell", "", f"Protocol: {c.get('split_doc', c['split'])}. SRCC, PLCC and KRCC are fold "
              "means (mean over the folds of each repeat, then over repeats; ± is the population SD (ddof 0) "
              "across repeats when there are several, else across folds: `std_over` in results.json). A failed "
              "fold (constant predictions) counts as 0. *SRCC pooled* is over all out-of-fold predictions of a "
              "repeat, averaged over the repeats, with its 95% interval (a percentile bootstrap resampling whole "
              "prompt groups, each with its predictions of every repeat). PLCC logistic: after the 4-parameter "
              "logistic mapping (VQEG), fitted on each fold's training predictions. Label-only floors that give "
              "the same numbers are one row (a = b = c).", "",
              format_table(results.summary, markdown=True), "",
              "Per-generator and per-subset figures: `breakdown` in results.json; every prediction: "
              "predictions.csv.", ""]
    return "\n".join(lines)


def selection_markdown(selection: list[dict] | None) -> list[str]:
    """report.md's section on the nested selection (`regressors.selection`): empty without --select; with it, the
    protocol in words and one row per target and sample set (outer score, interval, what was chosen)."""
    if selection is None:
        return []
    from regressors.selection import CRITERION, INTERVAL, chosen_text

    lines = ["## Nested selection: the score of choosing and fitting the configuration (quote this)", ""]
    if not selection:
        return lines + ["No sample set could be selected (warnings above say why).", ""]
    first = selection[0]
    lines += [f"In each outer training fold the configuration of each target and sample set was chosen by "
              f"{first['inner_folds']}-fold inner cross-validation on that fold's training rows alone "
              f"({first['inner_grouping']} held out), by {CRITERION}; label-only floors do not compete, and modes "
              "scored on the samples with an image prompt compete only among themselves. The outer folds then score "
              "the chosen configuration: no number below was picked on the test folds (the highest cell of the "
              "table was). SRCC, PLCC, KRCC and RMSE are fold means (failed folds count 0"
              + (f"; ± is the population SD over {first['std_over']}" if first["std_over"] != "none" else "")
              + f"); the interval is the {INTERVAL}.", "",
              "| target | samples | SRCC | pooled SRCC [95% CI] | PLCC | KRCC | RMSE | folds | chosen |",
              "|---|---|---|---|---|---|---|---|---|"]
    def mean_sd(entry: dict, metric: str) -> str:
        sd = entry[f"{metric}_std"]
        return number_cell(entry[f"{metric}_mean"]) + (f" ± {sd:.3f}" if sd is not None and math.isfinite(sd)
                                                       else "")

    for e in selection:
        folds = f"{e['n_folds']}" + (f" ({e['n_failed']} failed)" if e["n_failed"] else "")
        lines.append(f"| {e['target']} | {e['sample_set_doc']} | {mean_sd(e, 'srcc')} | "
                     f"{number_cell(e['srcc_pooled'])} [{number_cell(e['srcc_ci_low'])}, "
                     f"{number_cell(e['srcc_ci_high'])}] | {mean_sd(e, 'plcc')} | {mean_sd(e, 'krcc')} | "
                     f"{mean_sd(e, 'rmse')} | {folds} | {chosen_text(e)} |")
    return lines + ["", "Per outer fold, every candidate's inner SRCC and the choice: `selection` in results.json.", ""]


def write_predictions(path: Path, results: CVResults) -> None:
    """Every out-of-fold prediction, one row each; text cells escaped for spreadsheets (`safe_text.csv_text`)."""
    from regressors.safe_text import Number, csv_text

    s = results.samples
    header = ["key", "group", "generator", "subset", "backbone", "repeat", "fold", "mode", "regressor", "target",
              "mos", "prediction"]
    rows = []
    for p in results.predictions:
        backbone = getattr(p, "backbone", results.config.get("backbone", ""))
        for row, y, pred in zip(p.rows.tolist(), p.y_true.tolist(), p.y_pred.tolist()):
            rows.append([s["key"][row], s["group"][row], s["generator"][row], s["subset"][row], backbone, p.repeat,
                         p.fold, p.mode, p.regressor, p.target, Number(repr(float(y))), Number(repr(float(pred)))])
    write_text_atomically(path, csv_text(header, rows))


def _write_csv(path: Path, rows: list[dict]) -> None:
    """Rows as CSV, one column per key in order of appearance (empty where a row lacks it); text cells escaped
    for spreadsheets."""
    from regressors.safe_text import csv_text

    if not rows:
        write_text_atomically(path, "")
        return
    fields = list(dict.fromkeys(k for r in rows for k in r))
    write_text_atomically(path, csv_text(fields, ([r.get(k, "") for k in fields] for r in rows)))


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _finite_or_null(value):
    """JSON has no NaN: undefined numbers become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(v) for v in value]
    return value
