"""Design modes as a table: how the input of a head is built from cached features.

g = the generated image's feature, p = its image prompt's feature (zero where `has_prompt_image` is False).
Adding a mode is one `ModeSpec` entry here; the CLI's choices and help, the default modes, the checks for an
image prompt, the paired comparisons and the saved heads all read this table.

Each mode is compared with its `reference`: the same generated-image features without the image prompt, fitted on
the same training rows and scored on the same test rows of the same folds, so the difference isolates what the
image prompt's features add. FR and FR-diff use the samples with an image prompt only, so their reference is
`nr-prompted` (NR fitted and tested on those samples), which `cv.plan` adds whenever NR and such a mode are fitted
together; PR and PR-diff use every sample, as NR does.
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
    reference: str = ""  # the mode it is compared with (same training and test rows); "": a reference itself
    isolates: str = ""  # what the comparison with `reference` isolates, in one line


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


_SAME_ROWS = "same training and test samples"
MODES: dict[str, ModeSpec] = {spec.name: spec for spec in [
    ModeSpec("nr", _nr, False, False, True, "g (no reference: the generated image alone)"),
    ModeSpec("nr-prompted", _nr, True, False, False,
             "g, trained and tested on the samples with an image prompt only (the matched reference of FR)"),
    ModeSpec("fr", _fr, True, True, True, "concat(g, p), samples with an image prompt only (full reference)",
             "nr-prompted", f"the image prompt's features (concatenated), {_SAME_ROWS} (those with an image prompt)"),
    ModeSpec("pr", _pr, False, True, True, "masked mean of g and p; g where there is no prompt (partial reference)",
             "nr", f"the image prompt's features (masked mean) where there is one, {_SAME_ROWS} (all)"),
    ModeSpec("fr-diff", _fr_diff, True, True, False, "concat(g, p, |g - p|), samples with an image prompt only",
             "nr-prompted", f"the image prompt's features with |g - p|, {_SAME_ROWS} (those with an image prompt)"),
    ModeSpec("pr-diff", _pr_diff, False, True, False, "concat(g, p or 0, |g - p| or 0, has-prompt flag)",
             "nr", f"the image prompt's features with |g - p| and a has-prompt flag, {_SAME_ROWS} (all)"),
]}


def reference_modes() -> list[str]:
    """The modes others are compared with (nr-prompted, nr): never a default by themselves, never compared."""
    return list(dict.fromkeys(spec.reference for spec in MODES.values() if spec.reference))


def get_mode(name: str) -> ModeSpec:
    if name not in MODES:
        raise unknown_name("mode", name, MODES)
    return MODES[name]


def default_modes(prompt_images_in_train: bool, prompt_images_in_test: bool, extras: bool = False) -> list[str]:
    """The paper's modes (and the extras, if asked) that the selection can feed: all of them where both sides of
    the split hold image prompts, the ones that never read one otherwise (a PR without any prompt is NR)."""
    usable = prompt_images_in_train and prompt_images_in_test
    return [m.name for m in MODES.values() if (m.paper or (extras and m.name not in reference_modes()))
            and (usable or not m.uses_prompt_image)]


def with_matched_references(modes: list[str]) -> list[str]:
    """`modes` plus the reference of each mode compared with NR that is not in it (`nr-prompted` for FR and
    FR-diff), each placed right after `nr`; unchanged when `nr` is not in `modes` (nothing is compared with NR)."""
    if "nr" not in modes:
        return list(modes)
    missing = [ref for ref in dict.fromkeys(get_mode(m).reference for m in modes) if ref and ref not in modes]
    at = modes.index("nr") + 1
    return [*modes[:at], *missing, *modes[at:]]


def same_training_rows(a: str, b: str) -> bool:
    """Whether two modes train (and test) on the same rows of every fold: both use every selected sample, or both
    the samples with an image prompt only (`design.mode_rows`)."""
    return get_mode(a).needs_prompt_image == get_mode(b).needs_prompt_image


def comparison_reference(mode: str, modes: list[str]) -> str | None:
    """The mode `mode` is compared with in a run fitting `modes`: its `reference` when fitted, else `nr`, else the
    first mode; None for a reference mode itself (nr, nr-prompted) and for the mode the others are compared with."""
    if mode in reference_modes():
        return None
    reference = get_mode(mode).reference
    if reference not in modes:
        reference = "nr" if "nr" in modes else modes[0]
    return None if reference == mode else reference


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
