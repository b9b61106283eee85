"""What a table may say about a best: the rules every table, report and leaderboard of this project follows.

- A best is **bold** only when the corrected resampled t-test (`inference.corrected_resampled_t`, over the K x R
  per-fold differences of the column's metric, paired by repeat and fold) separates it from the runner-up of its
  column and sample set at SIGNIFICANCE. Otherwise the best and every candidate the test does not separate from it
  share the **tied** mark. One candidate, a candidate without fold rows (an older results.json), or a best and
  runner-up that share fewer than 2 test folds (a single split tests once, however often repeated): no mark.
- A score below the best label-only floor of its sample set carries the **below-floor** mark.
- Floors whose numbers coincide (every number shown equal to SAME_FLOOR, not to the displayed precision) are one
  row: under a prompt-disjoint split no test prompt is in training, so all three fall back to the generator mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from regressors.fold_rows import paired_p

SIGNIFICANCE = 0.05
SAME_FLOOR = 1e-12
TEST_NAME = "the corrected resampled t-test (Nadeau and Bengio) over the per-fold differences"


def base_metric(metric: str) -> str:
    """The per-fold metric behind a column (the pooled columns are paired on their fold values)."""
    return metric.removesuffix("_pooled")


def lower_is_better(metric: str) -> bool:
    return base_metric(metric) == "rmse"


@dataclass
class Contest:
    """The outcome for one column and sample set: indices into the candidates given to `contest`."""

    best: int | None = None
    runner_up: int | None = None
    p: float = float("nan")  # best against the runner-up
    bold: bool = False
    tied: list[int] = field(default_factory=list)  # the best and those not separated from it, when not bold
    untested: bool = False  # a candidate has no fold rows: nothing is marked
    unpaired: bool = False  # the best and the runner-up share fewer than 2 folds (a single split): nothing is marked


def contest(values: list[float], folds: list[dict | None], metric: str) -> Contest:
    """Best, runner-up and marks among candidates (each a value and its fold rows {(repeat, fold): row}, None when
    its file has none); candidates with an undefined value are never best. Ties in value: the first is best."""
    order = [i for i in range(len(values)) if math.isfinite(values[i])]
    order.sort(key=lambda i: values[i] if lower_is_better(metric) else -values[i])
    out = Contest(best=order[0] if order else None, runner_up=order[1] if len(order) > 1 else None)
    if out.runner_up is None:
        return out
    if any(not folds[i] for i in order):
        out.untested = True
        return out
    if len({fold for _, fold in set(folds[out.best]) & set(folds[out.runner_up])}) < 2:  # one test fold
        out.unpaired = True
        return out
    metric = base_metric(metric)
    out.p = paired_p(folds[out.best], folds[out.runner_up], metric)
    out.bold = out.p < SIGNIFICANCE
    if not out.bold:
        out.tied = [out.best] + [i for i in order[1:] if not paired_p(folds[out.best], folds[i], metric)
                                 < SIGNIFICANCE]
    return out


def best_floor(values: list[float], metric: str) -> float:
    """The best of the floors' values (NaN when none is defined)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return float("nan")
    return min(finite) if lower_is_better(metric) else max(finite)


def below_floor(value: float, floor: float, metric: str) -> bool:
    if not (math.isfinite(value) and math.isfinite(floor)):
        return False
    return value > floor if lower_is_better(metric) else value < floor


def same_numbers(a: list, b: list) -> bool:
    """Equal lists of numbers (and text), numbers within SAME_FLOOR; NaN equals NaN."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, float) and isinstance(y, float):
            if not ((math.isnan(x) and math.isnan(y)) or abs(x - y) <= SAME_FLOOR):
                return False
        elif x != y:
            return False
    return True


def coinciding(items: list[tuple[str, list]]) -> list[list[str]]:
    """Names grouped by equal numbers (`same_numbers`), each group in the order given, groups by first member."""
    groups: list[tuple[list, list[str]]] = []
    for name, numbers in items:
        for shown, names in groups:
            if same_numbers(shown, numbers):
                names.append(name)
                break
        else:
            groups.append((numbers, [name]))
    return [names for _, names in groups]


def floors_label(names: list[str]) -> str:
    """Coinciding floors named once, in the registry's order: "generator-mean = sibling-mean = prompt-mean"."""
    from regressors.registry import REGRESSORS

    order = {name: i for i, name in enumerate(REGRESSORS)}
    return " = ".join(sorted(names, key=lambda name: order.get(name, len(order))))


def coincide_note(names: list[str]) -> str:
    """Why floors coincide, as far as their equality tells: a floor that equals generator-mean fell back to it on
    every test sample."""
    if "generator-mean" not in names:
        return ""
    if "prompt-mean" in names:
        return "no test prompt in training"
    if "sibling-mean" in names:
        return "no test sample's sibling in training"
    return ""
