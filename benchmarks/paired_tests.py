"""False positives of the paired tests between two equally good procedures, in simulation and end to end.

1. Simulation (tests/paired_simulation.py): ridge regressions A and B on equally informative features, grouped
   5-fold over prompts, N data sets per column; the share with p < 0.05 for the Wilcoxon test over the K x R fold
   differences (each fold taken as an independent sample), the corrected resampled t-test (what featcache reports)
   and a paired permutation over prompt groups on the pooled predictions; at 1, 2, 5, 10 repeats; labels with
   signal (A and B predict them equally well) and pure noise (signal 0).
2. End to end: a fake cache of 488 samples (160 with an image prompt) whose labels are replaced by pure noise,
   `cross_validate` with the modes nr, fr, fr-diff, pr, the regressors ridge and svr and the label-only floors
   (as `featcache fit` fits them), 10 repeats: the comparisons at p < 0.05 as before (Wilcoxon over folds, every
   mode against the NR trained on all samples) and now (corrected t, FR against nr-prompted).

    python benchmarks/paired_tests.py [--data-sets 400] [--permutations 199] [--repeats 1,2,5,10]
                                      [--e2e-repeats 10] [--skip-simulation] [--skip-end-to-end]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from common import machine, save_json  # noqa: E402  (puts the repository root on sys.path)

TESTS = ("wilcoxon over folds", "Nadeau-Bengio over all K x R folds", "corrected resampled t", "group permutation")


def simulation(data_sets: int, repeats: list[int], permutations: int, signal: float) -> dict:
    from tests.paired_simulation import rejection_rates

    table = {}
    for r in repeats:
        start = time.perf_counter()
        table[r] = rejection_rates(data_sets, r, permutations=permutations, signal=signal)
        print(f"  signal {signal:g}, {r} repeats: {time.perf_counter() - start:.0f} s", flush=True)
    return table


def print_simulation(table: dict, data_sets: int, signal: float) -> None:
    repeats = list(table)
    print(f"\np < 0.05 in {data_sets} simulated data sets of two equally good procedures (signal {signal:g}), "
          "grouped 5-fold")
    print("| test | " + " | ".join(f"{r} repeat{'s' if r > 1 else ''}" for r in repeats) + " |")
    print("|---|" + "---|" * len(repeats))
    for name in TESTS:
        print(f"| {name} | " + " | ".join(f"{100 * table[r][name]:.1f}%" for r in repeats) + " |")


def noise_cache(folder: Path, seed: int = 0):
    """488 samples (I2I: 20 image prompts x MJ, SD x 4; T2I: 41 text prompts x SD, MJ x 4), 32-d features, and
    labels of every target replaced by independent standard normal noise."""
    from regressors.cache_data import load_cache
    from tests.fakedata import make_cache

    data = load_cache(str(make_cache(folder, i2i_prompts=20, t2i_prompts=41, per=4, dim=32, seed=seed)))
    rng = np.random.default_rng(seed + 1)
    data.samples.targets = {name: rng.normal(size=len(data.samples)) for name in data.samples.targets}
    return data


def old_wilcoxon(results, mode: str, reference: str, regressor: str, target: str) -> float:
    """The p the Wilcoxon test over folds gives to `mode` vs `reference` on the test samples both scored (a failed
    fold counts as 0), from the run's own out-of-fold predictions."""
    from regressors.metrics import srcc_counted
    from tests.paired_simulation import wilcoxon_p

    failed = {(r["mode"], r["repeat"], r["fold"]) for r in results.folds
              if r["failed"] and (r["regressor"], r["target"]) == (regressor, target)}
    kept = {(p.mode, p.repeat, p.fold): p for p in results.predictions
            if (p.regressor, p.target) == (regressor, target) and p.mode in (mode, reference)}
    diffs = []
    for (m, repeat, fold), a in kept.items():
        if m != mode:
            continue
        b = kept[(reference, repeat, fold)]
        _, ia, ib = np.intersect1d(a.rows, b.rows, return_indices=True)
        sides = [0.0 if (side_mode, repeat, fold) in failed else srcc_counted(side.y_true[rows], side.y_pred[rows])
                 for side, side_mode, rows in ((a, mode, ia), (b, reference, ib))]
        diffs.append(sides[0] - sides[1])
    return wilcoxon_p(diffs)


def end_to_end(repeats: int, jobs: int) -> dict:
    from regressors.cv import cross_validate
    from regressors.fit import run_regressors

    regressors = run_regressors(["ridge", "svr"])[1]
    with tempfile.TemporaryDirectory() as tmp:
        data = noise_cache(Path(tmp))
        start = time.perf_counter()
        results = cross_validate(data, ["nr", "fr", "fr-diff", "pr"], data.targets, regressors, folds=5,
                                 repeats=repeats, seed=0, jobs=jobs)
        seconds = time.perf_counter() - start
    rows = [{"regressor": c["regressor"], "target": c["target"], "mode": c["mode"], "reference": c["reference"],
             "matched_training": c["matched_training"], "diff_mean": c["diff_mean"], "p": c["p"],
             "old_wilcoxon_p": old_wilcoxon(results, c["mode"], "nr", c["regressor"], c["target"]),
             "n_folds": c["n_folds"], "n_test_samples": c["n_test_samples"], "n_train_mean": c["n_train_mean"]}
            for c in results.comparisons]
    # as printed before: every mode against the NR trained on all samples, the floors too
    old = [{"regressor": r, "target": t, "mode": m, "old_wilcoxon_p": old_wilcoxon(results, m, "nr", r, t)}
           for r in regressors for t in results.config["targets"] for m in ("fr", "fr-diff", "pr")]
    n_train = {mode: float(np.mean([r["n_train"] for r in results.folds if r["mode"] == mode]))
               for mode in results.config["modes"]}
    return {"samples": len(data.samples), "prompted": int((data.samples.prompt_image >= 0).sum()),
            "repeats": repeats, "modes": results.config["modes"], "regressors": regressors, "seconds": seconds,
            "n_train_mean": n_train, "comparisons": rows, "old_comparisons": old,
            "rejections": {"old": sum(r["old_wilcoxon_p"] < 0.05 for r in old), "old_comparisons": len(old),
                           "old_feature_reading": sum(r["old_wilcoxon_p"] < 0.05 for r in rows),
                           "new": sum(r["p"] < 0.05 for r in rows), "comparisons": len(rows)}}


def print_end_to_end(e2e: dict) -> None:
    print(f"\nend to end on pure-noise labels: {e2e['samples']} samples ({e2e['prompted']} with an image prompt), "
          f"grouped 5-fold x {e2e['repeats']} repeats, modes {', '.join(e2e['modes'])}, "
          f"{len(e2e['comparisons'])} comparisons, {e2e['seconds']:.0f} s of fitting")
    print("mean training rows per fold: " + ", ".join(f"{m} {n:.0f}" for m, n in e2e["n_train_mean"].items()))
    print("| regressor | target | comparison (now) | matched | difference | p (corrected t) | old: vs nr, "
          "Wilcoxon p |")
    print("|---|---|---|---|---|---|---|")
    for r in e2e["comparisons"]:
        print(f"| {r['regressor']} | {r['target']} | {r['mode']} vs {r['reference']} | "
              f"{'yes' if r['matched_training'] else 'no'} | {r['diff_mean']:+.3f} | {r['p']:.3g} | "
              f"{r['old_wilcoxon_p']:.3g} |")
    counts = e2e["rejections"]
    print(f"p < 0.05 before (Wilcoxon over folds, every mode against NR trained on all samples): "
          f"{counts['old']} of {counts['old_comparisons']} comparisons (the floors' too), "
          f"{counts['old_feature_reading']} of the {counts['comparisons']} of ridge and svr")
    print(f"p < 0.05 now (corrected t, matched reference; floors not compared, their sides are equal): "
          f"{counts['new']} of {counts['comparisons']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-sets", type=int, default=400)
    parser.add_argument("--permutations", type=int, default=199)
    parser.add_argument("--repeats", default="1,2,5,10", help="comma list of the simulation's repeat counts")
    parser.add_argument("--e2e-repeats", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--skip-simulation", action="store_true")
    parser.add_argument("--skip-end-to-end", action="store_true")
    args = parser.parse_args()
    repeats = [int(r) for r in args.repeats.split(",")]
    payload: dict = {"machine": machine(), "data_sets": args.data_sets, "permutations": args.permutations}
    start = time.perf_counter()
    if not args.skip_simulation:
        payload["simulation"] = {}
        for signal in (1.0, 0.0):
            table = simulation(args.data_sets, repeats, args.permutations, signal)
            payload["simulation"][f"signal {signal:g}"] = {str(r): rates for r, rates in table.items()}
            print_simulation(table, args.data_sets, signal)
    if not args.skip_end_to_end:
        payload["end_to_end"] = end_to_end(args.e2e_repeats, args.jobs)
        print_end_to_end(payload["end_to_end"])
    payload["seconds"] = time.perf_counter() - start
    print(f"\n{payload['seconds']:.0f} s; wrote {save_json('paired_tests', payload)}")


if __name__ == "__main__":
    main()
