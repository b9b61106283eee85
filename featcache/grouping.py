"""Which samples belong together: the groups a prompt-disjoint split keeps on one side, and `info` counts."""

from __future__ import annotations

import re

import numpy as np


def normalised_text(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).strip().lower()


def content_groups(samples) -> np.ndarray:
    """Integer group per sample: the cached group (prompt id or image-prompt file) joined with the normalised
    text prompt of text-to-image samples, so two prompt ids carrying the same text (PKU-AIGIQA-4K ids 1099 and
    1196) are one group and never sit on both sides of a prompt-disjoint split. Image-to-image samples keep their
    image prompt as the group (their text is an edit instruction many prompts share)."""
    _, group_code = np.unique(samples.group.astype(str), return_inverse=True)
    parent = np.arange(group_code.max() + 1 if len(group_code) else 0)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_by_text: dict[str, int] = {}
    for code, text, prompt in zip(group_code.tolist(), samples.text_prompt.tolist(), samples.prompt_image.tolist()):
        key = normalised_text(text)
        if not key or prompt >= 0:
            continue
        if key in first_by_text:
            a, b = find(first_by_text[key]), find(code)
            if a != b:
                parent[max(a, b)] = min(a, b)
        else:
            first_by_text[key] = code
    roots = np.array([find(c) for c in group_code.tolist()], dtype=np.int64)
    return np.unique(roots, return_inverse=True)[1]
