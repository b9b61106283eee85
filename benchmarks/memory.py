"""Memory: peak RSS of `featcache extract` on 200 and on 2000 images, for the 224 centre crop and native resolution
(images of different sizes batched by size under a pixel budget); streaming means it must not grow.

    python benchmarks/memory.py [--sizes 200,2000] [--size 384] [--view 224,native]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, photos_folder, save_json  # noqa: E402


def peak_rss_mib(command: list[str]) -> tuple[float, float]:
    """Run `command` under a fresh Python parent; return (largest RSS of any process in the tree, seconds)."""
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
             "stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", probe, *command], check=True, capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024.0, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="200,2000")
    parser.add_argument("--size", type=int, default=384, help="side of the synth images")
    parser.add_argument("--view", default="224,native", help="comma list: 224 (centre crop), native, 224x5")
    args = parser.parse_args()
    from featcache.datasets import load_dataset
    from featcache.synth import synth

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photos, source = photos_folder(tmp)
        n_photos = len(list(Path(photos).iterdir()))
        for n in (int(x) for x in args.sizes.split(",")):
            views = max(1, int(round(n / (n_photos * (2 * 2 / 3 + 3 / 3)))))
            root = tmp / f"data{n}"
            synth(photos, root, views=views, size=args.size)
            images = len(load_dataset(None, root).distinct_images()[0])
            for view in args.view.split(","):
                command = [str(Path(sys.executable).with_name("featcache")), "extract", "--root", str(root),
                           "--backbone", f"lite0/paper/{view}", "--cache", str(root / f"c-{view}.h5"), "--quiet"]
                peak, seconds = peak_rss_mib(command)
                rows.append({"view": view, "images": images, "peak_rss_mib": peak, "seconds": seconds,
                             "photos": source})
                print(f"{images:6d} images ({args.size} px), view {view}: peak RSS {peak:7.1f} MiB, {seconds:5.1f} s",
                      flush=True)
    ratios = {}
    for view in args.view.split(","):
        runs = [r for r in rows if r["view"] == view]
        ratios[view] = runs[-1]["peak_rss_mib"] / runs[0]["peak_rss_mib"]
        print(f"view {view}: peak RSS ratio, largest / smallest run: {ratios[view]:.2f}")
    payload = {"machine": machine(), "runs": rows, "ratio": ratios.get("224", next(iter(ratios.values()))),
               "ratios": ratios}
    print(f"wrote {save_json('memory', payload)}")


if __name__ == "__main__":
    main()
