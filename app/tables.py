"""Tables for the dashboard: the slope table's layouts with their colours, and the text of every download.

Downloads are produced by runs.analysis.export exactly as `ssmscope slopes` produces them
(`paper_output` / `full_output`: the same frame, caption and raw columns for each format), so a table
saved from the app equals the CLI's output for the same options.

On screen the paper's table has two layouts. "compact": a row per configuration and one cell per
quantity, a number (so the column sorts by the measured exponent) shown as "−0.48±0.05 (−½) ✓" (with NL
and a trend arrow where they apply) and coloured by agreement; narrow enough that all four quantities fit
a 1280-px window beside the sidebar.
"numeric": a row per fitted exponent with estimate, CI, prediction and verdict each in its own column.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import polars as pl
import streamlit as st

from ssmscope.runs.analysis import export
from ssmscope.runs.analysis.vocabulary import Agreement, Verdict
from ssmscope.runs.store.schema import RunStatus

FORMATS = {"csv": ("CSV", "text/csv", "csv"), "md": ("Markdown", "text/markdown", "md"),
           "latex": ("LaTeX", "application/x-tex", "tex")}
"""Table download formats: key → (button label, MIME type, file suffix)."""

AGREEMENT_COLOURS = {Agreement.AGREES: "#d5f0dc", Agreement.DISAGREES: "#f8d3d3", Agreement.NO_PREDICTION: "#eeeeee",
                     "not fitted": "#eeeeee"}
VERDICT_COLOURS = {Verdict.FLAT: "#1e7b34", Verdict.GROWS: "#b35900", Verdict.VANISHES: "#1f5fa8"}
STABILITY_COLOURS = {Verdict.FLAT: "#e3f4d7", Verdict.GROWS: "#fbd5b5", Verdict.VANISHES: "#d3e2f6"}
"""Cell backgrounds when the table is coloured by stability: flat green, grows orange, vanishes blue."""
COLOURINGS = {"stability": "stability: flat / grows / vanishes", "agreement": "agreement with the theory"}
"""How the slope table colours its cells (the page's default first)."""
COLOURING_LEGEND = {
    "stability": "Colour = stability with width: green flat (|s| small), orange grows, blue vanishes, grey not fitted.",
    "agreement": "Colour = agreement with the theory: green agrees with the predicted exponent, red disagrees, grey "
                 "no prediction or not fitted.",
}
READABLE_HEADERS = {
    "run_id": "run id", "spec": "sweep", "discretization": "discretisation", "n_u": "N_u", "n_x": "N_x",
    "n_layers": "layers", "last_finite_step": "last finite step", "wall_s": "wall s", "finished_at": "finished",
    "init_base": "init base", "fixed_width": "fixed width", "ci_low": "CI low", "ci_high": "CI high",
    "n_points": "points", "n_seeds": "seeds", "n_widths": "widths", "n_diverged": "diverged runs",
    "intercept": "a (intercept)", "log_x": "log N_x term", "width_lo": "smallest width", "width_hi": "largest width",
    "status": "status", "panel": "panel", "estimate": "s",
}
"""Screen headers of store columns (the data keep their names: downloads stay what `ssmscope` writes)."""
STATUS_COLOURS = {RunStatus.DIVERGED: "#fde2c8", RunStatus.FAILED: "#f8d3d3"}
SHORT_HEADERS = {"discretization": "disc", "optimizer": "optim", "fixed_width": "fixed"}
"""Row-key headers of the compact table, shortened so that its four quantities fit a 1280-px window."""
NUMBER = st.column_config.NumberColumn
SLOPE_COLUMN_CONFIG = {
    "estimate": NUMBER("s", help="measured exponent: log₂‖·‖ = a + s·log₂ width", format="%+.3f"),
    "ci_low": NUMBER("CI low", help="95 % CI (seed bootstrap ∪ OLS)", format="%+.3f"),
    "ci_high": NUMBER("CI high", help="95 % CI (seed bootstrap ∪ OLS)", format="%+.3f"),
    "predicted": st.column_config.Column("predicted", help="the exponent the theory predicts (docs/theory.md); "
                                         "sorts by its value"),
    "n_seeds": NUMBER("seeds"), "n_widths": NUMBER("widths"),
}
"""Column headers and formats of tables that list fits."""


# --- downloads --------------------------------------------------------------------------------------
def _exports(output: Any, rows: pl.DataFrame, notes: list[str]) -> dict[str, str]:
    """Every download format of a table: `output(rows, fmt, notes)` gives (frame, raw columns, caption)."""
    out = {}
    for fmt in FORMATS:
        frame, raw, caption = output(rows, fmt, notes)
        out[fmt] = export.export(frame, fmt, caption=caption, raw_columns=raw)
    return out


def paper_exports(paper: pl.DataFrame, notes: list[str] = ()) -> dict[str, str]:
    """The paper table (paper_slopes rows) as `ssmscope slopes --table paper --format …` writes it."""
    return _exports(export.paper_output, paper, list(notes))


def full_exports(slopes: pl.DataFrame, notes: list[str] = ()) -> dict[str, str]:
    """Every fitted cell as `ssmscope slopes --table full --format …` writes it."""
    return _exports(export.full_output, slopes, list(notes))


def frame_exports(frame: pl.DataFrame, caption: str) -> dict[str, str]:
    """Any frame (e.g. the drift table) in each download format."""
    return {fmt: export.export(frame, fmt, caption=caption) for fmt in FORMATS}


# --- the slope table on screen ------------------------------------------------------------------------
def readable_config(columns: list[str], config: dict[str, Any] | None = None) -> dict[str, Any]:
    """`config` plus a readable header (READABLE_HEADERS) for every other column in `columns` that has one."""
    out = dict(config or {})
    for c in columns:
        if c not in out and c in READABLE_HEADERS:
            out[c] = st.column_config.Column(READABLE_HEADERS[c])
    return out


def cell_verdicts(paper: pl.DataFrame, compact: export.CompactPaper) -> dict[str, list[str | None]]:
    """Quantity title → per compact row, the verdict (flat / grows / vanishes) of the cell's first term."""
    first: dict[tuple, str | None] = {}
    for rec in export.order_rows(paper).iter_rows(named=True):
        first.setdefault((*(rec[k] for k in compact.keys), rec["column"]), rec.get("verdict"))
    keys = compact.values.select(compact.keys).rows()
    titles = {export.QUANTITY_TITLES[c]: c for c in export.QUANTITY_TITLES}
    return {t: [first.get((*k, titles[t])) for k in keys] for t in compact.labels}


def compact_styled(paper: pl.DataFrame, colouring: str = "stability") -> tuple[Any, dict[str, Any]]:
    """The compact paper table as (Styler, column_config) for st.dataframe.

    Each quantity column holds the measured exponent (sorting orders by it) and shows the compact cell text;
    the background says (`colouring`) whether the norm is stable with width (flat / grows / vanishes) or whether
    it agrees with the prediction. Row keys get short headers.
    """
    compact = export.compact_paper(paper)
    verdicts = cell_verdicts(paper, compact) if colouring == "stability" else {}
    pdf = compact.values.to_pandas()
    style = pdf.style
    for title, labels in compact.labels.items():
        col = pdf.columns.get_loc(title)
        for i, label in enumerate(labels):
            style = style.format(lambda _v, text=label: text, subset=pd.IndexSlice[pdf.index[i], pdf.columns[col]])
        colours = ([f"background-color: {STABILITY_COLOURS.get(v, '#eeeeee')}" for v in verdicts[title]]
                   if colouring == "stability" else
                   [f"background-color: {AGREEMENT_COLOURS.get(a, '')}" for a in compact.agreements[title]])
        style = style.apply(lambda _s, c=colours: c, subset=[title], axis=0)
    config: dict[str, Any] = {k: st.column_config.Column(SHORT_HEADERS.get(k, k)) for k in compact.keys}
    config |= {t: NUMBER(t, help=f"{t}: measured exponent ± half its 95 % CI (predicted exponent); ✓ agrees, "
                         "✗ disagrees; NL outside linear response; →/← the local slopes still move toward/away "
                         "from the prediction; sorts by the measured exponent") for t in compact.labels}
    return style, config


def numeric_styled(paper: pl.DataFrame, colouring: str = "stability") -> tuple[Any, dict[str, Any]]:
    """The numeric paper table (one row per fitted exponent) as (Styler, column_config); `colouring` "stability"
    colours the estimate by its verdict, "agreement" the agreement column."""
    frame = export.numeric_paper(paper)
    pdf = frame.to_pandas()
    style = pdf.style.format(_predicted, subset=["predicted"])
    if colouring == "stability":
        colours = [f"background-color: {STABILITY_COLOURS.get(_verdict_of(v), '#eeeeee')}" for v in pdf["verdict"]]
        style = style.apply(lambda _s: colours, subset=["estimate"], axis=0)
    else:
        style = style.map(_agreement_colour, subset=["agreement"])
    config: dict[str, Any] = dict(SLOPE_COLUMN_CONFIG) | {k: st.column_config.Column(SHORT_HEADERS.get(k, k))
                                                          for k in ("discretization", "optimizer")}
    return style, readable_config(list(frame.columns), config)


def _verdict_of(words: Any) -> str | None:
    """The verdict a worded verdict starts with ("flat, as predicted" → flat)."""
    text = str(words or "")
    return next((v for v in Verdict if text.startswith(str(v))), None)


def _stability_colour(value: Any) -> str:
    return f"background-color: {STABILITY_COLOURS[value]}" if value in STABILITY_COLOURS else ""


def _predicted(value: Any) -> str:
    """A predicted exponent in a table cell, +½ or −1 (the number stays underneath, so the column sorts by it;
    a missing one shows as Streamlit shows every missing value, and the verdict says "no prediction")."""
    return export.exponent_text(value)


def _agreement_colour(value: Any) -> str:
    return f"background-color: {AGREEMENT_COLOURS[value]}" if value in AGREEMENT_COLOURS else ""


def _verdict_colour(value: Any) -> str:
    return f"color: {VERDICT_COLOURS[value]}; font-weight: 600" if value in VERDICT_COLOURS else ""


def styled(frame: pl.DataFrame, *, cells: list[str] = (), verdicts: list[str] = (), stable: list[str] = (),
           float_digits: int = 4):
    """A pandas Styler for st.dataframe: agreement colours on `cells`, verdict text colours on `verdicts`, stability
    backgrounds on `stable` (columns holding a verdict)."""
    pdf = frame.to_pandas()
    style = pdf.style
    cells = [c for c in cells if c in pdf.columns]
    verdicts = [c for c in verdicts if c in pdf.columns]
    stable = [c for c in stable if c in pdf.columns]
    if cells:
        style = style.map(_agreement_colour, subset=cells)
    if verdicts:
        style = style.map(_verdict_colour, subset=verdicts)
    if stable:
        style = style.map(_stability_colour, subset=stable)
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
