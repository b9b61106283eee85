"""`featcache table`: results.json files pivoted into the paper's layout.

Rows: method (NR / FR / PR, then the extra modes) x backbone x regressor, the label-only floors as reference rows;
columns: target x metric (SRCC, PLCC by default). The best value per column is bold, chosen among feature-reading
rows without a failed fold scored on the same samples (the floors and failed configurations never win; the modes
that read an image prompt, scored on those samples only, have a best of their own). The caption states the
protocol: one, since runs made on other folds are refused.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

from featcache.errors import FeatcacheError
from regressors.modes import MODES, scores_prompted_samples
from regressors.registry import REGRESSORS
from featcache.untrusted import printable
from regressors.splits import SPLITS

METRICS = {"srcc": "SRCC", "plcc": "PLCC", "plcc_logistic": "PLCC (logistic)", "krcc": "KRCC", "rmse": "RMSE",
           "srcc_pooled": "SRCC (pooled)"}
FORMATS = ("md", "latex", "csv")


def method_label(mode: str) -> str:
    return mode.upper() if MODES.get(mode) and MODES[mode].paper else mode.upper().replace("-DIFF", "-diff")


def load_results(paths: list[str | Path]) -> list[dict]:
    """Summary rows of every file, each with its backbone and the file's protocol. Runs made on other folds are
    refused (their rows beside each other would compare splits, not heads), and so is a cell two runs both give
    with different values (keeping either would hide the other); a cell both give with the same values, every
    number to SAME_CELL_TOLERANCE (`--jobs 1` and loky's workers differ in the last bits), is kept once."""
    rows, runs, seen = [], [], {}
    for run, given in enumerate(paths):
        path = Path(given)
        if path.is_dir():
            path = path / "results.json"
        try:
            payload = json.loads(read_results_text(path))
            config, summary = payload["config"], payload["summary"]
        except (ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: nested past the parser
            raise FeatcacheError(f"{path}: not a featcache results.json ({type(exc).__name__}: "
                                 f"{str(exc)[:200]})") from None
        if not isinstance(config, dict) or not isinstance(summary, list) or not all(
                isinstance(r, dict) and all(isinstance(r.get(k), str) for k in ("mode", "regressor", "target"))
                for r in summary):
            raise FeatcacheError(f"{path}: not a featcache results.json (its config or summary rows are malformed)")
        problem = _summary_problem(config, summary)
        if problem:
            raise FeatcacheError(printable(f"{path}: not a featcache results.json ({problem})"))
        name = str(given)
        if runs:
            _same_folds(runs[0], (name, payload))
        runs.append((name, payload))
        for row in summary:
            backbone = row.get("backbone") or config.get("backbone") or "labels only"
            row = dict(row, backbone=backbone, _protocol=protocol(config))
            key = _cell(row)
            if key in seen and seen[key][0] != run:
                if not _same_values(seen[key][2], row):
                    raise FeatcacheError(printable(
                        f"{seen[key][1]} and {name} both give {_cell_name(key)} with different values "
                        f"({_differs(seen[key][2], row)}); render them separately or leave one out"))
                continue  # the same cell computed twice on the same folds: shown once
            seen.setdefault(key, (run, name, row))
            rows.append(row)
    if not rows:
        raise FeatcacheError("no summary rows in " + ", ".join(str(p) for p in paths))
    return rows


ROW_NUMBERS = [f"{m}_mean" for m in METRICS if not m.endswith("_pooled")] + [
    m for m in METRICS if m.endswith("_pooled")]


def _summary_problem(config: dict, summary: list[dict]) -> str | None:
    """What is wrong with the values a table reads, in words naming the key; None when nothing is. Every metric a
    row may show is a finite number or null (what fit and bench write), `n_failed` a whole number from 0 or null,
    and a row's backbone (its own, else the config's) text or null."""
    for row in summary:
        if not isinstance(row.get("backbone") or config.get("backbone"), (str, type(None))):
            return "a summary row's backbone is not text"
        for key in ROW_NUMBERS:
            value = row.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    isinstance(value, int) and abs(value) > 2 ** 53) or not math.isfinite(value):
                return f"summary {key} {str(value)[:40]!r} is not a finite number or null"
        failed = row.get("n_failed")
        if failed is not None and (isinstance(failed, bool) or not isinstance(failed, int)
                                   or not 0 <= failed < 2 ** 53):
            return f"summary n_failed {str(failed)[:40]!r} is not a whole number from 0 or null"
    return None


RESULTS_MAX_BYTES = 256 << 20  # far above any run's results.json (a large bench writes a few MB)


def read_results_text(path: Path) -> str:
    """The text of a results.json: a regular file (not a device, pipe or folder) of at most RESULTS_MAX_BYTES,
    read no further than that; else a one-line error naming the limit."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FeatcacheError(f"{path}: results file not found") from None
    except OSError as exc:
        raise FeatcacheError(f"{path}: cannot read the results file ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        raise FeatcacheError(f"{path}: not a regular file; give a results.json that fit or bench wrote")
    if info.st_size > RESULTS_MAX_BYTES:
        raise FeatcacheError(f"{path}: {info.st_size} bytes, more than a results.json may have "
                             f"({RESULTS_MAX_BYTES >> 20} MiB); is it a results.json that fit or bench wrote?")
    try:
        with open(path, "rb") as handle:
            data = handle.read(RESULTS_MAX_BYTES + 1)
    except OSError as exc:
        raise FeatcacheError(f"{path}: cannot read the results file ({exc.strerror or exc})") from None
    if len(data) > RESULTS_MAX_BYTES:
        raise FeatcacheError(f"{path}: more than a results.json may have ({RESULTS_MAX_BYTES >> 20} MiB)")
    return data.decode("utf-8", errors="replace")


def fold_protocol(payload: dict) -> dict:
    """What decides a run's folds: the split, the selection, the repeats, the options its split reads (--folds and
    --seed for the K-fold splits, the two sides for cross) and the samples (the cache's sample hash, when recorded).
    A field the file does not record is left out, so it is compared only between runs that record it."""
    config = payload.get("config", {})
    split = SPLITS.get(config.get("split"))  # a split this version does not know: every option may decide its folds
    options = split.options if split else ("folds", "seed", "train_on", "test_on", "hold_out_prompts")
    out = {key: config[key] for key in ("split", "subset", "repeats", *options) if key in config}
    samples = ((payload.get("run") or {}).get("cache_attrs") or {}).get("samples_sha256")
    if samples:
        out["samples"] = samples
    return out


def _same_folds(first: tuple[str, dict], other: tuple[str, dict]) -> None:
    a, b = fold_protocol(first[1]), fold_protocol(other[1])
    compared = a if a.get("split") == b.get("split") else ("split", "subset", "repeats", "samples")
    keys = [k for k in compared if k in a and k in b and a[k] != b[k]]
    if not keys:
        return
    shown = ", ".join(f"samples (cache samples_sha256 {a['samples'][:12]} vs {b['samples'][:12]})" if k == "samples"
                      else f"--{k.replace('_', '-')} {a.get(k)} vs {b.get(k)}" for k in keys)
    raise FeatcacheError(printable(f"{first[0]} and {other[0]} were made on different folds ({shown}): a table "
                                   "compares one protocol; render them separately"))


def _floors() -> set[str]:
    return {name for name, spec in REGRESSORS.items() if not spec.reads_features}


def _cell(row: dict) -> tuple:
    """A table cell's key: floors read no feature, so any backbone's floor is the same cell."""
    if row["regressor"] in _floors():
        return row["mode"], None, row["regressor"], row["target"]
    return row["mode"], row["backbone"], row["regressor"], row["target"]


def _cell_name(key: tuple) -> str:
    mode, backbone, regressor, target = key
    return f"cell {method_label(mode)}, {'floor' if backbone is None else backbone}, {regressor}, {target}"


def _values(row: dict) -> dict:
    """What a table may show of a row (timings and labels left out)."""
    return {k: v for k, v in row.items() if k not in ("seconds", "backbone") and not k.startswith("_")}


# Two runs' values of one cell count as the same when they differ by at most this much, absolutely or relative to
# the larger (math.isclose with both tolerances): results through loky differ from `--jobs 1` in the last bits
# (predictions 2e-15 apart; the logistic PLCC within 1e-13 since its fit is bounded), while any difference a
# table could show (3 decimals) is 1e-4 or more.
SAME_CELL_TOLERANCE = 1e-9


def _same_value(a, b) -> bool:
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return a == b or math.isclose(a, b, rel_tol=SAME_CELL_TOLERANCE, abs_tol=SAME_CELL_TOLERANCE)
    return a == b  # text, None (JSON's undefined number), booleans: exactly


def _same_values(a: dict, b: dict) -> bool:
    va, vb = _values(a), _values(b)
    return va.keys() == vb.keys() and all(_same_value(va[k], vb[k]) for k in va)


def _differs(a: dict, b: dict) -> str:
    va, vb = _values(a), _values(b)
    key = next(k for k in [*(f"{m}_mean" for m in METRICS), *va, *vb]
               if (k in va) != (k in vb) or (k in va and not _same_value(va[k], vb[k])))
    shown = [_fmt(va.get(key)), _fmt(vb.get(key))]
    if shown[0] == shown[1]:  # apart by more than the tolerance, less than the 3 decimals show
        shown = [repr(va.get(key)), repr(vb.get(key))]
    return f"{key} {shown[0]} vs {shown[1]}"


def protocol(config: dict) -> str:
    split = config.get("split", "?")
    folds = f"{config.get('folds')}-fold " if split in ("group", "kfold") else ""
    repeats = config.get("repeats", 1)
    subset = config.get("subset", "all")
    cross = f" (train {config.get('train_on')}, test {config.get('test_on')})" if split == "cross" else ""
    return f"{folds}{split} split{cross}, {repeats} repeat(s), subset {subset}"


def _value(row: dict, metric: str) -> float:
    key = metric if metric.endswith("_pooled") else f"{metric}_mean"
    value = row.get(key)
    return float(value) if value is not None and math.isfinite(float(value)) else float("nan")


def paper_table(rows: list[dict], metrics: list[str]) -> tuple[list[str], list[list], list[list[bool]], str]:
    """(header, body rows, bold flags, caption)."""
    for metric in metrics:
        if metric not in METRICS:
            from featcache.errors import unknown_name

            raise unknown_name("metric", metric, METRICS)
    targets = list(dict.fromkeys(r["target"] for r in rows))
    mode_order = {m: i for i, m in enumerate(MODES)}
    floors = {name for name, spec in REGRESSORS.items() if not spec.reads_features}
    keys = list(dict.fromkeys((r["mode"], r["backbone"], r["regressor"]) for r in rows))
    models = sorted((k for k in keys if k[2] not in floors), key=lambda k: (mode_order.get(k[0], 99),))
    floor_keys = sorted(dict.fromkeys((k[0], k[2]) for k in keys if k[2] in floors),  # run order: a set's order
                        key=lambda k: (mode_order.get(k[0], 99),))                   # changed with the hash seed
    index = {(r["mode"], r["backbone"], r["regressor"], r["target"]): r for r in rows}
    floor_index = {(r["mode"], r["regressor"], r["target"]): r for r in rows if r["regressor"] in floors}
    header = ["method", "backbone", "regressor"] + [f"{t} {METRICS[m]}" for t in targets for m in metrics]
    body, failed = [], []
    for mode, backbone, regressor in models:
        cells, bad = [], False
        for t in targets:
            row = index.get((mode, backbone, regressor, t))
            bad = bad or bool(row and row.get("n_failed"))
            cells += [_value(row, m) if row else float("nan") for m in metrics]
        failures = {t: int(index[(mode, backbone, regressor, t)].get("n_failed") or 0)
                    for t in targets if (mode, backbone, regressor, t) in index}
        body.append([method_label(mode), backbone, regressor + _failed_note(failures)] + cells)
        failed.append(bad)
    bold = [[False] * len(header) for _ in body]
    for column in range(3, len(header)):
        metric = metrics[(column - 3) % len(metrics)]
        for prompted in (False, True):  # NR scores all samples, FR only those with a prompt: never one contest
            candidates = [(r[column], i) for i, r in enumerate(body) if not failed[i] and math.isfinite(r[column])
                          and scores_prompted_samples(models[i][0]) == prompted]
            if candidates:
                best = min(candidates)[0] if metric == "rmse" else max(candidates)[0]
                for value, i in candidates:
                    if value == best:
                        bold[i][column] = True
    shown = set()
    for mode, regressor in floor_keys:  # floors depend only on the samples: once per sample set
        prompted = scores_prompted_samples(mode)
        if (prompted, regressor) in shown:
            continue
        shown.add((prompted, regressor))
        cells = []
        for t in targets:
            row = floor_index.get((mode, regressor, t))
            cells += [_value(row, m) if row else float("nan") for m in metrics]
        failures = {t: int((floor_index.get((mode, regressor, t)) or {}).get("n_failed") or 0) for t in targets}
        label = "floor (samples with an image prompt)" if prompted else "floor (all samples)"
        # a floor that is constant in a fold (generator-mean with one generator) fails it, as a model would
        body.append([label, "none (labels only)", regressor + _failed_note(failures)] + cells)
        bold.append([False] * len(header))
    protocols = sorted({r["_protocol"] for r in rows})
    both = len({scores_prompted_samples(mode) for mode, _, _ in models}) > 1
    caption = ("; ".join(protocols) + ". Fold means; a failed fold counts as 0. Bold: best per column among "
               "feature-reading rows without failed folds" + (" scored on the same samples (all samples; the "
                                                              "samples with an image prompt)" if both else "")
               + ", as picked on the test folds. " + _floors_note(models, shown))
    return header, body, bold, caption


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


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if math.isfinite(value) else "n/a"
    return str(value)


def render_table(rows: list[dict], metrics: list[str] | None = None, fmt: str = "md") -> str:
    metrics = metrics or ["srcc", "plcc"]
    if fmt not in FORMATS:
        from featcache.errors import unknown_name

        raise unknown_name("format", fmt, FORMATS)
    header, body, bold, caption = paper_table(rows, metrics)
    header, caption = [printable(h) for h in header], printable(caption)  # names from files: never raw controls
    body = [[printable(v) if isinstance(v, str) else v for v in r] for r in body]
    if fmt == "csv":
        from regressors.safe_text import Number, csv_text

        return csv_text(header, [[v if isinstance(v, str) else Number(_fmt(v)) for v in r] for r in body])
    if fmt == "md":
        header = [_md(h) for h in header]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        for r, b in zip(body, bold):
            lines.append("| " + " | ".join(f"**{_md(_fmt(v))}**" if flag else _md(_fmt(v)) for v, flag in zip(r, b))
                         + " |")
        return "\n".join(lines) + f"\n\n{caption}\n"
    return _latex(header, body, bold, caption)


def _md(text: str) -> str:
    """A markdown table cell: a `|` (which would end the cell) written `\\|`."""
    return text.replace("|", "\\|")


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                 ("$", r"\$"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        if a == "{" or a == "}":
            continue
        text = text.replace(a, b)
    return text


def _latex(header, body, bold, caption) -> str:
    columns = "lll" + "r" * (len(header) - 3)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{columns}}}", r"\toprule",
             " & ".join(_tex(h) for h in header) + r" \\", r"\midrule"]
    floors_started = False
    for r, b in zip(body, bold):
        if str(r[0]).startswith("floor") and not floors_started:
            lines.append(r"\midrule")
            floors_started = True
        cells = [rf"\textbf{{{_tex(_fmt(v))}}}" if flag else _tex(_fmt(v)) for v, flag in zip(r, b)]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{_tex(caption)}}}", r"\end{table}", ""]
    return "\n".join(lines)
