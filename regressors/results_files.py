"""results.json files as a table reads them: bounded and checked as untrusted input, their summary rows with their fold
rows, runs made on other folds refused, a cell two runs both give kept once when their values agree.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

from featcache.errors import FeatcacheError
from featcache.untrusted import printable
from regressors.fold_rows import attach_folds, folds_problem
from regressors.intervals import INTERVAL_KEYS
from regressors.splits import SPLITS
from regressors.table_formats import fmt_number
from regressors.registry import floor_names
from regressors.tables import METRICS, method_label
from regressors.transfer_table import is_transfer, is_transfer_folder, transfer_rows


def load_results(paths: list[str | Path]) -> list[dict]:
    """Summary rows of every file, each with its backbone, the file's protocol (`_protocol`), its name (`_file`) and
    its fold rows (`_folds`: {(repeat, fold): fold row}; absent when the file has no `folds`, checked by
    `fold_rows.folds_problem`). Runs made on other folds are refused (their rows beside each other would compare
    splits, not heads), and so is a cell two runs both give with different values (keeping either would hide the
    other); a cell both give with the same values, every number to SAME_CELL_TOLERANCE (`--jobs 1` and loky's
    workers differ in the last bits), is kept once. A transfer.json (or a transfer run folder), given alone, is one
    row carrying the checked file (`transfer_table.transfer_rows`), which `tables.render_table` renders."""
    rows, runs, seen = [], [], {}
    for run, given in enumerate(paths):
        path = Path(given)
        if path.is_dir():
            path = path / ("transfer.json" if is_transfer_folder(path) else "results.json")
        try:
            payload = json.loads(read_results_text(path))
            if is_transfer(payload):
                return transfer_rows(payload, path, len(paths))
            config, summary = payload["config"], payload["summary"]
        except (ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: nested past the parser
            raise FeatcacheError(f"{path}: not a featcache results.json ({type(exc).__name__}: "
                                 f"{str(exc)[:200]})") from None
        if not isinstance(config, dict) or not isinstance(summary, list) or not all(
                isinstance(r, dict) and all(isinstance(r.get(k), str) for k in ("mode", "regressor", "target"))
                for r in summary):
            raise FeatcacheError(f"{path}: not a featcache results.json (its config or summary rows are malformed)")
        problem = _summary_problem(config, summary) or _protocol_problem(payload)
        folds = payload.get("folds")
        if folds is not None and not problem:
            problem = folds_problem(folds, config)
        if problem:
            raise FeatcacheError(printable(f"{path}: not a featcache results.json ({problem})"))
        name = str(given)
        if runs:
            _same_folds(runs[0], (name, payload))
        runs.append((name, payload))
        for row in table_rows(config, summary, folds, name):
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


def table_rows(config: dict, summary: list[dict], folds: list[dict] | None, name: str) -> list[dict]:
    """One run's summary rows as the table reads them: copies with `backbone` (the row's, else the config's, else
    "labels only"), `_protocol`, `_file` (`name`) and, when `folds` is given, `_folds` (`fold_rows.attach_folds`)."""
    def backbone(row: dict) -> str:
        return str(row.get("backbone") or config.get("backbone") or "labels only")

    rows = [dict({k: v for k, v in row.items() if not k.startswith("_")}, backbone=backbone(row),
                 _protocol=protocol(config), _file=name) for row in summary]  # "_" keys: the table's own
    if folds is not None:
        attach_folds(rows, folds, backbone)
    return rows


ROW_NUMBERS = [f"{m}_mean" for m in METRICS if not m.endswith("_pooled")] + [
    m for m in METRICS if m.endswith("_pooled")] + list(INTERVAL_KEYS)


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


def _protocol_problem(payload: dict) -> str | None:
    """What is wrong with the fields `fold_protocol` reads (the split's name, the cache's samples hash), in words
    naming the key; None when nothing is."""
    split = payload["config"].get("split")
    if split is not None and not isinstance(split, str):
        return f"config split {str(split)[:40]} is not text"
    run = payload.get("run")
    if run is None:
        return None
    if not isinstance(run, dict):
        return "its run is not an object"
    attrs = run.get("cache_attrs")
    if attrs is not None and not isinstance(attrs, dict):
        return "its run cache_attrs is not an object"
    samples = (attrs or {}).get("samples_sha256")
    if samples is not None and not isinstance(samples, str):
        return f"run cache_attrs samples_sha256 {str(samples)[:40]} is not text"
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


def _cell(row: dict) -> tuple:
    """A table cell's key: floors read no feature, so any backbone's floor is the same cell."""
    if row["regressor"] in floor_names():
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
    shown = [fmt_number(va.get(key)), fmt_number(vb.get(key))]
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
