"""Text from files, made safe to open in a spreadsheet: CSV cells that start like a formula get a leading `'`.

Names in the outputs (image paths, keys, generators, targets, backbones) come from files other people made. A
spreadsheet runs a cell that starts with `=`, `+`, `-` or `@` as a formula (and some read a leading tab or carriage
return the same way), so every such text cell is written with a leading `'`, which spreadsheets show as text.
Control and format characters (escape sequences, carriage returns, bidirectional overrides) in a text cell are
written escaped, as `featcache.untrusted.printable` shows them, so a file viewed in a terminal or a spreadsheet
cannot be disguised.
Numbers are written as numbers: only `str` cells are escaped, so a score of -0.5 stays -0.5.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(value):
    """Text (a `str`, not a `Number`) with its control and format characters escaped (`printable`; tabs kept) and a
    leading `'` when it then starts like a formula; anything else unchanged."""
    if isinstance(value, str) and not isinstance(value, Number):
        from featcache.untrusted import printable

        value = printable(value)
        return "'" + value if value.startswith(FORMULA_STARTS) else value
    return value


def csv_text(header: Iterable, rows: Iterable[Iterable]) -> str:
    """A whole CSV file (csv module's default dialect, `\\r\\n` line ends) with every cell through
    `spreadsheet_cell`: text cells get the escape where they need it; numbers, and numbers formatted as text and
    passed as `Number`, never do."""
    handle = io.StringIO()
    writer = csv.writer(handle)
    writer.writerow([spreadsheet_cell(v) for v in header])
    writer.writerows([[spreadsheet_cell(v) for v in row] for row in rows])
    return handle.getvalue()


class Number(str):
    """A number already formatted as text (`f"{score:.6f}"`): written as it is, never escaped."""
