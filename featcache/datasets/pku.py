"""PKU-AIGIQA-4K and PKU-I2IQA: `<GEN>_<promptid>_<k><j>.jpg` in All/, image prompts in I2I/Image_prompt/."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from featcache.datasets.registry import register_dataset
from featcache.datasets.tables import join, resolve_dir
from featcache.samples import SampleTable

TARGETS = ["MOS_q", "MOS_a", "MOS_c"]
COLUMNS = ("Generated_image", *TARGETS)
_NAME = re.compile(r"^(?P<gen>[A-Za-z0-9]+)_(?P<pid>[0-9]+)_")
GENERATED_DIRS = ("All", "Generated_image", "I2I/Generated_image", "")
PROMPT_DIRS = ("I2I/Image_prompt", "Image_prompt", "")


def _pku_frame(root: Path, table: pd.DataFrame, i2i_only: bool) -> tuple[pd.DataFrame, dict[str, str]]:
    if "Image_prompt" not in table:
        table["Image_prompt"] = ""
    if "Text_prompt" not in table:
        table["Text_prompt"] = ""
    if i2i_only:
        table = table[table["Image_prompt"].str.strip() != ""]
    names = table["Generated_image"].str.strip()
    prompts = table["Image_prompt"].str.strip()
    gen_dir = resolve_dir(root, GENERATED_DIRS, names.iloc[0]) if len(names) else GENERATED_DIRS[0]
    first_prompt = next((p for p in prompts if p), "")
    prompt_dir = resolve_dir(root, PROMPT_DIRS, first_prompt) if first_prompt else PROMPT_DIRS[0]
    matches = names.str.extract(_NAME)
    generator = matches["gen"].fillna(names.str.split("_").str[0])
    group = [f"image:{p}" if p else (f"prompt:{pid}" if isinstance(pid, str) else f"text:{t.strip()}")
             for p, pid, t in zip(prompts, matches["pid"], table["Text_prompt"])]
    frame = pd.DataFrame({
        "key": names,
        "image": [join(gen_dir, n) for n in names],
        "prompt_image": [join(prompt_dir, p) if p else "" for p in prompts],
        "text_prompt": table["Text_prompt"],
        "group": group,
        "generator": generator,
        "subset": ["i2i" if p else "t2i" for p in prompts],
        "row": table["row"],
    })
    targets = {t: t for t in TARGETS}
    if "MOS" in table.columns:
        targets["MOS"] = "MOS"
    for t in targets:
        frame[t] = table[t].to_numpy()
    return frame, targets


@register_dataset("pku-aigiqa-4k", ("annotation.xlsx", "annotation.csv"),
                  "PKU-AIGIQA-4K: 4000 T2I+I2I images, MOS_q/MOS_a/MOS_c; images in All/, prompts in I2I/Image_prompt/",
                  columns=COLUMNS)
def load_pku_aigiqa_4k(root: Path, table: pd.DataFrame, annotation: Path, options: dict) -> SampleTable:
    frame, targets = _pku_frame(root, table, i2i_only=False)
    return SampleTable.from_frame(frame, targets, str(annotation), "pku-aigiqa-4k")


@register_dataset("pku-i2iqa", ("annotation_i2i.xlsx", "annotation_i2i.csv"),
                  "PKU-I2IQA: the image-to-image part (rows with an image prompt), same columns as PKU-AIGIQA-4K",
                  columns=(*COLUMNS, "Image_prompt"))
def load_pku_i2iqa(root: Path, table: pd.DataFrame, annotation: Path, options: dict) -> SampleTable:
    frame, targets = _pku_frame(root, table, i2i_only=True)
    return SampleTable.from_frame(frame, targets, str(annotation), "pku-i2iqa")
