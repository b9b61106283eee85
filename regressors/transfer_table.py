"""`featcache table transfer.json`: the cross-database matrix in the paper's layout.

One block per mode x target; rows: the training database, columns: the test database x metric (SRCC, PLCC by
default). Off the diagonal a head trained on all of the row's database and scored on all of the column's; on the
diagonal, in brackets, the row database's own cross-validated score (fold means). With `ci`, SRCC, PLCC and the
logistic PLCC read `value [low, high]`: off the diagonal the cell's 95% interval over the test database's prompt
groups; on the diagonal `(fold mean; pooled value [low, high])`, the cross-validation's pooled value and its
interval beside the fold mean (the logistic PLCC and KRCC, which have no pooled value there, stay fold means).
A transfer.json is read as untrusted input: its shape is checked before anything is rendered.
"""

from __future__ import annotations

import math

from featcache.errors import FeatcacheError
from featcache.untrusted import printable
from regressors.table_formats import md_cell, tex

TRANSFER_METRICS = {"srcc": "SRCC", "plcc": "PLCC", "plcc_logistic": "PLCC (logistic)", "krcc": "KRCC"}
WITH_INTERVAL = ("srcc", "plcc", "plcc_logistic")
NUMBER_KEYS = (*TRANSFER_METRICS, *(f"{m}_{k}" for m in WITH_INTERVAL for k in ("pooled", "ci_low", "ci_high")))
FORMATS = ("md", "latex", "csv")


def is_transfer(payload) -> bool:
    """Whether a parsed JSON file is a transfer.json (`featcache transfer` writes "kind": "transfer")."""
    return isinstance(payload, dict) and payload.get("kind") == "transfer"


def transfer_problem(payload: dict) -> str | None:
    """What is wrong with the fields the table reads, in words naming the key; None when nothing is."""
    config, cells = payload.get("config"), payload.get("cells")
    if not isinstance(config, dict) or not isinstance(cells, list):
        return "its config or cells are missing"
    for key in ("databases", "modes"):
        values = config.get(key)
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            return f"config {key} is not a list of names"
    if len(set(config["databases"])) != len(config["databases"]):
        return "config databases names a database twice"
    if not isinstance(config.get("cv", {}), dict):
        return "config cv is not an object"
    for cell in cells:
        if not isinstance(cell, dict):
            return "a cell is not an object"
        for key in ("mode", "target", "source", "test", "protocol"):
            if not isinstance(cell.get(key), str):
                return f"a cell's {key} is not text"
        if cell["source"] not in config["databases"] or cell["test"] not in config["databases"]:
            return f"a cell names a database ({cell['source'][:40]} or {cell['test'][:40]}) not in config databases"
        for key in NUMBER_KEYS:
            value = cell.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                return f"a cell's {key} {str(value)[:40]!r} is not a finite number or null"
        value = cell.get("n_failed")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            return f"a cell's n_failed {str(value)[:40]!r} is not a whole number or null"
    if not cells:
        return "it has no cells"
    pairs = len(config["databases"]) ** 2
    for (mode, target), block in _block_sizes(cells).items():
        if block != pairs:
            return (f"the block {mode[:40]}, {target[:40]} has {block} distinct cells, not one per training and "
                    f"test database ({pairs})")
    return None


def _block_sizes(cells: list[dict]) -> dict[tuple[str, str], int]:
    """{(mode, target): the number of distinct (source, test) pairs its cells name}, for checked cells."""
    pairs: dict[tuple[str, str], set] = {}
    for cell in cells:
        pairs.setdefault((cell["mode"], cell["target"]), set()).add((cell["source"], cell["test"]))
    return {block: len(named) for block, named in pairs.items()}


def _fmt(value) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


def _get(cell: dict, key: str) -> float | None:
    """A cell's number, None where absent or undefined (null in a file, NaN in a payload not yet written)."""
    value = cell.get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _interval(cell: dict, metric: str) -> str:
    low, high = _get(cell, f"{metric}_ci_low"), _get(cell, f"{metric}_ci_high")
    return f"[{_fmt(low)}, {_fmt(high)}]" if low is not None and high is not None else "[n/a]"


def _number(cell: dict | None, metric: str, ci: bool = False) -> str:
    """A cell's text: the value (on the diagonal, in brackets, the fold mean); with `ci` and an interval metric,
    `value [low, high]` off the diagonal and `(mean; pooled value [low, high])` on it where the CV pools one."""
    if cell is None:
        return ""
    if cell.get("failed") and cell.get("protocol") == "transfer":
        return "failed"
    value = _get(cell, metric)
    text = _fmt(value)
    if ci and metric in WITH_INTERVAL:
        if cell.get("protocol") != "cv":
            text += f" {_interval(cell, metric)}" if value is not None else ""
        elif (pooled := _get(cell, f"{metric}_pooled")) is not None:
            text += f"; pooled {_fmt(pooled)} {_interval(cell, metric)}"
    return f"({text})" if cell.get("protocol") == "cv" else text


def _csv_parts(cell: dict | None, metric: str, ci: bool) -> list[str]:
    """A cell's CSV fields: the value ("failed", "" where absent; the fold mean on the diagonal), and with `ci` the
    diagonal's pooled value and the interval's low and high (of the value off the diagonal, of the pooled on it)."""
    if cell is None or (cell.get("failed") and cell.get("protocol") == "transfer"):
        first = "" if cell is None else "failed"
        return [first, "", "", ""] if ci else [first]
    parts = [_get(cell, metric)]
    if ci:
        has = metric in WITH_INTERVAL
        parts += [_get(cell, f"{metric}_pooled") if has and cell.get("protocol") == "cv" else None,
                  _get(cell, f"{metric}_ci_low") if has else None, _get(cell, f"{metric}_ci_high") if has else None]
    return ["" if v is None else f"{v:.3f}" for v in parts]


def transfer_blocks(payload: dict) -> list[tuple[str, str, dict]]:
    """(mode, target, {(source, test): cell}) per block, in the file's order."""
    blocks: dict[tuple[str, str], dict] = {}
    for cell in payload["cells"]:
        blocks.setdefault((cell["mode"], cell["target"]), {})[(cell["source"], cell["test"])] = cell
    return [(mode, target, cells) for (mode, target), cells in blocks.items()]


def _names_line(payload: dict, target: str) -> str:
    """`dba: MOS_q, dbb: mos_quality` where the caches name the target differently; "" where they agree."""
    for entry in payload["config"].get("targets") or []:
        if isinstance(entry, dict) and entry.get("target") == target and isinstance(entry.get("names"), dict):
            names = entry["names"]
            if len(set(map(str, names.values()))) > 1:
                return ", ".join(f"{db}: {name}" for db, name in names.items())
    return ""


def transfer_caption(payload: dict, ci: bool = False) -> str:
    """What a cell means, the protocol, the intervals (with `ci`) and the scales note, from the file's config."""
    config = payload["config"]
    cv = config.get("cv") or {}
    failed = sum(1 for c in payload["cells"] if c.get("protocol") == "transfer" and c.get("failed"))
    cv_failed = sum(int(c.get("n_failed") or 0) for c in payload["cells"] if c.get("protocol") == "cv")
    text = (f"Rows: training database; columns: test database. Off the diagonal: {config.get('regressor', '?')} "
            f"on {config.get('backbone', '?')} trained on all of the row's database and tested on all of the "
            "column's; the logistic PLCC's curve is fitted on the training database only. In brackets (the "
            f"diagonal): the row's database cross-validated ({cv.get('folds', '?')}-fold prompt-disjoint group "
            f"split, {cv.get('repeats', '?')} repeat(s), seed {cv.get('seed', '?')}; fold means, failed folds "
            f"counted as 0{f', {cv_failed} failed' if cv_failed else ''}). ")
    if ci:
        text += _intervals_note(payload)
    if failed:
        text += f"failed: the head's predictions were constant ({failed} cell{'s' if failed > 1 else ''}). "
    return text + str(config.get("scales_note", "")) + _ranges(payload)


def _intervals_note(payload: dict) -> str:
    """What `value [low, high]` means, off and on the diagonal."""
    config = payload["config"]
    info = config.get("intervals") if isinstance(config.get("intervals"), dict) else {}
    cv = config.get("cv") or {}
    return (f"[low, high]: 95% percentile interval, {info.get('resamples', '?')} resamples of whole prompt groups "
            f"with replacement (seed {info.get('seed', '?')}); off the diagonal over the column's (test) database's "
            "prompt groups with the head and its logistic fixed (the logistic PLCC's through the source's curve), "
            "so it states how the score moves with the test prompts, not with the training database. On the "
            "diagonal, after the fold mean: SRCC and PLCC pooled over all out-of-fold predictions of a repeat (mean "
            f"over {cv.get('repeats', '?')} repeat(s)) with the same bootstrap over the row's prompt groups; the "
            "logistic PLCC and KRCC there are fold means alone (each fold maps through its own curve). ")


def _ranges(payload: dict) -> str:
    """` Label ranges: MOS_q a 1-5, b 0-100.` from the file's labels (per database and target), when present."""
    by_target: dict[str, list[str]] = {}
    for entry in payload.get("labels") or []:
        if isinstance(entry, dict) and all(isinstance(entry.get(k), (int, float)) for k in ("min", "max")):
            by_target.setdefault(str(entry.get("target")), []).append(
                f"{entry.get('database')} {entry['min']:.4g} to {entry['max']:.4g}")
    if not by_target:
        return ""
    return " Label ranges: " + "; ".join(f"{t} {', '.join(v)}" for t, v in by_target.items()) + "."


def render_transfer(payload: dict, metrics: list[str] | None = None, fmt: str = "md", *, ci: bool = False,
                    sd: bool = False) -> str:
    """The matrix of a checked transfer.json (`transfer_problem` None) as Markdown (one table per block), LaTeX
    (booktabs, one tabular, a row naming each block) or CSV (one row per block x training database, a column per
    test database x metric, and with `ci` a pooled, a low and a high column beside each). `metrics`: of
    TRANSFER_METRICS; `ci`: cells with their intervals (see the module's docstring); RMSE, pooled values as metrics
    and --sd are refused."""
    metrics = metrics or ["srcc", "plcc"]
    if sd:
        raise FeatcacheError("--sd does not apply to a transfer.json: a transfer cell is one head scored once, not "
                             "fold means; --ci gives its interval")
    for metric in metrics:
        if metric not in TRANSFER_METRICS:
            why = " (the predictions are on the source's label scale)" if metric.startswith("rmse") else ""
            raise FeatcacheError(f"--metric {metric}: a transfer.json has {', '.join(TRANSFER_METRICS)}{why}")
    if fmt not in FORMATS:
        from featcache.errors import unknown_name

        raise unknown_name("format", fmt, FORMATS)
    databases = payload["config"]["databases"]
    blocks = transfer_blocks(payload)
    caption = printable(transfer_caption(payload, ci))
    columns = [f"{db} {TRANSFER_METRICS[m]}" for db in databases for m in metrics]
    if fmt == "csv":
        from regressors.safe_text import Number, csv_text

        sides = ("", " pooled", " low", " high") if ci else ("",)
        lines = [[mode, target, source, *[Number(part) for test in databases for m in metrics
                                          for part in _csv_parts(cells.get((source, test)), m, ci)], source]
                 for mode, target, cells in blocks for source in databases]
        return csv_text(["mode", "target", "train", *[c + side for c in columns for side in sides],
                         "cross-validated (diagonal)"], lines)
    if fmt == "md":
        out = []
        for mode, target, cells in blocks:
            names = _names_line(payload, target)
            out.append(f"**{md_cell(printable(mode))}, {md_cell(printable(target))}**"
                       + (f" ({md_cell(printable(names))})" if names else ""))
            out.append("")
            out.append("| train \\ test | " + " | ".join(md_cell(printable(c)) for c in columns) + " |")
            out.append("|" + "|".join("---" for _ in range(len(columns) + 1)) + "|")
            for source in databases:
                values = [_number(cells.get((source, test)), m, ci) for test in databases for m in metrics]
                out.append(f"| {md_cell(printable(source))} | " + " | ".join(values) + " |")
            out.append("")
        return "\n".join(out) + f"\n{caption}\n"
    width = 1 + len(columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{l{'r' * len(columns)}}}",
             r"\toprule",
             "Train & " + " & ".join(rf"\multicolumn{{{len(metrics)}}}{{c}}{{{tex(printable(db))}}}"
                                     for db in databases) + r" \\",
             " & " + " & ".join(tex(TRANSFER_METRICS[m]) for _ in databases for m in metrics) + r" \\"]
    for mode, target, cells in blocks:
        names = _names_line(payload, target)
        label = f"{mode}, {target}" + (f" ({names})" if names else "")
        lines += [r"\midrule", rf"\multicolumn{{{width}}}{{l}}{{\emph{{{tex(printable(label))}}}}} \\"]
        for source in databases:
            values = [_number(cells.get((source, test)), m, ci) for test in databases for m in metrics]
            lines.append(" & ".join([tex(printable(source)), *values]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{tex(caption)}}}", r"\end{table}", ""]
    return "\n".join(lines)


def is_transfer_folder(folder) -> bool:
    """A run folder of `featcache transfer`: transfer.json there and no results.json."""
    return (folder / "transfer.json").is_file() and not (folder / "results.json").exists()


def transfer_rows(payload: dict, path, files: int) -> list[dict]:
    """What `results_files.load_results` returns for a transfer.json: one row carrying the checked payload
    (`_transfer`), which `tables.render_table` hands to `render_transfer`. A transfer.json is rendered alone."""
    if files > 1:
        raise FeatcacheError(f"{path}: a transfer.json is rendered alone; give it without other results files")
    problem = transfer_problem(payload)
    if problem:
        raise FeatcacheError(printable(f"{path}: not a featcache transfer.json ({problem})"))
    return [{"_transfer": payload, "_file": str(path)}]
