"""Slope tables for a terminal: `ssmscope slopes --format table` (the default on a TTY) and `make demo`.

The paper's table is drawn compact (runs.analysis.export.compact_paper: one short cell per quantity,
"−0.48±0.05 (−½) ✓", green where the measurement agrees with the prediction, red where it does not),
so the four quantities fit a terminal of about 120 columns; every fitted cell (`--table full`) is drawn from
slope_display's columns with numbers at three decimals. Plain text (no markup) when written to a file.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ssmscope.runs.analysis.vocabulary import Agreement

if TYPE_CHECKING:
    import polars as pl

AGREEMENT_STYLES = {Agreement.AGREES: "green", Agreement.DISAGREES: "bold red", Agreement.NO_PREDICTION: "dim",
                    Agreement.NOT_FITTED: "dim"}
"""Colour of a cell by its agreement with the prediction."""


def _text(value: object, digits: int = 3) -> str:
    """A cell as text: floats at `digits` decimals (never -0.000), null and NaN empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        text = f"{value:.{digits}f}"
        return text[1:] if text.startswith("-") and float(text) == 0 else text
    return str(value)


SHORT_HEADERS = {"discretization": "disc", "optimizer": "optim", "quantity": "qty", "estimate": "s",
                 "predicted": "pred", "n_seeds": "seeds", "fixed_width": "fixed", "contribution_ratio": "alone/all",
                 "energy_share": "share"}
"""Column headers shortened for a terminal (the data keeps its names)."""
FULL_COLUMNS = ("term", "estimate", "ci_low", "ci_high", "predicted", "verdict", "regime", "trend",
                "contribution_ratio", "energy_share", "n_seeds", "status")
"""What the terminal shows of each fit after its keys (files keep every column)."""


def _table(title: str | None) -> Table:
    return Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False, show_edge=False)


def paper_rich_table(paper: pl.DataFrame, title: str | None = None) -> Table:
    """The paper's table, compact: a row per configuration, a coloured cell per quantity."""
    from ssmscope.runs.analysis.export import compact_paper

    compact = compact_paper(paper)
    table = _table(title)
    for key in compact.keys:
        table.add_column(SHORT_HEADERS.get(key, key), no_wrap=True,
                         justify="right" if compact.values.schema[key].is_numeric() else "left")
    titles = list(compact.labels)
    for title_ in titles:
        table.add_column(title_, no_wrap=True)
    for i, row in enumerate(compact.values.select(compact.keys).iter_rows()):
        cells = [Text(_text(v)) for v in row]
        cells += [Text(compact.labels[t][i], style=AGREEMENT_STYLES.get(compact.agreements[t][i], ""))
                  for t in titles]
        table.add_row(*cells)
    return table


def constant_columns(frame: pl.DataFrame, columns: list[str]) -> dict[str, object]:
    """The columns among `columns` that hold one value in every row (with that value), for a table to state
    once above itself instead of repeating in every row."""
    if frame.height < 2:
        return {}
    return {c: frame[c][0] for c in columns if frame[c].n_unique() == 1}


def full_rich_table(slopes: pl.DataFrame, title: str | None = None) -> Table:
    """Every fitted cell: its keys, then s, CI, prediction and the verdict in words, coloured by agreement.

    A terminal is narrow: key columns that hold one value in every row (and a `term` that is always
    `width`) are said once in the title ("optimizer adam · step 4") instead of in every row."""
    from ssmscope.runs.analysis.export import FLOAT_DIGITS, slope_display, worded

    shown = slope_display(worded(slopes))
    keys = shown.columns[:shown.columns.index("term")]
    columns = [*keys, *(c for c in FULL_COLUMNS if c in shown.columns)]
    same = constant_columns(shown, [c for c in columns if c not in ("estimate", "verdict")])
    columns = [c for c in columns if c not in same]
    said = " · ".join(f"{SHORT_HEADERS.get(k, k)} {'mean' if k == 'layer' and v is None else _text(v)}"
                      for k, v in same.items())
    title = " — ".join(t for t in (title, said) if t) or None
    table = _table(title)
    for name in columns:
        table.add_column(SHORT_HEADERS.get(name, name), no_wrap=True,
                         justify="right" if shown.schema[name].is_numeric() else "left")
    for row in shown.iter_rows(named=True):
        style = AGREEMENT_STYLES.get(row["agreement"], "")
        table.add_row(*(Text("all" if name == "group" and not row[name] else _text(row[name], FLOAT_DIGITS),
                             style=style if name == "verdict" else "") for name in columns))
    return table


def render(table: Table, caption: str, *, width: int | None = None, colour: bool = True) -> str:
    """The table and its caption as text (ANSI colours when `colour`), for a terminal or a file (the console
    records what it prints; its own output goes to a throwaway buffer)."""
    console = Console(width=width or 200, record=True, file=io.StringIO(), force_terminal=colour,
                      color_system="standard" if colour else None, highlight=False)
    console.print(table)
    console.print(caption, soft_wrap=False, overflow="fold", markup=False)
    return console.export_text(styles=colour)


def print_table(console: Console, table: Table, caption: str) -> None:
    """Print the table and its caption on `console` (its width and colours)."""
    console.print(table)
    console.print(caption, markup=False, highlight=False)
