"""How `featcache table` writes a cell in Markdown, LaTeX (booktabs) and CSV: the number, its marks (bold, tied,
below a floor), then its SD or 95% interval."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Cell:
    """One number of the table with what is shown beside it: its interval or SD, and its marks."""

    value: float
    low: float = float("nan")
    high: float = float("nan")
    sd: float = float("nan")
    bold: bool = False
    tied: bool = False
    below_floor: bool = False

    def numbers(self) -> list[float]:
        return [self.value, self.low, self.high, self.sd]


def fmt_number(value) -> str:
    """Three decimals, n/a for an undefined number; text as it is."""
    if isinstance(value, float):
        return f"{value:.3f}" if math.isfinite(value) else "n/a"
    return str(value)


MARKS = {"md": ("**{}**", "†", "°"), "latex": (r"\textbf{{{}}}", r"$^\dagger$", r"$^\circ$")}


def shown(cell: Cell, fmt: str) -> str:
    """A cell as md or latex shows it: the number (bold when separated), its marks, then its SD or interval."""
    bold, tied, below = MARKS[fmt]
    text = fmt_number(cell.value)
    text = (bold.format(text) if cell.bold else text) + (tied if cell.tied else "") + (below if cell.below_floor
                                                                                       else "")
    if math.isfinite(cell.sd):
        text += (r" $\pm$ " if fmt == "latex" else " ± ") + f"{cell.sd:.3f}"
    if math.isfinite(cell.low) and math.isfinite(cell.high):
        text += f" [{cell.low:.2f}, {cell.high:.2f}]"
    return text


def _mark_words(cell: Cell) -> str:
    return "; ".join(w for w, on in (("best", cell.bold), ("tied", cell.tied), ("below floor", cell.below_floor))
                     if on)


def csv_table(header: list[str], body: list[list], ci: bool, sd: bool) -> str:
    """CSV with each number in a column of its own, then `<column> low`/`high` (ci), `<column> SD` (sd) and
    `<column> mark` (best, tied, below floor); text cells escaped for spreadsheets."""
    from regressors.safe_text import Number, csv_text

    names = header[:3]
    for name in header[3:]:
        names += [name] + ([f"{name} low", f"{name} high"] if ci else []) + ([f"{name} SD"] if sd else []) + [
            f"{name} mark"]
    out = []
    for r in body:
        line = list(r[:3])
        for cell in r[3:]:
            line.append(Number(fmt_number(cell.value)))
            line += [Number(fmt_number(cell.low)), Number(fmt_number(cell.high))] if ci else []
            line += ([Number(fmt_number(cell.sd))] if sd else []) + [_mark_words(cell)]
        out.append(line)
    return csv_text(names, out)


def md_cell(text: str) -> str:
    """A markdown table cell: a `|` (which would end the cell) written `\\|`."""
    return text.replace("|", "\\|")


def tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                 ("$", r"\$"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        if a == "{" or a == "}":
            continue
        text = text.replace(a, b)
    for a, b in (("±", r"$\pm$"), ("†", r"$^\dagger$"), ("°", r"$^\circ$")):  # the caption's marks
        text = text.replace(a, b)
    return text


def latex_table(header: list[str], body: list[list], caption: str) -> str:
    """A booktabs table, the floors below a rule, the caption's marks in math mode."""
    columns = "lll" + "r" * (len(header) - 3)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{columns}}}", r"\toprule",
             " & ".join(tex(h) for h in header) + r" \\", r"\midrule"]
    floors_started = False
    for r in body:
        if str(r[0]).startswith("floor") and not floors_started:
            lines.append(r"\midrule")
            floors_started = True
        cells = [tex(v) if isinstance(v, str) else shown(v, "latex") for v in r]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{tex(caption)}}}", r"\end{table}", ""]
    return "\n".join(lines)
