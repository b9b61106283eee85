"""MLP learning rate and batch size by measurement: SRCC and RMSE of a few settings against ridge on real features.

Data: the demo cache (`featcache demo --out DIR` writes DIR/synth/featcache.h5, two lite0 backbones). Cells:
backbone x {NR, FR-diff} x {MOS_q, MOS_a, MOS_c}; outer folds GroupKFold(4) over `samples/group`; the MLP gets the
training groups for its early stopping; ridge = RidgeCV(alphas=logspace(-2, 6, 17)) on FoldScaler'd inputs.

    python benchmarks/mlp_lr.py --cache /tmp/mlp-demo/synth/featcache.h5
    python benchmarks/mlp_lr.py --speed          # the speed grid: 3 modes x 3 targets x 5 folds, 4000 x 2048
    python benchmarks/mlp_lr.py --speed --modes 1 --threads 2 [--settings "lr1e-4 b256"] [--precision bfloat16]

The speed mode draws random features with a planted 3-d signal; pass --ridge to time ridge on one mode too.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = {  # name -> MLPHead parameters changed from the defaults; "auto" = 0.1 / D (MLPHead's default)
    "auto b64": {"lr": "auto", "batch_size": 64},
    "auto full": {"lr": "auto", "batch_size": None},
    "lr3e-5 b64": {"lr": 3e-5, "batch_size": 64},
    "lr3e-5 full": {"lr": 3e-5, "batch_size": None},
    "lr1e-4 b64": {"lr": 1e-4, "batch_size": 64},
    "lr3e-4 b64": {"lr": 3e-4, "batch_size": 64},
    "lr1e-3 b64": {"lr": 1e-3, "batch_size": 64},
    "lr1e-4 b256": {"lr": 1e-4, "batch_size": 256},
    "lr3e-4 b256": {"lr": 3e-4, "batch_size": 256},
    "lr1e-3 b256": {"lr": 1e-3, "batch_size": 256},
    "lr1e-4 full": {"lr": 1e-4, "batch_size": None},
    "lr3e-4 full": {"lr": 3e-4, "batch_size": None},
    "lr1e-3 full": {"lr": 1e-3, "batch_size": None},
    "lr3e-3 full": {"lr": 3e-3, "batch_size": None},
    "lr1e-4 b64 p2": {"lr": 1e-4, "batch_size": 64, "patience": 2},
    "lr2e-4 b256": {"lr": 2e-4, "batch_size": 256},
    "lr2e-4 b256 p2": {"lr": 2e-4, "batch_size": 256, "patience": 2},
    "lr1e-4 b256 p2": {"lr": 1e-4, "batch_size": 256, "patience": 2},
}


def load_cells(path: str) -> list[dict]:
    """One entry per backbone x mode: design matrix, targets, groups."""
    import h5py

    cells = []
    with h5py.File(path, "r") as f:
        gen, ref = f["samples/gen"][:], f["samples/ref"][:]
        groups = f["samples/group"][:].astype(str)
        targets = {name: f[f"targets/{name}"][:].astype(np.float64) for name in f["targets"]}
        ids = []
        f["features"].visititems(lambda name, obj: ids.append(name[:-4]) if name.endswith("/emb") else None)
        for bid in sorted(ids):
            emb = f[f"features/{bid}/emb"][:].astype(np.float64)
            has = ref >= 0
            g, p = emb[gen[has]], emb[ref[has]]
            for mode, x, rows in (("nr", emb[gen], np.arange(len(gen))),
                                  ("fr-diff", np.hstack([g, p, np.abs(g - p)]), np.flatnonzero(has))):
                cells.append({"backbone": bid, "mode": mode, "x": x, "groups": groups[rows],
                              "targets": {k: v[rows] for k, v in targets.items()}})
    return cells


def metrics(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    from scipy.stats import spearmanr

    return float(spearmanr(y, pred).statistic), float(np.sqrt(np.mean((y - pred) ** 2)))


def ridge_scores(cell: dict, folds: list) -> dict:
    from sklearn.linear_model import RidgeCV

    from regressors.preprocess import FoldScaler

    out = {}
    for target, y in cell["targets"].items():
        scores = []
        for train, test in folds:
            scaler = FoldScaler().fit(cell["x"][train])
            model = RidgeCV(alphas=np.logspace(-2, 6, 17)).fit(scaler.transform(cell["x"][train]), y[train])
            scores.append(metrics(y[test], model.predict(scaler.transform(cell["x"][test]))))
        out[target] = np.mean(scores, axis=0)
    return out


def mlp_scores(cell: dict, folds: list, params: dict, seeds: int) -> tuple[dict, list[int], float]:
    """All folds x targets x seeds of the cell as one stacked fit."""
    from regressors.mlp import MLPMember, fit_mlp_members

    members, keys = [], []
    for target, y in cell["targets"].items():
        for k, (train, test) in enumerate(folds):
            for seed in range(seeds):
                members.append(MLPMember(train, y[train], cell["groups"][train], seed))
                keys.append((target, test))
    start = time.perf_counter()
    heads = fit_mlp_members(cell["x"], members, params, "cpu")
    seconds = time.perf_counter() - start
    per_target: dict = {}
    for (target, test), head in zip(keys, heads):
        per_target.setdefault(target, []).append(metrics(cell["targets"][target][test],
                                                         head.predict(cell["x"][test])))
    return ({t: np.mean(s, axis=0) for t, s in per_target.items()}, [h.best_epoch_ for h in heads], seconds)


def accuracy(args) -> None:
    from sklearn.model_selection import GroupKFold

    cells = load_cells(args.cache)
    rows, ridge = {}, []
    for cell in cells:
        cell["folds"] = list(GroupKFold(args.folds).split(cell["x"], groups=cell["groups"]))
        r = ridge_scores(cell, cell["folds"])
        ridge += [(cell, t, r[t]) for t in cell["targets"]]
    names = args.settings.split(",") if args.settings else list(SETTINGS)
    for name in names:
        diffs, rmses, epochs, seconds, srccs = [], [], [], 0.0, []
        for cell in cells:
            scores, best, sec = mlp_scores(cell, cell["folds"], SETTINGS[name], args.seeds)
            seconds += sec
            epochs += best
            for c, t, (r_srcc, r_rmse) in ridge:
                if c is cell:
                    srccs.append(scores[t][0])
                    diffs.append(scores[t][0] - r_srcc)
                    rmses.append(scores[t][1] / r_rmse)
        rows[name] = (np.mean(srccs), np.mean(diffs), np.min(diffs), np.mean(rmses), np.max(rmses),
                      np.median(epochs), np.min(epochs), np.max(epochs), seconds)
        print(f"  {name}: done in {seconds:.1f} s", file=sys.stderr, flush=True)
    sd = np.mean([np.std(y) for cell in cells for y in cell["targets"].values()])
    print(f"{len(ridge)} cells (backbone x mode x target), GroupKFold({args.folds}), {args.seeds} seed(s); "
          f"ridge mean SRCC {np.mean([s for _, _, (s, _) in ridge]):.3f}, mean RMSE "
          f"{np.mean([r for _, _, (_, r) in ridge]):.3f} (targets' mean SD {sd:.3f})\n")
    print("| setting | SRCC | dSRCC vs ridge mean | worst | RMSE / ridge mean | worst | best epoch median "
          "[min, max] | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r[0]:.3f} | {r[1]:+.3f} | {r[2]:+.3f} | {r[3]:.2f} | {r[4]:.2f} | "
              f"{r[5]:.0f} [{r[6]}, {r[7]}] | {r[8]:.1f} |")


def speed(args) -> None:
    """Synthetic features of the speed benchmark's size with a planted signal; 3 modes x 3 targets x 5 folds."""
    import torch
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import GroupKFold

    from regressors.mlp import MLPHead, MLPMember, fit_mlp_members
    from regressors.preprocess import FoldScaler

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n, d = args.rows, 2048
    groups = np.repeat(np.arange(n // 4), 4)
    latent = rng.normal(size=(n, 3))
    targets = {f"t{k}": 3 + latent[:, k] + 0.3 * rng.normal(size=n) for k in range(3)}
    folds = list(GroupKFold(5).split(np.zeros(n), groups=groups))
    params = dict(MLPHead().get_params(), **(SETTINGS[args.settings] if args.settings else {}),
                  precision=args.precision)
    total, fits, srcc, ridge_srcc = 0.0, 0, [], []
    for mode in range(args.modes):
        x = (rng.normal(size=(n, d)) + latent @ rng.normal(size=(3, d)) * 0.1).astype(np.float32)
        members = [MLPMember(tr, y[tr], groups[tr], 0) for y in targets.values() for tr, _ in folds]
        start = time.perf_counter()
        heads = fit_mlp_members(x, members, params, args.device)
        seconds = time.perf_counter() - start
        total += seconds
        fits += len(heads)
        tests = [te for _ in targets for _, te in folds]
        ys = [y for y in targets.values() for _ in folds]
        srcc += [metrics(y[te], h.predict(x[te]))[0] for h, y, te in zip(heads, ys, tests)]
        if mode == 0 and args.ridge:
            start = time.perf_counter()
            for y, te, (tr, _) in zip(ys, tests, [f for _ in targets for f in folds]):
                s = FoldScaler().fit(x[tr])
                r = RidgeCV(alphas=np.logspace(-2, 6, 17)).fit(s.transform(x[tr]), y[tr])
                ridge_srcc.append(metrics(y[te], r.predict(s.transform(x[te])))[0])
            print(f"ridge, 15 fits of one mode: {time.perf_counter() - start:.1f} s, SRCC {np.mean(ridge_srcc):.3f}")
        print(f"mode {mode}: {seconds:.1f} s, best epochs "
              f"{sorted(h.best_epoch_ for h in heads)}", flush=True)
    print(f"MLP {args.settings or 'defaults'}: {fits} fits ({n} x {d}, {args.threads} thread(s), {args.device}, "
          f"{params['precision']}) in {total:.1f} s; mean SRCC {np.mean(srcc):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default="/tmp/mlp-demo/synth/featcache.h5")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--settings", default=None, help="comma-separated names of SETTINGS (default: all)")
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--modes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--ridge", action="store_true", help="--speed: also time ridge on one mode")
    args = parser.parse_args()
    if not args.speed:
        import torch

        torch.set_num_threads(args.threads)
    speed(args) if args.speed else accuracy(args)


if __name__ == "__main__":
    main()
