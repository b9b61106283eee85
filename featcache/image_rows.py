"""The images of a cache's rows as a torch Dataset: decoded (or, on the torch path, read) in DataLoader worker
processes, with a bad file reported as an error entry instead of ending the run."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from featcache.backbones import Backbone
from featcache.errors import FeatcacheError
from featcache.images import DEFAULT_MAX_PIXELS, DRAFT_RULE, Draft, header_size, load_rgb, read_jpeg_bytes
from featcache.view_pixels import ViewTransform

STACK_PIXELS = 2 ** 26  # the most pixels preprocessed as one stack on the device: 768 MiB of float32 RGB
DRAFT_GAP = 2  # JPEG draft decoding keeps at least this many times the resize size (as Pillow's reducing_gap)


@dataclass(frozen=True, kw_only=True)
class Decoding:
    """How image files become the backbone's input pixels; part of a backbone's recorded configuration.

    `path`: 'pil' (Pillow in the loader's workers) or 'torch' (the workers read 8-bit RGB/grey JPEGs' bytes, the main
    process decodes them on the device). `jpeg_draft`: Pillow's reduced-scale JPEG decoding by `draft_rule` (one of
    `featcache.images.DRAFT_RULES`), 'pil' path only. `max_pixels`: the largest image accepted, also once resized."""

    path: str = "pil"
    jpeg_draft: bool = False
    draft_rule: str = DRAFT_RULE
    max_pixels: int = DEFAULT_MAX_PIXELS


class ImageRows(Dataset):
    """Item k: (row, pixels or payload or None, error) for `rows[k]`, whose file is `root / paths[row]`.

    `transform`: timm's eval transform (the centre crop) or a `ViewTransform` (native, crops), whose resize depends
    on each image's size. `draft`: JPEG draft decoding for the centre crop (see `load_rgb`); `view_draft`: the same
    for a `ViewTransform`, planned per image (a JPEG is drafted only when the view reduces it, and only while the
    decoded shorter side stays >= DRAFT_GAP x the size it is resized to). `jpeg_bytes`: the torch decode path;
    8-bit RGB/grey JPEGs come back as their bytes (`EncodedJpeg`) for the main process to decode on the device,
    other files decoded here."""

    def __init__(self, root: Path, paths: list[str], rows: list[int], transform, max_pixels: int,
                 draft: Draft | None = None, jpeg_bytes: bool = False, view_draft: bool = False):
        self.root, self.paths, self.rows = root, paths, rows
        self.transform, self.max_pixels = transform, max_pixels
        self.draft, self.jpeg_bytes, self.view_draft = draft, jpeg_bytes, view_draft
        self.view = transform if isinstance(transform, ViewTransform) else None
        if self.view is not None:  # native never enlarges; crops enlarge a small image's shorter side to S
            self.resize = None if self.view.view.kind == "native" else self.view.input_size
        else:
            first = first_resize(transform)
            self.resize = None if first is None else resize_size(first)

    def item_shapes(self) -> list[tuple[int, ...] | None]:
        """The shape of each item's pixels, from the files' headers (None where a header cannot be read): what
        `featcache.size_batches.size_batches` groups. The centre crop's items are all (3, S, S)."""
        if self.view is None:
            return [None] * len(self.rows)
        shapes = []
        for row in self.rows:
            size = header_size(self.root / self.paths[row])
            shapes.append(None if size is None else self.view.item_shape(size[1], size[0]))
        return shapes

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int):
        row = self.rows[k]
        if self.jpeg_bytes:
            from featcache.decode import EncodedJpeg

            data = read_jpeg_bytes(self.root / self.paths[row], self.max_pixels, self.resize)
            if data is not None:
                return row, EncodedJpeg(torch.from_numpy(data)), ""
        return (row, *self.decode_with_pil(row))

    def decode_with_pil(self, row: int) -> tuple[torch.Tensor | None, str]:
        """(pixels, "") or (None, the one-line error naming the file)."""
        path = self.root / self.paths[row]
        try:
            if self.view is not None:
                return self.transform(load_rgb(path, self.max_pixels, *self._view_plan(path))), ""
            return self.transform(load_rgb(path, self.max_pixels, self.draft, self.resize)), ""
        except FeatcacheError as exc:
            return None, str(exc)
        except Exception as exc:  # a transform failing on a strange image
            return None, f"{path}: {type(exc).__name__}: {exc}"

    def _view_plan(self, path: Path) -> tuple[Draft | None, tuple[int, int] | None]:
        """(JPEG draft, resize (height, width) for the --max-pixels check) of a view for the file at `path`."""
        size = header_size(path)
        if size is None:
            return None, None  # load_rgb reports the file
        width, height = size
        target = self.view.source_size(height, width)
        if not self.view_draft or target == (height, width):
            return None, target
        return Draft(short_side=DRAFT_GAP * min(target), resize=target, resample=self.view.resample), target


def image_rows(backbone: Backbone, root: Path, paths: list[str], rows: list[int], decoding: Decoding,
               device: torch.device) -> tuple[ImageRows, object | None]:
    """(the Dataset of `rows`, the device-side preprocessing for the torch path or None) for `backbone` and its
    view. JPEG draft decoding of a view always follows the "same-geometry" rule (DRAFT_RULE)."""
    transform = backbone.transform()
    centre = backbone.view.is_centre
    draft = draft_for(backbone, transform, decoding.draft_rule) if decoding.jpeg_draft and centre else None
    dataset = ImageRows(root, paths, rows, transform, decoding.max_pixels, draft, jpeg_bytes=decoding.path == "torch",
                        view_draft=decoding.jpeg_draft and not centre)
    if decoding.path != "torch":
        return dataset, None
    return dataset, torch_preprocess(backbone, device)


def torch_preprocess(backbone: Backbone, device: torch.device):
    """`featcache.decode.TorchPreprocess` for the backbone's view: a stack of same-size uint8 images -> (N, 3, S, S),
    (N, 3, h, w) or (N, K, 3, S, S)."""
    from featcache.decode import TorchPreprocess

    return TorchPreprocess(backbone.spec.data_config(), device, view=backbone.view)


def worker_init(_) -> None:
    """DataLoader worker start: one torch thread per worker process (the workers are the parallelism)."""
    torch.set_num_threads(1)


def stacked(rows: list[int], tensors: list[torch.Tensor]):
    """One batch of the items' pixels: a stack, (B, 3, H, W) or (B, K, 3, S, S), when they share a shape (batches
    of `size_batches` always do); else a list of (rows, stack) parts, one per shape, rows in their order within each.
    None for no items."""
    if not tensors:
        return None
    shapes: dict[tuple, list[int]] = {}
    for k, tensor in enumerate(tensors):
        shapes.setdefault(tuple(tensor.shape), []).append(k)
    if len(shapes) == 1:
        return torch.stack(tensors)
    return [([rows[k] for k in ks], torch.stack([tensors[k] for k in ks])) for ks in shapes.values()]


def collate_rows(items):
    """The Pillow path: items -> (rows, pixels (see `stacked`) or None, errors), failed items left out."""
    good = [(r, t) for r, t, e in items if t is not None]
    rows = [r for r, _ in good]
    batch = stacked(rows, [t for _, t in good])
    errors = [e for _, t, e in items if t is None]
    return rows, batch, errors


def collate_payloads(items):
    """The torch path: payloads (pixels or `EncodedJpeg`) packed into two tensors for the trip to the main process,
    which decodes and stacks them."""
    from featcache.decode import pack_payloads

    good = [(r, p) for r, p, e in items if p is not None]
    return [r for r, _ in good], pack_payloads([p for _, p in good]), [e for _, p, e in items if p is None]


def pixels_on_device(rows: list[int], packed, dataset: ImageRows, preprocess, device: torch.device):
    """Decode a batch's JPEG bytes on `device` in one call and preprocess them there; a file the torch decoder
    refuses (or any other payload failing) is decoded with Pillow instead, its error reported as on the CPU path.
    Returns (rows, the batch on `device` (see `stacked`) or None, errors), rows in their original order."""
    from featcache.decode import EncodedJpeg, decode_jpegs, unpack_payloads

    payloads = unpack_payloads(packed)
    encoded = [i for i, p in enumerate(payloads) if isinstance(p, EncodedJpeg)]
    pixels: list = list(payloads)
    by_shape: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
    for i, image in zip(encoded, decode_jpegs([payloads[i].data for i in encoded], device)):
        pixels[i] = None
        if image is not None:
            by_shape.setdefault(tuple(image.shape), []).append((i, image))
    for group in by_shape.values():  # one set of kernels per image size, not per image
        height, width = group[0][1].shape[-2:]
        step = max(1, STACK_PIXELS // (height * width))  # a float32 stack of large photos would not fit
        for start in range(0, len(group), step):
            chunk = group[start:start + step]
            try:
                done = preprocess(torch.stack([image for _, image in chunk]))
            except RuntimeError:
                continue  # left to Pillow below, one by one
            for (i, _), tensor in zip(chunk, done):
                pixels[i] = tensor
    kept_rows, kept, errors = [], [], []
    for row, tensor in zip(rows, pixels):
        if tensor is None:
            tensor, error = dataset.decode_with_pil(row)
            if tensor is None:
                errors.append(error)
                continue
        kept_rows.append(row)
        kept.append(tensor.to(device, non_blocking=True))  # the loader's pinned pixels, or host memory: both safe
    return kept_rows, stacked(kept_rows, kept), errors


def draft_short_side(backbone: Backbone) -> int:
    """The shortest side JPEG draft decoding may produce: DRAFT_GAP x the size the transform resizes the shorter side
    to (timm: floor(input_size / crop_pct)). Leaving the last factor of 2 to the antialiased resize keeps libjpeg's
    scaled IDCT from aliasing fine texture."""
    cfg = backbone.spec.data_config()
    return DRAFT_GAP * math.ceil(cfg["input_size"] / cfg["crop_pct"])


def draft_for(backbone: Backbone, transform, rule: str = DRAFT_RULE) -> Draft | None:
    """JPEG draft decoding for `transform` (timm's eval transform of `backbone`, which starts with a Resize). None,
    i.e. full decoding, for a transform that does not start with a Resize: the draft could not keep its
    geometry."""
    from torchvision.transforms.functional import pil_modes_mapping

    first = first_resize(transform)
    if first is None:
        return None
    return Draft(short_side=draft_short_side(backbone), resize=resize_size(first),
                 resample=pil_modes_mapping[first.interpolation], rule=rule)


def first_resize(transform):
    """The transform's leading torchvision Resize (timm's eval transforms start with one), else None."""
    from torchvision.transforms import Resize

    first = (getattr(transform, "transforms", None) or [None])[0]
    return first if isinstance(first, Resize) and first.max_size is None else None


def resize_size(resize) -> int | tuple[int, int]:
    """A torchvision Resize's size: the shorter side, or (height, width)."""
    return resize.size if isinstance(resize.size, int) else tuple(resize.size)
