"""Results on disk: results.json (config, folds, summary), results.csv, report.md with scatter plots."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from regressors.cv import CVResults
from regressors.design import FLOORS


def _cell(mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.3f} ± {std:.3f}" if math.isfinite(std) else f"{mean:.3f}"


def format_table(summary: list[dict], markdown: bool = False) -> str:
    """A fixed-width (or Markdown) table of the summary rows."""
    header = ["regressor", "mode", "target", "SRCC", "PLCC", "KRCC", "RMSE", "folds", "train/test"]
    rows = [[r["regressor"], r["mode"], r["target"], _cell(r["srcc_mean"], r["srcc_std"]),
             _cell(r["plcc_mean"], r["plcc_std"]), _cell(r["krcc_mean"], r["krcc_std"]),
             _cell(r["rmse_mean"], r["rmse_std"]),
             str(r["n_folds"]) + (f" ({r['undefined_folds']} constant)" if r.get("undefined_folds") else ""),
             f"{r['n_train']}/{r['n_test']}"]
            for r in summary]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


def best_configurations(summary: list[dict]) -> list[dict]:
    """Per target, the feature-based row with the highest mean SRCC."""
    best: dict[str, dict] = {}
    for row in summary:
        if row["regressor"] in FLOORS or not math.isfinite(row["srcc_mean"]):
            continue
        if row["target"] not in best or row["srcc_mean"] > best[row["target"]]["srcc_mean"]:
            best[row["target"]] = row
    return list(best.values())


def scatter_plot(y_true: np.ndarray, y_pred: np.ndarray, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.0), dpi=110)
    ax.scatter(y_true, y_pred, s=8, alpha=0.5, edgecolors="none")
    low, high = float(min(y_true.min(), y_pred.min())), float(max(y_true.max(), y_pred.max()))
    ax.plot([low, high], [low, high], color="grey", linewidth=0.8)
    ax.set_xlabel("MOS (test folds)")
    ax.set_ylabel("predicted")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_results(results: CVResults, out: str | Path, title: str = "featcache fit") -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "csv": out / "results.csv", "folds": out / "folds.csv",
             "report": out / "report.md"}
    paths["json"].write_text(json.dumps(_finite_or_null(results.to_dict()), indent=2, default=_jsonable) + "\n")
    _write_csv(paths["csv"], results.summary)
    _write_csv(paths["folds"], results.folds)
    lines = [f"# {title}", "", "```", json.dumps(results.config, indent=1, default=_jsonable), "```", "",
             format_table(results.summary, markdown=True), ""]
    for row in best_configurations(results.summary):
        key = (row["regressor"], row["mode"], row["target"])
        if key not in results.predictions:
            continue
        name = f"scatter_{row['target']}_{row['regressor']}_{row['mode']}.png".replace("/", "_")
        y_true, y_pred = results.predictions[key]
        scatter_plot(y_true, y_pred, f"{row['target']}: {row['regressor']} {row['mode']} "
                                     f"(SRCC {row['srcc_mean']:.3f})", out / name)
        lines += [f"Best for {row['target']}: {row['regressor']} on {row['mode']} "
                  f"(SRCC {row['srcc_mean']:.3f}); test predictions of every fold of repeat 0:", "",
                  f"![{name}]({name})", ""]
        paths[name] = out / name
    paths["report"].write_text("\n".join(lines))
    return paths


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        path.write_text("")
        return
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _finite_or_null(value):
    """JSON has no NaN: undefined correlations (constant predictions) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(v) for v in value]
    return value
