"""Checks on files that come from other people (caches, annotation tables, image folders), made before they are
parsed, so that a crafted file is refused with one line instead of reaching outside, hanging or exhausting memory.

What each check guarantees is stated in docs/security.md; the limits below can be lifted by environment variables
for a database that really exceeds them.
"""

from __future__ import annotations

import os
import re
import stat
import unicodedata
import zipfile
from pathlib import Path

import h5py
import numpy as np

from featcache.errors import FeatcacheError, named

# A real annotation database has at most ~100k rows and ~50 columns; the defaults leave a wide margin.
MAX_SHEET_CELLS_ENV = "FEATCACHE_MAX_SHEET_CELLS"
MAX_SHEET_CELLS = 50_000_000
MAX_SHEET_BYTES_ENV = "FEATCACHE_MAX_SHEET_BYTES"
MAX_SHEET_BYTES = 1 << 30  # the uncompressed size of all members of an xlsx (a zip)
# How much larger than the file a dataset of a cache may declare itself: a featcache cache stores its data
# uncompressed, and gzip, the strongest filter HDF5 ships, compresses at most about 1030:1.
MAX_DECLARED_RATIO = 1100
# featcache allocates every dataset of a cache in full when it creates it, uncompressed: a dataset that declares
# more bytes than it stores (by more than this margin) would be filled in memory from a fill value.
MAX_UNSTORED_BYTES = 64 << 20


def _limit(env: str, default: int) -> int:
    value = os.environ.get(env, "")
    try:
        return int(value) if value.strip() else default
    except ValueError:
        raise FeatcacheError(f"{env}={value!r} is not a whole number") from None


# ------------------------------------------------------------------------------------------------- plain files

def check_regular_file(path: str | Path, what: str) -> Path:
    """Refuse, with one line, anything at `path` that is not a regular file (after symlinks): a FIFO, a device,
    /proc's files, a folder. Such a file could block a read forever or never end."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise FeatcacheError(f"{path}: {what} not found ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise FeatcacheError(f"{path}: {what} is not a regular file; it is not read")
    if str(os.path.realpath(path)).startswith(("/proc/", "/sys/", "/dev/")):
        raise FeatcacheError(f"{path}: {what} is a system file; it is not read")
    return path


def is_regular_file(path: str | Path) -> bool:
    """Whether `check_regular_file` accepts `path`."""
    try:
        check_regular_file(path, "file")
    except FeatcacheError:
        return False
    return True


def check_annotation_file(path: str | Path) -> None:
    """Refuse an annotation table that is not a regular file, or a spreadsheet over the limits (`check_spreadsheet`),
    before any parser reads it."""
    check_regular_file(path, "annotation file")
    if Path(path).suffix.lower() in (".xlsx", ".xlsm"):
        check_spreadsheet(path)


# ------------------------------------------------------------------------------------------------- spreadsheets

_DIMENSION = re.compile(rb'<(?:\w+:)?dimension\s+ref="([A-Z]*)(\d*)(?::([A-Z]*)(\d*))?"')


def _column_number(letters: bytes) -> int:
    number = 0
    for c in letters.decode():
        number = number * 26 + ord(c) - 64
    return number


def check_spreadsheet(path: str | Path) -> None:
    """Refuse an xlsx/xlsm annotation before it is parsed when its zip members would decompress to more than
    FEATCACHE_MAX_SHEET_BYTES, or a sheet declares (or holds a cell that implies) more than FEATCACHE_MAX_SHEET_CELLS
    cells. An old .xls (not a zip) is left to its reader."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return
    max_bytes = _limit(MAX_SHEET_BYTES_ENV, MAX_SHEET_BYTES)
    max_cells = _limit(MAX_SHEET_CELLS_ENV, MAX_SHEET_CELLS)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            total = sum(m.file_size for m in members)
            if total > max_bytes:
                raise FeatcacheError(f"{path}: the spreadsheet unpacks to {total} bytes, over the limit of "
                                     f"{max_bytes}; set {MAX_SHEET_BYTES_ENV} to read it")
            for member in members:
                if not re.fullmatch(r"xl/worksheets/[^/]+\.xml", member.filename):
                    continue
                with archive.open(member) as handle:
                    head = handle.read(1 << 16)
                cells = _declared_cells(head)
                if cells > max_cells:
                    raise FeatcacheError(f"{path}: sheet {Path(member.filename).stem} declares {cells} cells, over "
                                         f"the limit of {max_cells}; set {MAX_SHEET_CELLS_ENV} to read it")
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:
        raise FeatcacheError(f"{path}: cannot read the spreadsheet ({exc})") from None


def _declared_cells(head: bytes) -> int:
    """Cells the `<dimension ref="A1:XFD1048576">` of a worksheet's first bytes spans (0 without one): the grid a
    reader allocates, whatever the cells really hold."""
    match = _DIMENSION.search(head)
    if not match:
        return 0
    col1, row1, col2, row2 = match.groups()
    col2, row2 = (col2 or col1), (row2 or row1)
    if not row2:
        return 0
    return _column_number(col2 or b"A") * int(row2)


# ------------------------------------------------------------------------------------------------- image folders

def check_inside_root(root: str | Path, paths: list[str]) -> None:
    """Refuse images whose real path (symlinks followed) lies outside the real dataset root: a shared database must
    not read files elsewhere on the machine. The root itself may be a symlink."""
    real_root = os.path.realpath(root)
    prefix = real_root.rstrip(os.sep) + os.sep
    outside = [rel for rel in paths if not os.path.realpath(os.path.join(root, rel)).startswith(prefix)]
    if outside:
        raise FeatcacheError(f"{len(outside)} image path(s) under {root} are symlinks that leave the dataset root "
                             f"and are not read: {named(printable(p) for p in outside)}")


# ------------------------------------------------------------------------------------------------- printed text

def printable(text: object, newlines: bool = False) -> str:
    """`text` for a terminal: control and format characters (Unicode categories Cc and Cf: escape sequences, carriage
    returns, bidirectional overrides) shown escaped as `\\x1b` or `\\u202e`, so text from a file cannot move the
    cursor, clear the screen or disguise itself. Tabs are kept, and line breaks too with `newlines`."""
    text = str(text)

    def shown(c: str) -> str:
        if c == "\t" or (newlines and c == "\n") or unicodedata.category(c) not in ("Cc", "Cf"):
            return c
        if c in "\n\r":
            return repr(c)[1:-1]
        return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"

    return "".join(shown(c) for c in text)


# ------------------------------------------------------------------------------------------------- HDF5 caches

def check_self_contained(f: h5py.File, path: str | Path, repairing: bool = False) -> None:
    """Refuse a cache that is not one self-contained HDF5 file: soft or external links, datasets stored in other
    files (external storage) or assembled from them (virtual datasets), objects of other kinds, and datasets that
    declare more than MAX_DECLARED_RATIO times the file's size or more than MAX_UNSTORED_BYTES beyond what they
    store (reading one would allocate memory the file does not back), and objects linked from more than one place
    (a cycle of groups). Every link is visited once.
    `repairing` (`featcache repair`, which drops them): soft and external links under /features are let through,
    and the declared sizes of datasets there are not checked; the caller must never follow those links, and reads
    only backbones that `featcache.store.backbone_problem` accepts."""
    try:
        size = os.path.getsize(f.filename)
    except OSError:
        size = 0
    limit = max(size, 1 << 16) * MAX_DECLARED_RATIO
    problems: list[str] = []

    def visit(name: str, link) -> None:
        if problems or isinstance(link, h5py.HardLink):
            return
        if repairing and name.startswith("features/"):
            return
        if isinstance(link, h5py.SoftLink):
            problems.append(f"/{name} is a soft link")
        elif isinstance(link, h5py.ExternalLink):
            problems.append(f"/{name} is a link to another file")
        else:
            problems.append(f"/{name} is a link of an unknown kind")
        if name.startswith("features/"):
            problems[-1] += " (`featcache repair` drops it)"

    try:
        f.visititems_links(visit)
        if not problems:
            f.visititems(lambda name, obj: _check_object(name, obj, limit, problems, repairing) if not problems
                         else None)
    except (RuntimeError, KeyError, OSError, ValueError, TypeError) as exc:
        problems.append(f"its structure cannot be read ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
    if problems:
        raise FeatcacheError(f"{path}: not a self-contained featcache cache: {printable(problems[0])}; it is not "
                             "read")


def _check_object(name: str, obj, limit: int, problems: list[str], repairing: bool = False) -> None:
    if h5py.h5o.get_info(obj.id).rc > 1:  # featcache links every object once; more makes aliases and cycles
        problems.append(f"/{name} is linked from more than one place")
        return
    if isinstance(obj, h5py.Group):
        return
    if not isinstance(obj, h5py.Dataset):
        problems.append(f"/{name} is not a group or dataset")
        return
    if obj.is_virtual:
        problems.append(f"/{name} is a virtual dataset (its data lives in other files)")
    elif obj.external:
        problems.append(f"/{name} is stored in another file ({printable(obj.external[0][0])})")
    elif obj.shape is not None and not (repairing and name.startswith("features/")):
        declared = int(np.prod(obj.shape, dtype=object)) * obj.dtype.itemsize
        if declared > limit:
            problems.append(f"/{name} declares shape {obj.shape} ({declared} bytes), more than the file can hold")
        elif declared > obj.id.get_storage_size() + MAX_UNSTORED_BYTES:
            problems.append(f"/{name} declares shape {obj.shape} ({declared} bytes) but stores only "
                            f"{obj.id.get_storage_size()} bytes (featcache writes its datasets in full)")
        if problems and name.startswith("features/"):
            problems[-1] += " (`featcache repair` drops its backbone; then extract it again)"
