"""Accuracy: the synth benchmark over the 24 Kodak photos with lite0 (real ImageNet weights).

paper vs multilevel pooling x every mode x the default regressors (mlp, svr, ridge and the label-only floors)
x 3 targets, prompt-disjoint 5-fold CV (stratified by T2I/I2I, shared by every mode), 3 repeats. Then the nested
selection (`bench --select`) of backbone (both poolings) x mode x regressor (ridge and svr: the MLP is left out of
the selection for time) on the same folds, beside the best cell picked on the test folds. Skips without
../shared/data/kodak.

    python benchmarks/accuracy.py [--views 8] [--repeats 3] [--jobs 2]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import KODAK, kodak_benchmark_parser, machine, require_kodak, save_json  # noqa: E402


def main() -> None:
    parser = kodak_benchmark_parser(__doc__, "keep the data, cache and reports here")
    parser.add_argument("--select-regressors", default="ridge,svr",
                        help="the candidates' regressors of the nested selection (comma-separated); '' skips it")
    args = parser.parse_args()
    require_kodak()
    from featcache.backbones import load_backbone
    from featcache.datasets import load_dataset
    from featcache.extract import extract
    from featcache.synth import synth
    from regressors.cache_data import load_cache
    from regressors.cv import cross_validate
    from regressors.fit import bench
    from regressors.modes import MODES
    from regressors.registry import default_regressors
    from regressors.report import write_results
    from regressors.summary_text import format_table

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        base = args.out or Path(tmp)
        made = synth(KODAK, base / "kodak-synth", views=args.views, seed=0)
        samples = load_dataset("pku-aigiqa-4k", base / "kodak-synth")
        cache = base / "kodak-synth" / "featcache.h5"
        payload = {"machine": machine(), "samples": made.samples, "i2i_samples": made.i2i_samples, "tables": {},
                   "folds": args.folds, "repeats": args.repeats}
        print(f"synth over 24 Kodak photos: {made.samples} rated images ({made.i2i_samples} with an image prompt)")
        for pool in ("paper", "multilevel"):
            bid = extract(samples, base / "kodak-synth", load_backbone("lite0", pool=pool), cache,
                          progress=False).backbone_id
            results = cross_validate(load_cache(str(cache), bid), list(MODES), ["MOS_q", "MOS_a", "MOS_c"],
                                     default_regressors(), split="group", folds=args.folds, repeats=args.repeats,
                                     seed=0, jobs=args.jobs)
            write_results(results, base / "reports" / pool, title=f"accuracy: {bid}")
            payload["tables"][pool] = {"backbone": bid, "summary": results.summary, "folds": results.folds,
                                       "comparisons": results.comparisons}
            print(f"\n{pool} pooling ({bid}), prompt-disjoint {args.folds}-fold x {args.repeats} repeats")
            print(format_table(results.summary, markdown=True))
        if args.select_regressors:
            payload["selection"] = _selection(bench, cache, payload, args)
        payload["seconds"] = time.perf_counter() - start
        print(f"\n{payload['seconds']:.0f} s; wrote {save_json('accuracy', payload)}")


def _selection(bench, cache: Path, payload: dict, args) -> dict:
    """bench --select over both poolings on the same folds, and per target and sample set the best cell of the
    same candidates picked on the test folds (what a table's bold shows), for comparison."""
    from regressors.modes import MODES, scores_prompted_samples
    from regressors.selection import selection_line

    ids = [table["backbone"] for table in payload["tables"].values()]
    regressors = args.select_regressors.split(",")
    started = time.perf_counter()
    results = bench(str(cache), ids, list(MODES), ["MOS_q", "MOS_a", "MOS_c"], regressors, labels="cache",
                    select=True, split="group", folds=args.folds, repeats=args.repeats, seed=0, jobs=args.jobs)
    seconds = time.perf_counter() - started
    print(f"\nnested selection over {', '.join(ids)} x every mode x {', '.join(regressors)} ({seconds:.0f} s)")
    best = []
    for entry in results.selection:
        print(selection_line(entry))
        prompted = entry["sample_set"] != "all"
        cells = [r for r in results.summary if r["target"] == entry["target"] and r["regressor"] in regressors
                 and not r["n_failed"] and scores_prompted_samples(r["mode"]) == prompted]
        top = max(cells, key=lambda r: r["srcc_mean"]) if cells else None
        if top:
            best.append({"target": entry["target"], "sample_set": entry["sample_set"], "backbone": top["backbone"],
                         "mode": top["mode"], "regressor": top["regressor"], "srcc_mean": top["srcc_mean"]})
            print(f"  best cell picked on test: {top['backbone']} {top['mode']} {top['regressor']} "
                  f"{top['srcc_mean']:.3f}")
    return {"regressors": regressors, "seconds": seconds, "entries": results.selection, "best_on_test": best}


if __name__ == "__main__":
    main()
