"""Memory: peak RSS of `featcache extract` on 200 and on 2000 images; streaming means it must not grow.

    python benchmarks/memory.py [--sizes 200,2000] [--size 384]
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
            command = [str(Path(sys.executable).with_name("featcache")), "extract", "--root", str(root),
                       "--backbone", "lite0", "--cache", str(root / "c.h5"), "--quiet"]
            peak, seconds = peak_rss_mib(command)
            rows.append({"images": images, "peak_rss_mib": peak, "seconds": seconds, "photos": source})
            print(f"{images:6d} images ({args.size} px): peak RSS {peak:7.1f} MiB, {seconds:5.1f} s")
    growth = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    print(f"peak RSS ratio, largest / smallest run: {growth:.2f}")
    print(f"wrote {save_json('memory', {'machine': machine(), 'runs': rows, 'ratio': growth})}")


if __name__ == "__main__":
    main()
