"""Tables for the dashboard: verdict colours for display, and the text of every table download.

Downloads are produced by runs.export exactly as `ssmscope slopes` produces them (the same frame,
caption and raw columns for each format), so a table saved from the app equals the CLI's output
for the same options.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from ssmscope.runs.analysis import export
from ssmscope.runs.analysis.slopes import PAPER_COLUMNS

FORMATS = {"csv": ("CSV", "text/csv", "csv"), "md": ("Markdown", "text/markdown", "md"),
           "latex": ("LaTeX", "application/x-tex", "tex")}
"""Table download formats: key → (button label, MIME type, file suffix)."""

AGREEMENT_COLOURS = {"agrees": "#d5f0dc", "disagrees": "#f8d3d3", "no prediction": "#eeeeee",
                     "not fitted": "#eeeeee"}
VERDICT_COLOURS = {"flat": "#1e7b34", "grows": "#b35900", "vanishes": "#1f5fa8"}
STATUS_COLOURS = {"diverged": "#fde2c8", "failed": "#f8d3d3"}


# --- downloads --------------------------------------------------------------------------------------
def paper_exports(paper: pl.DataFrame) -> dict[str, str]:
    """The paper table (runs.slopes.paper_slopes rows) as `ssmscope slopes --table paper --format …` writes it."""
    caption = export.paper_caption(paper)
    out = {"csv": export.export(paper, "csv", caption=caption)}
    for fmt, style in (("md", "markdown"), ("latex", "latex")):
        if paper.is_empty():
            out[fmt] = export.export(paper, fmt, caption=caption)
            continue
        raw = [export.paper_header(c, style) for c in PAPER_COLUMNS]
        out[fmt] = export.export(export.format_paper_table(paper, style), fmt, caption=caption, raw_columns=raw)
    return out


def full_exports(slopes: pl.DataFrame) -> dict[str, str]:
    """Every fitted cell as `ssmscope slopes --table full --format …` writes it."""
    caption = export.slope_caption(slopes)
    return {"csv": export.export(slopes, "csv", caption=caption),
            "md": export.export(export.slope_display(slopes), "md", caption=caption),
            "latex": export.export(export.slope_display(slopes), "latex", caption=caption)}


def frame_exports(frame: pl.DataFrame, caption: str) -> dict[str, str]:
    """Any frame (e.g. the drift table) in each download format."""
    return {fmt: export.export(frame, fmt, caption=caption) for fmt in FORMATS}


# --- display ----------------------------------------------------------------------------------------
def paper_display(paper: pl.DataFrame) -> pl.DataFrame:
    """The paper's table as plain text cells (✓ agrees, ✗ disagrees) for the screen."""
    return export.format_paper_table(paper, "text")


def _cell_colour(value: Any) -> str:
    """Background of a paper-table cell from its mark, or of an agreement cell from its value."""
    if not isinstance(value, str):
        return ""
    if value in AGREEMENT_COLOURS:
        return f"background-color: {AGREEMENT_COLOURS[value]}"
    if value.endswith("✓"):
        return f"background-color: {AGREEMENT_COLOURS['agrees']}"
    if value.endswith("✗"):
        return f"background-color: {AGREEMENT_COLOURS['disagrees']}"
    return ""


def _verdict_colour(value: Any) -> str:
    return f"color: {VERDICT_COLOURS[value]}; font-weight: 600" if value in VERDICT_COLOURS else ""


def styled(frame: pl.DataFrame, *, cells: list[str] = (), verdicts: list[str] = (), float_digits: int = 4):
    """A pandas Styler for st.dataframe: agreement colours on `cells`, verdict colours on `verdicts`."""
    pdf = frame.to_pandas()
    style = pdf.style
    cells = [c for c in cells if c in pdf.columns]
    verdicts = [c for c in verdicts if c in pdf.columns]
    if cells:
        style = style.map(_cell_colour, subset=cells)
    if verdicts:
        style = style.map(_verdict_colour, subset=verdicts)
    floats = [c for c, t in zip(frame.columns, frame.dtypes, strict=True) if t.is_float()]
    if floats:
        style = style.format(dict.fromkeys(floats, lambda v: _number(v, float_digits)))
    return style


def _number(value: Any, digits: int) -> str:
    """A float for reading: `digits` significant digits, round-off (|v| < 1e-9) as 0, NaN and null empty."""
    if value is None or value != value:
        return ""
    return "0" if abs(value) < 1e-9 else f"{value:.{digits}g}"


def status_styled(frame: pl.DataFrame):
    """Runs with diverged or failed status highlighted (whole row)."""
    pdf = frame.to_pandas()

    def row_style(row: Any) -> list[str]:
        colour = STATUS_COLOURS.get(row.get("status"), "")
        return [f"background-color: {colour}" if colour else ""] * len(row)

    return pdf.style.apply(row_style, axis=1)
