"""AIGCIQA2023: 6 generators x 100 prompts x 4 images; images as <model>/<NNN-k>.png."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from featcache.datasets.registry import register_dataset
from featcache.datasets.tables import join, resolve_dir
from featcache.samples import SampleTable

TARGETS = {"quality": "mosz1", "authenticity": "mosz2", "correspondence": "mosz3"}
COLUMNS = ("model", "image_name", *TARGETS.values())
IMAGE_DIRS = ("", "Image", "Image/allimg", "images")


@register_dataset("aigciqa2023", ("aigciqa2023.csv", "full.csv", "mos.csv"),
                  "AIGCIQA2023: 2400 T2I images, quality/authenticity/correspondence (mosz1..3)",
                  columns=COLUMNS)
def load_aigciqa2023(root: Path, table: pd.DataFrame, annotation: Path, options: dict) -> SampleTable:
    if "prompt" not in table:
        table["prompt"] = ""
    model = table["model"].str.strip()
    name = table["image_name"].str.strip()
    rel = [f"{m}/{n}" for m, n in zip(model, name)]
    folder = resolve_dir(root, IMAGE_DIRS, rel[0]) if rel else ""
    frame = pd.DataFrame({
        "key": rel,
        "image": [join(folder, r) for r in rel],
        "prompt_image": "",
        "text_prompt": table["prompt"].str.strip().str.strip('"'),
        "group": ["prompt:" + n.split("-")[0] for n in name],
        "generator": model,
        "subset": "t2i",
        "row": table["row"],
    })
    for target, column in TARGETS.items():
        frame[target] = table[column].to_numpy()
    return SampleTable.from_frame(frame, {t: t for t in TARGETS}, str(annotation), "aigciqa2023")
