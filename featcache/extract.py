"""`featcache extract`: run a frozen backbone once over every distinct image and stream the rows into the cache.

The cache is created or brought up to date under its lock, the backbone's datasets are added whole, then rows are
written batch by batch, each batch's rows before their `done` flags; an interrupted run resumes where it stopped
and gives the same features it would have given in one go."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from featcache import __version__, interrupts
from featcache.atomic_write import disk_full_error, is_disk_full, real_path, remove_stale_temporaries
from featcache.backbones import Backbone
from featcache.backbones.views import check_crops_pixels
from featcache.cache_lock import lock_cache, lock_file
from featcache.cache_rewrite import NewBackbone, add_backbones, bring_up_to_date
from featcache.devices import resolve_device, to_channels_last
from featcache.errors import FeatcacheError, named
from featcache.forward import (
    Forwarding,
    batch_plan,
    finite_rows,
    forward_batches,
    loader_workers,
    non_finite_message,
    resolve_decoding,
    resolve_precision,
)
from featcache.image_changes import CacheComparison, compare_with_cache, refresh_image_stats
from featcache.image_rows import Decoding, image_rows
from featcache.images import DEFAULT_MAX_PIXELS, DRAFT_RULE, check_files_present
from featcache.untrusted import check_inside_root
from featcache.samples import SampleTable
from featcache.store import (
    backbone_ids,
    check_config,
    check_is_cache_file,
    create_cache,
    open_read,
    open_write,
    read_config,
    with_config_defaults,
)


@dataclass
class ExtractResult:
    """What one `extract` did: rows of the cache, of this shard, already done before, and written now."""

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
    """'I/N' -> (I, N), 0 <= I < N; None for no sharding."""
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
    """The rows of `shard` among `rows`: contiguous blocks, so each shard writes whole chunks."""
    if shard is None:
        return range(rows)
    index, count = shard
    return range(rows * index // count, rows * (index + 1) // count)


def start_cuda(device: torch.device) -> None:
    """Create the CUDA context in a thread while the cache is checked and the model built; the first CUDA call of
    the main thread waits for it."""
    if device.type != "cuda":
        return
    threading.Thread(target=lambda: torch.zeros(1, device=device), name="featcache-cuda-init", daemon=True).start()


@dataclass(kw_only=True)
class _Request:
    """One `extract` call's resolved inputs: the cache as named (`name`) and its real path (`target`), the samples
    and the distinct image paths under `root`, the rows of this shard, the backbone with its full configuration
    (decode options and precision included) and the device."""

    name: Path
    target: Path
    samples: SampleTable
    root: Path
    paths: list[str]
    in_shard: range
    backbone: Backbone
    config: dict
    device: torch.device
    verify: bool
    command: str

    @property
    def bid(self) -> str:
        return self.config["id"]


@dataclass(kw_only=True)
class _Extraction:
    """What `_run` needs to fill a backbone's rows: the built extractor, the request, the rows still to do, how
    their images are decoded and forwarded, and whether a progress bar is shown."""

    extractor: torch.nn.Module
    request: _Request
    todo: list[int]
    decoding: Decoding
    forwarding: Forwarding
    progress: bool


def _done_flags(f, bid: str, config: dict, name) -> np.ndarray | None:
    """The `done` flags of backbone `bid` (its configuration checked), or None when it is absent or half created."""
    if bid not in backbone_ids(f):
        return None
    check_config(f, bid, config, name)
    return f[f"features/{bid}/done"][()]


def _built(backbone: Backbone, torch_device: torch.device):
    """The backbone's frozen extractor on the device (the CUDA context started first, in a thread)."""
    start_cuda(torch_device)
    return to_channels_last(backbone.extractor().to(torch_device), torch_device)


def _checked_before_update(request: _Request, state: CacheComparison):
    """Everything that could refuse this command, checked before the cache follows a changed image list (that update
    drops the rows of removed or changed images for every backbone): another configuration of this backbone, a
    missing image, weights that do not load. Returns the built extractor when there is something to extract, else
    None."""
    if state.root_changed and state.images_changed:
        return None  # another dataset: bring_up_to_date refuses it, before any write and any model
    with open_read(request.target) as f:
        old_done = _done_flags(f, request.bid, request.config, request.name)
    row_map = state.row_map
    cached = np.zeros(len(request.paths), dtype=bool)
    if old_done is not None:
        known = row_map >= 0
        cached[known] = old_done[row_map[known]]
    needed = [request.paths[i] for i in request.in_shard if not cached[i]]
    if not needed:
        return None
    check_files_present(request.root, needed)
    check_inside_root(request.root, needed)
    return _built(request.backbone, request.device)


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


def _already_complete(request: _Request) -> _Precheck:
    """Whether the cache already holds every row of the shard for these images and labels (checked without the
    lock, so a read-only but complete cache is 'nothing to do')."""
    identity = _file_identity(request.target)
    if identity is None:
        return _Precheck()
    try:
        f = open_read(request.target)
    except FeatcacheError:
        return _Precheck()  # the writing path gives the precise message
    with f:
        comparison = compare_with_cache(f, request.samples, request.root, request.verify)
        if not comparison.same:
            return _Precheck(None, comparison, identity)
        done = _done_flags(f, request.bid, request.config, request.name)
    shard = request.in_shard
    if done is None or not done[shard.start:shard.stop].all():
        return _Precheck(None, comparison, identity)
    return _Precheck(len(shard), comparison, identity)


def extract(samples: SampleTable, root: str | Path, backbone: Backbone, cache: str | Path, *,
            batch_size: int = 32, workers: int | None = None, device: str = "auto", precision: str = "auto",
            shard: tuple[int, int] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
            progress: bool = True, command: str = "", verify: bool = False, decode: str | None = None,
            jpeg_draft: bool | None = None) -> ExtractResult:
    """Extract `backbone` features for every distinct image of `samples` under `root` into `cache`, creating it or
    bringing it up to date with the samples first; resumes what is there.

    `verify`: record each extracted image's sha256 and compare images by content where a hash is stored (else by
    size and modification time). `decode`: 'cpu' (Pillow in workers), 'gpu' (torchvision on `device`) or 'auto'.
    `jpeg_draft`: let libjpeg decode large JPEGs at a reduced scale on the Pillow path. Both change pixels slightly,
    so the resolved decode path and draft flag are part of the backbone's recorded configuration. Left as None, both
    follow what the cache recorded for this backbone (resuming needs no flags), else 'auto' and draft on.

    Bad input (options, images, another configuration in the cache, a full disk, a dead worker) is a one-line
    FeatcacheError; rows written before it are kept. Images that cannot be read or give non-finite features are
    reported after every other row is written."""
    root, name = Path(root), Path(cache)
    if batch_size < 1:
        raise FeatcacheError("--batch-size must be at least 1")
    if workers is not None and workers < 0:
        raise FeatcacheError("--workers must be 0 (decode in the main process) or more")
    if max_pixels < 1:
        raise FeatcacheError("--max-pixels must be at least 1")
    check_crops_pixels(backbone.view, backbone.spec.input_size, max_pixels)
    torch_device = resolve_device(device)
    precision = resolve_precision(torch_device, precision)
    paths, _, _ = samples.distinct_images()
    target = real_path(name)  # a symlink and its target are one cache: one lock, one temporary file
    decode, jpeg_draft, draft_rule = _as_recorded(target, backbone.config()["id"], decode, jpeg_draft)
    decode_path, jpeg_draft = resolve_decoding(decode, jpeg_draft, torch_device)
    config = dict(backbone.config(), precision=precision, decode=decode_path, jpeg_draft=jpeg_draft)
    if jpeg_draft:
        config["jpeg_draft_rule"] = draft_rule
    if decode_path == "torch":
        from featcache.decode import TORCH_RESIZE

        config["torch_resize"] = TORCH_RESIZE  # how the torch path resizes: never mixed with another way
    request = _Request(name=name, target=target, samples=samples, root=root, paths=paths,
                       in_shard=shard_rows(len(paths), shard), backbone=backbone, config=config, device=torch_device,
                       verify=verify, command=command)
    precheck = _already_complete(request)
    if precheck.rows_done is not None:
        return ExtractResult(str(name), request.bid, len(paths), len(request.in_shard), precheck.rows_done, 0)
    if backbone.view.kind == "native":
        backbone.extractor()  # a model that needs a fixed input size is refused before anything is written
    new_folders = [p for p in [target.parent, *target.parent.parents] if not p.exists()]  # deepest first
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FeatcacheError(f"{name}: cannot create the folder {target.parent} ({exc.strerror})") from None
    with _folders_removed_unless_used(target, new_folders), lock_cache(name), _removed_unless_used(target) as created:
        extractor = _cache_ready(request, precheck, created)
        with open_read(target) as f:
            done = _done_flags(f, request.bid, config, name)
        exists = done is not None
        if not exists:
            done = np.zeros(len(paths), dtype=bool)
        todo = [i for i in request.in_shard if not done[i]]
        result = ExtractResult(str(name), request.bid, len(paths), len(request.in_shard),
                               len(request.in_shard) - len(todo), 0)
        if not todo:
            return result
        check_files_present(root, [paths[i] for i in todo])
        check_inside_root(root, [paths[i] for i in todo])
        workers = loader_workers(workers, len(todo), batch_size)
        if extractor is None:
            extractor = _built(backbone, torch_device)
        if not exists:
            attrs = {"shard": f"{shard[0]}/{shard[1]}"} if shard is not None else {}
            add_backbones(target, [NewBackbone(config=config, dim=extractor.output_dim(backbone.spec.input_size),
                                               provenance=_provenance(backbone, torch_device, precision, command),
                                               attrs=attrs)])
        created.clear()  # a backbone is in it: kept whatever happens next (the rows written so far resume)
        job = _Extraction(extractor=extractor, request=request, todo=todo, progress=progress,
                          decoding=Decoding(path=decode_path, jpeg_draft=jpeg_draft, draft_rule=draft_rule,
                                            max_pixels=max_pixels),
                          forwarding=Forwarding(device=torch_device, precision=precision, batch_size=batch_size,
                                                workers=workers))
        try:  # torch reports a dead worker from a SIGCHLD handler: at any moment while the loader lives
            with open_write(target) as f:
                refresh_image_stats(f, root, todo, verify)
                _run(job, f, result)
        except (RuntimeError, ConnectionError, EOFError) as exc:
            if not _is_dead_worker(exc, workers):
                raise
            raise _worker_died(exc, result, workers) from None
    _raise_for_bad_images(result, precision)
    return result


def _cache_ready(request: _Request, precheck: _Precheck, created: list[Path]):
    """Under the lock: remove a killed writer's temporary files, then create the cache (appending it to `created`)
    or bring it up to date with the samples, refusing a damaged or foreign file first. Returns the extractor when it
    had to be built before the update (see `_checked_before_update`), else None."""
    target = request.target
    remove_stale_temporaries(target)
    if not target.exists():
        create_cache(target, request.samples, request.root, request.command, request.samples.options)
        created.append(target)
        return None
    check_is_cache_file(request.name)  # a damaged or foreign file is refused before anything else
    unchanged = precheck.file_identity is not None and precheck.file_identity == _file_identity(target)
    state = precheck.comparison if unchanged else None
    if state is None:
        with open_read(target) as f:
            state = compare_with_cache(f, request.samples, request.root, request.verify)
    extractor = None
    if not state.same and state.has_features:  # the update drops rows: refuse this command first, if at all
        extractor = _checked_before_update(request, state)
    bring_up_to_date(target, request.samples, request.root, request.command, request.samples.options,
                     request.verify, state)
    return extractor


def _raise_for_bad_images(result: ExtractResult, precision: str) -> None:
    """One line for the images that could not be read and those with non-finite features, saying the other rows
    were written and kept."""
    problems = []
    if result.errors:
        problems.append((f"{len(result.errors)} images could not be read", "fix these files, or remove their rows from "
                         "the annotation, and run the same command again", named(sorted(result.errors), "; ")))
    if result.non_finite:
        advice = "extract into a new --cache with --precision fp32 or bf16" if precision == "fp16" else \
            "check the weights"
        problems.append((non_finite_message(len(result.non_finite), precision),
                         advice + "; the cache keeps no row for them", named(sorted(result.non_finite))))
    if problems:
        first, *more = problems
        message = f"{first[0]} ({result.rows_written} other rows were written and kept; {first[1]}): {first[2]}"
        also = [f"also {what} ({advice}): {names}" for what, advice, names in more]
        raise FeatcacheError("; ".join([message] + also))


def _run(job: _Extraction, f, result: ExtractResult) -> None:
    """Forward `job.todo` and write each batch's rows into backbone `job.request.bid` of the open cache `f`, rows
    flushed before their `done` flags; unreadable and non-finite images are collected in `result`."""
    from tqdm.auto import tqdm

    request = job.request
    dataset, preprocess = image_rows(request.backbone, request.root, request.paths, job.todo, job.decoding,
                                     job.forwarding.device)
    plan = batch_plan(dataset, job.forwarding.batch_size, request.backbone.spec.input_size)
    group = f[f"features/{request.bid}"]
    emb, done = group["emb"], group["done"]
    start = time.perf_counter()
    batches = forward_batches(job.extractor, dataset, job.forwarding, preprocess, plan)
    with tqdm(total=len(job.todo), unit="img", desc=result.backbone_id, disable=not job.progress,
              file=sys.stderr) as bar, contextlib.closing(batches):
        try:
            for rows, features, errors, seconds in batches:
                result.errors.extend(errors)
                handled = len(rows) + len(errors)
                if rows:
                    rows, features = finite_rows(rows, features, request.root, request.paths, result.non_finite)
                if rows:
                    result.forward_seconds += seconds
                    _write_rows(emb, rows, features)
                    f.flush()  # rows reach the file before their done flags
                    _write_rows(done, rows, np.ones(len(rows), dtype=bool))
                    f.flush()
                    result.rows_written += len(rows)
                bar.update(handled)
                interrupts.check()  # a signal the handler recorded while a C call ran: the batch is kept
        except (RuntimeError, ConnectionError, EOFError) as exc:
            # converted here, before closing the loader can replace it with its own error
            if not _is_dead_worker(exc, job.forwarding.workers):
                raise
            raise _worker_died(exc, result, job.forwarding.workers) from None
        except (OSError, ValueError) as exc:
            if not is_disk_full(exc):
                raise
            raise disk_full_error(result.cache, f"after {result.rows_written} new rows, which are kept") from None
    result.seconds = time.perf_counter() - start


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
    """Write `values` at `rows` (ascending) of an HDF5 dataset: one slice when the rows are contiguous."""
    if rows[-1] - rows[0] == len(rows) - 1:
        dataset[rows[0]:rows[-1] + 1] = values
    else:
        dataset[rows] = values


@contextlib.contextmanager
def _removed_unless_used(target: Path):
    """Yield a list; the paths appended to it (the cache this run created) are removed when the block fails: a
    cache that never got a backbone holds only the annotation's tables."""
    created: list[Path] = []
    try:
        yield created
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _folders_removed_unless_used(target: Path, folders: list[Path]):
    """The folders made for a new cache (deepest first) go again, with the lock file in them, when the block fails
    and leaves no cache there; a folder holding anything else stays."""
    try:
        yield
    except BaseException:
        if folders and not target.exists():
            lock_file(target).unlink(missing_ok=True)  # released by now; the folder is this run's own
            for folder in folders:
                try:
                    folder.rmdir()
                except OSError:  # not empty (the user's files, another cache), or gone
                    break
        raise


def _as_recorded(target: Path, bid: str, decode: str | None,
                 jpeg_draft: bool | None) -> tuple[str, bool, str]:
    """The decode options not given (None) as the cache recorded them for `bid` (a cache from before they were
    recorded: Pillow without draft), else 'auto' and draft on; and the JPEG draft rule: the recorded one where
    the cache drafted (an older cache resumes with its own pixels), else DRAFT_RULE."""
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


def _provenance(backbone: Backbone, device: torch.device, precision: str, command: str) -> dict:
    """Where the features come from: versions, model, weights, data config, device, precision, command, time."""
    import timm

    return {
        "tool": f"featcache {__version__}",
        "torch": torch.__version__,
        "timm": timm.__version__,
        "timm_model": backbone.spec.timm_name,
        "backbone_name": backbone.spec.name,
        "pool": backbone.pool,
        "image_size": backbone.spec.input_size,
        "input": backbone.view.id_part(backbone.spec.input_size),  # the view: 224, native, 224x5 (see views.py)
        "weights": backbone.weights.to_dict(),
        "weights_state_sha256": backbone.weights_state_sha256(),
        "data_config": backbone.spec.data_config(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "precision": precision,
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
