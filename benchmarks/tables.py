"""Print the README's result tables from benchmarks/results/*.json (written by the other scripts)."""

from __future__ import annotations

import json
import math
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _cell(row: dict) -> str:
    mean, std = row["srcc_mean"], row["srcc_std"]
    return "n/a" if mean is None or not math.isfinite(mean) else f"{mean:.3f} ± {std:.3f}"


def accuracy() -> str:
    data = json.loads((RESULTS / "accuracy.json").read_text())
    tables = data["tables"]
    targets = ["MOS_q", "MOS_a", "MOS_c"]
    header = "| mode | regressor | " + " | ".join(f"{t} paper" for t in targets) + " | " + " | ".join(
        f"{t} multilevel" for t in targets) + " |"
    lines = [header, "|" + "---|" * (2 + 2 * len(targets))]
    index = {(pool, r["mode"], r["regressor"], r["target"]): r for pool, t in tables.items() for r in t["summary"]}
    modes = list(dict.fromkeys(r["mode"] for r in tables["paper"]["summary"]))
    regressors = list(dict.fromkeys(r["regressor"] for r in tables["paper"]["summary"]))
    for mode in modes:
        for regressor in regressors:
            if regressor in ("generator-mean", "sibling-mean") and mode not in ("nr", "fr"):
                continue  # floors depend only on the samples: nr covers all, fr the prompted ones
            cells = [_cell(index[(pool, mode, regressor, t)]) for pool in ("paper", "multilevel") for t in targets]
            lines.append(f"| {mode} | {regressor} | " + " | ".join(cells) + " |")
    n = tables["paper"]["summary"][0]
    lines.append("")
    lines.append(f"{data['samples']} rated images ({data['i2i_samples']} with an image prompt), "
                 f"{n['n_folds']} folds (5 prompt-disjoint folds x 3 repeats), train/test about "
                 f"{n['n_train']}/{n['n_test']} (FR: prompted samples only); {data['seconds']:.0f} s in all.")
    return "\n".join(lines)


def speed() -> str:
    data = json.loads((RESULTS / "speed.json").read_text())
    e = data["extraction"]
    lines = [f"Extraction of {e['images']} synth images ({e['image_size']} px JPEG) with `{e['backbone']}`, "
             f"batch {e['batch_size']}, {e['workers']} decoding workers, {e['device']}:", "",
             "| pipeline | images/s | ratio |", "|---|---|---|",
             f"| decoding alone (DataLoader, same workers) | {e['decode_only_images_per_s']:.1f} | |",
             f"| bare forward on pre-decoded tensors | {e['bare_forward_images_per_s']:.1f} | 1.00 |",
             f"| `featcache extract` (decode + forward + HDF5 writes) | {e['extract_images_per_s']:.1f} | "
             f"{e['extract_vs_bare_forward']:.2f} x bare forward |", "",
             f"Extraction time = {e['extract_vs_decode_plus_forward']:.2f} x (decoding alone + forward alone)."]
    if "stage2" in data:
        s = data["stage2"]
        f = data["finetune"]
        lines += ["", f"Stage 2 on {s['rows']} cached rows of {s['dim']}-d features, NR/FR/PR x 3 targets x 5 "
                      f"prompt-disjoint folds, `--jobs {s['jobs']}`:", "",
                  "| regressors | fits | seconds |", "|---|---|---|",
                  f"| ridge + generator-mean + sibling-mean | {s['ridge_and_floors_fits']} | "
                  f"{s['ridge_and_floors_seconds']:.1f} |",
                  f"| svr | {s['svr_fits']} | {s['svr_seconds']:.1f} |",
                  f"| mlp | {s['mlp_fits']} | {s['mlp_seconds']:.1f} |",
                  f"| full grid | {s['ridge_and_floors_fits'] + s['svr_fits'] + s['mlp_fits']} | "
                  f"{s['full_grid_seconds']:.1f} |", "",
                  f"Fine-tuning cost (the paper's recipe, scaled from one measured training step of the same "
                  f"backbone: {f['train_seconds_per_image'] * 1000:.1f} ms per image forward + backward, 100 epochs, "
                  f"NR/FR/PR x 3 targets on PKU-AIGIQA-4K's paper split): {f['finetune_table_hours']:.1f} h. "
                  f"Extract once (4200 images) + the full grid: {f['extract_and_fit_seconds']:.0f} s. "
                  f"Ratio: **{f['compute_ratio']:.0f}x** less compute."]
    return "\n".join(lines)


def memory() -> str:
    data = json.loads((RESULTS / "memory.json").read_text())
    lines = ["| images | peak RSS (MiB) | seconds |", "|---|---|---|"]
    lines += [f"| {r['images']} | {r['peak_rss_mib']:.0f} | {r['seconds']:.0f} |" for r in data["runs"]]
    lines += ["", f"Ratio of the peaks: {data['ratio']:.2f}."]
    return "\n".join(lines)


if __name__ == "__main__":
    for name, make in (("accuracy", accuracy), ("speed", speed), ("memory", memory)):
        if (RESULTS / f"{name}.json").is_file():
            print(f"### {name}\n\n{make()}\n")
