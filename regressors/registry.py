"""Regressors as a table: name -> a factory of a scikit-learn estimator, and whether it reads features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from featcache.errors import unknown_name
from regressors.floors import GeneratorMean, SiblingMean
from regressors.mlp import MLPHead
from regressors.standardized import StandardizedRidge, StandardizedSVR


@dataclass(frozen=True)
class RegressorSpec:
    name: str
    uses_features: bool
    description: str
    factory: Callable[[int, str], object]  # (seed, device) -> estimator


REGRESSORS: dict[str, RegressorSpec] = {
    spec.name: spec for spec in [
        RegressorSpec("mlp", True, "the paper's head D -> D/2 -> 1 (torch), early stopping inside the training data",
                      lambda seed, device: MLPHead(random_state=seed, device=device)),
        RegressorSpec("svr", True, "RBF SVR, standardised, C by inner 3-fold CV",
                      lambda seed, device: StandardizedSVR(random_state=seed)),
        RegressorSpec("ridge", True, "ridge, standardised, alpha by leave-one-out CV",
                      lambda seed, device: StandardizedRidge()),
        RegressorSpec("generator-mean", False, "label-only floor: mean target of the generator",
                      lambda seed, device: GeneratorMean()),
        RegressorSpec("sibling-mean", False, "label-only floor: mean of training siblings (same group+generator)",
                      lambda seed, device: SiblingMean()),
    ]
}


def get_regressor(name: str) -> RegressorSpec:
    if name not in REGRESSORS:
        raise unknown_name("regressor", name, REGRESSORS)
    return REGRESSORS[name]
