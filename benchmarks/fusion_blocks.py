"""Block weighting of fused backbones, measured: the same fusion fitted with each block weighted to equal total
variance inside the training fold (featcache's default, `preprocess.block_weights`) and with per-feature
standardisation only, on synthetic caches of two backbones. Not a selection: featcache weights by principle
(docs/fusion.md); this shows what the choice does where the blocks differ in width and information.

Cases (480 samples, 60 prompts, prompt-disjoint 5-fold x 3 repeats, NR on MOS_q, ridge, SVR and the MLP):
- small informative: a 16-dim block whose feature 0 reads MOS_q (noise SD 0.4) fused with a 512-dim block whose
  first quarter reads it weakly (0.3 x MOS_q plus noise SD 1.56 per column) and the rest is noise;
- large informative: a 512-dim block whose first quarter reads MOS_q (1 x MOS_q plus noise SD 1.2 per column)
  fused with a 16-dim block of noise.

    python benchmarks/fusion_blocks.py [--regressors ridge,svr,mlp] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from common import machine, save_json  # noqa: E402  (puts the repository root on sys.path)

SMALL, LARGE = "toy.random/paper/4", "toy.random/paper/native"


def large_informative(folder: Path) -> Path:
    """16 columns of noise (the 'small' block) and 512 columns whose first quarter reads MOS_q (noise SD 1.2)."""
    from featcache.store import open_read, read_samples
    from tests.fakedata import add_backbone, make_cache

    path = make_cache(folder, i2i_prompts=20, t2i_prompts=40, per=4, dim=16, seed=0, backbones=())
    with open_read(path) as f:
        samples = read_samples(f)
    rng = np.random.default_rng(7)
    m = len(samples.image_keys)
    add_backbone(path, SMALL, rng.normal(size=(m, 16)))
    mos = np.zeros(m)
    mos[samples.gen] = samples.targets["MOS_q"]
    emb = rng.normal(size=(m, 512))
    emb[:, :128] = (mos - mos.mean())[:, None] + rng.normal(0, 0.4 * 3, (m, 128))
    add_backbone(path, LARGE, emb)
    return path


def small_informative(folder: Path) -> Path:
    from tests.fakedata import make_fused_cache

    return make_fused_cache(folder, small=16, large=512, i2i_prompts=20, t2i_prompts=40, per=4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regressors", default="ridge,svr,mlp")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from regressors.fit import fit

    regressors = args.regressors.split(",")
    out = {"machine": machine(), "protocol": f"group 5-fold x {args.repeats}, seed 0, NR, MOS_q", "cases": {}}
    for case, make in (("small informative", small_informative), ("large informative", large_informative)):
        with tempfile.TemporaryDirectory() as tmp:
            cache = str(make(Path(tmp)))
            rows = {}
            for weighted in (True, False):
                for name, backbone in (("fused", f"{SMALL}+{LARGE}"), ("small", SMALL), ("large", LARGE)):
                    if name != "fused" and not weighted:
                        continue
                    start = time.perf_counter()
                    result = fit(cache, backbone, ["nr"], ["MOS_q"], regressors, floors=False, labels="cache",
                                 block_weights=weighted, folds=5, repeats=args.repeats, jobs=1).results
                    label = f"{name}, {'equal block variance' if weighted else 'per-feature only'}" \
                        if name == "fused" else f"{name} block alone"
                    rows[label] = {r["regressor"]: [round(r["srcc_mean"], 4), round(r["srcc_std"], 4)]
                                   for r in result.summary}
                    print(f"{case:18s} {label:38s} " + "  ".join(
                        f"{k} {v[0]:.3f} ± {v[1]:.3f}" for k, v in rows[label].items())
                        + f"  ({time.perf_counter() - start:.0f} s)", flush=True)
            out["cases"][case] = rows
    save_json("fusion_blocks", out)


if __name__ == "__main__":
    main()
