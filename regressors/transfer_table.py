"""`featcache table transfer.json`: the cross-database matrix in the paper's layout.

One block per mode x target; rows: the training database, columns: the test database x metric (SRCC, PLCC by
default). Off the diagonal a head trained on all of the row's database and scored on all of the column's; on the
diagonal, in brackets, the row database's own cross-validated score. A transfer.json is read as untrusted input:
its shape is checked before anything is rendered.
"""

from __future__ import annotations

import math

from featcache.errors import FeatcacheError
from featcache.untrusted import printable
from regressors.table_formats import md_cell, tex

TRANSFER_METRICS = {"srcc": "SRCC", "plcc": "PLCC", "plcc_logistic": "PLCC (logistic)", "krcc": "KRCC"}
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
        for key in TRANSFER_METRICS:
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


def _number(cell: dict | None, metric: str) -> str:
    if cell is None:
        return ""
    value = cell.get(metric)
    if cell.get("failed") and cell.get("protocol") == "transfer":
        return "failed"
    text = "n/a" if value is None else f"{float(value):.3f}"
    return f"({text})" if cell.get("protocol") == "cv" else text


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


def transfer_caption(payload: dict) -> str:
    """What a cell means, the protocol and the scales note, from the file's config."""
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
    if failed:
        text += f"failed: the head's predictions were constant ({failed} cell{'s' if failed > 1 else ''}). "
    return text + str(config.get("scales_note", "")) + _ranges(payload)


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
    test database x metric). `metrics`: of TRANSFER_METRICS; RMSE, pooled values, --ci and --sd are refused."""
    metrics = metrics or ["srcc", "plcc"]
    if ci or sd:
        raise FeatcacheError("--ci and --sd do not apply to a transfer.json: a transfer cell is one head scored "
                             "once, not fold means")
    for metric in metrics:
        if metric not in TRANSFER_METRICS:
            why = " (the predictions are on the source's label scale)" if metric.startswith("rmse") else ""
            raise FeatcacheError(f"--metric {metric}: a transfer.json has {', '.join(TRANSFER_METRICS)}{why}")
    if fmt not in FORMATS:
        from featcache.errors import unknown_name

        raise unknown_name("format", fmt, FORMATS)
    databases = payload["config"]["databases"]
    blocks = transfer_blocks(payload)
    caption = printable(transfer_caption(payload))
    columns = [f"{db} {TRANSFER_METRICS[m]}" for db in databases for m in metrics]
    if fmt == "csv":
        from regressors.safe_text import Number, csv_text

        lines = [[mode, target, source, *[Number(_number(cells.get((source, test)), m).strip("()") or "")
                                          for test in databases for m in metrics], source]
                 for mode, target, cells in blocks for source in databases]
        return csv_text(["mode", "target", "train", *columns, "cross-validated (diagonal)"], lines)
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
                values = [_number(cells.get((source, test)), m) for test in databases for m in metrics]
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
            values = [_number(cells.get((source, test)), m) for test in databases for m in metrics]
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
