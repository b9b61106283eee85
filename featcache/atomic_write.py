"""Crash-safe writes of a whole cache file: a temporary file in the same folder, fsync, `os.replace`.

A crash, Ctrl-C or full disk at any moment leaves the file it replaces untouched and at worst a temporary file
`.NAME.tmp-*` beside it, which the next writer (holding the lock) deletes with `remove_stale_temporaries`."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import h5py

from featcache.errors import FeatcacheError


def real_path(path: str | Path) -> Path:
    """The file itself: symlinks resolved, so every name of one file gets one lock and one temporary file."""
    return Path(os.path.realpath(path))


def temporary_prefix(path: str | Path) -> str:
    """The name every temporary file of `path` starts with (`.NAME.tmp-`)."""
    return f".{real_path(path).name}.tmp-"


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete the temporary files of `path` left by a killed writer and return them. Call with the cache's lock
    held: no live writer owns one then."""
    target = real_path(path)
    removed = []
    for tmp in target.parent.glob(temporary_prefix(target) + "*"):
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
            removed.append(tmp)
    return removed


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` (an OSError, or h5py's RuntimeError or ValueError around one) reports a full disk or quota."""
    return getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc) \
        or "Disk quota" in str(exc)


def disk_full_error(path: str | Path, what: str) -> FeatcacheError:
    """The one-line error for a full disk while `what` was being done to `path`."""
    return FeatcacheError(f"{path}: the disk is full ({what}); free some space and run the same command again")


def check_free_space(path: str | Path, needed: int, what: str) -> None:
    """Refuse `what` before writing when the folder of `path` has less than `needed` bytes (plus 1 MiB) free."""
    folder = real_path(path).parent
    free = shutil.disk_usage(folder).free
    if free < needed + (1 << 20):
        raise FeatcacheError(f"{path}: {what} needs about {needed / 2**20:.1f} MiB but {folder} has "
                             f"{free / 2**20:.1f} MiB free; nothing was changed")


def _new_temporary(target: Path) -> Path:
    """A new, empty file beside `target` named `.NAME.tmp-<random>`, created exclusively with the mode any new file
    gets (0o666 less the umask; `tempfile.mkstemp` would make it, and so the cache, private to its owner)."""
    while True:
        tmp = target.with_name(temporary_prefix(target) + secrets.token_hex(8))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_h5(path: str | Path, what: str = "writing the cache") -> Iterator[h5py.File]:
    """Yield a new, empty HDF5 file that replaces `path` (its real path) only when the block ends normally: the file
    and then its folder are fsynced around `os.replace`, so after a crash `path` is either the old file or the
    complete new one. On any error, Ctrl-C included, the temporary file is removed and `path` is untouched; a full
    disk becomes a one-line error naming `what`."""
    target = real_path(path)
    tmp = f = None
    try:
        tmp = _new_temporary(target)
        f = h5py.File(tmp, "w")
        yield f
        f.close()
        f = None
        _fsync(tmp)
        os.replace(tmp, target)
        _fsync(target.parent, directory=True)
    except (OSError, RuntimeError, ValueError) as exc:  # h5py reports a failed write as any of these
        if is_disk_full(exc):
            raise disk_full_error(path, what) from None
        raise
    finally:
        if f is not None:
            with contextlib.suppress(Exception):
                f.close()
        with contextlib.suppress(OSError):
            tmp.unlink()
