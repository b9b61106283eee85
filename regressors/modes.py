"""Design modes as a table: how the input of a head is built from cached features.

g = the generated image's feature, p = its image prompt's feature (zero where `has_prompt_image` is False).
Adding a mode is one `ModeSpec` entry here; the CLI's choices and help, the default modes, the checks for an
image prompt and the saved heads all read this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from featcache.errors import unknown_name

Builder = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (g, p, has_prompt_image) -> X


@dataclass(frozen=True)
class ModeSpec:
    name: str
    build: Builder
    needs_prompt_image: bool  # True: only samples with an image prompt can be used (FR)
    uses_prompt_image: bool  # False: the image prompt is never read (NR)
    paper: bool  # one of the paper's three methods (NR, FR, PR), as opposed to an extra
    doc: str


def _nr(g, p, has):
    return g


def _fr(g, p, has):
    return np.concatenate([g, p], axis=1)


def _pr(g, p, has):
    return np.where(has[:, None], (g + p) / 2.0, g)


def _fr_diff(g, p, has):
    return np.concatenate([g, p, np.abs(g - p)], axis=1)


def _pr_diff(g, p, has):
    diff = np.where(has[:, None], np.abs(g - p), 0.0)
    return np.concatenate([g, p, diff, has[:, None].astype(np.float64)], axis=1)


MODES: dict[str, ModeSpec] = {spec.name: spec for spec in [
    ModeSpec("nr", _nr, False, False, True, "g (no reference: the generated image alone)"),
    ModeSpec("fr", _fr, True, True, True, "concat(g, p), samples with an image prompt only (full reference)"),
    ModeSpec("pr", _pr, False, True, True, "masked mean of g and p; g where there is no prompt (partial reference)"),
    ModeSpec("fr-diff", _fr_diff, True, True, False, "concat(g, p, |g - p|), samples with an image prompt only"),
    ModeSpec("pr-diff", _pr_diff, False, True, False, "concat(g, p or 0, |g - p| or 0, has-prompt flag)"),
]}


def get_mode(name: str) -> ModeSpec:
    if name not in MODES:
        raise unknown_name("mode", name, MODES)
    return MODES[name]


def default_modes(prompt_images_in_train: bool, prompt_images_in_test: bool, extras: bool = False) -> list[str]:
    """The paper's modes (and the extras, if asked) that the selection can feed: all of them where both sides of
    the split hold image prompts, the ones that never read one otherwise (a PR without any prompt is NR)."""
    usable = prompt_images_in_train and prompt_images_in_test
    return [m.name for m in MODES.values() if (m.paper or extras) and (usable or not m.uses_prompt_image)]


def features_for_mode(g: np.ndarray, p: np.ndarray, has_prompt_image: np.ndarray, mode: str) -> np.ndarray:
    """The mode's input from generated features g and prompt features p (any value where there is no prompt)."""
    has = np.asarray(has_prompt_image, dtype=bool)
    g = np.asarray(g, dtype=np.float64)
    p = np.where(has[:, None], p, 0.0).astype(np.float64)
    return get_mode(mode).build(g, p, has)


def scores_prompted_samples(mode: str) -> bool:
    """Whether a mode of this name reads the image prompt, so is scored on the samples that have one only (FR):
    its numbers compare with other such modes', not with NR's. An unknown name (an older run's) reads none."""
    spec = MODES.get(mode)
    return bool(spec and spec.needs_prompt_image)
