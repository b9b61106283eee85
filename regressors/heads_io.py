"""Saved heads as one safetensors file: arrays plus JSON metadata. Never a pickle, so loading runs no code.

What a head persists comes from its `RegressorSpec` (saved_arrays, saved_scalars); a `state_` dict (the MLP's
weights) is saved as `state.<name>` arrays.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from featcache.errors import FeatcacheError
from regressors.registry import REGRESSORS, get_regressor

FORMAT = "featcache-head"
FORMAT_VERSION = 2  # 2: scaler with x_keep_ and clip; version-1 heads load with every column kept and no clip


def savable_regressors() -> list[str]:
    return [r.name for r in REGRESSORS.values() if r.can_be_saved]


def check_savable(regressor: str) -> None:
    spec = get_regressor(regressor)
    if not spec.can_be_saved:
        why = "a zero-shot row fits nothing: nothing to save" if spec.zero_shot else "a label-only floor reads no image"
        raise FeatcacheError(f"--save-head: {regressor} cannot be saved ({why}); "
                             f"choose one of {', '.join(savable_regressors())}")


def save_head(model, regressor: str, path: str | Path, metadata: dict) -> None:
    from safetensors.numpy import save

    from featcache.outputs import write_bytes_atomically

    check_savable(regressor)
    spec = get_regressor(regressor)
    tensors = {f"est.{name}": np.ascontiguousarray(getattr(model, name), dtype=np.float64)
               for name in spec.saved_arrays}
    for key, value in (getattr(model, "state_", None) or {}).items():
        value = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        tensors[f"state.{key}"] = np.ascontiguousarray(value, dtype=np.float32)
    for name, array in tensors.items():
        if not np.isfinite(array).all():
            raise FeatcacheError(f"--save-head: the fitted {regressor} has non-finite values in {name}; not saved")
    meta = dict(metadata, format=FORMAT, format_version=FORMAT_VERSION, regressor=regressor,
                params=model.get_params(), scalars={name: float(getattr(model, name)) for name in spec.saved_scalars},
                n_features_in=int(model.n_features_in_))
    write_bytes_atomically(path, save(tensors, metadata={"featcache": json.dumps(meta, default=str)}))


def read_metadata(path: str | Path) -> dict:
    """A head's JSON metadata, without reading its arrays."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        return json.loads((handle.metadata() or {}).get("featcache", "{}"))


def load_head(path: str | Path) -> tuple[object, dict]:
    """A fitted estimator and its metadata; any malformed head is a one-line error naming the file."""
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.exists():
        raise FeatcacheError(f"{path}: head file not found")
    if not path.is_file():  # a folder, a device (/dev/zero) or a pipe: nothing a head is
        raise FeatcacheError(f"{path}: not a regular file; a head is a .safetensors file saved by fit --save-head")
    try:
        meta = read_metadata(path)
        arrays = load_file(str(path))
    except Exception as exc:
        raise FeatcacheError(f"{path}: not a featcache head ({type(exc).__name__}: {exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise FeatcacheError(f"{path}: not a featcache head")
    problem = _metadata_problem(meta)
    if problem:
        raise FeatcacheError(f"{path}: damaged featcache head ({problem})")
    try:
        model = _rebuild(meta, arrays)
        model.predict(np.zeros((1, model.n_features_in_)))  # arrays whose shapes disagree fail here, not in predict
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise FeatcacheError(f"{path}: damaged featcache head ({type(exc).__name__}: {exc})") from exc
    return model, meta


PARAM_TYPES = (str, int, float, bool, type(None), list)  # what get_params() of a saved head holds, through JSON


def _metadata_problem(meta: dict) -> str | None:
    """What is wrong with the types of a head's metadata, in words naming the key; None when nothing is.
    `params` is a dict of JSON scalars or lists of numbers, `scalars` a dict of numbers or nulls (finiteness is
    checked when rebuilding), `format_version` a whole number from 1 to FORMAT_VERSION (a newer head may mean its
    arrays differently)."""
    if not isinstance(meta.get("regressor"), str):
        return "regressor is not a name"
    params = meta.get("params")
    if not isinstance(params, dict):
        return f"params is {type(params).__name__}, not an object"
    for key, value in params.items():
        if not isinstance(value, PARAM_TYPES) or (isinstance(value, list) and not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            return f"params.{key} is {type(value).__name__}, not a number, text or list of numbers"
        if isinstance(value, float) and not math.isfinite(value):
            return f"params.{key} is not finite"
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
            return f"params.{key} is too large"
    scalars = meta.get("scalars", {})
    if not isinstance(scalars, dict):
        return f"scalars is {type(scalars).__name__}, not an object"
    for key, value in scalars.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, type(None))) or (
                isinstance(value, int) and abs(value) > 2**53):
            return f"scalars.{key} is not a number"
    version = meta.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        return f"format_version {str(version)[:40]!r} is not a whole number from 1 to {FORMAT_VERSION}"
    return None


def _rebuild(meta: dict, arrays: dict):
    spec = get_regressor(meta["regressor"])
    cls = spec.estimator_class()
    known = cls().get_params()  # parameters of an older version that no longer exist are dropped
    params = {k: (tuple(v) if isinstance(v, list) else v) for k, v in meta["params"].items() if k in known}
    model = cls(**params)
    version = int(meta.get("format_version", 1))
    n_features = _declared_features(meta, arrays)
    for name in spec.saved_arrays:
        if name == "x_keep_" and version < 2:
            value = np.ones(n_features)
            model.clip = None  # version 1 neither dropped nor clipped: reproduce its numbers
        else:
            value = arrays[f"est.{name}"]
        if not np.isfinite(value).all():
            raise ValueError(f"{name} holds NaN or inf")
        setattr(model, name, value)
    for name in ("x_mean_", "x_scale_", "x_keep_"):
        if name in spec.saved_arrays and getattr(model, name).shape != (n_features,):
            raise ValueError(f"{name} has shape {getattr(model, name).shape}, expected ({n_features},)")
    for name in spec.saved_scalars:
        value = meta["scalars"].get(name)
        if value is None and name == "epsilon_":  # version-1 SVR heads had one epsilon, a parameter
            value = meta["params"].get("epsilon", 0.1)
        if value is None or not np.isfinite(float(value)):
            raise ValueError(f"scalar {name} missing or not finite")
        setattr(model, name, float(value))
    state = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(("state.", "mlp."))}
    if state:
        import torch

        for key, value in state.items():
            if not np.isfinite(value).all():
                raise ValueError(f"weights {key} hold NaN or inf")
        model.state_ = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}
    model.n_features_in_ = n_features
    return model


def _declared_features(meta: dict, arrays: dict) -> int:
    """The head's `n_features_in`, checked against the length of its saved column means before anything of that
    size is made: a head's dimensions are declared by its file and believed only where its arrays agree."""
    n_features = meta["n_features_in"]
    if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
        raise ValueError(f"n_features_in {n_features!r} is not a positive whole number")
    means = arrays.get("est.x_mean_")
    if means is None or means.shape != (n_features,):
        shape = None if means is None else tuple(means.shape)
        raise ValueError(f"n_features_in {n_features} does not match its x_mean_ array (shape {shape})")
    return n_features
