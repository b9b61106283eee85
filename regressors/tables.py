"""`featcache table`: results.json files pivoted into the paper's layout.

Rows: method (NR / FR / PR, then the extra modes) x backbone x regressor, then the zero-shot rows (one per
backbone) and the label-only floors as reference rows (floors whose numbers coincide as one row); columns: target x
metric (SRCC, PLCC by default), each cell optionally with its 95% interval (`ci`) or its sample SD (`sd`). Marks
follow `regressors.marks`: bold only for a best that the paired test separates from the runner-up of its column and
sample set, a shared mark for the rows tied with it, another for a score below the best floor. The caption states
the protocol (one: runs made on other folds are refused), what a cell and each mark mean, and why a mark or an
interval is missing. Reading and checking the files: `regressors.results_files`.
"""

from __future__ import annotations

import math

from featcache.errors import FeatcacheError
from featcache.untrusted import printable
from regressors.fold_rows import fold_sd
from regressors.inference import INTERVAL_METRICS
from regressors.marks import TEST_NAME, base_metric, below_floor, best_floor, coincide_note, coinciding, contest, \
    floors_label
from regressors.modes import MODES, scores_prompted_samples
from regressors.registry import floor_names, zero_shot_names
from regressors.table_formats import Cell, csv_table, latex_table, md_cell, shown

METRICS = {"srcc": "SRCC", "plcc": "PLCC", "plcc_logistic": "PLCC (logistic)", "krcc": "KRCC", "rmse": "RMSE",
           "srcc_pooled": "SRCC (pooled)", "plcc_pooled": "PLCC (pooled)", "rmse_pooled": "RMSE (pooled)"}
FORMATS = ("md", "latex", "csv")


def method_label(mode: str) -> str:
    if MODES.get(mode) and MODES[mode].paper:
        return mode.upper()
    head, _, rest = mode.partition("-")
    return head.upper() + (f"-{rest}" if rest else "")


def _value(row: dict | None, key: str) -> float:
    value = (row or {}).get(key)
    return float(value) if value is not None and math.isfinite(float(value)) else float("nan")


def _mean_key(metric: str) -> str:
    return metric if metric.endswith("_pooled") else f"{metric}_mean"


def _interval_metric(metric: str) -> str | None:
    base = base_metric(metric)
    return base if base in INTERVAL_METRICS else None


def column_name(metric: str, ci: bool = False) -> str:
    """A column's heading: with `ci`, SRCC, PLCC and RMSE are the pooled values their intervals surround."""
    interval = _interval_metric(metric)
    return METRICS[f"{interval}_pooled"] if ci and interval else METRICS[metric]


def _make_cell(row: dict | None, metric: str, ci: bool, sd: bool) -> Cell:
    interval = _interval_metric(metric)
    if row is None:
        return Cell(float("nan"))
    if ci and interval:
        cell = Cell(_value(row, f"{interval}_pooled"))
        if "ci_level" in row:
            cell.low, cell.high = _value(row, f"{interval}_ci_low"), _value(row, f"{interval}_ci_high")
        return cell
    cell = Cell(_value(row, _mean_key(metric)))
    if sd and not metric.endswith("_pooled") and row.get("_folds"):
        cell.sd = fold_sd(row["_folds"], metric)[0]
    return cell


def paper_table(rows: list[dict], metrics: list[str], *, ci: bool = False,
                sd: bool = False) -> tuple[list[str], list[list], str]:
    """(header, body rows, caption): each body row is [method, backbone, regressor, Cell per target x metric].
    `ci`: SRCC, PLCC and RMSE cells are the pooled values with their 95% intervals; `sd`: fold-mean cells carry
    the sample SD of `fold_rows.fold_sd`. Marks as `regressors.marks` rules them."""
    for metric in metrics:
        if metric not in METRICS:
            from featcache.errors import unknown_name

            raise unknown_name("metric", metric, METRICS)
    if ci and sd:
        raise FeatcacheError("--ci and --sd: choose one (the interval is of the pooled value, the SD of the fold "
                             "means)")
    targets = list(dict.fromkeys(r["target"] for r in rows))
    mode_order = {m: i for i, m in enumerate(MODES)}
    floors, zero_shot = set(floor_names()), set(zero_shot_names())
    keys = list(dict.fromkeys((r["mode"], r["backbone"], r["regressor"]) for r in rows))
    models = sorted((k for k in keys if k[2] not in floors | zero_shot), key=lambda k: (mode_order.get(k[0], 99),))
    floor_keys = sorted(dict.fromkeys((k[0], k[2]) for k in keys if k[2] in floors),  # run order: a set's order
                        key=lambda k: (mode_order.get(k[0], 99),))                   # changed with the hash seed
    index = {(r["mode"], r["backbone"], r["regressor"], r["target"]): r for r in rows}
    floor_index = {(r["mode"], r["regressor"], r["target"]): r for r in rows if r["regressor"] in floors}
    header = ["method", "backbone", "regressor"] + [f"{t} {column_name(m, ci)}" for t in targets for m in metrics]
    body, model_rows = [], []
    for mode, backbone, regressor in models:
        cells, found = [], []
        for t in targets:
            row = index.get((mode, backbone, regressor, t))
            found += [row] * len(metrics)
            cells += [_make_cell(row, m, ci, sd) for m in metrics]
        failures = {t: int(index[(mode, backbone, regressor, t)].get("n_failed") or 0)
                    for t in targets if (mode, backbone, regressor, t) in index}
        body.append([method_label(mode), backbone, regressor + _failed_note(failures)] + cells)
        model_rows.append(found)
    floor_lines, shown = [], set()
    for mode, regressor in floor_keys:  # floors depend only on the samples: once per sample set
        prompted = scores_prompted_samples(mode)
        if (prompted, regressor) in shown:
            continue
        shown.add((prompted, regressor))
        same_samples = [m for m, r in floor_keys if r == regressor and scores_prompted_samples(m) == prompted]
        rows_of = [next((floor_index[(m, regressor, t)] for m in same_samples if (m, regressor, t) in floor_index),
                        None) for t in targets]  # each target from the first mode of the set that has it
        cells = [_make_cell(row, m, ci, sd) for row in rows_of for m in metrics]
        failures = {t: int((row or {}).get("n_failed") or 0) for t, row in zip(targets, rows_of)}
        floor_lines.append((prompted, regressor, _failed_note(failures), cells))
    untested, unpaired = _mark(body, model_rows, [m for _ in targets for m in metrics], models, floor_lines)
    zero_shot_lines = _zero_shot_lines(rows, keys, targets, metrics, ci, sd, floor_lines)
    merged, notes = _merged_floors(floor_lines)
    body += zero_shot_lines + merged
    if zero_shot_lines:
        notes.append("Zero-shot rows (samples with an image prompt): the cosine of the generated image's and its "
                     "image prompt's cached features, nothing fitted; reference rows, never bold or †.")
    protocols = sorted({r["_protocol"] for r in rows})
    caption = " ".join(["; ".join(protocols) + ".", _cells_note(rows, metrics, ci, sd),
                        _marks_note(models, untested, unpaired), _floors_note(models, shown), *notes]).strip()
    return header, body, caption


def _mark(body: list[list], model_rows: list[list], column_metrics: list[str], models: list[tuple],
          floor_lines: list[tuple]) -> tuple[set[str], bool]:
    """Set each model cell's marks, column by column and sample set by sample set, among the cells whose own
    target had no failed fold; returns the files whose rows could not be tested (no fold rows) and whether some
    column's best and runner-up shared fewer than 2 folds."""
    untested: set[str] = set()
    unpaired = False
    for column, metric in enumerate(column_metrics):
        for prompted in (False, True):  # NR scores all samples, FR only those with a prompt: never one contest
            members = [i for i in range(len(body)) if scores_prompted_samples(models[i][0]) == prompted]
            floor = best_floor([cells[column].value for p, _, _, cells in floor_lines if p == prompted], metric)
            for i in members:
                body[i][3 + column].below_floor = below_floor(body[i][3 + column].value, floor, metric)
            candidates = [i for i in members if math.isfinite(body[i][3 + column].value)
                          and not (model_rows[i][column] or {}).get("n_failed")]
            rows = [model_rows[i][column] for i in candidates]
            outcome = contest([body[i][3 + column].value for i in candidates],
                              [row.get("_folds") if row else None for row in rows], metric)
            if outcome.untested:
                untested |= {row.get("_file", "the rows given") for row in rows if row and not row.get("_folds")}
            unpaired |= outcome.unpaired
            if outcome.bold:
                body[candidates[outcome.best]][3 + column].bold = True
            for k in outcome.tied:
                body[candidates[k]][3 + column].tied = True
    return untested, unpaired


def _zero_shot_lines(rows: list[dict], keys: list[tuple], targets: list[str], metrics: list[str], ci: bool, sd: bool,
                     floor_lines: list[tuple]) -> list[list]:
    """One reference row per backbone and zero-shot regressor (its numbers do not depend on the mode it was
    scored under), each target from the first mode that has it; cells never bold or tied, ° against the best
    floor of the samples with an image prompt."""
    zero_shot = set(zero_shot_names())
    index = {(r["backbone"], r["regressor"], r["target"]): r for r in reversed(rows) if r["regressor"] in zero_shot}
    out = []
    for backbone, regressor in dict.fromkeys((k[1], k[2]) for k in keys if k[2] in zero_shot):
        rows_of = [index.get((backbone, regressor, t)) for t in targets]
        cells = [_make_cell(row, m, ci, sd) for row in rows_of for m in metrics]
        column_metrics = [m for _ in targets for m in metrics]
        for column, metric in enumerate(column_metrics):
            floor = best_floor([c[column].value for p, _, _, c in floor_lines if p], metric)
            cells[column].below_floor = below_floor(cells[column].value, floor, metric)
        failures = {t: int((row or {}).get("n_failed") or 0) for t, row in zip(targets, rows_of)}
        out.append(["zero-shot (samples with an image prompt)", backbone, regressor + _failed_note(failures)] + cells)
    return out


def _merged_floors(floor_lines: list[tuple]) -> tuple[list[list], list[str]]:
    """The floor rows, those of one sample set whose every shown number coincides (`marks.same_numbers`) as one
    row named "a = b = c"; and the caption's notes on them."""
    body, notes = [], []
    for prompted in (False, True):
        lines = [line for line in floor_lines if line[0] == prompted]
        by_name = {line[1]: line for line in lines}
        groups = coinciding([(r, [n for c in cells for n in c.numbers()] + [note]) for _, r, note, cells in lines])
        label = "floor (samples with an image prompt)" if prompted else "floor (all samples)"
        for names in groups:
            _, _, note, cells = by_name[names[0]]
            # a floor that is constant in a fold (generator-mean with one generator) fails it, as a model would
            body.append([label, "none (labels only)", floors_label(names) + note] + cells)
            if len(names) > 1:
                why = coincide_note(names)
                where = "samples with an image prompt" if prompted else "all samples"
                notes.append(f"{floors_label(names)} ({where}): the same numbers in every cell"
                             f"{f' ({why})' if why else ''}.")
    return body, notes


def _cells_note(rows: list[dict], metrics: list[str], ci: bool, sd: bool) -> str:
    """What a cell is, and what is shown beside it."""
    pooled = [m for m in metrics if (ci and _interval_metric(m)) or m.endswith("_pooled")]
    means = [m for m in metrics if m not in pooled]
    parts = []
    if means:
        parts.append("Fold means (the mean over the folds of each repeat, then over repeats); a failed fold counts "
                     "as 0 in the correlations.")
    if pooled and not ci:
        names = ", ".join(dict.fromkeys(METRICS[m] for m in pooled))
        parts.append(f"{names}: the pooled value (all out-of-fold predictions of a repeat, mean over the "
                     "repeats).")
    if pooled and ci:
        names = ", ".join(dict.fromkeys(METRICS[_interval_metric(m)] for m in pooled))
        parts.append(f"{names}: the pooled value (all out-of-fold predictions of a repeat, mean over the repeats) "
                     "with its 95% interval [low, high], a percentile bootstrap resampling whole prompt groups, each "
                     "with its predictions of every repeat.")
        old = sorted({r.get("_file", "the rows given") for r in rows if "ci_level" not in r})
        if old:
            parts.append(f"No interval for the rows of {', '.join(old)}: written before intervals were saved "
                         "(rerun fit or bench).")
        if means:
            parts.append("The other columns have no interval.")
    if sd and not means:
        parts.append("Pooled columns have no SD.")
    if sd and means:
        every = {fold_sd(r["_folds"], base_metric(m))[1:] for r in rows if r.get("_folds") for m in means}
        over = {(what, n) for what, n in every if n >= 2}
        if every - over:
            parts.append("No SD for rows with one test fold (a single split, however often repeated: its repeats "
                         "test that fold again).")
        if over:
            parts.append("± the sample SD (ddof 1) " + "; ".join(
                f"over the {n} folds" if what == "folds" else f"over the {n} repeats (of each repeat's fold mean)"
                for what, n in sorted(over)) + ("; pooled columns have none." if pooled else "."))
        old = sorted({r.get("_file", "the rows given") for r in rows if not r.get("_folds")})
        if old:
            parts.append(f"No SD for the rows of {', '.join(old)}: it has no fold rows.")
    return " ".join(parts)


def _marks_note(models: list[tuple], untested: set[str], unpaired: bool = False) -> str:
    both = len({scores_prompted_samples(mode) for mode, _, _ in models}) > 1
    sets = " and sample set (all samples; the samples with an image prompt)" if both else ""
    text = (f"Bold: the best of its column{sets} among feature-reading cells without a failed fold, separated from "
            f"the runner-up by {TEST_NAME} at 5% (picked on the test folds). †: tied with the best: not separated "
            f"from it by that test at 5% (the best included), so no bold in that column. °: below the best "
            f"label-only floor of its sample set.")
    if untested:
        text += (f" No bold or † where a row of {', '.join(sorted(untested))} competes: it has no fold rows "
                 "(an older results.json), so no paired test can separate a best.")
    if unpaired:
        text += (" No bold or † where the best and the runner-up share fewer than 2 test folds (a single split "
                 "tests once, however often repeated): the paired test has nothing to pair.")
    return text


def _floors_note(models: list[tuple], floors_shown: set) -> str:
    """The caption's word on the floors: said plainly when a run left them out (--no-floors), for all of the table
    or for the samples of some of its rows, since a table without them cannot show what the labels alone score."""
    if not floors_shown:
        return ("No label-only floors (made with --no-floors): no row shows what the labels alone score on these "
                "folds.")
    missing = {scores_prompted_samples(mode) for mode, _, _ in models} - {prompted for prompted, _ in floors_shown}
    if not missing:
        return "Floors read no pixel."
    which = " and ".join("the samples with an image prompt" if prompted else "all samples"
                         for prompted in sorted(missing, reverse=True))
    return f"Floors read no pixel; none for {which} (made with --no-floors)."


def _failed_note(failures: dict[str, int]) -> str:
    """Failed folds of a row, per target: the row spans every target, and a sum over them ("4 failed folds" for
    one failed fold of each of 4 targets) read as 4 of the 5 folds failed."""
    counts = {t: n for t, n in failures.items() if n}
    if not counts:
        return ""
    if len(failures) == 1:
        (n,) = counts.values()
        return f" ({n} failed fold{'s' if n > 1 else ''})"
    if len(counts) == len(failures) and len(set(counts.values())) == 1:
        n = next(iter(counts.values()))
        return f" ({n} failed fold{'s' if n > 1 else ''} per target)"
    return " (failed folds: " + ", ".join(f"{t} {n}" for t, n in counts.items()) + ")"


def render_table(rows: list[dict], metrics: list[str] | None = None, fmt: str = "md", *, ci: bool = False,
                 sd: bool = False) -> str:
    """The table of `paper_table` as Markdown (bold **, marks † and °), LaTeX (booktabs) or CSV (each number a
    column, with `low`/`high`, `SD` and `mark` columns beside it)."""
    if rows and "_transfer" in rows[0]:  # a transfer.json (results_files.load_results): its own layout
        from regressors.transfer_table import render_transfer

        return render_transfer(rows[0]["_transfer"], metrics, fmt, ci=ci, sd=sd)
    metrics = metrics or ["srcc", "plcc"]
    if fmt not in FORMATS:
        from featcache.errors import unknown_name

        raise unknown_name("format", fmt, FORMATS)
    header, body, caption = paper_table(rows, metrics, ci=ci, sd=sd)
    header, caption = [printable(h) for h in header], printable(caption)  # names from files: never raw controls
    body = [[printable(v) if isinstance(v, str) else v for v in r] for r in body]
    if fmt == "csv":
        return csv_table(header, body, ci, sd)
    if fmt == "md":
        header = [md_cell(h) for h in header]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        for r in body:
            lines.append("| " + " | ".join(md_cell(v) if isinstance(v, str) else shown(v, "md") for v in r) + " |")
        return "\n".join(lines) + f"\n\n{caption}\n"
    return latex_table(header, body, caption)
