"""One writer per cache file, through `filelock.FileLock` on `REALPATH.lock`.

The lock is keyed on the cache's real path (a symlink and its target share one lock), whatever
HDF5_USE_FILE_LOCKING says. On Unix it is an flock, which the kernel releases when its process dies: a writer killed
with -9 leaves no held lock. The lock file itself stays after release (deleting it could let two processes lock two
different files of one name); its presence means nothing. A lock file that is a symlink is refused, never followed:
a planted link must not make the tool create or truncate a file elsewhere."""

from __future__ import annotations

import contextlib
import errno
import os
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
    _create_without_following(path, lock_file(target))
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


def _create_without_following(path: str | Path, lock: Path) -> None:
    """Create `lock` if missing (mode 0o666 less the umask), refusing a symlink in its place, so that filelock then
    opens this very file."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FeatcacheError(f"{path}: the lock file {lock} is a symlink; it is not followed (delete it if you "
                                 "did not make it)") from None
        raise FeatcacheError(f"{path}: cannot create the lock file {lock.name} in {lock.parent} ({exc.strerror}); "
                             "the folder must be writable") from None
    os.close(fd)
