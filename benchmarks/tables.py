"""Print the README's result tables from benchmarks/results/*.json (written by the other scripts)."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def accuracy() -> str:
    """The paper layout over both poolings (rows method x backbone x regressor, floors as reference rows)."""
    import sys

    sys.path.insert(0, str(RESULTS.parents[1]))
    from regressors.results_files import table_rows
    from regressors.tables import render_table

    data = json.loads((RESULTS / "accuracy.json").read_text())
    rows = []
    for pool, table in data["tables"].items():
        protocol = (f"prompt-disjoint {data.get('folds', 5)}-fold x {data.get('repeats', 3)} repeats, stratified by "
                    "T2I/I2I, one fold assignment for every mode")
        rows += [dict(r, _protocol=protocol) for r in table_rows({"backbone": table["backbone"]}, table["summary"],
                                                                 table.get("folds"), "accuracy.json")]
    first = data["tables"]["paper"]["summary"][0]
    sds = [r["srcc_std"] for t in data["tables"].values() for r in t["summary"] if r.get("srcc_std") is not None]
    spread = f"{min(sds):.3f}-{max(sds):.3f}" if sds else "none recorded"
    return (render_table(rows, ["srcc"], "md") +
            f"\n{data['samples']} rated images ({data['i2i_samples']} with an image prompt); SRCC: the mean over "
            f"{data.get('repeats', 3)} repeats of the fold means (population SDs across repeats, {spread}, in "
            f"benchmarks/results/accuracy.json); train/test about {first['n_train']}/{first['n_test']} (FR modes: "
            f"the prompted samples of the same folds); {data['seconds']:.0f} s in all.")

def readme_accuracy(regressor: str = "ridge") -> str:
    """The README's layout: one regressor, method x pooling, the pooled out-of-fold SRCC (mean over the repeats) with
    its 95% interval over prompt groups, the floors and the nested selection beside it."""
    import sys

    sys.path.insert(0, str(RESULTS.parents[1]))
    from regressors.tables import method_label

    data = json.loads((RESULTS / "accuracy.json").read_text())
    targets = ["MOS_q", "MOS_a", "MOS_c"]

    def cell(row):
        return f"{row['srcc_pooled']:.3f} [{row['srcc_ci_low']:.2f}, {row['srcc_ci_high']:.2f}]"

    lines = ["| method | pooling | " + " | ".join(targets) + " |", "| --- | --- | " + " | ".join("---" for _ in targets)
             + " |"]
    modes = list(dict.fromkeys(r["mode"] for t in data["tables"].values() for r in t["summary"]))
    for mode in modes:
        for pool, table in data["tables"].items():
            rows = {r["target"]: r for r in table["summary"] if (r["mode"], r["regressor"]) == (mode, regressor)}
            if rows:
                lines.append(f"| {method_label(mode)} | {pool} | " + " | ".join(cell(rows[t]) for t in targets) + " |")
    for pool, table in data["tables"].items():  # the zero-shot reference row, on the samples with an image prompt
        rows = {r["target"]: r for r in table["summary"] if r["regressor"] == "prompt-similarity"}
        if rows:
            lines.append(f"| zero-shot `prompt-similarity` (samples with an image prompt) | {pool} | "
                         + " | ".join(cell(rows[t]) for t in targets) + " |")
    floors = {}
    for r in data["tables"]["paper"]["summary"]:
        if r["regressor"] == "generator-mean":
            floors.setdefault(r["mode"] in ("fr", "fr-diff", "nr-prompted"), {})[r["target"]] = r
    for prompted, rows in floors.items():
        label = "samples with an image prompt" if prompted else "all samples"
        lines.append(f"| label-only floors ({label}) | - | " + " | ".join(cell(rows[t]) for t in targets) + " |")
    out = "\n".join(lines)
    if "selection" in data:
        sel = data["selection"]
        out += (f"\n\nNested selection (`bench --select`: backbone x mode x {' / '.join(sel['regressors'])}, chosen "
                "per target inside each outer training fold by inner 3-fold CV, the same folds), SRCC fold mean "
                "(pooled [95% interval]) beside the best cell of the same candidates picked on the test folds:\n\n"
                "| target | samples | nested selection | chosen | best cell picked on test |\n| --- | --- | --- | --- | --- |")
        best = {(b["target"], b["sample_set"]): b for b in sel["best_on_test"]}
        for e in sel["entries"]:
            b = best.get((e["target"], e["sample_set"]))
            counts = ", ".join(f"{c['backbone'].split('/')[1]} {c['mode']} {c['regressor']} {c['count']}"
                               for c in sorted(e["counts"], key=lambda c: -c["count"]) if c["count"])
            shown = f"{b['srcc_mean']:.3f} ({b['backbone'].split('/')[1]} {b['mode']} {b['regressor']})" if b else "-"
            out += (f"\n| {e['target']} | {e['sample_set_doc']} | {e['srcc_mean']:.3f} ({e['srcc_pooled']:.3f} "
                    f"[{e['srcc_ci_low']:.2f}, {e['srcc_ci_high']:.2f}]) | {counts} of {e['n_folds']} | {shown} |")
    return out


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
    if "views" in data:
        lines += ["", "| view | decoding alone | bare forward | `extract` | extract time / (decoding + forward) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {v['view']} ({v['backbone']}) | {v['decode_only_images_per_s']:.1f} | "
                  f"{v['bare_forward_images_per_s']:.1f} | {v['extract_images_per_s']:.1f} | "
                  f"{v['extract_vs_decode_plus_forward']:.2f} |" for v in data["views"].values()]
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
    lines = ["| view | images | peak RSS (MiB) | seconds |", "|---|---|---|---|"]
    lines += [f"| {r.get('view', '224')} | {r['images']} | {r['peak_rss_mib']:.0f} | {r['seconds']:.0f} |"
              for r in data["runs"]]
    ratios = data.get("ratios", {"224": data["ratio"]})
    lines += ["", "Ratio of the peaks, largest / smallest run: " + ", ".join(f"{v} {r:.2f}" for v, r in ratios.items())
              + "."]
    return "\n".join(lines)


def stage2() -> str:
    data = json.loads((RESULTS / "stage2.json").read_text())
    lines = [f"Stage 2 on {data['rows']} cached rows of {data['dim']}-d features, NR/FR/PR x 3 targets x 5 "
             f"prompt-disjoint folds, `--jobs {data['jobs']}`, {data['device']}:", "",
             "| regressors | fits | seconds | NR MOS_q SRCC |", "|---|---|---|---|"]
    for label, name in (("ridge_and_floors", "ridge + the three floors"), ("svr", "svr"), ("mlp", "mlp")):
        if f"{label}_seconds" in data:
            lines.append(f"| {name} | {data[f'{label}_fits']} | {data[f'{label}_seconds']:.1f} | "
                         f"{data[f'{label}_srcc_MOS_q_nr']:.3f} |")
    lines.append(f"| full grid | | {data['full_grid_seconds']:.1f} | |")
    return "\n".join(lines)


if __name__ == "__main__":
    for name, make in (("accuracy", accuracy), ("accuracy (README)", readme_accuracy), ("stage2", stage2), ("speed", speed), ("memory", memory)):
        if (RESULTS / f"{name.split()[0]}.json").is_file():
            print(f"### {name}\n\n{make()}\n")
