"""The SVR's libsvm call without sklearn.svm must fit exactly what `SVR(kernel="precomputed")` fits."""

import numpy as np
import pytest
from sklearn.svm import SVR

from regressors import libsvm_fit
from regressors.standardized import rbf_kernel


def _case(seed: int, n: int = 70):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    y = np.sin(x[:, 0]) + x[:, 1] * 0.5 + rng.normal(0, 0.2, n)
    return rbf_kernel(x, x, 0.3), (y - y.mean()) / y.std()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("C, epsilon", [(0.01, 0.1), (1.0, 0.1), (100.0, 0.3), (1000.0, 0.0)])
def test_equals_scikit_learn_svr(seed, C, epsilon):
    kernel, y = _case(seed)
    assert libsvm_fit.libsvm_binding() is not None  # the fast path is what this compares
    support, dual_coef, intercept = libsvm_fit.fit_precomputed(kernel, y, C, epsilon)
    model = SVR(kernel="precomputed", C=C, epsilon=epsilon).fit(kernel, y)
    assert support.tolist() == model.support_.tolist()
    assert dual_coef.tolist() == model.dual_coef_[0].tolist() and intercept == model.intercept_[0]
    rows = kernel[:9]
    assert (rows[:, support] @ dual_coef + intercept).tolist() == pytest.approx(model.predict(rows).tolist(),
                                                                               abs=1e-12)


@pytest.mark.parametrize("broken", ["missing", "other signature"])
def test_scikit_learn_svr_fits_when_the_binding_is_missing_or_changed(monkeypatch, broken):
    kernel, y = _case(3)
    expected = libsvm_fit.fit_precomputed(kernel, y, 10.0, 0.1)
    if broken == "missing":
        monkeypatch.setitem(libsvm_fit._binding_state, libsvm_fit.BINDING, None)
    else:
        class Changed:  # a binding whose fit takes other keywords: calling it raises TypeError
            def set_verbosity_wrap(self, level):
                pass

            def fit(self, kernel, y, renamed_argument=None):
                return None

        monkeypatch.setitem(libsvm_fit._binding_state, libsvm_fit.BINDING, Changed())
    support, dual_coef, intercept = libsvm_fit.fit_precomputed(kernel, y, 10.0, 0.1)
    assert support.tolist() == expected[0].tolist() and dual_coef.tolist() == expected[1].tolist()
    assert intercept == expected[2]
    assert libsvm_fit._binding_state[libsvm_fit.BINDING] is None  # not tried again


def test_a_kernel_that_is_not_square_is_refused():
    kernel, y = _case(4)
    with pytest.raises(ValueError, match="square"):
        libsvm_fit.fit_precomputed(kernel[:, :-1], y, 1.0, 0.1)
    with pytest.raises(ValueError, match="one row per target"):
        libsvm_fit.fit_precomputed(kernel, y[:-1], 1.0, 0.1)


def test_non_finite_coefficients_are_refused(monkeypatch):
    kernel, y = _case(5)
    monkeypatch.setattr(libsvm_fit, "_fit_with_binding", lambda *a: (np.arange(2), np.array([np.nan, 1.0]), 0.0))
    with pytest.raises(ValueError, match="not finite"):
        libsvm_fit.fit_precomputed(kernel, y, 1.0, 0.1)


def test_a_binding_still_being_initialised_is_not_used(monkeypatch):
    """Another thread importing sklearn.svm has the extension in sys.modules before its last definition exists:
    that fit goes through SVR, and the binding is taken once it is complete."""
    import sys
    import types

    kernel, y = _case(6)
    expected = libsvm_fit.fit_precomputed(kernel, y, 1.0, 0.1)
    half = types.ModuleType(libsvm_fit.BINDING)
    half.fit = lambda *a, **k: pytest.fail("a half-initialised binding was called")
    monkeypatch.delitem(libsvm_fit._binding_state, libsvm_fit.BINDING, raising=False)
    monkeypatch.setitem(sys.modules, libsvm_fit.BINDING, half)
    assert libsvm_fit.libsvm_binding() is None
    got = libsvm_fit.fit_precomputed(kernel, y, 1.0, 0.1)
    assert got[0].tolist() == expected[0].tolist() and got[1].tolist() == expected[1].tolist()
    assert libsvm_fit.BINDING not in libsvm_fit._binding_state  # asked again next time
    half.set_verbosity_wrap = lambda level: None
    assert libsvm_fit.libsvm_binding() is half


@pytest.mark.slow  # three fresh processes importing scikit-learn: 7 s
def test_threads_fitting_at_once_in_a_fresh_process_agree():
    """The dask backend fits in threads: the first fits of a process load the binding at the same moment."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = """
import threading
import numpy as np
from regressors.libsvm_fit import fit_precomputed
from regressors.standardized import rbf_kernel
rng = np.random.default_rng(0)
x = rng.normal(size=(60, 4)); y = np.sin(x[:, 0]); kernel = rbf_kernel(x, x, 0.3)
start, results, errors = threading.Barrier(8), [], []
def run():
    start.wait()
    try:
        results.append(fit_precomputed(kernel, y, 1.0, 0.1)[1].tolist())
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=run) for _ in range(8)]
[t.start() for t in threads]; [t.join() for t in threads]
assert not errors and len(results) == 8 and all(r == results[0] for r in results), errors
print("ok")
"""
    repo = str(Path(__file__).resolve().parents[1])
    for _ in range(3):
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": repo, "OMP_NUM_THREADS": "1"})
        assert run.stdout.strip() == "ok", run.stdout + run.stderr
