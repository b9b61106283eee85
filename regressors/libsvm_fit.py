"""Epsilon-SVR on a precomputed kernel through scikit-learn's libsvm binding, without importing `sklearn.svm`.

Why: `import sklearn.svm` imports sklearn.linear_model, sklearn.model_selection, sklearn.metrics and
sklearn.preprocessing, and with them scipy.stats, scipy.optimize and scipy.interpolate: about 0.6 s of a 2 s
`featcache fit --regressor svr` on 2 cores, for a class whose fit is one call into libsvm (issue 10: a fit with
SVR should start faster than `import torch`). The binding, `sklearn.svm._libsvm`, is loaded from its file under its
own name (it imports numpy and sklearn.utils only) and called with exactly the arguments
`SVR(kernel="precomputed", C=C, epsilon=epsilon).fit` passes; tests compare the support, dual coefficients and
intercept with SVR's. Where the binding is missing or refuses those arguments (another scikit-learn), `SVR` itself
fits, so a new scikit-learn costs start-up time, never a result.

Threads (the dask backend fits in worker threads): one thread loads the binding, under a lock; a module found in
`sys.modules` counts only once its last definition (`set_verbosity_wrap`) exists, since an extension that another
thread is still initialising is already there; until then that fit goes through `SVR`, whose import waits.
Loaded this way, the binding is not an attribute of `sklearn.svm` when that package is imported later (scikit-learn's
own `from . import _libsvm` finds it in `sys.modules`).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import threading
import types

import numpy as np

BINDING = "sklearn.svm._libsvm"
EPSILON_SVR = 3  # libsvm's svm_type; scikit-learn's LIBSVM_IMPL.index("epsilon_svr")
_binding_state: dict[str, types.ModuleType | None] = {}
_LOADING = threading.Lock()


def fit_precomputed(kernel: np.ndarray, y: np.ndarray, C: float, epsilon: float) -> tuple[np.ndarray, np.ndarray,
                                                                                            float]:
    """(support indices, dual coefficients, intercept) of an epsilon-SVR fitted on the square `kernel`;
    predictions are `kernel_rows[:, support] @ dual_coef + intercept`."""
    kernel = np.ascontiguousarray(kernel, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64).ravel()
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] != len(y):
        raise ValueError(f"a precomputed kernel must be square with one row per target, got {kernel.shape} for "
                         f"{len(y)} targets")
    binding = libsvm_binding()
    fitted = None
    if binding is not None:
        try:
            fitted = _fit_with_binding(binding, kernel, y, C, epsilon)
        except (TypeError, AttributeError):  # its signature or functions changed: remember, and let SVR call it
            _binding_state[BINDING] = None
    if fitted is None:
        fitted = _fit_with_svr(kernel, y, C, epsilon)
    support, dual_coef, intercept = fitted
    if not (np.all(np.isfinite(dual_coef)) and np.isfinite(intercept)):
        raise ValueError("The dual coefficients or intercepts are not finite. The input data may contain large "
                         "values and need to be preprocessed.")
    return support, dual_coef, intercept


def libsvm_binding() -> types.ModuleType | None:
    """The loaded `sklearn.svm._libsvm` extension, or None where it cannot be found or loaded (or another thread
    is still initialising it)."""
    if BINDING in _binding_state:
        return _binding_state[BINDING]
    with _LOADING:
        if BINDING not in _binding_state:
            if BINDING in sys.modules:  # imported through sklearn.svm, or being imported by another thread
                module = sys.modules[BINDING]
                if not _complete(module):
                    return None  # not remembered: complete on a later call
                _binding_state[BINDING] = module
            else:
                _binding_state[BINDING] = _load_binding()
    return _binding_state[BINDING]


def _complete(module: types.ModuleType) -> bool:
    """`set_verbosity_wrap` is the binding's last definition: present only once its initialisation has run."""
    return callable(getattr(module, "fit", None)) and callable(getattr(module, "set_verbosity_wrap", None))


def _load_binding() -> types.ModuleType | None:
    try:
        sklearn_spec = importlib.util.find_spec("sklearn")
        folders = list(sklearn_spec.submodule_search_locations or []) if sklearn_spec else []
        for folder in folders:
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                path = os.path.join(folder, "svm", "_libsvm" + suffix)
                if os.path.isfile(path):
                    importlib.import_module("sklearn.utils")  # the binding's own imports, first
                    spec = importlib.util.spec_from_file_location(BINDING, path)
                    module = importlib.util.module_from_spec(spec)
                    spec.loader.exec_module(module)
                    if not _complete(module):
                        return None
                    sys.modules.setdefault(BINDING, module)  # one instance, shared with a later `import sklearn.svm`
                    return sys.modules[BINDING] if _complete(sys.modules[BINDING]) else module
    except (ImportError, OSError, AttributeError, RuntimeError):  # RuntimeError: Cython's "re-initialisation"
        return None
    return None


def _fit_with_binding(binding: types.ModuleType, kernel: np.ndarray, y: np.ndarray, C: float,
                      epsilon: float) -> tuple[np.ndarray, np.ndarray, float]:
    binding.set_verbosity_wrap(0)  # libsvm prints its progress otherwise
    support, _, _, dual_coef, intercept, _, _, _, _ = binding.fit(
        kernel, y, svm_type=EPSILON_SVR, sample_weight=np.empty(0, dtype=np.float64),
        class_weight=np.empty(0), kernel="precomputed", C=float(C), nu=0.0, probability=False, degree=3,
        shrinking=True, tol=1e-3, cache_size=200, coef0=0.0, gamma=0.0, epsilon=float(epsilon), max_iter=-1,
        random_seed=0)  # epsilon-SVR without probability estimates draws no random numbers
    return np.asarray(support), np.asarray(dual_coef, dtype=np.float64).ravel(), float(np.ravel(intercept)[0])


def _fit_with_svr(kernel: np.ndarray, y: np.ndarray, C: float, epsilon: float) -> tuple[np.ndarray, np.ndarray,
                                                                                        float]:
    from sklearn import config_context
    from sklearn.svm import SVR

    with config_context(assume_finite=True, skip_parameter_validation=True):
        model = SVR(kernel="precomputed", C=C, epsilon=epsilon).fit(kernel, y)
    return model.support_, np.asarray(model.dual_coef_, dtype=np.float64).ravel(), float(model.intercept_[0])
