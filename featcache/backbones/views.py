"""How an image is fed to a backbone (its *view*): the paper's resize and centre crop, the whole image at its own
resolution, or K crops of the backbone's input size taken from the full-resolution image.

A view is plain data. It is the last part of the backbone id (`224`, `native`, `224x5`; a `--max-side` other than
the default adds `@N`: `native@1536`, `224x5@1536`) and, except for the paper's centre crop, a key `input` of the
backbone's recorded configuration, so caches made before views existed keep their ids and configurations. The
geometry below (`native_size`, `crop_source_size`, `crop_boxes`) is the one both decode paths (Pillow in the workers,
torch on the device) follow, so their pixels agree. Importing this module does not import torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from featcache.errors import FeatcacheError

DEFAULT_MAX_SIDE = 1024  # the shorter side of a native or crops view is brought down to at most this
CROP_SEED = 0  # the crop layout's seed, recorded with the view
VIEW_KINDS = ("centre", "native", "crops")

_ID_PART = re.compile(r"^(?:(?P<native>native)|(?P<size>\d+)(?:x(?P<crops>\d+))?)(?:@(?P<max_side>\d+))?$")


@dataclass(frozen=True)
class InputView:
    """`kind`: 'centre' (shorter side to input_size / crop_pct, centre crop of input_size: the paper's and timm's
    eval transform), 'native' (the whole image, its shorter side brought down to `max_side` if longer; no crop) or
    'crops' (`crops` crops of input_size at `crop_boxes` positions of the image whose shorter side is brought into
    [input_size, max_side]; their features averaged, see the pooling's `combine_crops`)."""

    kind: str = "centre"
    max_side: int = DEFAULT_MAX_SIDE
    crops: int = 1
    seed: int = CROP_SEED

    def __post_init__(self):
        if self.kind not in VIEW_KINDS:
            raise FeatcacheError(f"unknown view {self.kind!r} (known: {', '.join(VIEW_KINDS)})")
        if self.max_side < 1:
            raise FeatcacheError(f"--max-side {self.max_side}: must be at least 1 pixel")
        if self.kind == "crops" and self.crops < 1:
            raise FeatcacheError(f"--crops {self.crops}: must be at least 1 (the number of crops averaged per image)")

    @property
    def is_centre(self) -> bool:
        return self.kind == "centre"

    def id_part(self, input_size: int) -> str:
        """The backbone id's last part: `224`, `native`, `224x5`, with `@max_side` when it is not the default."""
        if self.kind == "centre":
            return str(int(input_size))
        base = "native" if self.kind == "native" else f"{int(input_size)}x{self.crops}"
        return base if self.max_side == DEFAULT_MAX_SIDE else f"{base}@{self.max_side}"

    def config(self) -> dict | None:
        """What the cache records under the configuration's `input` key; None for the centre crop (not recorded,
        as before views existed)."""
        if self.kind == "centre":
            return None
        if self.kind == "native":
            return {"kind": "native", "max_side": self.max_side}
        return {"kind": "crops", "crops": self.crops, "max_side": self.max_side, "seed": self.seed}

    @classmethod
    def from_config(cls, config: dict | None) -> "InputView":
        """The view a backbone configuration records (`config["input"]`; absent: the centre crop). A recorded view
        that is not one (not a table with a known `kind`, a count that is not a whole number, a max_side below 1)
        is a one-line FeatcacheError naming what was recorded."""
        recorded = (config or {}).get("input")
        if not recorded:
            return CENTRE
        shown = repr(recorded)[:120]
        if not isinstance(recorded, dict) or "kind" not in recorded:
            raise FeatcacheError(f"the recorded view {shown} is not a view (a table with a 'kind')")
        values = {"max_side": recorded.get("max_side", DEFAULT_MAX_SIDE), "crops": recorded.get("crops", 1),
                  "seed": recorded.get("seed", CROP_SEED)}
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise FeatcacheError(f"the recorded view {shown}: {key} is not a whole number")
        try:
            return cls(kind=str(recorded["kind"]), **values)
        except FeatcacheError as exc:
            raise FeatcacheError(f"the recorded view {shown}: {exc}") from None


CENTRE = InputView()


def parse_view(image_size: str | int | None, crops: int | None = None,
               max_side: int | None = None) -> tuple[int | None, InputView]:
    """The extract options -> (input size overriding the backbone's, or None; the view).

    `image_size`: None, a positive integer (centre crop of that size, or the crop size with `crops`) or 'native'.
    `crops`: K >= 1 crops. `max_side`: the shorter-side cap of native and crops views. Contradictions are a one-line
    FeatcacheError naming the options."""
    size: int | None = None
    native = False
    if image_size is not None:
        text = str(image_size).strip().lower()
        if text == "native":
            native = True
        else:
            try:
                size = int(text)
            except ValueError:
                raise FeatcacheError(f"--image-size {image_size!r}: a size in pixels (e.g. 448) or 'native'") from None
            if size < 1:
                raise FeatcacheError(f"--image-size {image_size}: must be at least 1 pixel")
    if crops is not None and int(crops) < 1:
        raise FeatcacheError(f"--crops {crops}: must be at least 1 (the number of crops averaged per image)")
    if max_side is not None and int(max_side) < 1:
        raise FeatcacheError(f"--max-side {max_side}: must be at least 1 pixel")
    if native and crops is not None:
        raise FeatcacheError("--image-size native feeds the whole image and --crops takes crops of a fixed size: "
                             "choose one (--crops K --image-size N sets the crop size)")
    side = DEFAULT_MAX_SIDE if max_side is None else int(max_side)
    if native:
        return None, InputView(kind="native", max_side=side)
    if crops is not None:
        return size, InputView(kind="crops", crops=int(crops), max_side=side)
    if max_side is not None:
        raise FeatcacheError("--max-side applies to --image-size native and --crops K only (the centre crop resizes "
                             "to the backbone's size)")
    return size, CENTRE


def parse_id_part(part: str) -> dict | None:
    """A backbone id's last part -> {'kind', 'size' (None for native), 'crops', 'max_side'}; None if it is not one."""
    match = _ID_PART.match(part or "")
    if not match:
        return None
    max_side = int(match["max_side"]) if match["max_side"] else DEFAULT_MAX_SIDE
    if match["native"]:
        return {"kind": "native", "size": None, "crops": None, "max_side": max_side}
    kind = "crops" if match["crops"] else "centre"
    return {"kind": kind, "size": int(match["size"]), "crops": int(match["crops"]) if match["crops"] else None,
            "max_side": max_side}


def check_crops_pixels(view: InputView, input_size: int, max_pixels: int) -> None:
    """Refuse (one line) a crops view whose K crops of input_size x input_size hold more than `max_pixels` pixels
    per image: an image's crops are one item of a batch, so this bounds its memory as --max-pixels bounds one
    image's (a K given, or recorded in a cache or a head, is never fed without bound)."""
    if view.kind == "crops" and view.crops * int(input_size) ** 2 > int(max_pixels):
        raise FeatcacheError(f"--crops {view.crops} of {input_size}x{input_size} feed "
                             f"{view.crops * int(input_size) ** 2} pixels per image, over the limit of {max_pixels} "
                             "pixels; use fewer crops (or raise --max-pixels)")


def item_shape(view: InputView, input_size: int, height: int, width: int) -> tuple[int, ...]:
    """The tensor a `height` x `width` image is fed as: (3, S, S) centre, (3, h, w) native (`native_size`),
    (K, 3, S, S) crops; S is `input_size`. Both decode paths produce this shape."""
    if view.kind == "native":
        return (3, *native_size(height, width, view.max_side))
    if view.kind == "crops":
        return (view.crops, 3, int(input_size), int(input_size))
    return (3, int(input_size), int(input_size))


def native_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(height, width) fed by a native view: unchanged if the shorter side is at most `max_side`, else the shorter
    side to `max_side` and the longer one scaled and truncated (as torchvision's Resize(int) computes it)."""
    short = min(height, width)
    if short <= max_side:
        return int(height), int(width)
    return _shorter_side_to(height, width, max_side)


def crop_source_size(height: int, width: int, size: int, max_side: int) -> tuple[int, int]:
    """(height, width) the crops are taken from: the shorter side brought into [size, max(size, max_side)] (a small
    image is enlarged so one crop fits, a large one reduced), the aspect ratio kept as Resize(int) keeps it."""
    short = min(height, width)
    target = min(max(short, size), max(size, max_side))
    if target == short:
        return int(height), int(width)
    return _shorter_side_to(height, width, target)


def _shorter_side_to(height: int, width: int, side: int) -> tuple[int, int]:
    if height <= width:
        return side, int(side * width / height)
    return int(side * height / width), side


def crop_boxes(height: int, width: int, size: int, crops: int, seed: int = CROP_SEED) -> list[tuple[int, int]]:
    """`crops` (top, left) corners of size x size crops of a height x width image (both sides at least `size`).

    The layout: a grid of rows x columns shaped like the image (columns = round(sqrt(crops x width / height)),
    rows = ceil(crops / columns)), its positions spread evenly from edge to edge (a single row or column centred),
    so the crops reach every border and cover the whole image when rows x size >= height and columns x size >=
    width. When the grid has more cells than `crops`, a seeded choice (numpy's default_rng(seed)) keeps `crops` of
    them. Returned in row-major order; depends only on the sizes, `crops` and `seed`."""
    if height < size or width < size:
        raise ValueError(f"a {height}x{width} image has no room for a {size}x{size} crop")
    columns = max(1, min(crops, int(round(np.sqrt(crops * width / height)))))
    rows = -(-crops // columns)
    tops = _spread(height - size, rows)
    lefts = _spread(width - size, columns)
    cells = [(top, left) for top in tops for left in lefts]
    if len(cells) > crops:
        keep = np.sort(np.random.default_rng(seed).choice(len(cells), size=crops, replace=False))
        cells = [cells[int(i)] for i in keep]
    return cells


def _spread(room: int, count: int) -> list[int]:
    """`count` offsets in [0, room], evenly spaced from 0 to room (one: the middle)."""
    if count == 1:
        return [room // 2]
    return [int(round(room * i / (count - 1))) for i in range(count)]
