"""Transfer across databases: two synth databases made from disjoint photos, lite0 multilevel features, ridge.

Kodak photos 1-12 make database A, 13-24 database B (`featcache.synth.synth`, same recipe and seed, so the label
scales agree by construction); lite0 multilevel (real ImageNet weights, offline) is extracted into each; then
`regressors.transfer.transfer` for MOS_q, MOS_a, MOS_c in NR and FR-diff: train on all of one database, test on all
of the other, each database's own prompt-disjoint 5-fold CV (x `--repeats`) on the diagonal. Skips without
../shared/data/kodak.

    python benchmarks/transfer.py [--views 8] [--repeats 3] [--out DIR]

Writes benchmarks/results/transfer.json (the transfer.json payload with the machine and timings) and
benchmarks/results/transfer.md (the matrix with its 95% intervals, as `featcache table --ci` renders it).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import KODAK, REPO, machine, save_json  # noqa: E402

TARGETS = ["MOS_q", "MOS_a", "MOS_c"]
MODES = ["nr", "fr-diff"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="keep the databases and caches here")
    args = parser.parse_args()
    photos = sorted(KODAK.glob("*.png")) if KODAK.is_dir() else []
    if len(photos) < 24:
        print(f"skipped: {KODAK} is absent")
        sys.exit(0)
    from featcache.backbones import load_backbone
    from featcache.datasets import load_dataset
    from featcache.extract import extract
    from featcache.synth import synth
    from regressors.transfer import finite_or_null, transfer
    from regressors.transfer_table import render_transfer

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        base = args.out or Path(tmp)
        backbone = load_backbone("lite0", pool="multilevel")
        caches, made = [], {}
        for name, half in (("A", photos[:12]), ("B", photos[12:24])):
            folder = base / f"photos-{name}"
            folder.mkdir(parents=True, exist_ok=True)
            for photo in half:
                shutil.copyfile(photo, folder / photo.name)
            root = base / f"synth-{name}"
            result = synth(folder, root, views=args.views, seed=0)
            cache = base / f"{name}.h5"
            began = time.perf_counter()
            extract(load_dataset("pku-aigiqa-4k", root), root, backbone, cache, progress=False)
            made[name] = {"photos": [p.name for p in half], "samples": result.samples,
                          "i2i_samples": result.i2i_samples, "extract_seconds": time.perf_counter() - began}
            print(f"database {name}: Kodak {half[0].stem}..{half[-1].stem}, {result.samples} rated images "
                  f"({result.i2i_samples} with an image prompt), extracted in {made[name]['extract_seconds']:.0f} s")
            caches.append(str(cache))
        began = time.perf_counter()
        results = transfer(caches, "lite0/multilevel", MODES, TARGETS, "ridge", repeats=args.repeats, seed=0)
        fit_seconds = time.perf_counter() - began
    payload = results.to_dict()
    table = render_transfer(payload, ["srcc", "plcc", "plcc_logistic"], ci=True)
    print(f"\n{table}")
    payload.update(machine=machine(), databases=made, transfer_seconds=fit_seconds,
                   seconds=time.perf_counter() - start)
    payload["config"]["caches"] = [Path(c).name for c in payload["config"]["caches"]]  # a temporary folder
    path = save_json("transfer", finite_or_null(payload))
    (REPO / "benchmarks" / "results" / "transfer.md").write_text(
        f"python benchmarks/transfer.py --views {args.views} --repeats {args.repeats}\n\n{table}")
    print(f"transfer {fit_seconds:.1f} s, {payload['seconds']:.0f} s in all; wrote {path}")


if __name__ == "__main__":
    main()
