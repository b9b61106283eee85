"""Results on disk: results.json, results.csv, folds.csv, predictions.csv, the tables and report.md (figures:
regressors.figures).

Nothing here picks a configuration on the test folds: figures show the configuration asked for (`plot`, by
default the first feature-reading regressor of the run), and the only "best" in the report is labelled as the
highest test score, beside the best label-only floor, with failed configurations excluded.
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
    if metric == "srcc" and math.isfinite(row.get("srcc_ci_low") or float("nan")):
        return f"{text} [{row['srcc_ci_low']:.2f}, {row['srcc_ci_high']:.2f}]"
    return f"{text} ± {std:.3f}" if std is not None and math.isfinite(std) else text


def _folds_cell(row: dict) -> str:
    text = str(row["n_folds"])
    return text + (f" ({row['n_failed']} failed)" if row.get("n_failed") else "")


def number_cell(value) -> str:
    """A metric as the tables and figures show it: three decimals, or n/a."""
    return f"{value:.3f}" if value is not None and math.isfinite(value) else "n/a"


def format_table(summary: list[dict], markdown: bool = False) -> str:
    """A fixed-width (or Markdown) table of the summary rows; SRCC and PLCC as fold means (± SD, or a 95%
    bootstrap interval for a single split), pooled SRCC over all out-of-fold predictions, failed folds named."""
    with_backbone = any("backbone" in r for r in summary)
    header = (["backbone"] if with_backbone else []) + [
        "regressor", "mode", "target", "SRCC", "PLCC", "PLCC logistic", "KRCC", "RMSE", "SRCC pooled", "folds",
        "train/test"]
    rows = [([printable(r.get("backbone", ""))] if with_backbone else []) + [
        printable(r["regressor"]), printable(r["mode"]), printable(r["target"]), _cell(r, "srcc"), _cell(r, "plcc"),
        _cell(r, "plcc_logistic"), _cell(r, "krcc"), _cell(r, "rmse"), number_cell(r.get("srcc_pooled")), _folds_cell(r),
        f"{r['n_train']}/{r['n_test']}"] for r in summary]
    return _render(header, rows, markdown)


def _render(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


def highest_on_test(summary: list[dict]) -> list[dict]:
    """Per target, sample set (all samples; those with an image prompt, which FR scores alone) and backbone: the
    feature-reading row with the highest mean test SRCC among those with no failed fold, and the best label-only
    floor of the same mode (the same test samples), or of any mode of the set when no model qualifies. An NR and an
    FR score are never compared: they come from other test samples. Chosen on the test folds: for orientation, not a
    result. `floors_fitted` False: the run had no floor at all (--no-floors)."""
    from regressors.modes import scores_prompted_samples

    out: dict[tuple, dict] = {}
    valid: dict[tuple, list[dict]] = {}
    for row in summary:
        prompted = scores_prompted_samples(row["mode"])
        key = (row.get("backbone", ""), row["target"], prompted)
        floor = not get_regressor(row["regressor"]).reads_features
        entry = out.setdefault(key, {"backbone": key[0], "target": key[1], "prompted": prompted, "model": None,
                                     "floor": None, "floors_fitted": False})
        entry["floors_fitted"] |= floor
        if row.get("n_failed") or row["srcc_mean"] is None or not math.isfinite(row["srcc_mean"]):
            continue
        if floor:
            valid.setdefault(key, []).append(row)
        elif entry["model"] is None or row["srcc_mean"] > entry["model"]["srcc_mean"]:
            entry["model"] = row
    for key, entry in out.items():
        floors = [r for r in valid.get(key, []) if entry["model"] is None or r["mode"] == entry["model"]["mode"]]
        entry["floor"] = max(floors, key=lambda r: r["srcc_mean"], default=None)  # the first of equals
    return list(out.values())


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
    from regressors.tables import render_table

    paths = {key: out / name for key, name in OUTPUT_FILES.items()}
    payload = results.to_dict()
    if run_info:
        payload["run"] = run_info
    write_text_atomically(paths["json"], json.dumps(_finite_or_null(payload), indent=2, default=_jsonable) + "\n")
    _write_csv(paths["csv"], results.summary)
    _write_csv(paths["folds"], [{**r, "chosen": json.dumps(r.get("chosen", {}))} for r in results.folds])
    write_predictions(paths["predictions"], results)
    rows = [dict(r, backbone=r.get("backbone") or results.config.get("backbone") or "labels only",
                 _protocol=_protocol_line(results.config)) for r in results.summary]
    table = render_table(rows, fmt="md")
    write_text_atomically(paths["table"], table)
    write_text_atomically(paths["latex"], render_table(rows, fmt="latex"))
    figure_lines = draw_figures(results, out, plot, paths, figure_list) if figures else []
    write_text_atomically(paths["report"], report_markdown(results, title, figure_lines, table))
    return paths


def _protocol_line(config: dict) -> str:
    from regressors.tables import protocol

    return protocol(config)


def report_markdown(results: CVResults, title: str, figure_lines: list[str], table: str = "") -> str:
    """The paper-layout table and floors first, then the highest test scores (labelled as such), the figures,
    the paired mode comparisons and the full per-cell table."""
    c = results.config
    lines = [f"# {title}", "", table, ""]
    lines += selection_markdown(results.selection)
    best = highest_on_test(results.summary)
    if best:
        lines += ["## Highest test scores (picked on the test folds: orientation, not a result)", ""]
        for entry in best:
            model, floor = entry["model"], entry["floor"]
            where = f"{entry['backbone']} " if entry["backbone"] else ""
            samples = " (samples with an image prompt)" if entry.get("prompted") else ""
            text = f"- {where}{entry['target']}{samples}: "
            text += (f"{model['regressor']} {model['mode']} SRCC {model['srcc_mean']:.3f}" if model
                     else "no feature-reading configuration without failed folds")
            if floor:
                text += (f"; best label-only floor {floor['regressor']} {floor['mode']} SRCC "
                         f"{floor['srcc_mean']:.3f}")
            elif entry.get("floors_fitted"):
                text += "; no label-only floor of that mode without failed folds"
            else:
                text += "; no label-only floor beside it (run made with --no-floors)"
            lines.append(text)
        lines.append("")
    if figure_lines:
        lines += ["## Figures (repeat 0, out-of-fold predictions)", ""] + figure_lines
    if results.comparisons:
        lines += ["## Modes compared on the same test samples", "", COMPARISONS_NOTE, "",
                  format_comparisons(results.comparisons), ""]
    lines += ["## Every cell", "", f"Protocol: {c.get('split_doc', c['split'])}. SRCC, PLCC and KRCC are fold "
              "means (mean over the folds of each repeat, then over repeats; ± is the SD across repeats when there "
              "are several, else across folds; a single split shows a 95% bootstrap interval over prompt groups). "
              "A failed fold (constant predictions) counts as 0. *SRCC pooled* is over all out-of-fold "
              "predictions of a repeat. PLCC logistic: after the 4-parameter logistic mapping (VQEG), fitted on "
              "each fold's training predictions.", "",
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
