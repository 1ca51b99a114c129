"""One table model and its writers, for ``gumbel table`` and the report of ``gumbel reproduce``.

A :class:`Table` is columns and rows of cells. A cell says how it is written: its text (Markdown,
LaTeX, HTML), its terminal markup, its CSV fields and whether it is a difference beyond the seed
spread (coloured). The cells: :class:`Plain` (text), :class:`Number`, :class:`Mean` (mean ± std),
:class:`Difference` (Δ, ``*`` beyond the spread) and :class:`MeanAndDifference` (``gumbel
table``'s mean ± std (+Δ*)). The writers: :func:`to_rich`, :func:`to_markdown`,
:func:`to_latex`, :func:`to_csv` and :func:`to_html`.
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Group
from rich.markup import escape
from rich.table import Table as RichTable

from gumbel_analysis.experiments.stats import Delta, Stat

DASH = "–"
#: The writers; a column is shown by those named in its ``show``.
WRITERS = frozenset({"rich", "markdown", "latex", "csv", "html"})


def number(value: float | None, digits: int, sign: bool = False) -> str:
    """``value`` with ``digits`` decimals (and its sign), ``–`` when missing or not finite."""
    if value is None or not math.isfinite(value):
        return DASH
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def csv_value(value: Any) -> str:
    """A CSV field: empty for None or a non-finite float, true/false, floats as repr."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return str(value)


class Cell:
    """How one value is written; subclasses say what differs from text."""

    def text(self, digits: int) -> str:
        """The cell in Markdown, LaTeX and HTML (before escaping)."""
        raise NotImplementedError

    def rich(self, digits: int) -> str:
        """The cell as rich markup."""
        return escape(self.text(digits))

    def fields(self, name: str) -> dict[str, str]:
        """The cell's CSV fields, in the column ``name``."""
        return {name: self.text(17)}

    @property
    def trend(self) -> int:
        """+1 / -1: a difference beyond the seed spread, up or down; 0 otherwise."""
        return 0


@dataclass(frozen=True)
class Plain(Cell):
    """Text, with its own CSV value and terminal markup where they differ."""

    shown: str
    value: str | None = None  # the CSV field (default: the text)
    markup: str | None = None  # the rich markup (default: the escaped text)

    def text(self, digits: int) -> str:
        return self.shown

    def rich(self, digits: int) -> str:
        return escape(self.shown) if self.markup is None else self.markup

    def fields(self, name: str) -> dict[str, str]:
        return {name: self.shown if self.value is None else self.value}


#: An empty cell: ``–``, an empty CSV field.
EMPTY = Plain(DASH, "")


@dataclass(frozen=True)
class Number(Cell):
    value: float

    def text(self, digits: int) -> str:
        return f"{self.value:.{digits}f}"

    def fields(self, name: str) -> dict[str, str]:
        return {name: csv_value(self.value)}


@dataclass(frozen=True)
class Mean(Cell):
    """``mean ± std`` (``mean`` alone without a spread); CSV: the mean, ``_std`` and ``_n``."""

    stat: Stat

    def text(self, digits: int) -> str:
        text = f"{self.stat.mean:.{digits}f}"
        return text + (f" ± {self.stat.std:.{digits}f}" if self.stat.std is not None else "")

    def fields(self, name: str) -> dict[str, str]:
        s = self.stat
        return {name: csv_value(s.mean), f"{name}_std": csv_value(s.std), f"{name}_n": str(s.n)}


def delta_fields(name: str, d: Delta | None) -> dict[str, str]:
    """A difference's test in CSV: ``_se``, ``_t``, ``_df``, ``_p`` and ``_exceeds`` (the test
    rejects at 5%), empty where a side has one run."""
    return {
        f"{name}_se": csv_value(d.se if d else None),
        f"{name}_t": csv_value(d.t if d else None),
        f"{name}_df": csv_value(d.df if d else None),
        f"{name}_p": csv_value(d.p if d else None),
        f"{name}_exceeds": csv_value(d.exceeds if d else None),
    }


def _trend(delta: Delta | None) -> int:
    if delta is None or not delta.exceeds:
        return 0
    return 1 if delta.delta > 0 else -1


@dataclass(frozen=True)
class Difference(Cell):
    """``+Δ``, ``*`` where its t test rejects at 5%; CSV: Δ and its test (``delta_fields``)."""

    delta: Delta

    def text(self, digits: int) -> str:
        return f"{self.delta.delta:+.{digits}f}" + ("*" if self.delta.exceeds else "")

    def fields(self, name: str) -> dict[str, str]:
        return {name: csv_value(self.delta.delta)} | delta_fields(name, self.delta)

    @property
    def trend(self) -> int:
        return _trend(self.delta)


@dataclass(frozen=True)
class MeanAndDifference(Cell):
    """``mean ± std (+Δ*)``: ``–`` for a missing std or value, ``?`` for a Δ of unknown SE;
    CSV: the mean and ``_std``, with a baseline ``_delta`` and its test (``delta_fields``)."""

    stat: Stat | None
    delta: Delta | None = None
    with_delta: bool = False  # the table has a baseline: CSV has the delta fields

    def text(self, digits: int, pm: str = " ± ", between: str = " (", end: str = ")") -> str:
        if self.stat is None:
            return DASH
        text = f"{number(self.stat.mean, digits)}{pm}{number(self.stat.std, digits)}"
        if self.delta is not None:
            mark = "?" if self.delta.exceeds is None else "*" if self.delta.exceeds else ""
            text += f"{between}{number(self.delta.delta, digits, sign=True)}{mark}{end}"
        return text

    def rich(self, digits: int) -> str:
        """``mean±std``, and under it the delta (green or red beyond the spread)."""
        text = self.text(digits, pm="±", between="\n", end="")
        if self.trend:
            return f"[{'green' if self.trend > 0 else 'red'}]{text}[/]"
        return text

    def fields(self, name: str) -> dict[str, str]:
        stat, delta = self.stat, self.delta
        out = {
            name: csv_value(stat.mean if stat else None),
            f"{name}_std": csv_value(stat.std if stat else None),
        }
        if self.with_delta:
            out[f"{name}_delta"] = csv_value(delta.delta if delta else None)
            out |= delta_fields(name, delta)
        return out

    @property
    def trend(self) -> int:
        return _trend(self.delta)


def as_cell(value: Any) -> Cell:
    """A cell of a plain value: None, str, float, Stat, Delta, or a Cell as it is."""
    if isinstance(value, Cell):
        return value
    if value is None:
        return EMPTY
    if isinstance(value, Stat):
        return Mean(value)
    if isinstance(value, Delta):
        return Difference(value)
    if isinstance(value, float):
        return Number(value)
    return Plain(str(value))


@dataclass(frozen=True)
class Column:
    key: str  # its CSV field
    header: str = ""  # default: the key
    right: bool = False  # right-aligned (Markdown ---:, LaTeX r, the terminal)
    latex: str | None = None  # its LaTeX header, where it is not the escaped header
    fields: tuple[str, ...] = ()  # CSV fields it always has (besides those its cells give)
    show: frozenset[str] = WRITERS  # the writers that show it

    @property
    def title(self) -> str:
        return self.header or self.key


@dataclass
class Table:
    """Columns and rows of cells, a caption and the decimals of the numbers."""

    columns: list[Column]
    rows: list[list[Cell]]
    caption: str = ""
    digits: int = 1
    title: str = ""  # the terminal's title (rich markup)
    notes: list[str] = field(default_factory=list)  # rich markup lines below the terminal table
    bold: frozenset[int] = frozenset()  # rows shown in bold in the terminal

    def shown(self, writer: str) -> list[tuple[int, Column]]:
        """The columns that ``writer`` shows, with their positions in a row."""
        return [(i, c) for i, c in enumerate(self.columns) if writer in c.show]


def table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "", digits: int = 1
) -> Table:
    """A table of plain values (see :func:`as_cell`) under the given headers."""
    cells = [[as_cell(v) for v in row] for row in rows]
    return Table([Column(h) for h in headers], cells, caption, digits)


# --- writers ------------------------------------------------------------------------------------


def _md_line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", r"\|") for c in cells) + " |"


def to_markdown(table: Table) -> str:
    """A pipe table, then the caption (if any)."""
    shown = table.shown("markdown")
    lines = [
        _md_line([c.title for _, c in shown]),
        "| " + " | ".join("---:" if c.right else "---" for _, c in shown) + " |",
    ]
    lines += [_md_line([row[i].text(table.digits) for i, _ in shown]) for row in table.rows]
    return "\n".join(lines) + ("\n\n" + table.caption if table.caption else "") + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "σ": r"$\sigma$",
    "±": r"$\pm$",
    DASH: "--",
    "*": r"$^{*}$",
    "?": r"$^{?}$",
}


def latex_escape(text: str) -> str:
    """``text`` for a LaTeX tabular (σ, ±, – and the marks as math)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(table: Table) -> str:
    """A ``tabular`` with the caption as a comment above it."""
    shown = table.shown("latex")
    spec = "".join("r" if c.right else "l" for _, c in shown)
    header = [c.latex if c.latex is not None else latex_escape(c.title) for _, c in shown]
    body = [[latex_escape(row[i].text(table.digits)) for i, _ in shown] for row in table.rows]
    lines = [
        *(["% " + table.caption.replace("%", r"\%")] if table.caption else []),
        rf"\begin{{tabular}}{{{spec}}}",
        r"\hline",
        " & ".join(header) + r" \\",
        r"\hline",
        *(" & ".join(cells) + r" \\" for cells in body),
        r"\hline",
        r"\end{tabular}",
    ]
    return "\n".join(lines) + "\n"


def to_csv(table: Table, order: Sequence[str] | None = None) -> str:
    """One line per row; each column's fields side by side (its declared ones, then those its
    cells give), columns in the table's order or that of the keys in ``order``."""
    shown = table.shown("csv")
    if order is not None:
        shown.sort(key=lambda ic: list(order).index(ic[1].key))
    rows = [{c.key: row[i].fields(c.key) for i, c in shown} for row in table.rows]
    header: list[str] = []
    for _, column in shown:
        for name in (*column.fields, *(k for row in rows for k in row[column.key])):
            if name not in header:
                header.append(name)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, header, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: v for f in row.values() for k, v in f.items()} for row in rows)
    return buffer.getvalue()


def to_html(table: Table) -> str:
    """An HTML table; differences beyond the spread get the class ``up`` or ``down``."""
    shown = table.shown("html")
    head = "".join(f"<th>{html.escape(c.title)}</th>" for _, c in shown)
    body = []
    for row in table.rows:
        cells = []
        for i, _ in shown:
            trend = row[i].trend
            cls = "" if not trend else " class='up'" if trend > 0 else " class='down'"
            cells.append(f"<td{cls}>{html.escape(row[i].text(table.digits))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    caption = f"<caption>{html.escape(table.caption)}</caption>" if table.caption else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def to_rich(table: Table) -> Group:
    """A rich table under ``table.title`` with the caption below it, then ``table.notes``."""
    shown = table.shown("rich")
    out = RichTable(
        title=table.title or None,
        caption=table.caption or None,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for i, column in shown:
        if column.right:
            out.add_column(column.title, justify="right", no_wrap=True)
            continue
        longest = max((len(row[i].text(table.digits)) for row in table.rows), default=0)
        out.add_column(column.title, min_width=max(len(column.title), min(longest, 8)))
    for n, row in enumerate(table.rows):
        style = "bold" if n in table.bold else None
        out.add_row(*(row[i].rich(table.digits) for i, _ in shown), style=style)
    return Group(out, *table.notes)
