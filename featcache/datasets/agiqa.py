"""AGIQA-1K, AGIQA-3K and AIGIQA-20K: text-to-image only, generator is the file-name prefix, group the prompt."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from featcache.datasets.registry import register_dataset
from featcache.datasets.tables import join, resolve_dir
from featcache.samples import SampleTable

COLUMNS_3K = ("name", "prompt", "mos_quality", "mos_align")
COLUMNS_1K = ("Image", "Prompt", "MOS")
IMAGE_DIRS = ("", "images", "Image", "AGIQA-3K", "AGIQA-1K", "AIGIQA-20K", "allimg")


def t2i_frame(root: Path, table: pd.DataFrame, image_col: str, prompt_col: str) -> pd.DataFrame:
    names = table[image_col].str.strip()
    folder = resolve_dir(root, IMAGE_DIRS, names.iloc[0]) if len(names) else ""
    prompts = table[prompt_col].str.strip()
    return pd.DataFrame({
        "key": names,
        "image": [join(folder, n) for n in names],
        "prompt_image": "",
        "text_prompt": prompts,
        "group": ["text:" + p for p in prompts],
        "generator": names.str.split("_").str[0],
        "subset": "t2i",
        "row": table["row"],
    })


@register_dataset("agiqa-3k", ("data.csv",), "AGIQA-3K: 2982 T2I images, mos_quality and mos_align",
                  columns=COLUMNS_3K)
def load_agiqa_3k(root: Path, table: pd.DataFrame, annotation: Path, options: dict) -> SampleTable:
    frame = t2i_frame(root, table, "name", "prompt")
    frame["mos_quality"] = table["mos_quality"].to_numpy()
    frame["mos_align"] = table["mos_align"].to_numpy()
    targets = {"mos_quality": "mos_quality", "mos_align": "mos_align"}
    return SampleTable.from_frame(frame, targets, str(annotation), "agiqa-3k")


@register_dataset("agiqa-1k", ("AIGC_MOS_Zscore.xlsx", "AIGC_MOS_Zscore.csv"), "AGIQA-1K: 1080 T2I images, MOS",
                  columns=COLUMNS_1K)
def load_agiqa_1k(root: Path, table: pd.DataFrame, annotation: Path, options: dict) -> SampleTable:
    frame = t2i_frame(root, table, "Image", "Prompt")
    frame["MOS"] = table["MOS"].to_numpy()
    # the official AIGC_MOS_Zscore.xlsx lists dreamStudio_8_9_1_1.jpg twice with different MOS (rows 1080, 1081)
    return SampleTable.from_frame(frame, {"MOS": "MOS"}, str(annotation), "agiqa-1k", drop_duplicates=True)


@register_dataset("aigiqa-20k", ("info_train.csv", "info.csv"),
                  "AIGIQA-20K (NTIRE 2024): headerless image,prompt,mos rows", names=("image", "prompt", "mos"))
def load_aigiqa_20k(root: Path, table: pd.DataFrame, annotation: Path, options: dict) -> SampleTable:
    frame = t2i_frame(root, table, "image", "prompt")
    frame["mos"] = table["mos"].to_numpy()
    return SampleTable.from_frame(frame, {"mos": "mos"}, str(annotation), "aigiqa-20k")
