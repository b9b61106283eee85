"""Stage 2 speed: the full grid on 4000 cached rows like PKU-AIGIQA-4K (1600 I2I over 200 image prompts, 2400 T2I
over 200 text prompts), 2048-d features with a planted signal; NR/FR/PR x 3 targets x 5 prompt-disjoint folds.

    python benchmarks/stage2.py [--jobs 2] [--device cpu] [--one-call]
    python benchmarks/stage2.py --startup [--runs 5]   # start-up of `featcache fit` against `python -c "import torch"`

Prints seconds per regressor family, fits and the NR MOS_q SRCC, writes benchmarks/results/stage2.json (the
start-up run: stage2_startup.json). `--one-call` also times every regressor in one run, as `featcache fit` runs the
default grid: the workers then take the costliest tasks first, so the run takes less than the families' sum.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from common import machine, save_json  # noqa: E402

FAMILIES = (("ridge_and_floors", ["ridge", "generator-mean", "sibling-mean", "prompt-mean"]), ("svr", ["svr"]),
            ("mlp", ["mlp"]))


def planted_cache(folder: Path, dim: int = 2048, seed: int = 0, prompts: int = 200) -> Path:
    """A cache like PKU-AIGIQA-4K's (`prompts` image prompts and as many text prompts, 20 images each) with
    random `dim`-d features carrying the MOS_q signal in 16 columns."""
    import h5py

    from featcache.datasets import load_dataset
    from featcache.store import create_cache, ensure_features

    header = "Image_prompt,Text_prompt,Generated_image,MOS_q,MOS_a,MOS_c"
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(prompts):
        for g in ("MJ", "SD"):
            rows += [f'{p}.jpg,"edit",{g}_{p}_{k}.jpg,' + ",".join(f"{v:.3f}" for v in rng.uniform(1, 5, 3))
                     for k in range(4)]
    for pid in range(1000, 1000 + prompts):
        for g in ("SD", "MJ", "DALLE"):
            rows += [f',"prompt {pid}",{g}_{pid}_{k}0.jpg,' + ",".join(f"{v:.3f}" for v in rng.uniform(1, 5, 3))
                     for k in range(4)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "annotation.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    samples = load_dataset(None, folder)
    cache = folder / "c.h5"
    create_cache(cache, samples, folder)
    paths, gen, _ = samples.distinct_images()
    emb = rng.normal(size=(len(paths), dim)).astype(np.float32)
    emb[gen, :16] += samples.targets["MOS_q"][:, None].astype(np.float32)  # something to learn
    config = {"id": "synthetic/paper/224", "arch": "synthetic", "weights": {"source": "random", "tag": "random"},
              "feature": "gap", "pool": "paper", "precision": "fp32",
              "data_config": {"input_size": 224, "crop_pct": 0.875, "resize": 256, "interpolation": "bilinear",
                              "mean": [0.5] * 3, "std": [0.5] * 3}}
    with h5py.File(cache, "r+") as f:
        group = ensure_features(f, config, dim, {}, cache)
        group["emb"][:] = emb
        group["done"][:] = True
    return cache


def run_grid(folder: Path, jobs: int = 2, device: str = "cpu", families: list[str] | None = None,
             on_family=None, one_call: bool = False) -> dict:
    """Seconds per regressor family on the full grid; `on_family(partial result)` after each family. `one_call`:
    then every family's regressors in one run too (`one_call_seconds`)."""
    from regressors.cache_data import load_cache
    from regressors.cv import cross_validate

    out = {"rows": 4000, "dim": 2048, "jobs": jobs, "device": device}
    data = load_cache(str(planted_cache(folder)))
    runs = [(label, regressors) for label, regressors in FAMILIES if not families or label in families]
    if one_call:
        runs.append(("one_call", [r for label, regressors in runs for r in regressors]))
    for label, regressors in runs:
        start = time.perf_counter()
        result = cross_validate(data, ["nr", "fr", "pr"], ["MOS_q", "MOS_a", "MOS_c"], regressors, split="group",
                                folds=5, jobs=jobs, device=device)
        out[f"{label}_seconds"] = time.perf_counter() - start
        out[f"{label}_fits"] = len(result.folds)
        srcc = {r["regressor"]: r["srcc_mean"] for r in result.summary if r["mode"] == "nr" and r["target"] == "MOS_q"}
        out[f"{label}_srcc_MOS_q_nr"] = srcc[regressors[0]] if label != "one_call" else srcc
        shown = ", ".join(f"{name} {value:.3f}" for name, value in srcc.items() if name in ("ridge", "svr", "mlp"))
        print(f"  {label:<18} {out[f'{label}_seconds']:8.1f} s ({len(result.folds)} fits), NR MOS_q SRCC "
              f"{shown}", flush=True)
        if on_family:
            on_family(out)
    out["full_grid_seconds"] = sum(out.get(f"{label}_seconds", 0.0) for label, _ in FAMILIES)  # the families' sum
    return out


STARTUP_RUNS = {  # name -> featcache fit arguments after --cache; a small cache, so the time is the start-up
    "ridge, no figures": ["--mode", "nr", "--regressor", "ridge", "--no-figures"],
    "ridge, 3 figures": ["--mode", "nr", "--regressor", "ridge"],
    "ridge, nr,fr,pr, no figures": ["--mode", "nr,fr,pr", "--regressor", "ridge", "--no-figures"],
    "svr, no figures": ["--mode", "nr", "--regressor", "svr", "--no-figures"],
    "floors, no figures": ["--mode", "nr", "--regressor", "generator-mean,sibling-mean,prompt-mean", "--no-figures"],
}


def median_seconds(command, cwd: Path, runs: int = 5) -> float:
    """Median wall time of `runs` runs; `command(k)` gives the k-th command line (each run its own --out)."""
    import statistics
    import subprocess

    times = []
    for k in range(runs):
        start = time.perf_counter()
        subprocess.run(command(k), cwd=cwd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def startup(folder: Path, runs: int = 5) -> dict:
    """Wall time of `featcache fit` on a 240-row, 256-d cache (the fitting itself takes milliseconds) against
    `python -c "import torch"`, each the median of `runs`; also which heavy modules a ridge fit imports."""
    import subprocess
    import sys

    cache = planted_cache(folder, dim=256, prompts=6)
    bin_dir = Path(sys.executable).parent
    out = {"rows": 240, "dim": 256, "runs": runs,
           "import_torch_seconds": median_seconds(lambda k: [sys.executable, "-c", "import torch"], folder, runs)}
    print(f"  python -c 'import torch': {out['import_torch_seconds']:.2f} s", flush=True)
    for name, args in STARTUP_RUNS.items():
        tag = "".join(c for c in name if c.isalnum())
        seconds = median_seconds(lambda k: [str(bin_dir / "featcache"), "fit", "--cache", str(cache), *args,
                                            "--quiet", "--out", str(folder / f"out-{tag}-{k}")], folder, runs)
        out[name] = {"seconds": seconds, "x_import_torch": seconds / out["import_torch_seconds"]}
        print(f"  featcache fit {name:<22} {seconds:5.2f} s = {out[name]['x_import_torch']:.2f} x import torch",
              flush=True)
    probe = ("import sys, runpy; sys.argv = ['featcache', 'fit', '--cache', %r, '--mode', 'nr', '--regressor', "
             "'ridge', '--no-figures', '--quiet', '--out', %r]\ntry:\n    runpy.run_module('cli', run_name='__main__')"
             "\nexcept SystemExit:\n    pass\nprint('HEAVY=' + ','.join(m for m in ('torch', 'matplotlib', "
             "'sklearn', 'scipy.stats', 'pandas', 'joblib') if m in sys.modules))") % (str(cache), str(folder / "out-probe"))
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=folder, capture_output=True, text=True, check=True)
    out["ridge_imports"] = next(line for line in loaded.stdout.splitlines() if line.startswith("HEAVY="))[6:]
    print(f"  heavy modules a ridge fit imports: "
          f"{out['ridge_imports'] or 'none of torch, matplotlib, sklearn, scipy.stats, pandas, joblib'}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--families", default=",".join(f for f, _ in FAMILIES))
    parser.add_argument("--one-call", action="store_true", help="also time all the families' regressors in one run")
    parser.add_argument("--startup", action="store_true", help="measure the start-up of featcache fit instead")
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON [benchmarks/results]")
    parser.add_argument("--runs", type=int, default=5, help="--startup: runs per command (the median is kept)")
    args = parser.parse_args()
    if args.startup:
        with tempfile.TemporaryDirectory() as tmp:
            out = startup(Path(tmp), args.runs)
        out["machine"] = machine()
        print(f"wrote {save_json('stage2_startup', out, args.out)}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = run_grid(Path(tmp) / "s2", args.jobs, args.device, args.families.split(","),
                       on_family=lambda partial: save_json("stage2", {**partial, "machine": machine()}, args.out),
                       one_call=args.one_call)
    out["machine"] = machine()
    print(f"full grid {out['full_grid_seconds']:.1f} s; wrote {save_json('stage2', out, args.out)}")


if __name__ == "__main__":
    main()
