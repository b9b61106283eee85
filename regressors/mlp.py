"""The paper's head (D -> D/2 -> 1, ReLU, MSE, Adam) as a scikit-learn estimator, and a stacked trainer that fits
every fold x target x seed head of a cell as one batched model.

Beyond the paper: inputs through `FoldScaler` (training statistics, constant columns zeroed, clipped), standardised
targets, weight decay, early stopping on held-out *groups* of the training data only (the official code picks its
best epoch on the test split), then a refit on the whole training fold for the chosen number of epochs.

`MLPHead.fit` is the one-member case of `fit_mlp_members`, so a head fitted alone and the same head fitted inside a
stack give the same predictions (up to float rounding of batched matmuls).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils import check_array
from sklearn.utils.validation import check_is_fitted, validate_data

from featcache.devices import resolve_device
from regressors.preprocess import DEFAULT_CLIP, FoldScaler

MIN_VALIDATION_SAMPLES = 10  # below this many training samples there is nothing to stop on: train max_epochs
MIN_DELTA = 1e-4  # an epoch must lower the validation MSE (standardised targets) by this much to count
CHUNK_ROWS = 512  # rows per forward/backward chunk: bounds memory, and is the same for a stack and a single fit
STACK_BYTES = 2 ** 31  # parameters + Adam state + gradients of one stack stay under this
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8
WIDE_LR, LR_TIMES_DIM, MAX_AUTO_LR = 1e-4, 0.1, 1e-2  # lr="auto": max(1e-4, min(1e-2, 0.1 / D)), see auto_lr


@dataclass
class MLPMember:
    """One head to fit on rows `train` of the shared design matrix: its targets, its groups (None = no groups)
    and its seed."""

    train: np.ndarray
    y: np.ndarray
    groups: np.ndarray | None = None
    seed: int = 0


class MLPHead(RegressorMixin, BaseEstimator):
    """D -> D*hidden_ratio -> 1 ReLU MLP with group-held-out early stopping and a refit on the whole training set.

    `blocks`: the fused backbones' widths, each block weighted after standardisation
    (`preprocess.block_weights`; None: one backbone). Fitted attributes: `scaler_` (and its arrays `x_mean_`,
    `x_scale_`, `x_keep_`), `y_mean_`, `y_scale_`, `best_epoch_` (epochs of the refit), `history_` (validation
    MSE per early-stopping epoch), `validation_indices_` / `validation_groups_` (the early-stopping hold-out), `lr_` (the lr used), `state_`
    (a plain `nn.Sequential(Linear(D, H), ReLU(), Linear(H, 1))` state dict). `fit(X, y, groups=None)`: with
    groups, about `validation_fraction` of the distinct groups are held out for early stopping; without, that
    fraction of the samples at random (seeded).

    Defaults: lr 1e-4 (what lr='auto' gives for D >= 1000) with batch 64, the setting with the best SRCC among
    those benchmarks/mlp_lr.py compares (lr 3e-5 to 3e-3; batch 64, 256 or full). A larger Adam step on
    1000-4000 inputs moves every hidden unit a lot at once and the validation error diverges in the first epochs.
    `precision='bfloat16'` runs the matmuls in bfloat16 (weights and Adam stay float32).
    """

    def __init__(self, hidden_ratio: float = 0.5, lr: float | str = "auto", weight_decay: float = 1e-4,
                 batch_size: int | None = 64, max_epochs: int = 100, patience: int = 5,
                 validation_fraction: float = 0.2, clip: float = DEFAULT_CLIP, random_state: int = 0,
                 device: str = "cpu", precision: str = "float32", blocks: tuple[int, ...] | None = None):
        self.hidden_ratio = hidden_ratio
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.clip = clip
        self.random_state = random_state
        self.device = device
        self.precision = precision
        self.blocks = blocks

    def fit(self, X, y, groups=None) -> "MLPHead":
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        if groups is not None:
            groups = np.asarray(groups)
            if len(groups) != len(y):
                raise ValueError(f"groups has {len(groups)} entries for {len(y)} samples")
        member = MLPMember(np.arange(len(X)), y, groups, self.random_state)
        (fitted,) = fit_mlp_members(X, [member], self.get_params(), self.device)
        for name, value in vars(fitted).items():
            if name.endswith("_") and name != "n_features_in_":
                setattr(self, name, value)
        return self

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self, "state_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return predict_state(self._scaler().transform(X), self.state_) * self.y_scale_ + self.y_mean_

    def _scaler(self) -> FoldScaler:
        """Rebuilt from the saved arrays, so a head loaded without `x_keep_` (older files) still predicts."""
        keep = getattr(self, "x_keep_", np.ones_like(self.x_mean_))
        return FoldScaler.from_state({"mean": self.x_mean_, "scale": self.x_scale_, "keep": keep}, self.clip,
                                     self.blocks)


def predict_state(z: np.ndarray, state: dict) -> np.ndarray:
    """Forward pass of a plain-Sequential state dict in float64 numpy (row-wise, so batch size cannot change it)."""
    w1, b1 = (np.asarray(state[k], dtype=np.float64) for k in ("0.weight", "0.bias"))
    w2, b2 = (np.asarray(state[k], dtype=np.float64) for k in ("2.weight", "2.bias"))
    return (np.maximum(z @ w1.T + b1, 0.0) @ w2.T + b2)[:, 0]


def auto_lr(lr: float | str, dim: int) -> float:
    """'auto': 1e-4 for backbone-width inputs (D >= 1000; see MLPHead), 0.1 / D (at most 1e-2)
    for narrower ones. Adam moves every weight by about lr per step, so a hidden unit's input moves by about
    lr * D * |z|: with a few dozen inputs 1e-4 would barely move in max_epochs."""
    if lr == "auto":
        return max(WIDE_LR, min(MAX_AUTO_LR, LR_TIMES_DIM / dim))
    if isinstance(lr, str) or not lr > 0:
        raise ValueError(f"lr must be a positive number or 'auto', got {lr!r}")
    return float(lr)


def early_stopping_split(n: int, groups: np.ndarray | None, fraction: float,
                         seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) positions for early stopping: about `fraction` of the distinct groups held out whole,
    so the stopping epoch is chosen on unseen prompts as the outer CV will test; without groups (or with fewer
    than two) a random `fraction` of the samples. Empty validation below MIN_VALIDATION_SAMPLES samples."""
    rng = np.random.default_rng([seed, 0])
    if n < MIN_VALIDATION_SAMPLES or fraction <= 0:
        return np.arange(n), np.arange(0)
    if groups is not None and len(np.unique(groups)) >= 2:
        names = np.unique(groups)
        n_val = min(len(names) - 1, max(1, int(round(fraction * len(names)))))
        held = rng.choice(names, n_val, replace=False)
        is_val = np.isin(groups, held)
    else:
        n_val = min(n - 1, max(1, int(round(fraction * n))))
        is_val = np.zeros(n, bool)
        is_val[rng.choice(n, n_val, replace=False)] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


@dataclass
class MatmulWork:
    """What a training run multiplied, counted per member and row of every chunk (padding rows included, since they
    are computed): `trained` rows through a training step, `evaluated` rows through a validation forward, of a
    `dim` -> `hidden` -> 1 network. `flops()`: a training step costs 4 D H + 6 H (layer 1: forward and weight
    gradient, 2 D H each, no input gradient since its input is data; layer 2: forward, input and weight gradients,
    2 H each), a validation forward 2 D H + 2 H."""

    dim: int = 0
    hidden: int = 0
    trained: int = 0
    evaluated: int = 0

    def flops(self) -> float:
        d, h = float(self.dim), float(self.hidden)
        return self.trained * (4 * d * h + 6 * h) + self.evaluated * (2 * d * h + 2 * h)


def hidden_units(dim: int, hidden_ratio: float) -> int:
    """The hidden layer's width for `dim` inputs: round(dim x hidden_ratio), at least 1."""
    return max(1, int(round(dim * hidden_ratio)))


def fit_mlp_members(X, members: list, params: dict | MLPHead | None = None,
                    device: str | torch.device | None = None, work: MatmulWork | None = None) -> list[MLPHead]:
    """Fit one MLPHead per member on rows of the shared design matrix X (N, D), all members as one stacked model
    (weights (M, D, H) and (M, H, 1), batched matmuls), each with its own scaler, early stopping and refit.

    members: MLPMember or (train_indices, y_train, groups_train or None, seed) tuples. params: MLPHead parameters
    (a dict or an MLPHead; its random_state is replaced by each member's seed). Returns ordinary fitted heads.
    `work`: a `MatmulWork` to which the rows multiplied are added (for a benchmark's FLOP count).
    """
    params = dict(MLPHead().get_params(), **(params.get_params() if isinstance(params, MLPHead) else params or {}))
    X = check_array(X, dtype=np.float64)
    members = [m if isinstance(m, MLPMember) else MLPMember(*m) for m in members]
    dev = resolve_device(str(device if device is not None else params["device"]))
    heads = [_prepare(X, m, params) for m in members]
    xt = torch.tensor(X, dtype=torch.float32, device=dev)
    for batch in _stacks(heads, X.shape[1], params["hidden_ratio"]):
        _fit_stack(xt, [heads[i] for i in batch], params, dev, work)
    return [h.head for h in heads]


@dataclass
class _Job:
    """Book-keeping of one member while it trains: positions are global rows of X."""

    head: MLPHead
    rows: np.ndarray  # all training rows
    ys: np.ndarray  # standardised targets of `rows`
    fit_pos: np.ndarray  # positions in rows/ys of the early-stopping train part
    val_pos: np.ndarray  # positions of the early-stopping validation part
    seed: int


def _prepare(X: np.ndarray, member: MLPMember, params: dict) -> _Job:
    """Scaler and target statistics on the member's whole training fold; the early-stopping split."""
    rows = np.asarray(member.train, dtype=np.int64)
    y = np.asarray(member.y, dtype=np.float64).ravel()
    if len(y) != len(rows):
        raise ValueError(f"member has {len(rows)} rows and {len(y)} targets")
    groups = None if member.groups is None else np.asarray(member.groups)
    head = MLPHead(**dict(params, random_state=int(member.seed)))
    head.n_features_in_ = X.shape[1]
    head.scaler_ = FoldScaler(params["clip"], params["blocks"]).fit(X[rows])
    head.x_mean_, head.x_scale_, head.x_keep_ = head.scaler_.mean_, head.scaler_.scale_, head.scaler_.keep_
    head.lr_ = auto_lr(params["lr"], X.shape[1])
    head.y_mean_ = float(np.mean(y))
    head.y_scale_ = float(np.std(y)) or 1.0
    fit_pos, val_pos = early_stopping_split(len(rows), groups, params["validation_fraction"], int(member.seed))
    head.validation_indices_ = val_pos
    head.validation_groups_ = None if groups is None or not len(val_pos) else np.unique(groups[val_pos])
    return _Job(head, rows, (y - head.y_mean_) / head.y_scale_, fit_pos, val_pos, int(member.seed))


def _stacks(jobs: list[_Job], dim: int, hidden_ratio: float) -> list[list[int]]:
    """Members per stack so that weights, gradients and both Adam moments stay under STACK_BYTES."""
    per_member = 4 * 4 * (dim + 2) * hidden_units(dim, hidden_ratio)
    size = max(1, STACK_BYTES // per_member)
    return [list(range(i, min(i + size, len(jobs)))) for i in range(0, len(jobs), size)]


def _fit_stack(xt: torch.Tensor, jobs: list[_Job], params: dict, device: torch.device,
               work: MatmulWork | None = None) -> None:
    """Phase 1: train on the early-stopping part, pick each member's best epoch on its validation part.
    Phase 2: restart from the same initial weights on all training rows for that many epochs."""
    epochs = []
    for job in jobs:
        job.head.history_ = []
        epochs.append(params["max_epochs"] if len(job.val_pos) == 0 else None)
    stopping = [i for i, e in enumerate(epochs) if e is None]
    if stopping:
        chosen, histories = _train(xt, [jobs[i] for i in stopping], params, device, phase="stop", work=work)
        for i, best, history in zip(stopping, chosen, histories):
            epochs[i], jobs[i].head.history_ = best, history
    states, _ = _train(xt, jobs, params, device, phase="refit", epochs=epochs, work=work)
    for job, best, state in zip(jobs, epochs, states):
        job.head.best_epoch_ = int(best)
        job.head.state_ = state


def _init_weights(dim: int, hidden: int, seed: int) -> list[torch.Tensor]:
    """nn.Linear's default initialisation, drawn from a generator of the member's own seed (CPU, so every
    device and every stack starts from the same numbers); laid out for batched matmuls."""
    gen = torch.Generator().manual_seed(seed)
    b1, b2 = 1.0 / math.sqrt(dim), 1.0 / math.sqrt(hidden)
    return [(torch.rand(hidden, dim, generator=gen) * 2 - 1).mul_(b1).T.contiguous(),
            (torch.rand(1, hidden, generator=gen) * 2 - 1).mul_(b1),
            (torch.rand(1, hidden, generator=gen) * 2 - 1).mul_(b2).T.contiguous(),
            (torch.rand(1, 1, generator=gen) * 2 - 1).mul_(b2)]


class _Stack:
    """Weights, Adam moments and per-member scalers of the members still training; members leave by `keep`."""

    def __init__(self, jobs: list[_Job], dim: int, params: dict, device: torch.device,
                 work: MatmulWork | None = None):
        hidden = hidden_units(dim, params["hidden_ratio"])
        self.work = work
        if work is not None:
            work.dim, work.hidden = dim, hidden
        inits = [_init_weights(dim, hidden, job.seed) for job in jobs]
        self.weights = [torch.stack([w[k] for w in inits]).to(device) for k in range(4)]
        self.grads = [torch.zeros_like(w) for w in self.weights]
        self.moments = [torch.zeros_like(w) for w in self.weights for _ in range(2)]
        self.steps = torch.zeros(len(jobs), len(self.weights), device=device)  # Adam's step count per tensor
        to = {"dtype": torch.float32, "device": device}
        self.mean = torch.stack([torch.as_tensor(j.head.x_mean_, **to) for j in jobs])[:, None, :]
        self.inv = torch.stack([torch.as_tensor(j.head.x_keep_ / j.head.x_scale_, **to) for j in jobs])[:, None, :]
        self.clip = params["clip"]
        weight = jobs[0].head.scaler_.weight_  # the fused blocks' weights (preprocess.block_weights), one per stack
        self.weight = None if weight is None else torch.as_tensor(weight, **to)[None, None, :]
        self.lr = jobs[0].head.lr_
        self.weight_decay = params["weight_decay"]
        self.dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[params["precision"]]
        self._optimizer()

    def keep(self, index: list[int]) -> None:
        idx = torch.as_tensor(index, dtype=torch.long, device=self.steps.device)
        self.weights = [w[idx] for w in self.weights]
        self.grads = [g[idx] for g in self.grads]
        self.moments = [m[idx] for m in self.moments]
        self.steps, self.mean, self.inv = self.steps[idx], self.mean[idx], self.inv[idx]
        self._optimizer()

    def _optimizer(self) -> None:
        """A fused `torch.optim.Adam` over per-member views of the stacked weights, its state views of the stacked
        moments and step counts, so that each member keeps its own step count and the stacked tensors stay what
        the batched matmuls read. `active` lists the members whose gradient views are attached."""
        self.members = [[w[i] for w in self.weights] for i in range(len(self.steps))]
        self.active: list[int] = []
        self.optimizer = None
        if not self.members:
            return
        self.optimizer = torch.optim.Adam([p for views in self.members for p in views], lr=self.lr,
                                          betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=self.weight_decay,
                                          fused=True)
        for i, views in enumerate(self.members):
            for k, view in enumerate(views):
                self.optimizer.state[view] = {"step": self.steps[i, k], "exp_avg": self.moments[2 * k][i],
                                              "exp_avg_sq": self.moments[2 * k + 1][i]}

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """x: (M, B, D) raw rows -> each member's FoldScaler transform, done here on the fly."""
        z = (x - self.mean) * self.inv
        if self.clip is not None and math.isfinite(self.clip):
            z = z.clamp_(-self.clip, self.clip)
        if self.weight is not None:
            z = z * self.weight
        return z.to(self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (M, B, D) raw rows -> (M, B) standardised predictions."""
        if self.work is not None:
            self.work.evaluated += x.shape[0] * x.shape[1]
        w1, b1, w2, b2 = (w.to(self.dtype) for w in self.weights)
        hidden = torch.relu(torch.baddbmm(b1, self.standardise(x), w1))
        return torch.baddbmm(b2, hidden, w2)[..., 0].float()

    def accumulate(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, first: bool = False) -> None:
        """Add the gradient of sum(weight * (prediction - y)^2) to the persistent gradient buffers (`first`:
        overwrite them instead, which saves a pass zeroing the (M, D, H) buffer every step). Written out by
        hand (two layers) so the (M, D, H) gradient is accumulated in place: autograd allocated a fresh one every
        step, and the page faults of those allocations cost as much as the matmuls."""
        if self.work is not None:
            self.work.trained += x.shape[0] * x.shape[1]
        w1, b1, w2, b2 = (w.to(self.dtype) for w in self.weights)
        z = self.standardise(x)
        pre = torch.baddbmm(b1, z, w1)
        hidden = torch.relu(pre)
        err = torch.baddbmm(b2, hidden, w2)[..., 0].float() - y
        d_out = (2.0 * weight * err)[..., None].to(self.dtype)  # (M, B, 1)
        d_pre = torch.bmm(d_out, w2.mT).mul_(pre > 0)  # (M, B, H)
        g1, g_b1, g2, g_b2 = self.grads
        if self.dtype == torch.float32:  # in place: no (M, D, H) temporary
            g1.baddbmm_(z.mT, d_pre, beta=0.0 if first else 1.0)
            g2.baddbmm_(hidden.mT, d_out, beta=0.0 if first else 1.0)
        else:
            _store(g1, torch.bmm(z.mT, d_pre), first)
            _store(g2, torch.bmm(hidden.mT, d_out), first)
        _store(g_b1, d_pre.sum(1, keepdim=True), first)
        _store(g_b2, d_out.sum(1, keepdim=True), first)

    @torch.no_grad()
    def adam(self, active: torch.Tensor) -> None:
        """One step of `torch.optim.Adam(fused=True)` (L2 weight decay added to the gradient) on every member with
        rows in this step; a member without (the last minibatch of a shorter member) is left out: weights, moments
        and step count unchanged. The next step's first chunk overwrites the gradient buffers."""
        members = active.nonzero()[:, 0].tolist()
        if members != self.active:
            chosen = set(members)
            for i, views in enumerate(self.members):
                for k, view in enumerate(views):
                    view.grad = self.grads[k][i] if i in chosen else None
            self.active = members
        self.optimizer.step()

    def state(self, i: int) -> dict[str, torch.Tensor]:
        w1, b1, w2, b2 = (w[i].float().cpu() for w in self.weights)
        return {"0.weight": w1.T.contiguous(), "0.bias": b1[0].clone(), "2.weight": w2.T.contiguous(),
                "2.bias": b2[0].clone()}


def _store(buffer: torch.Tensor, value: torch.Tensor, overwrite: bool) -> None:
    if overwrite:
        buffer.copy_(value)
    else:
        buffer.add_(value)


def _padded(values: list[np.ndarray], device: torch.device, dtype=torch.long) -> torch.Tensor:
    width = max(1, max(len(v) for v in values))
    out = np.zeros((len(values), width), dtype=np.float64 if dtype != torch.long else np.int64)
    for i, v in enumerate(values):
        out[i, :len(v)] = v
    return torch.as_tensor(out, dtype=dtype, device=device)


def _train(xt: torch.Tensor, jobs: list[_Job], params: dict, device: torch.device, phase: str,
           epochs: list[int] | None = None, work: MatmulWork | None = None):
    """One stacked training run. phase 'stop': on fit_pos, returns (best epochs, validation histories);
    phase 'refit': on all rows for `epochs[i]` epochs, returns (state dicts, None)."""
    stop = phase == "stop"
    parts = [j.fit_pos if stop else np.arange(len(j.rows)) for j in jobs]
    rows = _padded([j.rows[p] for j, p in zip(jobs, parts)], device)
    ys = _padded([j.ys[p] for j, p in zip(jobs, parts)], device, torch.float32)
    counts = np.array([len(p) for p in parts])
    rngs = [np.random.default_rng([j.seed, 1 if stop else 2]) for j in jobs]
    if stop:
        val_rows = _padded([j.rows[j.val_pos] for j in jobs], device)
        val_ys = _padded([j.ys[j.val_pos] for j in jobs], device, torch.float32)
        val_counts = torch.as_tensor([len(j.val_pos) for j in jobs], dtype=torch.float32, device=device)
        best = [np.inf] * len(jobs)
        best_epoch, waited, histories = [0] * len(jobs), [0] * len(jobs), [[] for _ in jobs]
    limit = [params["max_epochs"]] * len(jobs) if stop else list(epochs)
    results: list = [None] * len(jobs)
    stack = _Stack(jobs, xt.shape[1], params, device, work)
    alive = [i for i in range(len(jobs)) if limit[i] > 0]
    for i in range(len(jobs)):
        if i not in alive:
            results[i] = stack.state(i)
    stack.keep(alive)
    batch = int(params["batch_size"] or counts.max())
    epoch = 0
    while alive:
        epoch += 1
        order = _padded([rngs[i].permutation(counts[i]) for i in alive], device)
        n = torch.as_tensor(counts[alive], device=device)
        for start in range(0, int(counts[alive].max()), batch):
            pos = order[:, start:start + batch]
            mask = (torch.arange(start, start + pos.shape[1], device=device)[None, :] < n[:, None]).float()
            _step(xt, stack, rows[alive], ys[alive], pos, mask, params)
        finished = []
        if stop:
            losses = _validation_mse(xt, stack, val_rows[alive], val_ys[alive], val_counts[alive])
            for k, i in enumerate(alive):
                histories[i].append(losses[k])
                if losses[k] < best[i] - MIN_DELTA:
                    best[i], best_epoch[i], waited[i] = losses[k], epoch, 0
                else:
                    waited[i] += 1
                if waited[i] >= params["patience"] or epoch >= limit[i]:
                    finished.append(k)
        else:
            for k, i in enumerate(alive):
                if epoch >= limit[i]:
                    results[i] = stack.state(k)
                    finished.append(k)
        if finished:
            remaining = [k for k in range(len(alive)) if k not in finished]
            alive = [alive[k] for k in remaining]
            stack.keep(remaining)
    if stop:
        return [max(1, e) for e in best_epoch], histories
    return results, None


def _step(xt, stack: _Stack, rows, ys, pos, mask, params: dict) -> None:
    """One Adam step of every member on its own minibatch (positions `pos`, padding masked out), the rows
    processed in CHUNK_ROWS chunks with gradients accumulated (memory bound, same sums for any stack size)."""
    counts = mask.sum(1)
    scale = 1.0 / counts.clamp(min=1)
    for start in range(0, pos.shape[1], CHUNK_ROWS):
        p = pos[:, start:start + CHUNK_ROWS]
        weight = mask[:, start:start + CHUNK_ROWS] * scale[:, None]
        stack.accumulate(xt[torch.gather(rows, 1, p)], torch.gather(ys, 1, p), weight, first=start == 0)
    stack.adam(counts > 0)


@torch.no_grad()
def _validation_mse(xt, stack: _Stack, rows, ys, counts) -> list[float]:
    total = torch.zeros(rows.shape[0], device=rows.device)
    width = rows.shape[1]
    for start in range(0, width, CHUNK_ROWS):
        r = rows[:, start:start + CHUNK_ROWS]
        m = (torch.arange(start, start + r.shape[1], device=rows.device)[None, :] < counts[:, None]).float()
        err = stack.forward(xt[r]) - ys[:, start:start + CHUNK_ROWS]
        total += (err * err * m).sum(1)
    return (total / counts.clamp(min=1)).cpu().tolist()
