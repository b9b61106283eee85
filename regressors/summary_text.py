"""Text of the per-cell summary table, the highest test scores and the paired comparisons, as the command line and
report.md show them (`regressors.report` writes them to disk).

Nothing here picks a configuration on the test folds: the only "best" is labelled as the highest test score, beside
the best label-only floor, with failed configurations excluded, and said to stand apart from the runner-up only when
the corrected resampled t-test separates them (`regressors.marks`). Label-only floors that give the same numbers
are one row.
"""

from __future__ import annotations

import math

from featcache.untrusted import printable
from regressors.registry import get_regressor


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
    backbones: the fitted feature-reading row (no zero-shot row) with the highest mean test SRCC among those with no
    failed fold (`model`), the `runner_up`, `p` of the corrected resampled t-test between them over `folds` (the
    run's fold rows),
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
        if get_regressor(row["regressor"]).zero_shot:  # a reference row: neither a candidate nor a floor
            continue
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


def highest_line(entry: dict) -> str:
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
    "of freedom; its variance is one repeat's, with test/train size added for the overlap of the training sets, "
    "less what the repeats average away, so repeats do not shrink p by themselves); the interval is the matching "
    "95% t interval of the mean difference. A failed fold counts as 0, as in the table.")


def comparisons_note(comparisons: list[dict]) -> str:
    """The note above the comparisons: `COMPARISONS_NOTE`, and why a row has no p where one has none."""
    if all(c["p"] is not None and math.isfinite(c["p"]) for c in comparisons):
        return COMPARISONS_NOTE
    return (COMPARISONS_NOTE + " n/a: no p and no interval, as fewer than 2 test folds pair (a single split tests "
            "once, however often repeated) or a difference is undefined.")


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
