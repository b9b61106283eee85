"""The logistic PLCC on labels that no predictor can know: how far it sits above the plain PLCC.

Each data set is a small fake cache (tests/fakedata.py: random features, 200 to 488 samples in prompt groups) whose
labels are replaced by independent random numbers, fitted by the real harness (`cross_validate`, 5 folds of
`--split`: prompt-disjoint `group` by default; `kfold` leaves siblings on both sides, where the floors predict
many distinct values). Per data set: the fold mean of the PLCC after the logistic minus the fold mean of the plain PLCC (failed
folds count as 0 in both). Two protocols on the same fitted folds:

- before: one mapping per repeat, fitted on all its out-of-fold predictions against the test labels, applied to
  each fold (the VQEG recipe on the pooled test set; rebuilt here from the kept out-of-fold predictions);
- after: what `cross_validate` reports, a mapping per fold fitted on the fold's training predictions only.

    python benchmarks/logistic_noise.py [--datasets 200] [--targets 10] [--regressor ridge,svr] [--split group]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from common import save_json  # noqa: F401  (puts the repository on sys.path)


def before_protocol(results) -> dict:
    """Fold -> PLCC after one logistic per (regressor, mode, target, repeat) fitted on that repeat's pooled test
    predictions of its non-failed folds against the test labels."""
    from regressors.metrics import fit_logistic, plcc_after_logistic

    failed = {(r["regressor"], r["mode"], r["target"], r["repeat"], r["fold"]) for r in results.folds if r["failed"]}
    pools: dict = {}
    for p in results.predictions:
        if (p.regressor, p.mode, p.target, p.repeat, p.fold) not in failed:
            pools.setdefault((p.regressor, p.mode, p.target, p.repeat), []).append(p)
    out = {}
    for key, folds in pools.items():
        params = fit_logistic(np.concatenate([p.y_true for p in folds]), np.concatenate([p.y_pred for p in folds]))
        for p in folds:
            out[(*key, p.fold)] = plcc_after_logistic(p.y_true, p.y_pred, params)
    return out


def simulate(datasets: int, targets: int, regressors: list[str], split: str = "group", folds: int = 5,
             dim: int = 32, seed: int = 0) -> dict:
    """Per regressor: per data set (plain PLCC, before, after), each a fold mean with failed folds as 0."""
    from regressors.cache_data import load_cache
    from regressors.cv import cross_validate
    from regressors.metrics import counted
    from tests.fakedata import make_cache

    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {name: [] for name in regressors}
    with tempfile.TemporaryDirectory() as tmp:
        for cache_index in range(-(-datasets // targets)):
            prompts = int(rng.integers(25, 62))  # 8 samples per prompt: 200 to 488 samples
            folder = Path(tmp) / str(cache_index)
            folder.mkdir()
            i2i = prompts // 2
            data = load_cache(str(make_cache(folder, i2i_prompts=i2i, t2i_prompts=prompts - i2i, dim=dim,
                                             seed=int(rng.integers(2 ** 31)))))
            n = len(data.samples)
            names = [f"noise{t}" for t in range(min(targets, datasets - cache_index * targets))]
            data.samples.targets.clear()
            data.samples.targets.update({name: rng.normal(size=n) for name in names})
            results = cross_validate(data, ["nr"], names, regressors, split=split, folds=folds, seed=cache_index,
                                     jobs=1)
            before = before_protocol(results)
            for name in regressors:
                for target in names:
                    folds_of = [r for r in results.folds if r["regressor"] == name and r["target"] == target]
                    key = lambda r: (r["regressor"], r["mode"], r["target"], r["repeat"], r["fold"])  # noqa: E731
                    rows[name].append((
                        np.mean([counted(r["plcc"], r["failed"]) for r in folds_of]),
                        np.mean([counted(before.get(key(r), np.nan), r["failed"]) for r in folds_of]),
                        np.mean([counted(r["plcc_logistic"], r["failed"]) for r in folds_of]), n))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=int, default=200)
    parser.add_argument("--targets", type=int, default=10, help="noise targets per fake cache (each a data set)")
    parser.add_argument("--regressor", default="ridge,svr", help="comma list, e.g. ridge,svr,prompt-mean")
    parser.add_argument("--split", default="group", choices=("group", "kfold"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    regressors = args.regressor.split(",")
    rows = simulate(args.datasets, args.targets, regressors, split=args.split, seed=args.seed)
    payload = {"datasets": args.datasets, "split": args.split, "regressors": {}}
    print(f"{args.datasets} data sets of pure-noise labels, 200-488 samples, 5-fold {args.split} split; "
          "logistic PLCC minus plain PLCC (fold means), mean ± standard error over data sets:")
    for name, values in rows.items():
        plain, before, after, sizes = (np.array(v) for v in zip(*values))
        entry = {"plain_mean": float(plain.mean())}
        for label, value in (("before", before), ("after", after)):
            diff = value - plain
            entry[label] = {"mean_diff": float(diff.mean()), "se": float(diff.std(ddof=1) / np.sqrt(len(diff))),
                            "above_plain": float(np.mean(diff > 1e-12))}
        payload["regressors"][name] = entry
        print(f"  {name}: plain PLCC {plain.mean():+.4f}; before (fitted on the test labels) "
              f"{entry['before']['mean_diff']:+.4f} ± {entry['before']['se']:.4f} (above plain in "
              f"{100 * entry['before']['above_plain']:.0f}%); after (fitted on each fold's training predictions) "
              f"{entry['after']['mean_diff']:+.4f} ± {entry['after']['se']:.4f} (above plain in "
              f"{100 * entry['after']['above_plain']:.0f}%); sizes {sizes.min()}-{sizes.max()}")
    payload["seconds"] = time.perf_counter() - start
    print(f"{payload['seconds']:.0f} s; wrote {save_json(f'logistic_noise_{args.split}', payload)}")


if __name__ == "__main__":
    main()
