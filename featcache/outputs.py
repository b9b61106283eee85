"""Files a command writes under a name the user gave (`predict --out`, `table --out`, `fit --save-head`).

Checked before any work, so a refusal costs nothing: an existing file is replaced only with `--overwrite`, and never
when it is the cache or the annotation the command reads, or any HDF5 file (a feature cache of another run); a
folder that cannot be written is a one-line error.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from featcache.errors import FeatcacheError

def check_output_file(path: str | Path, option: str, overwrite: bool = False,
                      reads: tuple[str | Path | None, ...] = ()) -> Path:
    """Refuse, with one line, a target the command must not write: a folder, a file the command `reads`, an HDF5
    file, an existing file without `overwrite`, or a place that is not a writable folder."""
    path = Path(path)
    where = f"{option} {path}"
    if path.is_dir():
        raise FeatcacheError(f"{where}: is a folder; give a file name")
    if path.exists():
        for read in reads:
            if read is not None and Path(read).exists() and _same_file(path, Path(read)):
                raise FeatcacheError(f"{where}: is a file this command reads ({read}); choose another name")
        if _is_hdf5(path):
            raise FeatcacheError(f"{where}: is an HDF5 file (a feature cache?); it is never replaced, choose "
                                 "another name")
        if not overwrite:
            raise FeatcacheError(f"{where}: exists; pass --overwrite to replace it, or choose another name")
    parent = path.absolute().parent
    if not parent.is_dir():
        raise FeatcacheError(f"{where}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FeatcacheError(f"{where}: folder {parent} is not writable")
    return path


def read_by_a_cache(cache: str | Path | None) -> list[Path]:
    """The cache and the annotation it was made from (what `fit` compares the labels with), when present."""
    if cache is None or not Path(cache).is_file():
        return []
    out = [Path(cache)]
    try:
        import h5py

        with h5py.File(cache, "r", locking=False) as f:
            annotation = str(f.attrs.get("annotation", ""))
    except (OSError, ValueError):
        return out
    return out + ([Path(annotation)] if annotation else [])


def config_file() -> Path:
    from featcache.defaults import CONFIG_NAME

    return Path.cwd() / CONFIG_NAME


def write_text_atomically(path: str | Path, text: str) -> None:
    """`write_bytes_atomically` of `text` encoded as UTF-8."""
    write_bytes_atomically(path, text.encode("utf-8"))


def write_bytes_atomically(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a new temporary file `.NAME.<random>.tmp` in the same folder, created
    exclusively and without following links (`O_CREAT | O_EXCL | O_NOFOLLOW`, as `tempfile.mkstemp` opens its
    files, so a planted file or symbolic link is never written through) with the mode any new file gets (0o666
    less the umask), then renamed over `path` (`os.replace`: a link at `path` is replaced, not followed). A failed
    or interrupted write leaves `path` as it was and removes the temporary file."""
    import secrets

    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    while True:
        tmp = path.absolute().parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _is_hdf5(path: Path) -> bool:
    import h5py

    try:
        return h5py.is_hdf5(path)  # as store.check_is_cache_file tells a cache from other files
    except OSError:
        return False
