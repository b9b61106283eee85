"""Where tensors run: one resolver for every command (extract, predict, the MLP head) and one channels-last move."""

from __future__ import annotations

import os

from featcache.errors import FeatcacheError

DEVICE_HELP = "auto, cpu, cuda or cuda:N"


def usable_cores() -> int:
    """The cores this process may run on (decoding workers, parallel fits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))  # honours taskset, cgroup cpusets and SLURM's allocation
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return max(1, os.cpu_count() or 1)


def resolve_device(device: str | None = "auto"):
    """'auto' -> cuda when torch sees one, else cpu; a CUDA device asked for without one, or a malformed name, is a
    one-line error (never a torch traceback)."""
    import torch

    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(name)
    except (RuntimeError, ValueError):
        raise FeatcacheError(f"--device {device!r}: not a device; choose {DEVICE_HELP}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise FeatcacheError(f"--device {device}: torch sees no CUDA device; use --device cpu or auto")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise FeatcacheError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif resolved.type != "cpu":
        raise FeatcacheError(f"--device {device!r}: not supported; choose {DEVICE_HELP}")
    return resolved


def to_channels_last(x, device):
    """Modules and 4-d batches go channels-last on CUDA (faster convolutions); unchanged elsewhere."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return x
    if isinstance(x, torch.Tensor):
        return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x
    return x.to(memory_format=torch.channels_last)
