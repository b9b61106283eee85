"""Ablations of the input: the paper's 224 centre crop vs a larger centre crop, native resolution, K crops and fused
caches, on the synth benchmark over the 24 Kodak photos (lite0, real ImageNet weights, multilevel pooling).

Every view is extracted once into one cache; ridge (and the label-only floors) in the NR and FR-diff modes, the
same prompt-disjoint 5-fold x 3-repeat splits for every view (stratified by T2I/I2I), so each view is compared with
the 224 crop by the repeat-adjusted corrected t-test on the same folds (`regressors.inference.corrected_t`).
Skips without ../shared/data/kodak.

    python benchmarks/ablations.py [--size 512] [--views 8] [--repeats 3] [--jobs 2]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from common import KODAK, kodak_benchmark_parser, machine, require_kodak, save_json  # noqa: E402

# (label, extract options): image_size, crops
VIEWS = [("224 crop (the paper's)", None, None), ("448 crop", 448, None), ("native", "native", None),
         ("224 x 5 crops", None, 5)]
COLUMNS = [("nr", "MOS_q"), ("nr", "MOS_a"), ("fr-diff", "MOS_c")]


def main() -> None:
    parser = kodak_benchmark_parser(__doc__)
    parser.add_argument("--size", type=int, default=512, help="side of the synth images")
    args = parser.parse_args()
    require_kodak()
    from featcache.backbones import load_backbone, parse_view
    from featcache.datasets import load_dataset
    from featcache.extract import extract
    from featcache.synth import synth
    from regressors.fit import bench

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        base = args.out or Path(tmp)
        made = synth(KODAK, base / "synth", views=args.views, size=args.size, seed=0)
        samples = load_dataset("pku-aigiqa-4k", base / "synth")
        cache = base / "synth" / "featcache.h5"
        print(f"synth over 24 Kodak photos at {args.size} px: {made.samples} rated images "
              f"({made.i2i_samples} with an image prompt)")
        ids, labels, extraction = [], {}, {}
        for label, image_size, crops in VIEWS:
            size, view = parse_view(image_size, crops)
            backbone = load_backbone("lite0", pool="multilevel", image_size=size, view=view)
            result = extract(samples, base / "synth", backbone, cache, progress=False)
            ids.append(result.backbone_id)
            labels[result.backbone_id] = label
            extraction[result.backbone_id] = {"seconds": result.seconds, "images": result.rows_written,
                                              "images_per_second": result.images_per_second}
            print(f"  {label:24s} {result.backbone_id}: {result.rows_written} images, "
                  f"{result.images_per_second:.1f} images/s")
        fused = [f"{ids[0]}+{ids[2]}", f"{ids[0]}+{ids[1]}"]
        labels[fused[0]] = "224 crop + native (fused)"
        labels[fused[1]] = "224 crop + 448 crop (fused)"
        targets = sorted({t for _, t in COLUMNS})
        results = bench(str(cache), ids + fused, ["nr", "fr-diff"], targets, ["ridge"], labels="cache",
                        split="group", folds=args.folds, repeats=args.repeats, seed=0, jobs=args.jobs)
        rows = _table_rows(results, ids + fused, labels, ids[0])
        floors = _floors(results)
        payload = {"machine": machine(), "size": args.size, "samples": made.samples, "i2i_samples": made.i2i_samples,
                   "folds": args.folds, "repeats": args.repeats, "extraction": extraction, "rows": rows,
                   "floors": floors, "seconds": time.perf_counter() - start}
        print()
        print(markdown(rows, floors, args))
        print(f"\n{payload['seconds']:.0f} s; wrote {save_json('ablations', payload)}")


def _table_rows(results, backbones: list[str], labels: dict, reference: str) -> list[dict]:
    """Per backbone: SRCC mean, 95% interval and, against `reference` on the same folds, the difference and the
    corrected t-test's p, for each column."""
    from regressors.inference import corrected_t

    summary = {(r["backbone"], r["mode"], r["target"]): r for r in results.summary if r["regressor"] == "ridge"}
    folds: dict[tuple, dict] = {}
    for f in results.folds:
        if f["regressor"] == "ridge" and not f["failed"]:
            folds.setdefault((f["backbone"], f["mode"], f["target"]), {})[(f["repeat"], f["fold"])] = f
    rows = []
    for bid in backbones:
        row = {"backbone": bid, "label": labels[bid], "cells": {}}
        for mode, target in COLUMNS:
            s = summary[(bid, mode, target)]
            cell = {"srcc": s["srcc_mean"], "srcc_pooled": s["srcc_pooled"], "ci_low": s["srcc_ci_low"],
                    "ci_high": s["srcc_ci_high"], "n_failed": s["n_failed"]}
            if bid != reference:
                mine, base = folds[(bid, mode, target)], folds[(reference, mode, target)]
                keys = sorted(set(mine) & set(base))
                d = [mine[k]["srcc"] - base[k]["srcc"] for k in keys]
                test = corrected_t(d, np.mean([mine[k]["n_train"] for k in keys]),
                                   np.mean([mine[k]["n_test"] for k in keys]), [k[0] for k in keys])
                cell.update(diff=test.mean, p=test.p)
            row["cells"][f"{mode}/{target}"] = cell
        rows.append(row)
    return rows


def _floors(results) -> dict:
    """The best label-only floor per column (what a model must beat)."""
    from regressors.registry import get_regressor

    out = {}
    for mode, target in COLUMNS:
        cells = [r for r in results.summary if r["mode"] == mode and r["target"] == target
                 and not get_regressor(r["regressor"]).reads_features]
        if cells:
            top = max(cells, key=lambda r: r["srcc_mean"])
            out[f"{mode}/{target}"] = {"regressor": top["regressor"], "srcc": top["srcc_mean"],
                                       "srcc_pooled": top["srcc_pooled"]}
    return out


def markdown(rows: list[dict], floors: dict, args) -> str:
    head = "| input | " + " | ".join(f"{m.upper()} {t} SRCC" for m, t in COLUMNS) + " |"
    lines = [head, "| --- |" + " --- |" * len(COLUMNS)]
    for row in rows:
        cells = []
        for mode, target in COLUMNS:
            c = row["cells"][f"{mode}/{target}"]
            text = f"{c['srcc_pooled']:.3f} [{c['ci_low']:.2f}, {c['ci_high']:.2f}]"
            if "p" in c:
                text += f" ({c['diff']:+.3f}, p {c['p']:.2g})"
            cells.append(text)
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    lines.append("| best label-only floor | " + " | ".join(
        f"{floors[f'{m}/{t}']['srcc_pooled']:.3f} ({floors[f'{m}/{t}']['regressor']})" if f"{m}/{t}" in floors
        else "-"
        for m, t in COLUMNS) + " |")
    lines.append(f"\nRidge, prompt-disjoint {args.folds}-fold x {args.repeats} repeats (the same folds for every "
                 "input); each cell: the pooled out-of-fold SRCC (mean over the repeats) [95% interval over prompt "
                 "groups]; in brackets, the difference of the fold-mean SRCC from the 224 crop's on the same folds "
                 "and the corrected resampled t-test's p; failed folds: "
                 f"{sum(c['n_failed'] for r in rows for c in r['cells'].values())}.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
