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
