"""Batches of same-size items under a pixel budget, for views whose images are fed at different sizes.

A DataLoader given `size_batches(...)` as its `batch_sampler` stacks only images of one shape and never holds more
than `pixel_budget` pixels in a batch (one item larger than the budget goes alone), so the memory a batch takes does
not grow with the number or the size of the images."""

from __future__ import annotations

import math

BUDGET_IMAGES = 1  # a batch holds at most as many pixels as --batch-size centre crops of the backbone's input size


def pixel_budget(batch_size: int, input_size: int) -> int:
    """The most pixels per batch: what `batch_size` centre crops of `input_size` hold, so a --batch-size that fits
    memory for the centre crop fits every view."""
    return int(batch_size) * BUDGET_IMAGES * int(input_size) ** 2


def size_batches(shapes: list[tuple[int, ...] | None], batch_size: int, budget: int) -> list[list[int]]:
    """Index lists into `shapes` (one shape per item: its tensor's shape, None for an item whose size is not known,
    e.g. an unreadable file, batched with the others of unknown size): each batch holds items of one shape only, at
    most `batch_size` of them and at most `budget` pixels (numbers per item: the shape's product over 3 channels),
    at least one item; indices ascending within a batch, batches ordered by their shape's first item. Depends only on
    the shapes, `batch_size` and `budget`."""
    groups: dict[tuple[int, ...] | None, list[int]] = {}
    for index, shape in enumerate(shapes):
        groups.setdefault(shape, []).append(index)
    batches = []
    for shape, indices in groups.items():  # dicts keep insertion order: by first item
        pixels = 1 if shape is None else max(1, math.prod(shape) // 3)
        step = max(1, min(int(batch_size), int(budget) // pixels))
        batches += [indices[start:start + step] for start in range(0, len(indices), step)]
    return batches

