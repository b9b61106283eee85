"""GPU: `extract` on CUDA with fp16 autocast for the paper's six backbones, next to the bare forward.

Random weights (speed does not depend on them). Run on a machine with a CUDA device:

    python benchmarks/gpu.py [--images 1024] [--batch-size 64] [--workers 8]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import machine, save_json  # noqa: E402
from speed import extraction  # noqa: E402

PAPER = ["vgg16", "vgg19", "resnet18", "resnet50", "inception_v4", "vit_large_patch16_224"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--backbones", default=",".join(PAPER))
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark is for a GPU machine")
    rows = []
    for name in args.backbones.split(","):
        run = argparse.Namespace(images=args.images, size=args.size, backbone=name, pool="paper",
                                 random_weights=True, batch_size=args.batch_size, workers=args.workers,
                                 device="cuda")
        with tempfile.TemporaryDirectory() as tmp:
            result = extraction(run, Path(tmp))
        rows.append(result)
        print(f"{name:<24} bare forward {result['bare_forward_images_per_s']:8.1f} img/s   extract "
              f"{result['extract_images_per_s']:8.1f} img/s   ratio {result['extract_vs_bare_forward']:.2f}   "
              f"decoding alone {result['decode_only_images_per_s']:8.1f} img/s", flush=True)
    print(f"wrote {save_json('gpu', {'machine': machine(), 'runs': rows})}")


if __name__ == "__main__":
    main()
