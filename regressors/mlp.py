"""The paper's head (D -> D/2 -> 1, ReLU, MSE, Adam) as a scikit-learn estimator, so one CV harness runs all.

Beyond the paper: standardised inputs and targets, weight decay, and early stopping on a validation part carved
from the training data only (the official code picks its best epoch on the test split).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from regressors.preprocess import DEFAULT_CLIP, FoldScaler


class MLPHead(RegressorMixin, BaseEstimator):
    def __init__(self, hidden_ratio: float = 0.5, lr: float = 1e-3, weight_decay: float = 1e-4,
                 batch_size: int = 64, max_epochs: int = 100, patience: int = 10,
                 validation_fraction: float = 0.1, random_state: int = 0, device: str = "cpu",
                 clip: float = DEFAULT_CLIP):
        self.clip = clip
        self.hidden_ratio = hidden_ratio
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.device = device

    def _device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        scaler = FoldScaler(self.clip).fit(X)
        self.x_mean_, self.x_scale_, self.x_keep_ = scaler.mean_, scaler.scale_, scaler.keep_.astype(float)
        self.y_mean_ = float(np.mean(y))
        self.y_scale_ = float(np.std(y)) or 1.0
        xs = scaler.transform(X)
        ys = (y - self.y_mean_) / self.y_scale_
        rng = np.random.default_rng(self.random_state)
        order = rng.permutation(len(xs))
        n_val = int(round(self.validation_fraction * len(xs))) if len(xs) >= 20 else 0
        val, train = order[:n_val], order[n_val:]
        device = self._device()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.random_state)
            module = _build(X.shape[1], self.hidden_ratio).to(device)
            self.history_, self.best_epoch_ = self._train(module, xs, ys, train, val, rng, device)
        self.state_ = {k: v.detach().cpu().clone() for k, v in self._best_state.items()}
        del self._best_state
        return self

    def _train(self, module, xs, ys, train, val, rng, device):
        xt = torch.as_tensor(xs, dtype=torch.float32, device=device)
        yt = torch.as_tensor(ys, dtype=torch.float32, device=device)
        optimiser = torch.optim.Adam(module.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        history, best, best_epoch, waited = [], np.inf, 0, 0
        self._best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        for epoch in range(self.max_epochs):
            rng.shuffle(train)
            module.train()
            for start in range(0, len(train), self.batch_size):
                idx = torch.as_tensor(train[start:start + self.batch_size], device=device)
                optimiser.zero_grad()
                loss = nn.functional.mse_loss(module(xt[idx]).squeeze(1), yt[idx])
                loss.backward()
                optimiser.step()
            if len(val):
                module.eval()
                with torch.no_grad():
                    score = float(nn.functional.mse_loss(module(xt[val]).squeeze(1), yt[val]))
                history.append(score)
                if score < best - 1e-6:
                    best, best_epoch, waited = score, epoch, 0
                    self._best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
                else:
                    waited += 1
                    if waited >= self.patience:
                        break
            else:
                best_epoch = epoch
                self._best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        return history, best_epoch

    def predict(self, X):
        check_is_fitted(self, "state_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        module = _build(X.shape[1], self.hidden_ratio)
        module.load_state_dict(self.state_)
        module.eval()
        scaler = FoldScaler.from_state({"mean": self.x_mean_, "scale": self.x_scale_, "keep": self.x_keep_}, self.clip)
        xs = torch.as_tensor(scaler.transform(X), dtype=torch.float32)
        with torch.no_grad():
            out = module(xs).squeeze(1).numpy().astype(np.float64)
        return out * self.y_scale_ + self.y_mean_


def _build(dim: int, hidden_ratio: float) -> nn.Sequential:
    hidden = max(1, int(round(dim * hidden_ratio)))
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
