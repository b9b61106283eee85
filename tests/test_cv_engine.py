"""The cross-validation engine: batched fits equal one fit per target, backends and --jobs, tasks spread over
CPU workers, and where the torch heads trained."""

import numpy as np
import pytest

from featcache.errors import FeatcacheError
from regressors import registry
from regressors.cache_data import load_cache
from regressors.cv import cross_validate
from tests.fakedata import make_cache


@pytest.mark.slow
def test_dask_backend_gives_the_same_results_as_one_job(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    data = load_cache(make_cache(tmp_path))
    local = cross_validate(data, ["nr", "pr"], ["MOS_q"], ["ridge", "svr", "mlp"], folds=3)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c, \
            distributed.Client(c):
        remote = cross_validate(data, ["nr", "pr"], ["MOS_q"], ["ridge", "svr", "mlp"], folds=3, backend="dask",
                                jobs=2)
    assert [r["srcc"] for r in remote.folds] == [r["srcc"] for r in local.folds]
    mlp = [(a.y_pred, b.y_pred) for a, b in zip(remote.predictions, local.predictions) if a.regressor == "mlp"]
    assert len(mlp) == 6 and all(np.array_equal(a, b) for a, b in mlp)  # the same stacks in other processes


@pytest.mark.slow
def test_dask_backend_reaches_the_scheduler_named_by_dask_scheduler_address(tmp_path, monkeypatch):
    """DASK_SCHEDULER_ADDRESS (dask's `scheduler-address`) names your cluster: the fit connects to it (passing
    a local cluster's options with it was a traceback); an unreachable one is a one-line error."""
    distributed = pytest.importorskip("dask.distributed")
    import dask

    from regressors import cv

    data = load_cache(make_cache(tmp_path))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as c, \
            dask.config.set({"scheduler-address": c.scheduler_address}):
        with pytest.raises(ValueError):
            distributed.get_client()  # no client yet: the fit makes one
        remote = cross_validate(data, ["nr"], ["MOS_q"], ["ridge"], folds=3, backend="dask")
        client = distributed.get_client()
        assert client.scheduler.address == c.scheduler_address
        client.close()
    local = cross_validate(data, ["nr"], ["MOS_q"], ["ridge"], folds=3)
    assert [r["srcc"] for r in remote.folds] == [r["srcc"] for r in local.folds]
    monkeypatch.setattr(cv, "DASK_CONNECT_SECONDS", 1)
    for address in ("tcp://127.0.0.1:9", "localhost:notaport", "tls://127.0.0.1:9"):  # unreachable, malformed, tls
        with dask.config.set({"scheduler-address": address}):
            with pytest.raises(FeatcacheError, match=rf"^--backend dask: cannot reach the scheduler at {address}"):
                cross_validate(data, ["nr"], ["MOS_q"], ["ridge"], folds=3, backend="dask")


def test_batched_ridge_equals_one_ridge_per_target(tmp_path):
    from regressors.fitting import Member, ridge_by_fold
    from regressors.standardized import StandardizedRidge

    rng = np.random.default_rng(3)
    x = rng.normal(size=(80, 7))
    groups = np.arange(80) // 4
    train, test = np.arange(60), np.arange(60, 80)
    ys = [x[:, 0] + rng.normal(0, 0.2, 80), x[:, 1] * 3 + rng.normal(0, 2.0, 80)]
    fitted = ridge_by_fold(x, [Member(train, y[train], test, groups[train], 0) for y in ys])
    for y, (pred, chosen, _, _, _) in zip(ys, fitted):
        single = StandardizedRidge().fit(x[train], y[train], groups=groups[train])
        assert chosen["alpha"] == single.alpha_
        np.testing.assert_allclose(pred, single.predict(x[test]), atol=1e-10)


@pytest.mark.parametrize("floor", ["generator-mean", "sibling-mean", "prompt-mean"])
def test_floors_in_the_harness_equal_their_estimators(floor):
    """The CV harness fits floors without scikit-learn (regressors.code_means); the estimators must agree,
    including test samples whose sibling or prompt code never appeared in training."""
    from regressors.fitting import Member, fit_members
    from regressors.registry import get_regressor

    rng = np.random.default_rng(5)
    codes = np.stack([rng.integers(0, 3, 120), rng.integers(0, 40, 120), rng.integers(0, 15, 120)], axis=1)
    y = rng.normal(size=120) + codes[:, 0]
    train, test = np.arange(90), np.arange(90, 120)
    (pred, chosen, _, _, _), = fit_members(floor, codes.astype(float), [Member(train, y[train], test, None, 0)])
    single = get_regressor(floor).factory(0, "cpu").fit(codes[train].astype(float), y[train])
    unseen = ~np.isin(codes[test, 1], codes[train, 1]) | ~np.isin(codes[test, 2], codes[train, 2])
    assert unseen.any() and chosen == {}
    np.testing.assert_array_equal(pred, single.predict(codes[test].astype(float)))


def test_batched_svr_equals_one_svr_per_target():
    from regressors.fitting import Member, svr_by_fold
    from regressors.standardized import StandardizedSVR

    rng = np.random.default_rng(4)
    x = rng.normal(size=(90, 6))
    groups = np.arange(90) // 3
    train, test = np.arange(66), np.arange(66, 90)
    ys = [np.sin(x[:, 0]) + rng.normal(0, 0.1, 90), x[:, 1] * 5 + rng.normal(0, 3.0, 90), x[:, 2] ** 2]
    fitted = svr_by_fold(x, [Member(train, y[train], test, groups[train], 7) for y in ys])
    assert len({(c["C"], c["epsilon"]) for _, c, _, _, _ in fitted}) > 1  # the targets chose differently
    for y, (pred, chosen, _, _, _) in zip(ys, fitted):
        single = StandardizedSVR(random_state=7).fit(x[train], y[train], groups=groups[train])
        assert chosen == {"C": single.C_, "epsilon": single.epsilon_}
        np.testing.assert_allclose(pred, single.predict(x[test]), atol=1e-10)


def test_svr_inner_selection_matches_sklearn_predict():
    """The inner grid predicts from support vectors by hand; the choice must be what SVR.predict would give."""
    from sklearn.model_selection import GroupKFold
    from sklearn.svm import SVR

    from regressors.standardized import StandardizedSVR, rbf_kernel

    rng = np.random.default_rng(5)
    x = rng.normal(size=(60, 5))
    y = np.tanh(x[:, 0]) + rng.normal(0, 0.3, 60)
    groups = np.arange(60) // 2
    model = StandardizedSVR(random_state=1).fit(x, y, groups=groups)
    xs = model._scale(x)
    kernel = rbf_kernel(xs, xs, model.gamma_)
    ys = (y - model.y_mean_) / model.y_scale_
    splits = list(GroupKFold(3, shuffle=True, random_state=1).split(x, groups=groups))
    errors = {}
    for c in model.C_grid:
        for e in model.epsilon_grid:
            errors[(c, e)] = sum(float(np.sum((SVR(kernel="precomputed", C=c, epsilon=e).fit(
                kernel[np.ix_(tr, tr)], ys[tr]).predict(kernel[np.ix_(va, tr)]) - ys[va]) ** 2)) for tr, va in splits)
    assert (model.C_, model.epsilon_) == min(errors, key=errors.get)


@pytest.mark.slow  # over 0.7 s: run by CI and make test-all
def test_cpu_workers_get_the_mlp_by_fold_and_the_costliest_tasks_first(tmp_path, monkeypatch):
    """On the CPU a cell of the MLP is split by fold (so CPU workers share it, and the stacks are the same whatever
    --jobs); parallel tasks are dispatched costliest first, and the results come out in the plan's order whatever
    order the tasks finished in."""
    from regressors import cv

    data = load_cache(make_cache(tmp_path))
    regressors = ["prompt-mean", "ridge", "svr", "mlp"]
    _, whole = cv.plan(data, ["nr", "pr"], ["MOS_q", "MOS_a"], regressors, folds=3)
    _, spread = cv.plan(data, ["nr", "pr"], ["MOS_q", "MOS_a"], regressors, folds=3, spread=True)
    sizes = lambda tasks, name: [len(t.members) for t in tasks if t.regressor == name]  # noqa: E731
    assert sizes(whole, "mlp") == [6, 6] and sizes(spread, "mlp") == [2] * 6  # 3 folds x 2 targets per mode
    assert sizes(whole, "prompt-mean") == sizes(spread, "prompt-mean") == [6, 6]  # floors: no device, one task
    assert sizes(whole, "ridge") == sizes(spread, "ridge") == [2] * 6
    assert all(t.cost > 0 for t in spread)
    # at the size of PKU-AIGIQA-4K's NR cell (a fold: 3200 training rows x 2048 features, 3 targets), the order
    # measured by benchmarks/stage2.py: an MLP fold > an SVR fold > a ridge fold > a floor's whole cell
    cost = {name: registry.get_regressor(name).cost for name in ("mlp", "svr", "ridge", "prompt-mean")}
    assert cost["mlp"](3, 3200, 2048) > cost["svr"](3, 3200, 2048) > cost["ridge"](3, 3200, 2048) \
        > cost["prompt-mean"](15, 3200, 3)

    started = []
    real = cv._run_task

    def recording(index, task, device, parent=None):
        started.append(task.cost)
        return real(index, task, device, parent)

    monkeypatch.setattr(cv, "_run_task", recording)
    fast = ["prompt-mean", "ridge", "svr", "mlp"]  # the MLP: stacked by fold on the CPU whatever the jobs
    _, tasks = cv.plan(data, ["nr", "pr"], ["MOS_q", "MOS_a"], fast, folds=3, spread=True)  # on the CPU
    in_order = cross_validate(data, ["nr", "pr"], ["MOS_q", "MOS_a"], fast, folds=3)
    assert started == [t.cost for t in tasks]  # one job, no joblib: the plan's order
    started.clear()
    dispatched = cross_validate(data, ["nr", "pr"], ["MOS_q", "MOS_a"], fast, folds=3, backend="threading")
    assert started == sorted(started, reverse=True) and started != [t.cost for t in tasks]
    # the same rows in the same order; numbers equal up to BLAS's last bits (a worker thread may sum differently)
    assert [(r["regressor"], r["mode"], r["target"], r["fold"], r["chosen"]) for r in dispatched.folds] == \
        [(r["regressor"], r["mode"], r["target"], r["fold"], r["chosen"]) for r in in_order.folds]
    for key in ("srcc", "plcc", "krcc", "rmse"):
        np.testing.assert_allclose([r[key] for r in dispatched.folds], [r[key] for r in in_order.folds], rtol=1e-9)
    for a, b in zip(dispatched.predictions, in_order.predictions):
        assert (a.regressor, a.mode, a.target, a.fold) == (b.regressor, b.mode, b.target, b.fold)
        np.testing.assert_allclose(a.y_pred, b.y_pred, rtol=1e-9)


def test_jobs_auto_uses_every_core_only_for_a_run_worth_the_workers(tmp_path, monkeypatch):
    """--jobs auto (the default): one process for a small run (no joblib, no worker start-up), every usable core
    (at most one per task) from AUTO_PARALLEL_SECONDS of estimated fitting, every backend worker with a backend;
    numbers are taken as given. Through joblib the numbers are those of one process."""
    import joblib

    from featcache import devices
    from regressors import cv

    data = load_cache(make_cache(tmp_path))
    _, tasks = cv.plan(data, ["nr", "pr"], ["MOS_q"], ["ridge", "svr"], folds=3, spread=True)
    monkeypatch.setattr(devices, "usable_cores", lambda: 8)
    assert sum(t.cost for t in tasks) < cv.AUTO_PARALLEL_SECONDS and cv.resolve_jobs("auto", None, tasks) == 1
    assert cv.resolve_jobs("auto", "dask", tasks) == cv.resolve_jobs(-1, "dask", tasks) == -1  # every worker
    assert cv.resolve_jobs(3, None, tasks) == 3 and cv.resolve_jobs(-1, None, tasks) == 8
    assert cv.resolve_jobs(50, None, tasks[:5]) == cv.resolve_jobs(-1, "loky", tasks[:5]) == 5  # no idle workers
    assert cv.resolve_jobs(10 ** 6, "threading", tasks[:2]) == 2 and cv.resolve_jobs(4, None, []) == 1
    monkeypatch.setattr(cv, "AUTO_PARALLEL_SECONDS", 0.0)
    assert cv.resolve_jobs("auto", None, tasks) == 8 and cv.resolve_jobs("auto", None, tasks[:3]) == 3
    monkeypatch.setattr(devices, "usable_cores", lambda: 1)
    assert cv.resolve_jobs("auto", None, tasks) == 1
    for bad in (0, -2, "four", 2.5, True):
        with pytest.raises(FeatcacheError, match="use a positive number, -1 for every core, or auto"):
            cv.check_jobs(bad)

    asked = []

    class Threads(joblib.Parallel):  # records n_jobs; threads, so the test starts no processes
        def __init__(self, n_jobs=None, **kwargs):
            asked.append(n_jobs)
            super().__init__(n_jobs=n_jobs, backend="threading", **kwargs)

    monkeypatch.setattr(joblib, "Parallel", Threads)
    monkeypatch.setattr(devices, "usable_cores", lambda: 2)
    parallel = cross_validate(data, ["nr", "pr"], ["MOS_q"], ["ridge", "svr"], folds=3)
    assert asked == [2]
    monkeypatch.setattr(cv, "AUTO_PARALLEL_SECONDS", 10.0)
    alone = cross_validate(data, ["nr", "pr"], ["MOS_q"], ["ridge", "svr"], folds=3)
    assert asked == [2]  # under the threshold: no joblib
    assert [r["chosen"] for r in parallel.folds] == [r["chosen"] for r in alone.folds]
    np.testing.assert_allclose([r["srcc"] for r in parallel.folds], [r["srcc"] for r in alone.folds], rtol=1e-9)


def test_the_multiprocessing_backend_is_refused(tmp_path):
    """joblib's multiprocessing backend forks this process: after torch or BLAS threads ran, the children can
    hang. loky does the same work without forking."""
    data = load_cache(make_cache(tmp_path))
    with pytest.raises(FeatcacheError, match="backend 'multiprocessing' can hang .* use loky"):
        cross_validate(data, ["nr"], ["MOS_q"], ["ridge"], folds=2, backend="multiprocessing")


def test_a_multiprocessing_backend_set_around_the_call_is_refused_too(tmp_path):
    import joblib

    data = load_cache(make_cache(tmp_path))
    with joblib.parallel_config(backend="multiprocessing"):
        with pytest.raises(FeatcacheError, match="backend 'multiprocessing' can hang"):
            cross_validate(data, ["nr"], ["MOS_q", "MOS_a"], ["ridge"], folds=2, jobs=2)


def test_results_record_where_the_torch_heads_trained(tmp_path):
    """--device auto (the default of fit and bench) is resolved and recorded; runs without the MLP record None
    (and never import torch to find out)."""
    data = load_cache(make_cache(tmp_path))
    import torch

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert cross_validate(data, ["nr"], ["MOS_q"], ["mlp"], folds=2, device="auto").config["device"] == expected
    assert cross_validate(data, ["nr"], ["MOS_q"], ["ridge"], folds=2, device="auto").config["device"] is None
    from regressors.fit import CV_DEFAULTS

    assert CV_DEFAULTS["device"] == "auto" and CV_DEFAULTS["jobs"] == "auto"
