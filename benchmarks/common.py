"""Shared set-up for the benchmark scripts: photos, a synth dataset, JSON output."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
KODAK = REPO.parent / "shared" / "data" / "kodak"


def photos_folder(tmp: Path) -> tuple[Path, str]:
    """The 24 Kodak photos when ../shared is there, else scikit-image's sample photos."""
    if KODAK.is_dir() and len(list(KODAK.glob("*.png"))) >= 24:
        return KODAK, "Kodak (24 photos)"
    from featcache.synth import bundled_photos

    return bundled_photos(tmp / "photos"), "scikit-image sample photos"


def kodak_benchmark_parser(doc: str, out_help: str = "keep the data and cache here"):
    """The options the Kodak synth benchmarks share: --views, --folds, --repeats, --jobs, --out."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help=out_help)
    return parser


def require_kodak() -> None:
    """Exit 0 with 'skipped' when ../shared/data/kodak (24 photos) is absent."""
    if not (KODAK.is_dir() and len(list(KODAK.glob("*.png"))) >= 24):
        print(f"skipped: {KODAK} is absent")
        sys.exit(0)


def machine() -> dict:
    import os

    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d")}


def save_json(name: str, payload: dict, out: Path | None = None) -> Path:
    out = out or REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    partial = path.with_suffix(".json.partial")  # a run stopped by a time limit never leaves half a file
    partial.write_text(json.dumps(payload, indent=2) + "\n")
    partial.replace(path)
    return path
