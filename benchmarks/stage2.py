"""Stage 2 speed: the full grid on 4000 cached rows like PKU-AIGIQA-4K (1600 I2I over 200 image prompts, 2400 T2I
over 200 text prompts), 2048-d features with a planted signal; NR/FR/PR x 3 targets x 5 prompt-disjoint folds.

    python benchmarks/stage2.py [--jobs 2] [--device cpu] [--one-call]
    python benchmarks/stage2.py --gflops [--device cpu]   # the MLP head's GFLOP/s beside a bare matmul only
    python benchmarks/stage2.py --startup [--runs 5]   # start-up of `featcache fit` against `python -c "import torch"`

Prints seconds per regressor family, fits and the NR MOS_q SRCC, then (with the mlp family) the MLP head's achieved
GFLOP/s beside a bare torch matmul of the same shapes measured in the same process (`mlp_gflops`); writes
benchmarks/results/stage2.json (the start-up run: stage2_startup.json; --gflops alone: stage2_gflops.json). `--one-call` also times every regressor in one run, as `featcache fit` runs the
default grid: the workers then take the costliest tasks first, so the run takes less than the families' sum.
"""

from __future__ import annotations

import argparse
import os
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
    if "mlp" in [label for label, _ in runs]:
        out["mlp_gflops"] = mlp_gflops(data, device)
    out["full_grid_seconds"] = sum(out.get(f"{label}_seconds", 0.0) for label, _ in FAMILIES)  # the families' sum
    return out


def _synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def mlp_gflops(data, device: str = "cpu", mode: str = "nr") -> dict:
    """The MLP head's achieved GFLOP/s against a bare torch matmul of the same shapes, both in this process (same
    device, same torch threads).

    The MLP: the members of the first task `cv.plan` gives for `mode` (on the CPU one fold's three targets, on CUDA
    the whole cell) trained by `regressors.mlp.fit_mlp_members`, timed from the call to its return. FLOPs counted
    are those of the matmuls the training runs, as `regressors.mlp.MatmulWork` counts them. The bare matmul (`bare_matmul_gflops`), measured just before and just after
    the MLP and averaged (on a shared machine the rate drifts), runs the step's two large products alone."""
    import torch

    from regressors import mlp
    from regressors.cv import plan

    _, tasks = plan(data, [mode], ["MOS_q", "MOS_a", "MOS_c"], ["mlp"], split="group", folds=5,
                    spread=device == "cpu", warn_folds=False)
    task = tasks[0]
    members = [(m.train, m.y_train, m.groups, m.seed) for m in task.members]
    m, d = len(members), task.inputs.shape[1]
    h, batch = mlp.hidden_units(d, mlp.MLPHead().hidden_ratio), int(mlp.MLPHead().batch_size)
    load = [os.getloadavg()[0]]
    before = bare_matmul_gflops(m, batch, d, h, device)
    work = mlp.MatmulWork()
    _synchronize(device)
    start = time.perf_counter()
    mlp.fit_mlp_members(task.inputs, members, device=device, work=work)
    _synchronize(device)
    seconds = time.perf_counter() - start
    counted = {"flops": work.flops()}
    after = bare_matmul_gflops(m, batch, d, h, device)
    load.append(os.getloadavg()[0])
    out = {"mode": mode, "device": device, "threads": torch.get_num_threads(), "members": m, "dim": d,
           "hidden": h, "batch": batch, "mlp_seconds": seconds, "mlp_gflop": counted["flops"] / 1e9,
           "mlp_gflops": counted["flops"] / 1e9 / seconds, "bare_gflops_before": before,
           "bare_gflops_after": after, "bare_gflops": (before + after) / 2, "load_average": load}
    out["ratio"] = out["mlp_gflops"] / out["bare_gflops"]
    print(f"  MLP head {out['mlp_gflops']:.1f} GFLOP/s ({out['mlp_gflop']:.0f} GFLOP of matmuls in "
          f"{seconds:.1f} s; {m} members, {mode} {d} -> {h} -> 1, batch {batch}) vs a bare matmul of the same shapes "
          f"{out['bare_gflops']:.1f} GFLOP/s (before {before:.1f}, after {after:.1f}): {out['ratio']:.2f} x "
          f"({device}, {out['threads']} torch threads, load average {load[0]:.1f} / {load[1]:.1f})", flush=True)
    return out


def bare_matmul_gflops(members: int, batch: int, dim: int, hidden: int, device: str, seconds: float = 2.0) -> float:
    """GFLOP/s of the MLP step's two large products alone, `torch.baddbmm` (members, batch, dim) x (members, dim,
    hidden) and the in-place weight gradient (members, dim, batch) x (members, batch, hidden), repeated for about
    `seconds`: 4 x members x batch x dim x hidden FLOPs per repeat."""
    import torch

    gen = torch.Generator().manual_seed(0)
    z, w1 = torch.randn(members, batch, dim, generator=gen), torch.randn(members, dim, hidden, generator=gen)
    d_pre, g1 = torch.randn(members, batch, hidden, generator=gen), torch.zeros(members, dim, hidden)
    z, w1, d_pre, g1 = (t.to(device) for t in (z, w1, d_pre, g1))
    b1 = torch.zeros(members, 1, hidden, device=device)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds / 4:  # warm-up: thread pool, caches, clocks
        torch.baddbmm(b1, z, w1)
        g1.baddbmm_(z.mT, d_pre)
        _synchronize(device)
    repeats, elapsed = 0, 0.0
    _synchronize(device)
    start = time.perf_counter()
    while elapsed < seconds:
        for _ in range(10):
            torch.baddbmm(b1, z, w1)
            g1.baddbmm_(z.mT, d_pre)
        _synchronize(device)
        repeats += 10
        elapsed = time.perf_counter() - start
    return 4.0 * members * batch * dim * hidden * repeats / 1e9 / elapsed


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
    parser.add_argument("--gflops", action="store_true", help="only the MLP's GFLOP/s against a bare matmul")
    parser.add_argument("--startup", action="store_true", help="measure the start-up of featcache fit instead")
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON [benchmarks/results]")
    parser.add_argument("--runs", type=int, default=5, help="--startup: runs per command (the median is kept)")
    args = parser.parse_args()
    if args.gflops:
        from regressors.cache_data import load_cache

        with tempfile.TemporaryDirectory() as tmp:
            out = mlp_gflops(load_cache(str(planted_cache(Path(tmp) / "s2"))), args.device)
        out["machine"] = machine()
        print(f"wrote {save_json('stage2_gflops', out, args.out)}")
        return
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
