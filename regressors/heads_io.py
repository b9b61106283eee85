"""Saved heads as one safetensors file: arrays plus JSON metadata. Never a pickle, so loading runs no code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from safetensors import safe_open

from featcache.errors import FeatcacheError
from regressors.mlp import MLPHead
from regressors.standardized import StandardizedRidge, StandardizedSVR

FORMAT = "featcache-head"
_ARRAYS = {
    "mlp": ("x_mean_", "x_scale_"),
    "ridge": ("x_mean_", "x_scale_", "coef_"),
    "svr": ("x_mean_", "x_scale_", "support_vectors_", "dual_coef_"),
}
_SCALARS = {
    "mlp": ("y_mean_", "y_scale_", "best_epoch_"),
    "ridge": ("intercept_", "alpha_"),
    "svr": ("y_mean_", "y_scale_", "intercept_", "gamma_", "C_"),
}


def save_head(model, regressor: str, path: str | Path, metadata: dict) -> None:
    if regressor not in _ARRAYS:
        raise FeatcacheError(f"--save-head: {regressor} cannot be saved (label-only floors read no image); "
                             f"choose one of {', '.join(_ARRAYS)}")
    tensors = {f"est.{name}": np.ascontiguousarray(getattr(model, name), dtype=np.float64)
               for name in _ARRAYS[regressor]}
    if regressor == "mlp":
        tensors.update({f"mlp.{k}": v.numpy().astype(np.float32) for k, v in model.state_.items()})
    meta = dict(metadata, format=FORMAT, regressor=regressor, params=model.get_params(),
                scalars={name: float(getattr(model, name)) for name in _SCALARS[regressor]},
                n_features_in=int(model.n_features_in_))
    save_file(tensors, str(path), metadata={"featcache": json.dumps(meta, default=str)})


def load_head(path: str | Path) -> tuple[object, dict]:
    path = Path(path)
    if not path.is_file():
        raise FeatcacheError(f"{path}: head file not found")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            meta = json.loads((handle.metadata() or {}).get("featcache", "{}"))
        arrays = load_file(str(path))
    except Exception as exc:
        raise FeatcacheError(f"{path}: not a featcache head ({type(exc).__name__}: {exc})") from exc
    if meta.get("format") != FORMAT:
        raise FeatcacheError(f"{path}: not a featcache head")
    regressor = meta["regressor"]
    cls = {"mlp": MLPHead, "ridge": StandardizedRidge, "svr": StandardizedSVR}[regressor]
    params = {k: (tuple(v) if isinstance(v, list) else v) for k, v in meta["params"].items()}
    model = cls(**params)
    for name in _ARRAYS[regressor]:
        setattr(model, name, arrays[f"est.{name}"])
    for name, value in meta["scalars"].items():
        setattr(model, name, value)
    if regressor == "mlp":
        model.state_ = {k[4:]: torch.from_numpy(v.copy()) for k, v in arrays.items() if k.startswith("mlp.")}
    model.n_features_in_ = meta["n_features_in"]
    return model, meta
