"""The forward pipeline: batches of decoded images through a frozen backbone on a device, yielding feature rows.

The DataLoader's worker processes live only while `forward_batches` runs: it drops its loader iterator when it ends,
normally or not, and torch stops the workers when that iterator is garbage collected."""

from __future__ import annotations

import contextlib
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from featcache.backbones import Backbone
from featcache.backbones.views import check_crops_pixels
from featcache.devices import resolve_device, to_channels_last, usable_cores
from featcache.errors import FeatcacheError, named
from featcache.image_rows import (
    Decoding,
    ImageRows,
    collate_payloads,
    collate_rows,
    image_rows,
    pixels_on_device,
    worker_init,
)
from featcache.images import DEFAULT_MAX_PIXELS, DRAFT_RULE, check_files_present
from featcache.size_batches import pixel_budget, size_batches


@dataclass(frozen=True, kw_only=True)
class Forwarding:
    """Where and how batches run: `device`, `precision` ('fp32', 'fp16' or 'bf16'; see `resolve_precision`),
    `batch_size` images per forward, `workers` DataLoader worker processes (0: decode in the main process)."""

    device: torch.device
    precision: str
    batch_size: int
    workers: int


def resolve_precision(device: torch.device, precision: str) -> str:
    """'auto' -> fp16 on CUDA, else fp32; 'fp32', 'fp16' and 'bf16' as they are; anything else a one-line error."""
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision not in ("fp32", "fp16", "bf16"):
        raise FeatcacheError(f"--precision {precision!r}: choose auto, fp32, fp16 or bf16")
    return precision


def resolve_decoding(decode: str | None, jpeg_draft: bool, device: torch.device) -> tuple[str, bool]:
    """(decode path 'pil' or 'torch', whether JPEG draft decoding is used), both recorded in the backbone's config.
    Draft mode is a Pillow feature: the torch path decodes every JPEG at full size."""
    from featcache.decode import resolve_decode

    path = resolve_decode(decode, device)
    return path, bool(jpeg_draft) and path == "pil"


def default_workers() -> int:
    """Every core this process may run on: decoding is the CPU-bound half of extraction. `--workers` or the
    config's `workers` lowers it when memory is short."""
    return usable_cores()


def loader_workers(requested: int | None, images: int, batch_size: int) -> int:
    """Worker processes for `images` in batches of `batch_size`: `requested` capped at the number of batches; by
    default every usable core, and none for a single batch (the main process decodes it without a worker's
    start-up)."""
    batches = -(-images // batch_size)
    if requested is not None:
        return min(requested, max(1, batches))
    return 0 if batches <= 1 else min(default_workers(), batches)


def finite_rows(rows: list[int], features: np.ndarray, root: Path, paths: list[str],
                non_finite: list[str]) -> tuple[list[int], np.ndarray]:
    """The rows whose features are all finite, and their features; the images of the others (fp16 overflow) are
    appended to `non_finite`, so no inf or NaN is ever stored as a done row."""
    finite = np.isfinite(features).all(axis=1)
    if finite.all():
        return rows, features
    non_finite.extend(str(Path(root) / paths[r]) for r, ok in zip(rows, finite) if not ok)
    return [r for r, ok in zip(rows, finite) if ok], features[finite]


def non_finite_message(count: int, precision: str, option: bool = True) -> str:
    """What went wrong, said the same way by extract and by compute_features (`option=False`: the caller has no
    --precision option). Only fp16 overflows where fp32 does not; bf16 has fp32's range."""
    where = f"with --precision {precision}" if option else f"in {precision}"
    cause = ": the activations overflowed" if precision == "fp16" else ""
    return f"{count} images gave non-finite features (inf/NaN) {where}{cause}"


def batch_plan(dataset: ImageRows, batch_size: int, input_size: int) -> list[list[int]] | None:
    """The loader's batches as index lists into `dataset`, or None for plain batches of `batch_size` (the centre
    crop, whose items are all one shape). A view's batches hold items of one shape, at most `batch_size` and at
    most `pixel_budget(batch_size, input_size)` pixels (crops count K per image); see `size_batches`."""
    if dataset.view is None:
        return None
    return size_batches(dataset.item_shapes(), batch_size, pixel_budget(batch_size, input_size))


def make_loader(dataset: ImageRows, forwarding: Forwarding, plan: list[list[int]] | None = None) -> DataLoader:
    """The DataLoader of `dataset` (decoded in `forwarding.workers` processes): batches of `plan` (see
    `batch_plan`) or, without one, of `forwarding.batch_size` in order. Yields (rows, pixels or payloads, errors);
    also what a benchmark iterates to time decoding alone."""
    device = forwarding.device
    batching = {"batch_sampler": plan} if plan is not None else {"batch_size": forwarding.batch_size,
                                                                  "shuffle": False}
    return DataLoader(dataset, **batching, num_workers=forwarding.workers,
                      collate_fn=collate_payloads if dataset.jpeg_bytes else collate_rows,
                      pin_memory=device.type == "cuda", worker_init_fn=worker_init if forwarding.workers else None,
                      persistent_workers=False)


def forward_pixels(extractor, batch: torch.Tensor, device: torch.device, precision: str = "fp32") -> torch.Tensor:
    """(B, D) features of one batch of pixels ((B, 3, H, W), or (B, K, 3, S, S) crops combined per image), on
    `device` with autocast for 'fp16'/'bf16'; what a benchmark calls to time the forward alone."""
    autocast = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    batch = to_channels_last(batch.to(device, non_blocking=True), device)
    with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        return extractor(batch)


def forward_batches(extractor, dataset: ImageRows, forwarding: Forwarding, preprocess=None,
                    plan: list[list[int]] | None = None):
    """Decode in workers (or, on the torch path, read bytes there and decode on the device with `preprocess`),
    forward on the device: yields (rows, (B, D) float32 features or None, errors, forward seconds), rows ascending
    within each yield; in row order without a `plan`, else batch by batch of the plan (see `batch_plan`). A batch
    that mixes shapes is forwarded one shape at a time.

    Close the generator (or run it to its end) to stop the loader's workers; an error from the loader (a dead worker,
    Ctrl-C) propagates after they are stopped."""
    device = forwarding.device
    loader = make_loader(dataset, forwarding, plan)
    batches = iter(loader)
    source = _decoded_ahead(batches, dataset, preprocess, device) if dataset.jpeg_bytes else batches
    pending = None  # the previous batch, its features on their way to the host
    try:
        for rows, batch, errors in source:
            if not rows:
                yield rows, None, errors, 0.0
                continue
            parts = batch if isinstance(batch, list) else [(rows, batch)]
            for k, (part_rows, pixels) in enumerate(parts):
                start = time.perf_counter()
                features = forward_pixels(extractor, pixels, device, forwarding.precision)
                current = _FeaturesToHost(part_rows, features, errors if k == 0 else [],
                                          time.perf_counter() - start)
                if pending is not None:  # queued after this batch's forward: the device stays busy meanwhile
                    yield pending.result()
                pending = current
        if pending is not None:
            yield pending.result()
    finally:
        if source is not batches:
            source.close()  # waits for a decode in flight
        # The workers stop when the loader's iterator is collected, which must be now: a loader left alive after an
        # error keeps torch's SIGCHLD handler armed for whatever runs next in this process. The error's traceback
        # holds the loader's finished frames (and so the iterator): their locals are cleared.
        _clear_finished_frames(sys.exc_info()[1])
        del batches, source


def _clear_finished_frames(exc: BaseException | None) -> None:
    """Clear the locals of the finished frames in the tracebacks of `exc` and the exceptions it chains."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)  # frames still running are left as they are
        exc = exc.__cause__ or exc.__context__


def _decoded_ahead(batches, dataset: ImageRows, preprocess, device: torch.device):
    """The torch path: batch k+1 is decoded and preprocessed in a helper thread while the main thread runs batch k's
    forward and writes its rows (nvjpeg and torch ops release the GIL). The loader is still read here, in the main
    thread, so a dead worker is reported there. Yields (rows, batch on `device` or None, errors) in the loader's
    order; the numbers do not depend on the thread.

    On CUDA the helper works on its own stream. torchvision's decoder allocates its outputs on the caller's stream and
    writes them from a stream of its own without waiting: on the main stream it could be handed memory that batch k's
    queued forward still reads. The helper's stream only ever holds its own finished work (it is synchronised before
    each decode), and the main stream waits for a batch's event before using it."""
    from concurrent.futures import ThreadPoolExecutor

    side = torch.cuda.Stream(device) if device.type == "cuda" else None

    def decode(rows, packed, errors):
        if side is None:
            rows, batch, more = pixels_on_device(rows, packed, dataset, preprocess, device)
            return rows, batch, errors + more, None
        with torch.cuda.stream(side):
            side.synchronize()
            rows, batch, more = pixels_on_device(rows, packed, dataset, preprocess, device)
            ready = torch.cuda.Event()
            ready.record(side)
        return rows, batch, errors + more, ready

    def handed_over(decoded):
        rows, batch, errors, ready = decoded
        if ready is not None:
            main = torch.cuda.current_stream(device)
            main.wait_event(ready)
            if batch is not None:
                batch.record_stream(main)  # its memory is not reused on the helper's stream while main still reads it
        return rows, batch, errors

    with ThreadPoolExecutor(1, thread_name_prefix="featcache-decode") as pool:
        ahead = None
        for rows, packed, errors in batches:
            submitted = pool.submit(decode, rows, packed, errors)
            if ahead is not None:
                yield handed_over(ahead.result())
            ahead = submitted
        if ahead is not None:
            yield handed_over(ahead.result())


class _FeaturesToHost:
    """A batch's features copied to the host without waiting (CUDA: into pinned memory, an event marks the end), so
    the next batch's forward is queued before this one is written. On the CPU the copy is done at once. Same numbers
    either way."""

    def __init__(self, rows: list[int], features: torch.Tensor, errors: list[str], seconds: float):
        self.rows, self.errors, self.seconds = rows, errors, seconds
        self.ready = None
        if features.device.type == "cuda":
            self.host = torch.empty(features.shape, dtype=torch.float32, pin_memory=True)
            self.host.copy_(features.float(), non_blocking=True)
            self.ready = torch.cuda.Event()
            self.ready.record()
        else:
            self.host = features.float()

    def result(self) -> tuple[list[int], np.ndarray, list[str], float]:
        start = time.perf_counter()
        if self.ready is not None:
            self.ready.synchronize()
        return self.rows, self.host.numpy(), self.errors, self.seconds + time.perf_counter() - start


def compute_features(backbone: Backbone, root: str | Path, paths: list[str], *, batch_size: int = 32,
                     workers: int = 0, device: str = "auto", precision: str = "auto",
                     max_pixels: int = DEFAULT_MAX_PIXELS, decode: str = "auto",
                     jpeg_draft: bool = True, jpeg_draft_rule: str = DRAFT_RULE) -> np.ndarray:
    """(len(paths), D) float32 features of the images `root / paths[i]` in memory (no cache), e.g. to score new
    images with a saved head; each image is fed as the backbone's view says (centre crop, native, crops). `decode`,
    `jpeg_draft` and `jpeg_draft_rule` as for `featcache.extract.extract` (pass the values recorded with the features
    the head was trained on: `store.with_config_defaults` fills in those of older caches). A missing, undecodable or
    non-finite image is a one-line FeatcacheError."""
    root = Path(root)
    check_crops_pixels(backbone.view, backbone.spec.input_size, max_pixels)
    check_files_present(root, paths)
    torch_device = resolve_device(device)
    precision = resolve_precision(torch_device, precision)
    extractor = to_channels_last(backbone.extractor().to(torch_device), torch_device)
    path, jpeg_draft = resolve_decoding(decode, jpeg_draft, torch_device)
    decoding = Decoding(path=path, jpeg_draft=jpeg_draft, draft_rule=jpeg_draft_rule, max_pixels=max_pixels)
    dataset, preprocess = image_rows(backbone, root, paths, list(range(len(paths))), decoding, torch_device)
    forwarding = Forwarding(device=torch_device, precision=precision, batch_size=batch_size, workers=workers)
    out = None
    plan = batch_plan(dataset, batch_size, backbone.spec.input_size)
    batches = forward_batches(extractor, dataset, forwarding, preprocess, plan)
    with contextlib.closing(batches):
        for rows, features, errors, _ in batches:
            if errors:
                raise FeatcacheError(errors[0])
            bad: list[str] = []
            finite_rows(rows, features, root, paths, bad)
            if bad:
                advice = ("features extracted in fp32 or bf16 avoid it; for a saved head, extract its cache so "
                          "and refit") if precision == "fp16" else "check the weights"
                raise FeatcacheError(f"{non_finite_message(len(bad), precision, option=False)} ({advice}): "
                                     f"{named(bad)}")
            if out is None:
                out = np.zeros((len(paths), features.shape[1]), dtype=np.float32)
            out[rows] = features
    return out
