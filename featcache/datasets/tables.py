"""Read an annotation table (CSV or spreadsheet) as text, so every adapter validates values the same way."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from featcache.errors import FeatcacheError
from featcache.untrusted import check_annotation_file

SPREADSHEET_SUFFIXES = (".xlsx", ".xlsm", ".xls")


def read_table(path: Path, header: bool = True, names: list[str] | None = None) -> pd.DataFrame:
    """Return the table with string cells ('' for empty) and a `row` column: the line number a person sees
    (header = 1 when it is the first line). Blank lines and rows are dropped but counted, so messages point at
    the right line; a CSV record whose quoted field holds line breaks is numbered by its first line."""
    path = Path(path)
    if not path.is_file():
        raise FeatcacheError(f"{path}: annotation file not found")
    check_annotation_file(path)  # a regular file, a spreadsheet within the limits: featcache.untrusted
    try:
        if path.suffix.lower() in SPREADSHEET_SUFFIXES:
            return _read_spreadsheet(path, header, names)
        _refuse_nul(path)
        frame = pd.read_csv(
            path, dtype=str, keep_default_na=False, encoding="utf-8-sig",
            header=0 if header else None, names=names,
        )
    except FeatcacheError:
        raise
    except Exception as exc:  # pandas raises many types for unreadable files
        raise FeatcacheError(f"{path}: cannot read annotation table ({type(exc).__name__}: {exc})") from exc
    frame = frame.fillna("")
    frame.columns = [str(c).strip() for c in frame.columns]
    starts = _csv_record_lines(path)
    if header:
        starts = starts[1:]
    if len(starts) != len(frame):  # the two parsers disagree on some odd file: count records, as pandas sees them
        starts = list(range(2 if header else 1, len(frame) + (2 if header else 1)))
    frame["row"] = starts
    return frame


def _refuse_nul(path: Path) -> None:
    """Refuse a CSV holding a NUL byte, naming the line it is on. Checked on the raw bytes, because CSV parsers
    disagree on a NUL (some end the field there), so a name holding one could otherwise pass as another name."""
    data = path.read_bytes()
    at = data.find(b"\x00")
    if at >= 0:
        line = data.count(b"\n", 0, at) + 1
        raise FeatcacheError(f"{path} row {line}: holds a NUL byte (\\x00), which no annotation field may hold")


def _csv_record_lines(path: Path) -> list[int]:
    """The line where each non-blank CSV record starts. pandas drops blank lines (only spaces or tabs) without
    saying where, so the csv module, which parses the default dialect as pandas does, counts physical lines."""
    last = [""]

    def lines(handle):
        for line in handle:
            last[0] = line
            yield line

    starts = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(lines(handle))
            end = 0
            for _record in reader:
                start, end = end + 1, reader.line_num
                if start == end and not last[0].rstrip("\r\n").strip(" \t"):
                    continue  # a blank line, which pandas skips
                starts.append(start)
    except (csv.Error, OSError, UnicodeError):
        return []  # read_table falls back to counting records
    return starts


def _read_spreadsheet(path: Path, header: bool, names: list[str] | None) -> pd.DataFrame:
    """read_excel keeps blank rows (as empty cells) and starts at row 1, so the grid's index + 1 is the spreadsheet
    row: blank rows are dropped here, and the first non-blank row is the header, as for a CSV."""
    grid = pd.read_excel(path, dtype=str, header=None)
    grid = grid.fillna("")
    grid.index = range(1, len(grid) + 1)
    grid = grid[[any(str(v).strip() for v in values) for values in grid.itertuples(index=False)]]
    if header:
        columns = _unique([str(c).strip() or f"Unnamed: {i}" for i, c in enumerate(grid.iloc[0])]) if len(grid) else []
        grid = grid.iloc[1:]
    else:
        given = list(names or [])
        columns = [*given, *(str(i) for i in range(len(given), grid.shape[1]))]
    frame = grid.reindex(columns=range(len(columns)), fill_value="")
    frame.columns = columns
    frame["row"] = grid.index
    return frame.reset_index(drop=True)


def _unique(columns: list[str]) -> list[str]:
    """Repeated header names get .1, .2 as pandas gives them, so the first keeps its name."""
    seen: dict[str, int] = {}
    out = []
    for column in columns:
        name = column
        while name in seen:
            seen[column] += 1
            name = f"{column}.{seen[column]}"
        seen[name] = 0
        out.append(name)
    return out


HEADER_SEARCH_ROWS = 100  # blank rows above a spreadsheet's header that detection looks past


def read_header(path: Path) -> list[str]:
    """Column names only (cheap), [] for an unreadable file."""
    try:
        if Path(path).suffix.lower() in SPREADSHEET_SUFFIXES:  # the first non-blank row, as read_table takes it
            grid = pd.read_excel(path, dtype=str, header=None, nrows=HEADER_SEARCH_ROWS).fillna("")
            for values in grid.itertuples(index=False):
                if any(str(v).strip() for v in values):
                    return [str(v).strip() for v in values if str(v).strip()]
            return []
        else:
            frame = pd.read_csv(path, nrows=0, encoding="utf-8-sig")
    except Exception:
        return []
    return [str(c).strip() for c in frame.columns]


def require_columns(frame: pd.DataFrame, columns: list[str], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        have = ", ".join(c for c in frame.columns if c != "row")
        raise FeatcacheError(f"{Path(path).name}: missing column(s) {', '.join(missing)} (has: {have})")


def resolve_dir(root: Path, candidates: tuple[str, ...], probe: str) -> str:
    """Pick the first candidate folder under root that holds `probe`; databases ship in slightly different layouts."""
    for candidate in candidates:
        if (root / candidate / probe).is_file():
            return candidate
    return candidates[0]


def join(folder: str, name: str) -> str:
    name = str(name).strip()
    if name.startswith(("/", "\\")) or name[1:3] in (":/", ":\\"):
        return name  # absolute: kept as is, so the sample check refuses it with the row number
    return f"{folder.rstrip('/')}/{name}" if folder else name
