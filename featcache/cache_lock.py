"""One writer per cache file, through `filelock.FileLock` on `REALPATH.lock`.

The lock is keyed on the cache's real path (a symlink and its target share one lock), whatever
HDF5_USE_FILE_LOCKING says. On Unix it is an flock, which the kernel releases when its process dies: a writer killed
with -9 leaves no held lock. The lock file itself stays after release (deleting it could let two processes lock two
different files of one name); its presence means nothing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from featcache.atomic_write import real_path
from featcache.errors import FeatcacheError


def lock_file(path: str | Path) -> Path:
    """The lock file of the cache at `path`: its real path with `.lock` appended."""
    return Path(str(real_path(path)) + ".lock")


@contextlib.contextmanager
def lock_cache(path: str | Path) -> Iterator[Path]:
    """Hold the cache's lock for the block and yield the cache's real path; never waits. Raises a one-line
    FeatcacheError when another process (or another `lock_cache` of this process) holds it, and when the lock file
    cannot be created (a read-only folder)."""
    from filelock import FileLock, Timeout

    target = real_path(path)
    lock = FileLock(lock_file(target), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise FeatcacheError(f"{path} is being written by another featcache process; wait for it to finish or use "
                             "another --cache") from None
    except OSError as exc:
        raise FeatcacheError(f"{path}: cannot create the lock file {lock_file(target).name} in {target.parent} "
                             f"({exc.strerror}); the folder must be writable") from None
    try:
        yield target
    finally:
        lock.release()
