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
import zlib
from pathlib import Path
from xml.parsers import expat

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

_CELL_REF = re.compile(r"\$?([A-Za-z]*)\$?([0-9]*)")
_HUGE = 10**18  # stands for a row or column number too long to be real: over any limit
_XML_START = (b"<", b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")  # XML, possibly after a byte-order mark


def _column_number(letters: str) -> int:
    if len(letters) > 8:
        return _HUGE
    number = 0
    for c in letters.upper():
        number = number * 26 + ord(c) - 64
    return number


def _cell(ref: str | None) -> tuple[int, int]:
    """(column, row) of a cell reference such as `XFD1048576`; 0 for a part that is missing or unreadable."""
    match = _CELL_REF.fullmatch((ref or "").strip())
    if not match:
        return 0, 0
    letters, digits = match.groups()
    return _column_number(letters), _row_number(digits)


def _row_number(digits: str) -> int:
    """The row number written as ASCII `digits`; 0 for none or others."""
    if not digits.isascii() or not digits.isdigit():
        return 0
    return int(digits) if len(digits) <= 18 else _HUGE


def check_spreadsheet(path: str | Path) -> None:
    """Refuse an xlsx/xlsm annotation before it is parsed when its zip members would decompress to more than
    FEATCACHE_MAX_SHEET_BYTES, or a sheet spans more than FEATCACHE_MAX_SHEET_CELLS cells: the rows times the
    columns that its `<dimension>` declares or its cells' positions imply, whichever is larger (the grid a reader
    allocates). Every XML member of the zip is parsed as a stream, whatever its name, so no sheet is missed; the
    XML parser refuses entity expansion. An old .xls (not a zip) is left to its reader."""
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
                if member.is_dir():
                    continue
                cells = _declared_cells(archive, member, max_cells)
                if cells > max_cells:
                    raise FeatcacheError(f"{path}: sheet {printable(Path(member.filename).stem)} declares {cells} "
                                         f"cells, over the limit of {max_cells}; set {MAX_SHEET_CELLS_ENV} to read "
                                         "it")
    except _NotXML as exc:
        raise FeatcacheError(f"{path}: {exc}; it is not read") from None
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError, zlib.error) as exc:
        raise FeatcacheError(f"{path}: cannot read the spreadsheet ({printable(exc)})") from None


def _declared_cells(archive: zipfile.ZipFile, member: zipfile.ZipInfo, max_cells: int) -> int:
    """Cells a worksheet member spans: the largest row times the largest column of its `<dimension ref>` and of its
    cells, where a `<row>` without `r` follows the previous row and a `<c>` without `r` the previous cell. 0 for a
    member that is not XML or holds no sheet. The member is fed to expat in 1 MiB pieces, keeping no tree, and
    parsing stops as soon as the span passes `max_cells`. A worksheet member (xl/worksheets/*.xml) that expat refuses
    (not well-formed, or an entity expansion bomb) is refused; any other member it refuses is skipped (a reader that
    took it for a sheet would fail on it too)."""
    worksheet = re.fullmatch(r"xl/worksheets/[^/]+\.xml", member.filename) is not None
    state = {"row": 0, "col": 0, "max_row": 0, "max_col": 0}
    path: list[str] = []  # local names of the open elements

    def start(tag: str, attrs: dict) -> None:
        name = tag.rpartition(":")[2]
        parent = path[-1] if path else ""
        path.append(name)
        if name == "row" and parent == "sheetData":
            state["row"] = _row_number(attrs.get("r", "").strip()) or state["row"] + 1
            state["col"] = 0
        elif name == "c" and parent == "row":
            col, row = _cell(attrs.get("r"))
            state["col"] = col or state["col"] + 1
            state["row"] = max(state["row"], row)
        elif name == "dimension" and parent == "worksheet":
            col, row = _cell((attrs.get("ref") or "").rpartition(":")[2])
            state["max_col"], state["max_row"] = max(state["max_col"], col), max(state["max_row"], row)
        else:
            return
        state["max_col"], state["max_row"] = max(state["max_col"], state["col"]), max(state["max_row"], state["row"])
        if state["max_col"] * state["max_row"] > max_cells:
            raise _OverLimit

    parser = expat.ParserCreate(namespace_separator=":")
    parser.StartElementHandler = start
    parser.EndElementHandler = lambda tag: path.pop()
    with archive.open(member) as handle:
        if not worksheet and not handle.peek(4)[:4].lstrip().startswith(_XML_START):
            return 0
        try:
            while chunk := handle.read(1 << 20):
                parser.Parse(chunk, False)
            parser.Parse(b"", True)
        except _OverLimit:
            pass
        except expat.ExpatError as exc:
            if worksheet:
                raise _NotXML(f"sheet {printable(Path(member.filename).stem)} cannot be read as XML "
                              f"({printable(exc)})") from None
    return state["max_col"] * state["max_row"]


class _OverLimit(Exception):
    """Raised from the parser's callback to stop reading a sheet already known to be over the limit."""


class _NotXML(ValueError):
    """A worksheet member that the XML parser refuses (malformed, or an entity expansion bomb)."""


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
