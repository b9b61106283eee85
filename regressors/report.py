"""Results on disk: results.json, results.csv, folds.csv, predictions.csv, the tables and report.md (figures:
regressors.figures; the text of the tables and comparisons: regressors.summary_text).

Nothing here picks a configuration on the test folds: figures show the configuration asked for (`plot`, by
default the first feature-reading regressor of the run).
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
from regressors.summary_text import comparisons_note, format_comparisons, format_table, highest_line, \
    highest_on_test, number_cell

MANIFEST = ".featcache-run"
STAGING = ".featcache-new-"  # a run's outputs are written into such a folder inside --out, then moved in
OUTPUT_FILES = {"json": "results.json", "csv": "results.csv", "folds": "folds.csv", "predictions": "predictions.csv",
                "table": "table.md", "latex": "table.tex", "report": "report.md"}  # besides the figures


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
    from regressors.results_files import table_rows
    from regressors.tables import render_table

    paths = {key: out / name for key, name in OUTPUT_FILES.items()}
    payload = results.to_dict()
    if run_info:
        payload["run"] = run_info
    write_text_atomically(paths["json"], json.dumps(finite_or_null(payload), indent=2, default=_jsonable) + "\n")
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
        lines += [highest_line(entry) for entry in best] + [""]
    if figure_lines:
        lines += ["## Figures (repeat 0, out-of-fold predictions)", ""] + figure_lines
    if results.comparisons:
        lines += ["## Modes compared on the same test samples", "", comparisons_note(results.comparisons), "",
                  format_comparisons(results.comparisons), ""]
    lines += ["## Every cell", "", f"Protocol: {c.get('split_doc', c['split'])}. SRCC, PLCC and KRCC are fold "
              "means (mean over the folds of each repeat, then over repeats; ± is the population SD (ddof 0) "
              "across repeats when there are several, else across folds, none for a single split however often "
              "repeated: `std_over` in results.json). A failed "
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


def finite_or_null(value):
    """JSON has no NaN: undefined numbers become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_null(v) for v in value]
    return value
