"""Slope frames and the paper's table as csv, md, latex, parquet or json.

Machine formats (csv, parquet, json) carry every column of the frame they are given, full precision.
Reading formats (md, latex) show a frame as a table: `slope_display` picks the columns a person reads,
and `paper_table` renders the paper's table with cells written for that format (Markdown sub/sup,
LaTeX math). LaTeX output is a booktabs tabular in which every text cell is escaped (`latex_escape`),
except the columns a caller marks as already LaTeX.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Literal

import polars as pl

from ssmscope.runs.analysis.slopes import (
    AGREE_TOL,
    CELL_KEYS,
    CONFIDENCE,
    FLAT_TOL,
    OPTIONAL_CONFIG_KEYS,
    PAPER_COLUMNS,
    paper_slopes,
)
from ssmscope.ssm.errors import ConfigError


class Format(StrEnum):
    """Output formats of `ssmscope slopes`."""

    CSV = "csv"
    MD = "md"
    LATEX = "latex"
    PARQUET = "parquet"
    JSON = "json"


BINARY_FORMATS = frozenset({Format.PARQUET})
"""Formats that need a file (--out): they cannot go to a terminal."""
TEXT_TABLE_FORMATS = frozenset({Format.MD, Format.LATEX})
"""Formats a person reads: shown with `slope_display` columns or as the rendered paper table."""
FLOAT_DIGITS = 3
"""Decimals of floats in md and latex tables (csv, parquet and json keep full precision)."""


def parse_format(fmt: Format | str) -> Format:
    """The Format named by `fmt`; a ConfigError naming the allowed values otherwise."""
    try:
        return Format(fmt)
    except ValueError:
        raise ConfigError(f"format={fmt!r}; allowed: {', '.join(f.value for f in Format)}") from None


# --- machine formats ---------------------------------------------------------------------------
def to_csv(frame: pl.DataFrame) -> str:
    """Every column, floats at full (round-trip) precision, nulls as empty fields, "" quoted."""
    return frame.write_csv()


def to_json(frame: pl.DataFrame) -> str:
    """A JSON array of row objects; NaN and null both become null."""
    return frame.write_json()


def write_parquet(frame: pl.DataFrame, path: Path) -> None:
    """Every column with its type."""
    frame.write_parquet(path)


# --- Markdown ----------------------------------------------------------------------------------
def _cell(value: object, digits: int) -> str:
    """A value as table text: floats at `digits` decimals, null/NaN empty, no stray -0.000."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        text = f"{value:.{digits}f}"
        return text[1:] if text.startswith("-") and float(text) == 0 else text
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _is_numeric(dtype: pl.DataType) -> bool:
    return dtype.is_numeric()


def markdown_escape(text: str) -> str:
    """Text safe inside a Markdown table cell: pipes escaped, newlines as spaces."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def to_markdown(frame: pl.DataFrame, *, digits: int = FLOAT_DIGITS, caption: str | None = None,
                raw_columns: Iterable[str] = ()) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned), with an optional caption line below.

    raw_columns hold Markdown already (e.g. <sub>/<sup> in paper cells): only their pipes are escaped.
    """
    raw = set(raw_columns)
    header = "| " + " | ".join(markdown_escape(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---:" if _is_numeric(t) else "---" for t in frame.dtypes) + "|"
    lines = [header, rule]
    for row in frame.iter_rows():
        cells = [_cell(v, digits) for v in row]
        cells = [c.replace("|", "\\|") if name in raw else markdown_escape(c)
                 for name, c in zip(frame.columns, cells, strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    if caption:
        lines += ["", " ".join(caption.splitlines())]
    return "\n".join(lines) + "\n"


# --- LaTeX ---------------------------------------------------------------------------------------
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
}
# Symbols the slope tables use, as math that pdflatex without extra packages typesets.
_LATEX_UNICODE = {
    "‖": r"\ensuremath{\|}", "Δ": r"\ensuremath{\Delta}", "δ": r"\ensuremath{\delta}",
    "±": r"\ensuremath{\pm}", "·": r"\ensuremath{\cdot}", "−": "-", "⊙": r"\ensuremath{\odot}",
    "Θ": r"\ensuremath{\Theta}",
    "∂": r"\ensuremath{\partial}", "✓": r"\ensuremath{\surd}", "✗": r"\ensuremath{\times}", "—": "---",
    "≤": r"\ensuremath{\le}", "≥": r"\ensuremath{\ge}", "µ": r"\ensuremath{\mu}", "μ": r"\ensuremath{\mu}",
    "≫": r"\ensuremath{\gg}", "…": r"\ldots{}",
}


def latex_escape(text: str) -> str:
    """Text safe in LaTeX text mode: \\ & % $ # _ { } ~ ^ < > | escaped, the tables' Unicode symbols as math.

    Character by character, so an escape is never escaped again and braces stay balanced.
    """
    return "".join(_LATEX_SPECIAL.get(ch) or _LATEX_UNICODE.get(ch) or ch for ch in text)


def to_latex(frame: pl.DataFrame, *, digits: int = FLOAT_DIGITS, caption: str | None = None,
             label: str | None = None, raw_columns: Iterable[str] = ()) -> str:
    """A booktabs table (\\usepackage{booktabs}); a table float when a caption or label is given.

    Every header and cell is escaped except the cells of raw_columns, which hold LaTeX already.
    """
    raw = set(raw_columns)
    spec = "".join("r" if _is_numeric(t) else "l" for t in frame.dtypes)
    body = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
            " & ".join(c if c in raw else latex_escape(c) for c in frame.columns) + r" \\", r"\midrule"]
    for row in frame.iter_rows():
        cells = [_cell(v, digits) for v in row]
        cells = [c if name in raw else latex_escape(c) for name, c in zip(frame.columns, cells, strict=True)]
        body.append(" & ".join(cells) + r" \\")
    body += [r"\bottomrule", r"\end{tabular}"]
    if caption is None and label is None:
        return "\n".join(body) + "\n"
    head = [r"\begin{table}[ht]", r"\centering"]
    if caption is not None:
        head.append(rf"\caption{{{latex_escape(caption)}}}")
    if label is not None:
        head.append(rf"\label{{{latex_escape(label)}}}")
    return "\n".join([*head, *body, r"\end{table}"]) + "\n"


# --- one entry point ---------------------------------------------------------------------------
def export(frame: pl.DataFrame, fmt: Format | str, out: Path | None = None, *, caption: str | None = None,
           raw_columns: Iterable[str] = ()) -> str | None:
    """Write `frame` in `fmt` to `out`, or return it as text when out is None (text formats only)."""
    fmt = parse_format(fmt)
    if fmt in BINARY_FORMATS:
        if out is None:
            raise ConfigError(f"format={fmt.value!r} is binary and needs an output file (--out)")
        write_parquet(frame, out)
        return None
    if fmt == Format.CSV:
        text = to_csv(frame)
    elif fmt == Format.JSON:
        text = to_json(frame)
    elif fmt == Format.MD:
        text = to_markdown(frame, caption=caption, raw_columns=raw_columns)
    else:
        text = to_latex(frame, caption=caption, raw_columns=raw_columns)
    if out is None:
        return text
    Path(out).write_text(text, encoding="utf-8")
    return None


# --- what a reader sees of a slope frame --------------------------------------------------------
DISPLAY_COLUMNS = ["term", "estimate", "se", "ci_low", "ci_high", "predicted", "verdict", "agreement",
                   "n_points", "n_seeds", "n_widths", "n_diverged", "status"]
"""Columns of a slope frame shown in md/latex after its cell keys (csv/parquet/json keep all)."""


def slope_display(slopes: pl.DataFrame) -> pl.DataFrame:
    """A slope frame narrowed for reading: cell keys that vary (or identify a row), then DISPLAY_COLUMNS."""
    keys = [k for k in [*CELL_KEYS[:4], *OPTIONAL_CONFIG_KEYS, *CELL_KEYS[4:]] if k in slopes.columns]
    always = {"preset", "discretization", "optimizer", "layer", "site", "quantity", "step"}
    shown = [k for k in keys if k in always or slopes.get_column(k).n_unique() > 1]
    return slopes.select(*shown, *(c for c in DISPLAY_COLUMNS if c in slopes.columns))


def slope_caption(slopes: pl.DataFrame) -> str:
    """One line saying what a slope table shows: convention, design, CI, thresholds."""

    def one(col: str) -> str:
        values = slopes.get_column(col).unique().to_list() if col in slopes.columns else []
        return ", ".join(str(v) for v in values) or "—"

    return (f"log2‖·‖ = a + s·log2(width) per cell; norm convention {one('convention')}, design "
            f"{one('design')}; CI: {CONFIDENCE:.0%}, seed bootstrap ∪ OLS; flat when |s| ≤ {FLAT_TOL}, "
            f"agrees when |s − predicted| ≤ {AGREE_TOL} or the CI covers it.")


# --- the paper's table -----------------------------------------------------------------------------
PaperStyle = Literal["text", "markdown", "latex"]
_HEADERS: dict[str, dict[str, str]] = {
    "text": {"x": "‖x‖", "y": "‖y‖", "dx": "‖Δx‖", "dy": "‖Δy‖"},
    "markdown": {"x": "‖x‖", "y": "‖y‖", "dx": "‖Δx‖", "dy": "‖Δy‖"},
    "latex": {"x": r"$\|x\|$", "y": r"$\|y\|$", "dx": r"$\|\Delta x\|$", "dy": r"$\|\Delta y\|$"},
}
_MARKS: dict[str, dict[str, str]] = {
    "text": {"agrees": "✓", "disagrees": "✗"},
    "markdown": {"agrees": "✓", "disagrees": "✗"},
    "latex": {"agrees": r"$\surd$", "disagrees": r"$\times$"},
}
_BASES = {"width": "width", "n_u": "N_u", "n_x": "N_x"}
_TERM_ORDER = {"n_x": 0, "width": 1, "n_u": 2}  # the paper writes N_x^a · N_u^b


def paper_header(column: str, style: PaperStyle) -> str:
    """Display header of a paper-table column ("x", "y", "dx", "dy") in a style."""
    return _HEADERS[style][column]


def _power(base: str, exponent: str, style: PaperStyle) -> str:
    """base^exponent in a style; `base` is "width", "N_u" or "N_x"."""
    if style == "latex":
        base = base if base.startswith("N_") else rf"\mathrm{{{base}}}"
        return f"{base}^{{{exponent}}}"
    if style == "markdown":
        base = f"N<sub>{base[2:]}</sub>" if base.startswith("N_") else base
        return f"{base}<sup>{exponent}</sup>"
    return f"{base}^{exponent}"


def _fmt_num(value: float, style: PaperStyle, digits: int | None = 2) -> str:
    """A number at `digits` decimals (None: shortest exact), never "-0.00"; Markdown gets a true minus."""
    text = f"{value:g}" if digits is None else f"{value:.{digits}f}"
    if text.startswith("-") and float(text) == 0:
        text = text[1:]
    return text.replace("-", "−") if style == "markdown" else text


def _paper_cell(terms: list[dict], style: PaperStyle) -> str:
    """One cell: measured exponent(s) ± half the CI width, verdict(s), predicted exponent(s), a mark."""
    if not terms:
        return "---" if style == "latex" else "—"
    if terms[0]["status"] != "ok":
        return f"{terms[0]['status'].replace('_', ' ')} (n={terms[0]['n_points']})"
    terms = sorted(terms, key=lambda t: _TERM_ORDER[t["term"]])
    pm, dot = (r"\pm", r"\,") if style == "latex" else ("±", "·")
    measured, predicted = [], []
    for t in terms:
        exponent = _fmt_num(t["estimate"], style)
        if t["ci_low"] is not None and t["ci_high"] is not None:
            exponent += f"{pm}{(t['ci_high'] - t['ci_low']) / 2:.2f}"
        measured.append(_power(_BASES[t["term"]], exponent, style))
        if t["predicted"] is not None:
            predicted.append(_power(_BASES[t["term"]], _fmt_num(t["predicted"], style, digits=None), style))
    log = {"latex": r"\log N_x", "markdown": "·log N<sub>x</sub>", "text": "·log N_x"}[style]
    log = log if any(t["log_x"] for t in terms) else ""
    verdicts = "/".join(t["verdict"] for t in terms)
    agreements = {t["agreement"] for t in terms}
    mark = ("disagrees" in agreements and _MARKS[style]["disagrees"]) or (
        agreements == {"agrees"} and _MARKS[style]["agrees"]) or ""
    if style == "latex":
        pred = f"${dot.join(predicted)}{log}$" if predicted else "none"
        return rf"${dot.join(measured)}$ {verdicts}; pred.\ {pred} {mark}".rstrip()
    pred = f"{dot.join(predicted)}{log}" if predicted else "none"
    return f"{dot.join(measured)} {verdicts}; pred {pred} {mark}".rstrip()


def format_paper_table(paper: pl.DataFrame, style: PaperStyle = "text") -> pl.DataFrame:
    """The paper's table from `runs.slopes.paper_slopes` rows: one row per configuration, one cell per column.

    Row keys: preset, discretization, optimizer, then lr / spec / task / dt_max / fixed_width / layer
    where they vary, then the step. Headers are written as the style writes them (‖x‖ … or LaTeX math).
    """
    if style not in _HEADERS:
        raise ConfigError(f"style={style!r}; allowed: {', '.join(_HEADERS)}")
    optional = ["lr", *OPTIONAL_CONFIG_KEYS, "fixed_width", "layer"]
    keys = ["preset", "discretization", "optimizer"]
    keys += [k for k in optional if k in paper.columns and paper.get_column(k).n_unique() > 1]
    keys.append("step")
    rows: dict[tuple, dict[str, list[dict]]] = {}
    for rec in paper.iter_rows(named=True):
        rows.setdefault(tuple(rec[k] for k in keys), {}).setdefault(rec["column"], []).append(rec)
    headers = [paper_header(c, style) for c in PAPER_COLUMNS]
    records = [(*key, *(_paper_cell(cells.get(c, []), style) for c in PAPER_COLUMNS))
               for key, cells in rows.items()]
    schema = {k: paper.schema[k] for k in keys} | dict.fromkeys(headers, pl.String)
    return pl.DataFrame(records, schema=schema, orient="row")


def paper_table(frame: pl.DataFrame, *, style: PaperStyle = "text", **fit_options: object) -> pl.DataFrame:
    """The paper's table (preset × discretization × optimizer by ‖x‖, ‖y‖, ‖Δx‖, ‖Δy‖) from a probe frame.

    Each cell: measured N_x^a·N_u^b (2-D) or width^s (joint) ± half the 95 % CI, the verdict,
    the predicted exponents and ✓ (agrees) / ✗ (disagrees). fit_options go to runs.slopes.paper_slopes
    (convention, design, layers, step, n_boot, rng_seed, include_failed).
    """
    return format_paper_table(paper_slopes(frame, **fit_options), style)  # type: ignore[arg-type]


def paper_caption(paper: pl.DataFrame) -> str:
    """One line saying how the paper table was measured."""
    return slope_caption(paper) + " Layers: mean of log2‖·‖ over layers unless a layer column is shown."
