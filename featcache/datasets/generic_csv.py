"""`csv`: any CSV/XLSX with user-named columns, the way in for databases without an adapter."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from featcache.column_roles import ROLES
from featcache.datasets.registry import register_dataset
from featcache.datasets.tables import join
from featcache.errors import FeatcacheError
from featcache.samples import SampleTable


def parse_columns(pairs: list[str] | tuple[str, ...] | dict) -> dict:
    """Turn ['image=file', 'target=mos', 'target=align'] (or a config dict) into a role mapping."""
    if isinstance(pairs, dict):
        mapping = dict(pairs)
        if isinstance(mapping.get("target"), str):
            mapping["target"] = [mapping["target"]]
        return mapping
    mapping: dict = {"target": []}
    for pair in pairs:
        role, sep, column = pair.partition("=")
        role = role.strip()
        if not sep or role not in ROLES:
            raise FeatcacheError(f"--col {pair!r}: expected ROLE=COLUMN with ROLE in {', '.join(ROLES)}")
        if role == "target":
            mapping["target"].extend(c.strip() for c in column.split(",") if c.strip())
        else:
            mapping[role] = column.strip()
    return mapping


def used_columns(options: dict) -> list[str]:
    """The table columns that --col names (checked by the registry before the loader runs)."""
    columns = parse_columns(options.get("columns", {}))
    if "image" not in columns or not columns.get("target"):
        raise FeatcacheError("dataset csv needs --col image=COLUMN and at least one --col target=COLUMN")
    used = [columns[r] for r in ("image", "prompt_image", "text", "group", "generator") if r in columns]
    return used + list(columns["target"])


@register_dataset("csv", (), "any CSV/XLSX: --col image=COL --col target=COL [--col prompt_image=COL "
                             "--col text=COL --col group=COL --col generator=COL --col image_dir=DIR]",
                  required=used_columns)
def load_csv(root: Path, table: pd.DataFrame, annotation: Path, options: dict) -> SampleTable:
    columns = parse_columns(options.get("columns", {}))
    names = table[columns["image"]].str.strip()
    prompts = table[columns["prompt_image"]].str.strip() if "prompt_image" in columns else pd.Series([""] * len(table))
    text = table[columns["text"]] if "text" in columns else pd.Series([""] * len(table))
    if "group" in columns:
        group = table[columns["group"]].str.strip()
    else:  # what the image was generated from: its image prompt, else its text prompt, else itself
        group = [p or (f"text:{t}" if t else f"image:{n}") for p, t, n in zip(prompts, text, names)]
    generator = table[columns["generator"]].str.strip() if "generator" in columns else ["unknown"] * len(table)
    image_dir, prompt_dir = columns.get("image_dir", ""), columns.get("prompt_dir", "")
    frame = pd.DataFrame({
        "key": names.to_numpy(),
        "image": [join(image_dir, n) for n in names],
        "prompt_image": [join(prompt_dir, p) if p else "" for p in prompts],
        "text_prompt": list(text),
        "group": list(group),
        "generator": list(generator),
        "subset": ["i2i" if p else "t2i" for p in prompts],
        "row": table["row"].to_numpy(),
    })
    for target in columns["target"]:
        frame["target:" + target] = table[target].to_numpy()
    targets = {t: "target:" + t for t in columns["target"]}
    return SampleTable.from_frame(frame, targets, str(annotation), "csv")
