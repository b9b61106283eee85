"""Regressors as a table, in the style of timm's registry: adding one is one `RegressorSpec` entry here.

Everything else reads this table: the CLI's choices and default grid, the label-only check, which regressors a
saved head can hold and which arrays and scalars it persists, the demo's grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from featcache.errors import FeatcacheError, unknown_name


@dataclass(frozen=True)
class RegressorSpec:
    name: str
    factory: Callable[[int, str], object]  # (seed, device) -> an unfitted scikit-learn estimator
    estimator: str  # "module:Class", imported only when a saved head is loaded or the spec is used
    reads_features: bool  # False: a label-only floor (reads no pixel, needs no backbone)
    in_default_grid: bool
    doc: str
    saved_arrays: tuple[str, ...] = ()  # fitted array attributes a saved head persists (empty: cannot be saved)
    saved_scalars: tuple[str, ...] = ()
    uses_device: bool = False  # trains with torch on --device
    fit_members: str = ""  # "module:function" fitting many members at once (see regressors.fitting), optional
    batch: str = "member"  # fitted together: "member" (one at a time), "fold" (a fold's targets), "cell" (all;
    # a device-trained regressor's cell is split by fold when it trains on the CPU, see cv.plan)
    cost: Callable[[int, int, int], float] | None = None  # (members, training rows, input width) -> rough seconds
    # on one core; only orders parallel tasks, longest first, so no worker is left with a long task at the end
    zero_shot: bool = False  # a reference row that reads features but fits nothing: added beside the floors,
    # on the samples with an image prompt only, never a candidate of a contest or of --select, never saved

    @property
    def can_be_saved(self) -> bool:
        return bool(self.saved_arrays)

    def estimator_class(self):
        import importlib

        module, _, cls = self.estimator.partition(":")
        return getattr(importlib.import_module(module), cls)


def _mlp(seed, device):
    from regressors.mlp import MLPHead

    return MLPHead(random_state=seed, device=device)


def _svr(seed, device):
    from regressors.standardized import StandardizedSVR

    return StandardizedSVR(random_state=seed)


def _ridge(seed, device):
    from regressors.standardized import StandardizedRidge

    return StandardizedRidge()


def _floor(name):
    def make(seed, device):
        from regressors import floors

        return getattr(floors, name)()

    return make


_SCALER = ("x_mean_", "x_scale_", "x_keep_")
# Rough single-core seconds, compared with the task times of benchmarks/stage2.py's grid on the 2-core machine
# (measured / estimated): ridge folds NR 4.6 / 2.8 s, FR 0.8 / 1.0 s, PR 4.0 / 9.9 s; SVR folds NR 14.6 / 15.6 s,
# FR 3.4 / 2.6 s, PR 15.7 / 16.5 s. The MLP's cost depends on where early stopping ends, unknown before it runs:
# NR folds 80 / 97 s, FR 28 / 155 s, PR 16 / 387 s. Good enough to start the long tasks first, no more.
_FLOPS = 50e9  # one core's matmul rate, roughly
_MLP_EPOCHS = 60  # early-stopping epochs plus the refit's (6 to 99 per member in the planted grid)
_SVR_FITS = 37  # 12 (C, epsilon) pairs x 3 inner folds + the refit


def _mlp_cost(members: int, rows: int, dim: int) -> float:
    return members * _MLP_EPOCHS * 4 * rows * dim * (dim / 2) / _FLOPS  # forward + weight gradient, D -> D/2


def _svr_cost(members: int, rows: int, dim: int) -> float:
    return 2 * rows * rows * dim / _FLOPS + members * _SVR_FITS * 1.3e-8 * rows * rows  # the kernel, then libsvm


def _ridge_cost(members: int, rows: int, dim: int) -> float:
    k = min(rows, dim)
    return (4 * rows * dim * k + 10 * k ** 3) / _FLOPS  # Gram matrix and projection, eigendecomposition


def _prompt_similarity(seed, device):
    from regressors.zero_shot import PromptSimilarity

    return PromptSimilarity()


def _floor_cost(members: int, rows: int, dim: int) -> float:
    return members * rows * 1e-7

REGRESSORS: dict[str, RegressorSpec] = {spec.name: spec for spec in [
    RegressorSpec("mlp", _mlp, "regressors.mlp:MLPHead", True, True,
                  "the paper's head D -> D/2 -> 1 (torch); early stopping on held-out groups, then a refit",
                  _SCALER, ("y_mean_", "y_scale_", "best_epoch_"), uses_device=True,
                  fit_members="regressors.fitting:stacked_mlp", batch="cell", cost=_mlp_cost),
    RegressorSpec("svr", _svr, "regressors.standardized:StandardizedSVR", True, True,
                  "RBF SVR; C and epsilon by an inner 3-fold CV over held-out groups",
                  (*_SCALER, "support_vectors_", "dual_coef_"),
                  ("y_mean_", "y_scale_", "intercept_", "gamma_", "C_", "epsilon_"),
                  fit_members="regressors.fitting:svr_by_fold", batch="fold", cost=_svr_cost),
    RegressorSpec("ridge", _ridge, "regressors.standardized:StandardizedRidge", True, True,
                  "ridge; alpha by exact leave-one-group-out error",
                  (*_SCALER, "coef_"), ("intercept_", "alpha_"),
                  fit_members="regressors.fitting:ridge_by_fold", batch="fold", cost=_ridge_cost),
    RegressorSpec("generator-mean", _floor("GeneratorMean"), "regressors.floors:GeneratorMean", False, True,
                  "label-only floor: mean target of the generator",
                  fit_members="regressors.code_means:generator_mean_members", batch="cell", cost=_floor_cost),
    RegressorSpec("sibling-mean", _floor("SiblingMean"), "regressors.floors:SiblingMean", False, True,
                  "label-only floor: mean of training siblings (same prompt and generator)",
                  fit_members="regressors.code_means:sibling_mean_members", batch="cell", cost=_floor_cost),
    RegressorSpec("prompt-mean", _floor("PromptMean"), "regressors.floors:PromptMean", False, True,
                  "label-only floor: mean of the same prompt in training (any generator), else the generator's",
                  fit_members="regressors.code_means:prompt_mean_members", batch="cell", cost=_floor_cost),
    RegressorSpec("prompt-similarity", _prompt_similarity, "regressors.zero_shot:PromptSimilarity", True, False,
                  "zero-shot reference: cosine of the generated image's and its image prompt's cached features "
                  "(samples with an image prompt; nothing fitted)", cost=_floor_cost, zero_shot=True),
]}


def get_regressor(name: str) -> RegressorSpec:
    if name not in REGRESSORS:
        raise unknown_name("regressor", name, REGRESSORS)
    return REGRESSORS[name]


def default_regressors() -> list[str]:
    return [r.name for r in REGRESSORS.values() if r.in_default_grid]


def floor_names() -> list[str]:
    return [r.name for r in REGRESSORS.values() if not r.reads_features]


def zero_shot_names() -> list[str]:
    return [r.name for r in REGRESSORS.values() if r.zero_shot]


def competes(name: str) -> bool:
    """Whether a regressor's rows compete (bold marks, --select, the best model of a summary): it reads features
    and fits them, so neither a label-only floor nor a zero-shot reference row."""
    spec = get_regressor(name)
    return spec.reads_features and not spec.zero_shot


def with_floors(names: list[str], floors: bool = True) -> list[str]:
    """The regressors a `fit` or `bench` run fits: those named, then every label-only floor not named (they cost
    milliseconds, and a table without them cannot show what the split alone scores), then the zero-shot
    reference rows when some named regressor reads features (a labels-only run reads no feature). `floors=False`
    (`--no-floors`): only those named, which must then name no floor and no zero-shot row."""
    check_regressors(names)
    if not floors:
        named = [n for n in names if not competes(n)]
        if named:
            what = "zero-shot row" if get_regressor(named[0]).zero_shot else "floor"
            raise FeatcacheError(f"--no-floors: --regressor names the {what} {named[0]}; drop --no-floors or the "
                                 f"{what}")
        return list(names)
    zero_shot = zero_shot_names() if not labels_only(names) else []
    return list(dict.fromkeys([*names, *floor_names(), *zero_shot]))


def check_regressors(names: list[str]) -> list[str]:
    if not names:
        raise FeatcacheError("--regressor: give at least one (choose from " + ", ".join(REGRESSORS) + ")")
    for name in names:
        get_regressor(name)
    return names


def labels_only(names: list[str]) -> bool:
    """True when no regressor reads features: the run needs no backbone in the cache."""
    return all(not get_regressor(n).reads_features for n in names)
