"""MLPHead and the stacked trainer: estimator contract, group-held-out early stopping, refit, stacked == single,
seeds, clipping. Small D and N so the file runs in seconds."""

import numpy as np
import pytest
import torch
from sklearn.utils.estimator_checks import check_estimator

from regressors.mlp import MLPHead, MLPMember, early_stopping_split, fit_mlp_members

FAST = {"max_epochs": 30, "patience": 3, "batch_size": 32}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def planted(n=160, d=8, seed=0):
    """Grouped samples (4 per group) whose target is a smooth function of two columns."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = 3.0 + x[:, 0] - 0.5 * x[:, 1] ** 2 + rng.normal(0, 0.1, n)
    return x, y, np.repeat(np.arange(n // 4), 4)


@pytest.mark.slow
def test_estimator_contract():
    failed = [r for r in check_estimator(MLPHead(), on_fail=None) if r["status"] == "failed"]
    assert not failed, [(r["check_name"], str(r["exception"])[:200]) for r in failed]


def test_early_stopping_holds_out_whole_groups():
    x, y, groups = planted()
    train, val = early_stopping_split(len(y), groups, 0.2, seed=4)
    assert not set(groups[train]) & set(groups[val])
    assert len(np.unique(groups[val])) == round(0.2 * len(np.unique(groups)))
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(y)))
    head = MLPHead(random_state=4, **FAST).fit(x, y, groups)
    held = head.validation_indices_
    assert np.array_equal(held, val)
    assert np.array_equal(head.validation_groups_, np.unique(groups[val]))
    assert not set(groups[np.setdiff1d(np.arange(len(y)), held)]) & set(head.validation_groups_)
    assert 1 <= head.best_epoch_ <= FAST["max_epochs"] and len(head.history_) >= head.best_epoch_


def test_without_groups_a_random_fifth_is_held_out():
    x, y, _ = planted()
    head = MLPHead(**FAST).fit(x, y)
    assert len(head.validation_indices_) == round(0.2 * len(y)) and head.validation_groups_ is None


def test_refit_uses_every_training_sample():
    """The final weights are the refit on all rows: dropping a validation sample from the data changes them,
    and they differ from what training on the early-stopping part alone for best_epoch_ epochs gives."""
    x, y, groups = planted()
    head = MLPHead(random_state=1, **FAST).fit(x, y, groups)
    assert head.scaler_.mean_ == pytest.approx(x.mean(axis=0))
    assert head.y_mean_ == pytest.approx(y.mean())
    # same seed, same split positions, but train only on the early-stopping part for best_epoch_ epochs:
    part = np.setdiff1d(np.arange(len(y)), head.validation_indices_)
    (no_refit,) = fit_mlp_members(x, [MLPMember(part, y[part], None, 1)],
                                  dict(FAST, max_epochs=head.best_epoch_, validation_fraction=0.0))
    assert np.abs(no_refit.predict(x) - head.predict(x)).max() > 1e-3
    # a changed validation target moves the refit head (the held-out rows are trained on in the refit)
    y2 = y.copy()
    y2[head.validation_indices_[0]] += 5.0
    moved = MLPHead(random_state=1, **dict(FAST, max_epochs=head.best_epoch_, patience=10 ** 6,
                                           validation_fraction=0.0)).fit(x, y2, groups)
    same = MLPHead(random_state=1, **dict(FAST, max_epochs=head.best_epoch_, patience=10 ** 6,
                                          validation_fraction=0.0)).fit(x, y, groups)
    np.testing.assert_allclose(same.predict(x), head.predict(x), atol=1e-5)  # refit == plain fit for best epochs
    assert np.abs(moved.predict(x) - same.predict(x)).max() > 1e-3


def test_stacked_equals_single():
    x, y, groups = planted(n=200)
    rng = np.random.default_rng(0)
    members = [MLPMember(np.arange(0, 160), y[:160], groups[:160], 0),
               MLPMember(np.arange(40, 200), y[40:] * 2, groups[40:], 1),
               MLPMember(np.sort(rng.choice(200, 120, replace=False)), rng.normal(size=120), None, 2)]
    stacked = fit_mlp_members(x, members, FAST)
    for member, head in zip(members, stacked):
        single = MLPHead(random_state=member.seed, **FAST).fit(x[member.train], member.y, member.groups)
        assert single.best_epoch_ == head.best_epoch_
        np.testing.assert_allclose(head.predict(x), single.predict(x), rtol=1e-4, atol=1e-4)
        assert set(head.state_) == {"0.weight", "0.bias", "2.weight", "2.bias"}
        assert head.state_["0.weight"].shape == (4, 8) and head.state_["2.weight"].shape == (1, 4)


def test_state_loads_into_a_plain_sequential():
    x, y, groups = planted()
    head = MLPHead(**FAST).fit(x, y, groups)
    module = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    module.load_state_dict(head.state_)
    z = torch.as_tensor(head.scaler_.transform(x), dtype=torch.float32)
    out = module(z).detach().numpy()[:, 0] * head.y_scale_ + head.y_mean_
    np.testing.assert_allclose(out, head.predict(x), atol=1e-4)


def test_seeded():
    x, y, groups = planted()
    a = MLPHead(random_state=3, **FAST).fit(x, y, groups).predict(x)
    b = MLPHead(random_state=3, **FAST).fit(x, y, groups).predict(x)
    c = MLPHead(random_state=4, **FAST).fit(x, y, groups).predict(x)
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4


def test_extreme_inputs_are_clipped():
    x, y, groups = planted()
    head = MLPHead(**FAST).fit(x[:120], y[:120], groups[:120])
    extreme = x[120:] * 1000.0
    pred = head.predict(extreme)
    boundary = head.x_mean_ + np.sign(extreme - head.x_mean_) * head.clip * head.x_scale_
    np.testing.assert_allclose(pred, head.predict(boundary), atol=1e-8)  # nothing beyond +-clip SD reaches it
    assert np.all(np.abs(pred - y.mean()) < 20 * y.std())


def test_constant_training_column_is_ignored():
    x, y, groups = planted()
    x[:, 3] = 1.0
    head = MLPHead(**FAST).fit(x, y, groups)
    assert not head.x_keep_[3]
    moved = x.copy()
    moved[:, 3] = 50.0
    np.testing.assert_allclose(head.predict(moved), head.predict(x))


def _stack_of_three(d=6, seed=0):
    """A _Stack of three members (seeds 0, 1, 2) with per-member scalers, its raw rows and targets."""
    from regressors.mlp import _prepare, _Stack

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(40, d))
    params = MLPHead(**FAST).get_params()
    jobs = [_prepare(x, MLPMember(np.arange(40), rng.normal(size=40), None, s), params) for s in range(3)]
    return _Stack(jobs, d, params, torch.device("cpu")), torch.tensor(x, dtype=torch.float32), params


def test_hand_written_gradients_equal_autograd():
    """`_Stack.accumulate` (the two-layer backward pass written out) gives autograd's gradient of
    sum(weight * (prediction - y)^2) for every member, and adds to the buffers unless `first`."""
    stack, x, _ = _stack_of_three()
    rows = x[None].expand(3, -1, -1)[:, :17]
    y = torch.randn(3, 17, generator=torch.Generator().manual_seed(3))
    weight = torch.rand(3, 17, generator=torch.Generator().manual_seed(4))
    leaves = [w.clone().requires_grad_(True) for w in stack.weights]
    w1, b1, w2, b2 = leaves
    pred = torch.baddbmm(b2, torch.relu(torch.baddbmm(b1, stack.standardise(rows), w1)), w2)[..., 0]
    (weight * (pred - y) ** 2).sum().backward()
    stack.accumulate(rows, y, weight, first=True)
    for mine, leaf in zip(stack.grads, leaves):
        torch.testing.assert_close(mine, leaf.grad, rtol=1e-5, atol=1e-6)
    stack.accumulate(rows, y, weight)  # not first: added
    for mine, leaf in zip(stack.grads, leaves):
        torch.testing.assert_close(mine, 2 * leaf.grad, rtol=1e-5, atol=1e-6)


def test_one_optimizer_step_equals_torch_adam_per_member():
    """Two steps of the stacked Adam, member 1 left out of the second (no rows): each member's weights and
    moments equal those of its own `torch.optim.Adam` (same lr, betas, eps, L2 weight decay), and a left-out
    member is unchanged."""
    from regressors.mlp import ADAM_BETAS, ADAM_EPS

    stack, x, params = _stack_of_three()
    rows = x[None].expand(3, -1, -1)
    y = torch.randn(3, 40, generator=torch.Generator().manual_seed(5))
    weight = torch.full((3, 40), 1.0 / 40)
    references = []
    for i in range(3):
        own = [w[i].clone() for w in stack.weights]
        references.append((own, torch.optim.Adam(own, lr=stack.lr, betas=ADAM_BETAS, eps=ADAM_EPS,
                                                 weight_decay=params["weight_decay"])))
    for active in (torch.tensor([True, True, True]), torch.tensor([True, False, True])):
        stack.accumulate(rows, y, weight, first=True)
        before = [w[1].clone() for w in stack.weights]
        for i, (own, optimizer) in enumerate(references):
            if active[i]:
                for p, g in zip(own, stack.grads):
                    p.grad = g[i].clone()
                optimizer.step()
        stack.adam(active)
        for i, (own, optimizer) in enumerate(references):
            for k, (p, w) in enumerate(zip(own, stack.weights)):
                torch.testing.assert_close(w[i], p, rtol=1e-6, atol=1e-7)
                torch.testing.assert_close(stack.moments[2 * k][i], optimizer.state[p]["exp_avg"])
                torch.testing.assert_close(stack.moments[2 * k + 1][i], optimizer.state[p]["exp_avg_sq"])
    for w, old in zip(stack.weights, before):
        assert torch.equal(w[1], old)
    assert stack.steps[:, 0].tolist() == [2.0, 1.0, 2.0]


def test_members_leaving_the_stack_keep_their_own_adam_state():
    """After `keep`, the remaining members' next step is what it would have been in the full stack."""
    full, x, _ = _stack_of_three()
    part, _, _ = _stack_of_three()
    rows = x[None].expand(3, -1, -1)
    y = torch.randn(3, 40, generator=torch.Generator().manual_seed(6))
    weight = torch.full((3, 40), 1.0 / 40)
    for stack in (full, part):
        stack.accumulate(rows, y, weight, first=True)
        stack.adam(torch.tensor([True, True, True]))
    part.keep([0, 2])
    full.accumulate(rows, y, weight, first=True)
    full.adam(torch.tensor([True, True, True]))
    part.accumulate(rows[[0, 2]], y[[0, 2]], weight[[0, 2]], first=True)
    part.adam(torch.tensor([True, True]))
    for a, b in zip(full.weights, part.weights):
        assert torch.equal(a[[0, 2]], b)
    assert part.steps[:, 0].tolist() == [2.0, 2.0]


@pytest.mark.slow
def test_matmul_work_counts_every_row_multiplied():
    """The stage-2 benchmark's FLOP count: a 2-epoch early-stopping run trains each fit row twice and evaluates each
    validation row twice, then the refit trains every row for the chosen epochs; fitting with the counter gives the
    same head."""
    from regressors.mlp import MatmulWork, hidden_units

    x, y, groups = planted(n=80, d=6)
    params = dict(FAST, max_epochs=2, patience=10)
    work = MatmulWork()
    counted = fit_mlp_members(x, [(np.arange(80), y, groups, 0)], params, device="cpu", work=work)[0]
    plain = fit_mlp_members(x, [(np.arange(80), y, groups, 0)], params, device="cpu")[0]
    val = len(counted.validation_indices_)
    assert 0 < val < 80 and work.dim == 6 and work.hidden == hidden_units(6, counted.hidden_ratio)
    assert work.evaluated == 2 * val
    assert work.trained == 2 * (80 - val) + counted.best_epoch_ * 80
    d, h = work.dim, work.hidden
    assert work.flops() == work.trained * (4 * d * h + 6 * h) + work.evaluated * (2 * d * h + 2 * h)
    np.testing.assert_array_equal(counted.predict(x), plain.predict(x))
