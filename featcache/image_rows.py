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
from featcache.images import DEFAULT_MAX_PIXELS, DRAFT_RULE, Draft, load_rgb, read_jpeg_bytes

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

    `draft`: JPEG draft decoding (see `load_rgb`). `jpeg_bytes`: the torch decode path; 8-bit RGB/grey JPEGs come back
    as their bytes (`EncodedJpeg`) for the main process to decode on the device, other files decoded here."""

    def __init__(self, root: Path, paths: list[str], rows: list[int], transform, max_pixels: int,
                 draft: Draft | None = None, jpeg_bytes: bool = False):
        self.root, self.paths, self.rows = root, paths, rows
        self.transform, self.max_pixels = transform, max_pixels
        self.draft, self.jpeg_bytes = draft, jpeg_bytes
        first = first_resize(transform)
        self.resize = None if first is None else resize_size(first)

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
            return self.transform(load_rgb(path, self.max_pixels, self.draft, self.resize)), ""
        except FeatcacheError as exc:
            return None, str(exc)
        except Exception as exc:  # a transform failing on a strange image
            return None, f"{path}: {type(exc).__name__}: {exc}"


def image_rows(backbone: Backbone, root: Path, paths: list[str], rows: list[int], decoding: Decoding,
               device: torch.device) -> tuple[ImageRows, object | None]:
    """(the Dataset of `rows`, the device-side preprocessing for the torch path or None) for `backbone`."""
    transform = backbone.transform()
    draft = draft_for(backbone, transform, decoding.draft_rule) if decoding.jpeg_draft else None
    dataset = ImageRows(root, paths, rows, transform, decoding.max_pixels, draft, jpeg_bytes=decoding.path == "torch")
    if decoding.path != "torch":
        return dataset, None
    from featcache.decode import TorchPreprocess

    return dataset, TorchPreprocess(backbone.spec.data_config(), device)


def worker_init(_) -> None:
    """DataLoader worker start: one torch thread per worker process (the workers are the parallelism)."""
    torch.set_num_threads(1)


def collate_rows(items):
    """The Pillow path: items -> (rows, (B, 3, S, S) pixels or None, errors), failed items left out."""
    good = [(r, t) for r, t, e in items if t is not None]
    rows = [r for r, _ in good]
    batch = torch.stack([t for _, t in good]) if good else None
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
    Returns (rows, (B, 3, S, S) batch on `device` or None, errors), rows in their original order."""
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
    return kept_rows, torch.stack(kept) if kept else None, errors


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
