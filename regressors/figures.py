"""The run folder's figures: a scatter with the logistic curve and per-generator bars per configuration, and bars
across backbones for a bench. PNGs rendered in memory (matplotlib's Figure, no pyplot) and written atomically."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from regressors.cv import CVResults
from regressors.registry import get_regressor
from regressors.summary_text import number_cell


def safe_name(*parts: str) -> str:
    """A file name from any target or backbone name ('Quality Score', 'vgg19.tv_in1k/paper/224')."""
    text = "_".join(str(p) for p in parts if p)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "figure"


def _figure(**kwargs):
    """A bare matplotlib Figure (no pyplot: no global figure registry to close, no GUI backend, less to import)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def configuration_figure(y_true, y_pred, generators, parts: list[dict], title: str, path: Path) -> None:
    """One PNG per configuration: pooled out-of-fold predictions against MOS coloured by generator, with the
    fitted logistic curve; beside it SRCC per generator and per subset (T2I / I2I)."""
    from regressors.metrics import fit_logistic, logistic4

    fig = _figure(figsize=(8.2 if parts else 4.6, 4.0), dpi=100)
    axes = fig.subplots(1, 2 if parts else 1, gridspec_kw={"width_ratios": [3, 2]} if parts else None,
                        squeeze=False)
    ax = axes[0, 0]
    y_true, y_pred, generators = np.asarray(y_true), np.asarray(y_pred), np.asarray(generators)
    for name in sorted(set(generators.tolist())):
        mask = generators == name
        ax.scatter(y_true[mask], y_pred[mask], s=9, alpha=0.6, edgecolors="none", label=name)
    params = fit_logistic(y_true, y_pred)
    if params is not None:
        grid = np.linspace(float(np.min(y_pred)), float(np.max(y_pred)), 200)
        # a guide for the eye: the scores' logistic maps each fold by a curve fitted on its training predictions
        ax.plot(logistic4(grid, *params), grid, color="black", linewidth=1.0, label="logistic through these points")
    ax.set_xlabel("MOS (out-of-fold test samples)")
    ax.set_ylabel("predicted")
    ax.legend(fontsize=6, markerscale=1.5, loc="best")
    if parts:
        bars = axes[0, 1]
        bars.bar(range(len(parts)), [r["srcc"] for r in parts],
                 color=["tab:blue" if r["by"] == "generator" else "tab:orange" for r in parts])
        bars.set_xticks(range(len(parts)), [str(r["value"]) for r in parts], rotation=30, ha="right", fontsize=7)
        bars.set_ylabel("SRCC (pooled): per generator, per subset")
        bars.axhline(0, color="grey", linewidth=0.6)
    fig.suptitle(title, fontsize=8)
    # fixed margins: tight_layout draws the figure an extra time (about 40% of the figure's cost)
    fig.subplots_adjust(left=0.09 if parts else 0.15, right=0.98, bottom=0.2, top=0.87, wspace=0.3)
    save_figure(fig, path)


def backbone_plot(summary: list[dict], regressor: str, target: str, path: Path) -> None:
    """Bench: mean SRCC (± SD) of one regressor across backbones, a group of bars per mode."""
    rows = [r for r in summary if r["regressor"] == regressor and r["target"] == target]
    backbones = list(dict.fromkeys(r["backbone"] for r in rows))
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    width = 0.8 / max(1, len(backbones))
    fig = _figure(figsize=(max(3.5, 1.2 * len(modes) + 2), 3.4), dpi=110)
    ax = fig.subplots()
    for k, backbone in enumerate(backbones):
        values = [next((r for r in rows if r["backbone"] == backbone and r["mode"] == m), None) for m in modes]
        means = [v["srcc_mean"] if v and v["srcc_mean"] is not None else 0.0 for v in values]
        errors = [v["srcc_std"] if v and v["srcc_std"] is not None and math.isfinite(v["srcc_std"]) else 0.0
                  for v in values]
        ax.bar(np.arange(len(modes)) + k * width, means, width, yerr=errors, label=backbone, capsize=2)
    ax.set_xticks(np.arange(len(modes)) + width * (len(backbones) - 1) / 2, modes)
    ax.set_ylabel(f"SRCC ({target})")
    ax.set_title(f"{regressor}: SRCC by backbone and mode", fontsize=8)
    ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path)


def plot_configurations(results: CVResults, plot: str | None) -> list[tuple]:
    """(backbone, regressor, mode, target) to draw: the regressor asked for (default: the first feature-reading
    regressor of the run) for every mode and target, on repeat 0."""
    regressors = results.config["regressors"]
    if plot is None:
        plot = next((r for r in regressors if get_regressor(r).reads_features), None)
    if plot is None:
        return []
    keys = {(getattr(p, "backbone", ""), p.regressor, p.mode, p.target) for p in results.predictions}
    return sorted(k for k in keys if k[1] == plot)


def save_figure(fig, path: Path) -> None:
    """A figure as PNG, rendered in memory and written like every other output."""
    import io

    from featcache.outputs import write_bytes_atomically

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    write_bytes_atomically(path, buffer.getvalue())


def draw_figures(results: CVResults, out: Path, plot: str | None, paths: dict,
             figure_list: list[tuple] | None = None) -> list[str]:
    """Scatter and per-generator bars for each configuration of `figure_list` ((backbone, regressor, mode,
    target); by default `plot` for every mode and target), and bars across backbones for a bench."""
    lines = []
    run_backbone = results.config.get("backbone", "")
    for backbone, regressor, mode, target in figure_list or plot_configurations(results, plot):
        chosen = [p for p in results.predictions if getattr(p, "backbone", "") == backbone and
                  (p.regressor, p.mode, p.target, p.repeat) == (regressor, mode, target, 0)]
        if not chosen:
            continue
        row = next(r for r in results.summary if r.get("backbone", "") == backbone and
                   (r["regressor"], r["mode"], r["target"]) == (regressor, mode, target))
        y_true = np.concatenate([p.y_true for p in chosen])
        y_pred = np.concatenate([p.y_pred for p in chosen])
        generators = np.asarray(results.samples["generator"])[np.concatenate([p.rows for p in chosen])]
        label = backbone or (run_backbone if isinstance(run_backbone, str) else "")
        stem = safe_name(label, mode, target, regressor)
        title = (f"{label or 'labels only'}\n{mode} {regressor} {target}: SRCC pooled "
                 f"{number_cell(row['srcc_pooled'])}, fold mean {number_cell(row['srcc_mean'])}; PLCC pooled "
                 f"{number_cell(row['plcc_pooled'])}")
        parts = [b for b in results.breakdown if b.get("backbone", "") == backbone and
                 (b["regressor"], b["mode"], b["target"]) == (regressor, mode, target)]
        configuration_figure(y_true, y_pred, generators, parts if len(parts) > 1 else [], title,
                             out / f"scatter_{stem}.png")
        paths[f"scatter_{stem}"] = out / f"scatter_{stem}.png"
        lines += [f"![{mode} {regressor} {target}](scatter_{stem}.png)", ""]
    backbones = {r.get("backbone") for r in results.summary if r.get("backbone")}
    regressor = plot or next((r for r in results.config["regressors"] if get_regressor(r).reads_features), None)
    if len(backbones) > 1 and regressor:
        targets = results.config.get("targets") or []
        for target in targets[:1] if figure_list else targets:
            name = f"backbones_{safe_name(regressor, target)}.png"
            backbone_plot(results.summary, regressor, target, out / name)
            paths[name] = out / name
            lines += [f"![backbones]({name})", ""]
    return lines
