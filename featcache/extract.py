"""Stage 1: run a frozen backbone once over every distinct image and stream the rows into the cache."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from featcache import __version__, interrupts
from featcache.backbones import Backbone
from featcache.devices import resolve_device, to_channels_last, usable_cores
from featcache.errors import FeatcacheError, named
from featcache.images import DEFAULT_MAX_PIXELS, DRAFT_RULE, Draft, check_files_present, load_rgb, read_jpeg_bytes
from featcache.samples import SampleTable
from featcache.store import (
    CacheComparison,
    NewBackbone,
    add_backbones,
    backbone_ids,
    bring_up_to_date,
    check_is_cache_file,
    check_config,
    compare_with_cache,
    create_cache,
    disk_full_error,
    is_disk_full,
    lock_cache,
    open_read,
    read_config,
    open_write,
    real_path,
    refresh_image_stats,
    remove_stale_temporaries,
    with_config_defaults,
)


@dataclass
class ExtractResult:
    cache: str
    backbone_id: str
    rows_total: int
    rows_in_shard: int
    rows_done_before: int
    rows_written: int
    seconds: float = 0.0
    forward_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    non_finite: list[str] = field(default_factory=list)  # images whose features overflowed: not written

    @property
    def images_per_second(self) -> float:
        return self.rows_written / self.seconds if self.seconds > 0 else float("nan")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'I/N' -> (I, N), 0 <= I < N."""
    if not text:
        return None
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise FeatcacheError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise FeatcacheError(f"--shard {text!r}: need 0 <= I < N")
    return index, count


def shard_rows(rows: int, shard: tuple[int, int] | None) -> range:
    """Contiguous blocks, so each shard writes whole chunks."""
    if shard is None:
        return range(rows)
    index, count = shard
    return range(rows * index // count, rows * (index + 1) // count)


def default_workers() -> int:
    """Every core this process may run on: decoding is the CPU-bound half of extraction, so no fixed cap (a cap of
    8 left most of a large machine idle). `--workers` or the config's `workers` lowers it when memory is short."""
    return usable_cores()


def loader_workers(requested: int | None, images: int, batch_size: int) -> int:
    """By default every usable core, and none for a single batch (one worker would decode it while the main process
    waits: starting it is pure start-up cost); never more workers than batches (`--workers 1000` started 1000
    processes, each importing torch, for one batch)."""
    batches = -(-images // batch_size)
    if requested is not None:
        return min(requested, max(1, batches))
    return 0 if batches <= 1 else min(default_workers(), batches)


def start_cuda(device: torch.device) -> None:
    """Create the CUDA context in a thread (it takes about a second) while the cache is checked and the model built;
    the first CUDA call of the main thread waits for it."""
    if device.type != "cuda":
        return
    import threading

    threading.Thread(target=lambda: torch.zeros(1, device=device), name="featcache-cuda-init", daemon=True).start()


class ImageRows(Dataset):
    """Decodes in worker processes; a bad file becomes an error entry instead of killing the run.

    `draft`: JPEG draft decoding (see `load_rgb`). `jpeg_bytes`: the torch decode path; 8-bit RGB/grey
    JPEGs come back as their bytes (`EncodedJpeg`) for the main process to decode on the device, other files decoded
    here as usual."""

    def __init__(self, root: Path, paths: list[str], rows: list[int], transform, max_pixels: int,
                 draft: Draft | None = None, jpeg_bytes: bool = False):
        self.root, self.paths, self.rows = root, paths, rows
        self.transform, self.max_pixels = transform, max_pixels
        self.draft, self.jpeg_bytes = draft, jpeg_bytes
        first = _first_resize(transform)
        self.resize = None if first is None else _resize_size(first)

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


def collate_rows(items):
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


def _pixels_on_device(rows: list[int], packed, dataset: ImageRows, preprocess, device: torch.device):
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
    for group in by_shape.values():  # one set of kernels per image size, not per image: the main thread stays ahead
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


STACK_PIXELS = 2 ** 26  # the most pixels preprocessed as one stack: 768 MiB of float32 RGB


def worker_init(_):
    torch.set_num_threads(1)


def _precision(device: torch.device, precision: str) -> str:
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision not in ("fp32", "fp16", "bf16"):
        raise FeatcacheError(f"--precision {precision!r}: choose auto, fp32, fp16 or bf16")
    return precision


def _done_flags(f, bid: str, config: dict, name) -> np.ndarray | None:
    """The `done` flags of backbone `bid` (its configuration checked), or None when it is absent or half created."""
    if bid not in backbone_ids(f):
        return None
    check_config(f, bid, config, name)
    return f[f"features/{bid}/done"][()]


def _built(backbone: Backbone, torch_device):
    """The backbone's frozen extractor on the device (the CUDA context started first, in a thread)."""
    start_cuda(torch_device)
    return to_channels_last(backbone.extractor().to(torch_device), torch_device)


def _checked_before_update(target: Path, name, state: CacheComparison, bid: str, config: dict, root: Path,
                           paths: list[str], in_shard, backbone: Backbone, torch_device):
    """Everything that could refuse this command, checked before the cache follows a changed image list: that
    update drops the rows of removed or changed images for every backbone, so a refusal after it (a missing image,
    weights that cannot load, another decoding configuration) lost them for a wrong --col or --annotation. Returns
    the built extractor when there is something to extract, else None."""
    if state.root_changed and state.images_changed:
        return None  # another dataset: bring_up_to_date refuses it, before any write and any model
    with open_read(target) as f:
        old_done = _done_flags(f, bid, config, name)  # another configuration of this backbone: refused here
    row_map = state.row_map
    cached = np.zeros(len(paths), dtype=bool)
    if old_done is not None:
        known = row_map >= 0
        cached[known] = old_done[row_map[known]]
    needed = [paths[i] for i in in_shard if not cached[i]]
    if not needed:
        return None
    check_files_present(root, needed)
    return _built(backbone, torch_device)


@dataclass
class _Precheck:
    """What the look at the cache without the lock found: rows done when nothing is left to do, and the comparison
    with the images (reused under the lock while the file is unchanged: with --verify it hashed the images)."""

    rows_done: int | None = None
    comparison: CacheComparison | None = None
    file_identity: tuple | None = None


def _file_identity(path: Path) -> tuple | None:
    """(inode, size, modification time): any write by another process in between changes it."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _already_complete(target: Path, name, samples: SampleTable, root: Path, config: dict,
                      in_shard: range, verify: bool) -> _Precheck:
    """Whether the cache already holds every row of the shard for these images and labels (checked without the
    lock, so a read-only but complete cache is 'nothing to do')."""
    identity = _file_identity(target)
    if identity is None:
        return _Precheck()
    try:
        f = open_read(target)
    except FeatcacheError:
        return _Precheck()  # the writing path gives the precise message
    with f:
        comparison = compare_with_cache(f, samples, root, verify)
        if not comparison.same:
            return _Precheck(None, comparison, identity)
        done = _done_flags(f, config["id"], config, name)
    if done is None or not done[in_shard.start:in_shard.stop].all():
        return _Precheck(None, comparison, identity)
    return _Precheck(len(in_shard), comparison, identity)


def extract(samples: SampleTable, root: str | Path, backbone: Backbone, cache: str | Path, *,
            batch_size: int = 32, workers: int | None = None, device: str = "auto", precision: str = "auto",
            shard: tuple[int, int] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
            progress: bool = True, command: str = "", verify: bool = False, decode: str | None = None,
            jpeg_draft: bool | None = None) -> ExtractResult:
    """Extract `backbone` features for every distinct image of `samples` into `cache`; resumes what is there.

    `verify`: record each extracted image's sha256 and compare images by content where a hash is stored (else by
    size and modification time). `decode`: 'cpu' (Pillow in workers), 'gpu' (torchvision on `device`) or 'auto'.
    `jpeg_draft`: let libjpeg decode large JPEGs at a reduced scale on the Pillow path. Both change pixels slightly,
    so the resolved decode path and draft flag are part of the backbone's recorded configuration. Left as None, both
    follow what the cache recorded for this backbone (resuming needs no flags, whatever version made the cache),
    else 'auto' and draft on."""
    root, name = Path(root), Path(cache)
    if batch_size < 1:
        raise FeatcacheError("--batch-size must be at least 1")
    if workers is not None and workers < 0:
        raise FeatcacheError("--workers must be 0 (decode in the main process) or more")
    if max_pixels < 1:
        raise FeatcacheError("--max-pixels must be at least 1")
    torch_device = resolve_device(device)
    precision = _precision(torch_device, precision)
    paths, _, _ = samples.distinct_images()
    target = real_path(name)  # a symlink and its target are one cache: one lock, one temporary file
    decode, jpeg_draft, draft_rule = _as_recorded(target, backbone.config()["id"], decode, jpeg_draft)
    decode_path, jpeg_draft = _decoding(decode, jpeg_draft, torch_device)
    config = dict(backbone.config(), precision=precision, decode=decode_path, jpeg_draft=jpeg_draft)
    if jpeg_draft:
        config["jpeg_draft_rule"] = draft_rule
    if decode_path == "torch":
        from featcache.decode import TORCH_RESIZE

        config["torch_resize"] = TORCH_RESIZE  # the previous version resized in one pass: never mixed with it
    bid = config["id"]
    in_shard = shard_rows(len(paths), shard)
    precheck = _already_complete(target, name, samples, root, config, in_shard, verify)
    if precheck.rows_done is not None:
        return ExtractResult(str(name), bid, len(paths), len(in_shard), precheck.rows_done, 0)
    new_folders = [p for p in [target.parent, *target.parent.parents] if not p.exists()]  # deepest first
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FeatcacheError(f"{name}: cannot create the folder {target.parent} ({exc.strerror})") from None
    extractor = None
    with _folders_removed_unless_used(target, new_folders), lock_cache(name), _removed_unless_used(target) as created:
        remove_stale_temporaries(target)
        if not target.exists():
            create_cache(target, samples, root, command, samples.options)
            created.append(target)
        else:
            check_is_cache_file(name)  # a damaged or foreign file is refused before anything else
            unchanged = precheck.file_identity is not None and precheck.file_identity == _file_identity(target)
            state = precheck.comparison if unchanged else None
            if state is None:
                with open_read(target) as f:
                    state = compare_with_cache(f, samples, root, verify)
            if not state.same and state.has_features:  # the update drops rows: refuse this command first, if at all
                extractor = _checked_before_update(target, name, state, bid, config, root, paths, in_shard,
                                                   backbone, torch_device)
            bring_up_to_date(target, samples, root, command, samples.options, verify, state)
        with open_read(target) as f:
            done = _done_flags(f, bid, config, name)
        exists = done is not None
        if not exists:
            done = np.zeros(len(paths), dtype=bool)
        todo = [i for i in in_shard if not done[i]]
        result = ExtractResult(str(name), bid, len(paths), len(in_shard), len(in_shard) - len(todo), 0)
        if not todo:
            return result
        check_files_present(root, [paths[i] for i in todo])
        workers = loader_workers(workers, len(todo), batch_size)
        if extractor is None:
            extractor = _built(backbone, torch_device)
        if not exists:
            attrs = {"shard": f"{shard[0]}/{shard[1]}"} if shard is not None else {}
            add_backbones(target, [NewBackbone(config, extractor.output_dim(backbone.spec.input_size),
                                               _provenance(backbone, torch_device, precision, command), attrs)])
        created.clear()  # a backbone is in it: kept whatever happens next (the rows written so far resume)
        try:  # torch reports a dead worker from a SIGCHLD handler: at any moment while the loader lives
            with open_write(target) as f:
                refresh_image_stats(f, root, todo, verify)
                _run(extractor, f[f"features/{bid}"], f, root, paths, todo, backbone, torch_device, precision,
                     batch_size, workers, max_pixels, progress, result, decode_path, jpeg_draft, draft_rule)
        except (RuntimeError, ConnectionError, EOFError) as exc:
            if not _is_dead_worker(exc, workers):
                raise
            raise _worker_died(exc, result, workers) from None
    problems = []
    if result.errors:
        problems.append((f"{len(result.errors)} images could not be read", "fix these files, or remove their rows from "
                         "the annotation, and run the same command again", named(sorted(result.errors), "; ")))
    if result.non_finite:
        advice = "extract into a new --cache with --precision fp32 or bf16" if precision == "fp16" else \
            "check the weights"
        problems.append((_non_finite(len(result.non_finite), precision), advice + "; the cache keeps no row for them",
                         named(sorted(result.non_finite))))
    if problems:  # one line; the rows kept said once
        first, *more = problems
        message = f"{first[0]} ({result.rows_written} other rows were written and kept; {first[1]}): {first[2]}"
        raise FeatcacheError("; ".join([message] + [f"also {what} ({advice}): {names}" for what, advice, names in more]))
    return result


def _non_finite(count: int, precision: str, option: bool = True) -> str:
    """What went wrong, said the same way by extract and by compute_features (predict, which has no --precision
    option: `option=False`). Only fp16 overflows where fp32 does not; bf16 has fp32's range."""
    where = f"with --precision {precision}" if option else f"in {precision}"
    cause = ": the activations overflowed" if precision == "fp16" else ""
    return f"{count} images gave non-finite features (inf/NaN) {where}{cause}"


def _forward_batches(extractor, dataset: ImageRows, device: torch.device, precision: str,
                     batch_size: int, workers: int, preprocess=None):
    """Decode in workers (or, on the torch path, read bytes there and decode on `device` with `preprocess`), forward
    on `device`: yields (rows, features or None, errors, forward seconds)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_payloads if dataset.jpeg_bytes else collate_rows,
                        pin_memory=device.type == "cuda", worker_init_fn=worker_init if workers else None)
    autocast = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    batches = iter(loader)
    source = _decoded_ahead(batches, dataset, preprocess, device) if dataset.jpeg_bytes else batches
    pending = None  # the previous batch, its features on their way to the host
    try:
        for rows, batch, errors in source:
            start = time.perf_counter()
            if not rows:
                yield rows, None, errors, 0.0
                continue
            batch = to_channels_last(batch.to(device, non_blocking=True), device)
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                features = extractor(batch)
            current = _FeaturesToHost(rows, features, errors, time.perf_counter() - start)
            if pending is not None:  # queued after this batch's forward: the device stays busy meanwhile
                yield pending.result()
            pending = current
        if pending is not None:
            yield pending.result()
    finally:
        if source is not batches:
            source.close()  # waits for a decode in flight
        # Stop the workers now, whatever happened: a loader left alive after an error (a dead worker, Ctrl-C) keeps
        # torch's SIGCHLD handler armed, which then raises in whatever runs next in this process.
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def _decoded_ahead(batches, dataset: ImageRows, preprocess, device: torch.device):
    """The torch path: batch k+1 is decoded and preprocessed in a helper thread while the main thread runs batch k's
    forward and writes its rows (nvjpeg and torch ops release the GIL). The loader is still read here, in the main
    thread, so a dead worker is reported as before. Yields (rows, batch on `device` or None, errors) in the loader's
    order; the numbers do not depend on the thread.

    On CUDA the helper works on its own stream. torchvision's decoder allocates its outputs on the caller's stream and
    writes them from a stream of its own without waiting: on the main stream it could be handed memory that batch k's
    queued forward still reads. The helper's stream only ever holds its own finished work (it is synchronised before
    each decode), and the main stream waits for a batch's event before using it."""
    from concurrent.futures import ThreadPoolExecutor

    side = torch.cuda.Stream(device) if device.type == "cuda" else None

    def decode(rows, packed, errors):
        if side is None:
            rows, batch, more = _pixels_on_device(rows, packed, dataset, preprocess, device)
            return rows, batch, errors + more, None
        with torch.cuda.stream(side):
            side.synchronize()
            rows, batch, more = _pixels_on_device(rows, packed, dataset, preprocess, device)
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
    the next batch's forward is queued before this one is written: the GPU does not idle while the main process
    writes rows and decodes. On the CPU the copy is simply done at once. Same numbers either way."""

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


def _run(extractor, group, f, root, paths, todo, backbone, device, precision, batch_size, workers, max_pixels,
         progress, result, decode_path: str, jpeg_draft: bool, draft_rule: str) -> None:
    from tqdm.auto import tqdm

    dataset, preprocess = _dataset(backbone, root, paths, todo, max_pixels, decode_path, jpeg_draft, device,
                                   draft_rule)
    emb, done = group["emb"], group["done"]
    start = time.perf_counter()
    batches = _forward_batches(extractor, dataset, device, precision, batch_size, workers, preprocess)
    with tqdm(total=len(todo), unit="img", desc=result.backbone_id, disable=not progress, file=sys.stderr) as bar, \
            contextlib.closing(batches):
        try:
            for rows, features, errors, seconds in batches:
                result.errors.extend(errors)
                handled = len(rows) + len(errors)
                if rows:
                    rows, features = _finite_rows(rows, features, root, paths, result.non_finite)
                if rows:
                    result.forward_seconds += seconds
                    _write_rows(emb, rows, features)
                    f.flush()  # rows reach the file before their done flags
                    _write_rows(done, rows, np.ones(len(rows), dtype=bool))
                    f.flush()
                    result.rows_written += len(rows)
                bar.update(handled)
                interrupts.check()  # a Ctrl-C that Python dropped (see featcache.interrupts): the batch is kept
        except (RuntimeError, ConnectionError, EOFError) as exc:
            # converted here, before closing the loader can replace it with its own error
            if not _is_dead_worker(exc, workers):
                raise
            raise _worker_died(exc, result, workers) from None
        except (OSError, ValueError) as exc:
            if not is_disk_full(exc):
                raise
            raise disk_full_error(result.cache, f"after {result.rows_written} new rows, which are kept") from None
    result.seconds = time.perf_counter() - start


def _finite_rows(rows: list[int], features: np.ndarray, root: Path, paths: list[str],
                 non_finite: list[str]) -> tuple[list[int], np.ndarray]:
    """Drop the rows whose features hold inf or NaN (fp16 overflow), naming their images in `non_finite`: a cache
    never stores them as done, where every later fit would read them."""
    finite = np.isfinite(features).all(axis=1)
    if finite.all():
        return rows, features
    non_finite.extend(str(Path(root) / paths[r]) for r, ok in zip(rows, finite) if not ok)
    return [r for r, ok in zip(rows, finite) if ok], features[finite]


def _is_dead_worker(exc: BaseException, workers: int) -> bool:
    """torch reports a dead worker as a RuntimeError naming it; a worker killed while handing a batch's shared
    memory to the main process shows up instead as a reset connection (or end of file) in the main process."""
    if isinstance(exc, RuntimeError):
        return "DataLoader worker" in str(exc)
    return workers > 0 and isinstance(exc, (ConnectionError, EOFError))


def _worker_died(exc: BaseException, result: ExtractResult, workers: int) -> FeatcacheError:
    return FeatcacheError(f"a decoding worker process died ({str(exc).splitlines()[0].rstrip('. ')}); the "
                          f"{result.rows_written} rows written so far are kept; run the same command again, "
                          f"with fewer --workers if memory is short ({workers} were running)")


def _write_rows(dataset, rows: list[int], values: np.ndarray) -> None:
    if rows[-1] - rows[0] == len(rows) - 1:
        dataset[rows[0]:rows[-1] + 1] = values
    else:
        dataset[rows] = values


DRAFT_GAP = 2  # JPEG draft decoding keeps at least this many times the resize size (as Pillow's reducing_gap)


@contextlib.contextmanager
def _removed_unless_used(target: Path):
    """A cache this run created is removed again when the run fails before a backbone is in it (weights that do
    not load, images missing): it held only the annotation's tables, and a failed first command left it behind."""
    created: list[Path] = []
    try:
        yield created
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _folders_removed_unless_used(target: Path, folders: list[Path]):
    """The folders made for a new cache go again, once the lock is released, when the run left no cache there."""
    try:
        yield
    except BaseException:
        if not target.exists():
            for folder in folders:
                try:
                    folder.rmdir()
                except OSError:  # not empty (the user's files, another cache), or gone
                    break
        raise


def draft_short_side(backbone: Backbone) -> int:
    """The shortest side JPEG draft decoding may produce: DRAFT_GAP x the size the transform resizes the shorter side
    to (timm: floor(input_size / crop_pct)). Why not 1x: libjpeg's scaled IDCT straight to the resize size aliases
    fine texture (lite0 feature cosine 0.984 on upscaled Kodak photos and noise); leaving the last factor of 2 to
    the antialiased resize keeps cosine >= 0.998 and still decodes 2x (1536x1024) to 3.8x (3072x2048) faster."""
    cfg = backbone.spec.data_config()
    return DRAFT_GAP * math.ceil(cfg["input_size"] / cfg["crop_pct"])


def draft_for(backbone: Backbone, transform, rule: str = DRAFT_RULE) -> Draft | None:
    """JPEG draft decoding for `transform` (timm's eval transform of `backbone`, which starts with a Resize). None,
    i.e. full decoding, for a transform that does not start with a Resize: the draft could not keep its
    geometry."""
    from torchvision.transforms.functional import pil_modes_mapping

    first = _first_resize(transform)
    if first is None:
        return None
    return Draft(draft_short_side(backbone), _resize_size(first), pil_modes_mapping[first.interpolation], rule)


def _first_resize(transform):
    """The transform's leading torchvision Resize (timm's eval transforms start with one), else None."""
    from torchvision.transforms import Resize

    first = (getattr(transform, "transforms", None) or [None])[0]
    return first if isinstance(first, Resize) and first.max_size is None else None


def _resize_size(resize) -> int | tuple[int, int]:
    return resize.size if isinstance(resize.size, int) else tuple(resize.size)


def _as_recorded(target: Path, bid: str, decode: str | None,
                 jpeg_draft: bool | None) -> tuple[str, bool, str]:
    """The decode options not given (None) as the cache recorded them for `bid` (a cache from before they were
    recorded: Pillow without draft), else 'auto' and draft on; and the JPEG draft rule: the recorded one where
    the cache drafted (an older cache resumes with its own pixels), else today's."""
    from featcache.decode import decode_option

    stored = None
    if target.is_file():
        try:
            with open_read(target) as f:
                if bid in backbone_ids(f):
                    stored = with_config_defaults(read_config(f, bid))
        except (OSError, KeyError, ValueError, FeatcacheError):  # reported by the checks that follow
            stored = None
    if decode is None:
        decode = "auto" if stored is None else decode_option(stored["decode"])
    if jpeg_draft is None:
        jpeg_draft = True if stored is None else bool(stored["jpeg_draft"])
    rule = stored["jpeg_draft_rule"] if stored is not None and stored["jpeg_draft"] else DRAFT_RULE
    return decode, jpeg_draft, rule


def _decoding(decode: str | None, jpeg_draft: bool, device: torch.device) -> tuple[str, bool]:
    """(decode path 'pil' or 'torch', whether JPEG draft decoding is used): both recorded in the backbone's config.
    Draft mode is a Pillow feature: the torch path decodes every JPEG at full size."""
    from featcache.decode import resolve_decode

    path = resolve_decode(decode, device)
    return path, bool(jpeg_draft) and path == "pil"


def _dataset(backbone: Backbone, root: Path, paths: list[str], rows: list[int], max_pixels: int, decode_path: str,
             jpeg_draft: bool, device: torch.device, draft_rule: str = DRAFT_RULE):
    """(ImageRows, the device-side preprocessing or None) for the chosen decode path."""
    transform = backbone.transform()
    draft = draft_for(backbone, transform, draft_rule) if jpeg_draft else None
    dataset = ImageRows(root, paths, rows, transform, max_pixels, draft, jpeg_bytes=decode_path == "torch")
    if decode_path != "torch":
        return dataset, None
    from featcache.decode import TorchPreprocess

    return dataset, TorchPreprocess(backbone.spec.data_config(), device)


def _provenance(backbone: Backbone, device: torch.device, precision: str, command: str) -> dict:
    import timm

    return {
        "tool": f"featcache {__version__}",
        "torch": torch.__version__,
        "timm": timm.__version__,
        "timm_model": backbone.spec.timm_name,
        "backbone_name": backbone.spec.name,
        "pool": backbone.pool,
        "image_size": backbone.spec.input_size,
        "weights": backbone.weights.to_dict(),
        "weights_state_sha256": backbone.weights_state_sha256(),
        "data_config": backbone.spec.data_config(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "precision": precision,
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def compute_features(backbone: Backbone, root: str | Path, paths: list[str], *, batch_size: int = 32,
                     workers: int = 0, device: str = "auto", precision: str = "auto",
                     max_pixels: int = DEFAULT_MAX_PIXELS, decode: str = "auto",
                     jpeg_draft: bool = True, jpeg_draft_rule: str = DRAFT_RULE) -> np.ndarray:
    """Features of a few images in memory (no cache), e.g. to score new images with a saved head. `decode`,
    `jpeg_draft` and `jpeg_draft_rule` as for `extract` (pass the values recorded with the features the head was
    trained on: `store.with_config_defaults` fills in those of older caches)."""
    root = Path(root)
    check_files_present(root, paths)
    torch_device = resolve_device(device)
    precision = _precision(torch_device, precision)
    extractor = to_channels_last(backbone.extractor().to(torch_device), torch_device)
    decode_path, jpeg_draft = _decoding(decode, jpeg_draft, torch_device)
    dataset, preprocess = _dataset(backbone, root, paths, list(range(len(paths))), max_pixels, decode_path,
                                   jpeg_draft, torch_device, jpeg_draft_rule)
    out = None
    batches = _forward_batches(extractor, dataset, torch_device, precision, batch_size, workers, preprocess)
    with contextlib.closing(batches):
        for rows, features, errors, _ in batches:
            if errors:
                raise FeatcacheError(errors[0])
            bad: list[str] = []
            _finite_rows(rows, features, root, paths, bad)
            if bad:
                advice = ("features extracted in fp32 or bf16 avoid it; for a saved head, extract its cache so "
                          "and refit") if precision == "fp16" else "check the weights"
                raise FeatcacheError(f"{_non_finite(len(bad), precision, option=False)} ({advice}): "
                                     f"{named(bad)}")
            if out is None:
                out = np.zeros((len(paths), features.shape[1]), dtype=np.float32)
            out[rows] = features
    return out
