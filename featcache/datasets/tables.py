"""Read an annotation table (CSV or spreadsheet) as text, so every adapter validates values the same way."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from featcache.errors import FeatcacheError

SPREADSHEET_SUFFIXES = (".xlsx", ".xlsm", ".xls")


def read_table(path: Path, header: bool = True, names: list[str] | None = None) -> pd.DataFrame:
    """Return the table with string cells ('' for empty) and a `row` column: the line number a person sees."""
    path = Path(path)
    if not path.is_file():
        raise FeatcacheError(f"{path}: annotation file not found")
    try:
        if path.suffix.lower() in SPREADSHEET_SUFFIXES:
            frame = pd.read_excel(path, dtype=str, header=0 if header else None, names=names)
        else:
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
    frame["row"] = range(2 if header else 1, len(frame) + (2 if header else 1))
    return frame


def read_header(path: Path) -> list[str]:
    """Column names only (cheap), [] for an unreadable file."""
    try:
        if Path(path).suffix.lower() in SPREADSHEET_SUFFIXES:
            frame = pd.read_excel(path, nrows=0)
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
