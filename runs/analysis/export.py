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
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from pathlib import Path
from typing import Literal

import polars as pl

from ssmscope.runs.analysis.equivalence import coincidences
from ssmscope.runs.analysis.regime import REGIME_THRESHOLD
from ssmscope.runs.analysis.slopes import (
    AGREE_TOL,
    CELL_KEYS,
    CONFIDENCE,
    FLAT_TOL,
    OPTIONAL_CONFIG_KEYS,
    PAPER_COLUMNS,
    paper_slopes,
)
from ssmscope.runs.analysis.vocabulary import Agreement, FitStatus, Regime, Trend, Verdict
from ssmscope.runs.store.schema import PARAMETERIZATION_KEYS
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
    "≫": r"\ensuremath{\gg}", "…": r"\ldots{}", "½": r"\ensuremath{\frac12}", "∪": r"\ensuremath{\cup}",
    "∩": r"\ensuremath{\cap}", "√": r"\ensuremath{\surd}", "≈": r"\ensuremath{\approx}",
    "×": r"\ensuremath{\times}", "✕": r"\ensuremath{\times}", "→": r"\ensuremath{\to}",
    "←": r"\ensuremath{\leftarrow}", "η": r"\ensuremath{\eta}", "ρ": r"\ensuremath{\rho}",
    "σ": r"\ensuremath{\sigma}", "∞": r"\ensuremath{\infty}", "≠": r"\ensuremath{\ne}", "–": "--",
    "▼": "v", "★": "*", "’": "'", "‘": "`", "“": "``", "”": "''", "\u00a0": "~",
    **{sup: rf"\ensuremath{{^{{{asc}}}}}" for sup, asc in zip("⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻", "0123456789+-", strict=True)},
    **{sub: rf"\ensuremath{{_{{{asc}}}}}" for sub, asc in zip("₀₁₂₃₄₅₆₇₈₉ₓᵤ", "0123456789xu", strict=True)},
}


def _ascii(ch: str) -> str:
    """A character no table uses knowingly, as ASCII: its compatibility decomposition's ASCII part (é → e), else ?."""
    import unicodedata

    folded = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode("ascii")
    return "".join(_LATEX_SPECIAL.get(c, c) for c in folded) or "?"


def latex_escape(text: str) -> str:
    """Text safe in LaTeX text mode and pure ASCII (pdflatex rejects what its input encoding lacks):
    \\ & % $ # _ { } ~ ^ < > | escaped, the tables' Unicode symbols as math macros (‖ → \\|, ± → \\pm,
    ½ → \\frac12, ₀ → _{0}), any other character as its ASCII letters (or ?).

    Character by character, so an escape is never escaped again and braces stay balanced.
    """
    return "".join(_LATEX_SPECIAL.get(ch) or _LATEX_UNICODE.get(ch) or (ch if ch.isascii() else _ascii(ch))
                   for ch in text)


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


# --- row order ---------------------------------------------------------------------------------
PRESET_ORDER = ("sp", "mup", "mup-ssm")
"""The paper's order of parameterizations: SP → µP → µP-SSM; other (custom) presets follow alphabetically."""


def preset_rank(preset: object) -> tuple[int, str]:
    """Sort key of a preset: its place in PRESET_ORDER, custom presets after, by name."""
    text = "" if preset is None else str(preset)
    return (PRESET_ORDER.index(text) if text in PRESET_ORDER else len(PRESET_ORDER), text)


def order_rows(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with its rows ordered SP → µP → µP-SSM → custom (stable: the order within a preset is kept)."""
    if "preset" not in frame.columns or frame.is_empty():
        return frame
    ranks = {p: i for i, p in enumerate(sorted(frame["preset"].unique().to_list(), key=preset_rank))}
    rank = pl.col("preset").replace_strict(ranks, return_dtype=pl.Int32)
    return frame.with_columns(rank.alias("_rank")).sort("_rank", maintain_order=True).drop("_rank")


# --- verdict wording ---------------------------------------------------------------------------------
# A verdict says what the measurement does (flat, grows, vanishes); whether that is what the theory says is
# the agreement. The words of a cell never contradict each other (docs/slopes.md, "Reading a verdict"):
#   agrees, and the prediction does what the measurement does  → "vanishes, as predicted"
#   agrees only within the CI (or the tolerance), although the measurement's own verdict differs from the
#   prediction's (a slope of +0.21 ± 0.38 where 0 is predicted)  → "agrees with 0 within its CI"
#   disagrees  → "flat; predicted +½"        no prediction  → "grows; no prediction"
# so "grows, as predicted" is never written where the prediction is flat, and a ✓ never follows "vanishes"
# where the theory says "grows".
AGREEMENT_WORDS = {Agreement.AGREES: "as predicted", Agreement.DISAGREES: "predicted {pred}",
                   Agreement.NO_PREDICTION: "no prediction"}
"""How each agreement reads after the verdict; {pred} is the predicted exponent."""


def exponent_text(value: float | None, log_x: bool | None = False) -> str:
    """A predicted exponent as a reader writes it: 0, +½, −1, +3/2, with ·log for a log N_x factor."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    frac = Fraction(value).limit_denominator(12)
    if frac == 0:
        return "log" if log_x else "0"
    mag = abs(frac)
    text = ("+" if frac > 0 else "−") + ("½" if mag == Fraction(1, 2) else str(mag))
    return text + ("·log" if log_x else "")


def predicted_verdict(predicted: float | None) -> Verdict | None:
    """What the predicted exponent does, judged as a measurement is (FLAT_TOL): flat, grows or vanishes.

    A log N_x factor does not change it (0·log is flat: over the sweeps' widths it adds about 0.15–0.3)."""
    if predicted is None or (isinstance(predicted, float) and math.isnan(predicted)):
        return None
    return Verdict.GROWS if predicted > FLAT_TOL else Verdict.VANISHES if predicted < -FLAT_TOL else Verdict.FLAT


def _covered(ci_low: float | None, ci_high: float | None, predicted: float | None) -> bool:
    """Whether the CI holds the prediction (False without a CI)."""
    values = (ci_low, ci_high, predicted)
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        return False
    return ci_low <= predicted <= ci_high


def within_words(covered: Iterable[bool]) -> str:
    """How an agreement that the verdict alone does not show was reached: "within its CI" (every term's CI holds
    its prediction), "within ±0.15" (AGREE_TOL: none does) or "within its CI or ±0.15" (some do)."""
    covered = list(covered)
    if all(covered):
        return "within its CI"
    return f"within ±{AGREE_TOL:g}" if not any(covered) else f"within its CI or ±{AGREE_TOL:g}"


def verdict_text(verdict: str | None, agreement: str | None, predicted: float | None,
                 log_x: bool | None = False, *, ci_low: float | None = None, ci_high: float | None = None) -> str:
    """One fitted exponent in words that never contradict themselves (the rule above):
    "vanishes, as predicted", "agrees with 0 within its CI", "flat; predicted +½", "grows; no prediction"."""
    if verdict is None or agreement not in AGREEMENT_WORDS:
        return "not fitted"
    pred = exponent_text(predicted, log_x)
    if agreement == Agreement.AGREES:
        if predicted_verdict(predicted) == verdict:
            return f"{verdict}, as predicted"
        return f"agrees with {pred} {within_words([_covered(ci_low, ci_high, predicted)])}"
    return f"{verdict}; {AGREEMENT_WORDS[agreement].format(pred=pred)}"


def record_words(rec: dict) -> str:
    """verdict_text of one slope record (a row of a slope frame as a dict)."""
    return verdict_text(rec.get("verdict"), rec.get("agreement"), rec.get("predicted"), rec.get("log_x"),
                        ci_low=rec.get("ci_low"), ci_high=rec.get("ci_high"))


def worded(slopes: pl.DataFrame) -> pl.DataFrame:
    """A slope frame whose `verdict` column holds the verdict in words (record_words): what reading formats and
    the terminal show; machine formats keep the bare verdict."""
    if "verdict" not in slopes.columns or slopes.is_empty():
        return slopes
    cols = [c for c in ("verdict", "agreement", "predicted", "log_x", "ci_low", "ci_high") if c in slopes.columns]
    words = [record_words(r) for r in slopes.select(cols).iter_rows(named=True)]
    return slopes.with_columns(pl.Series("verdict", words, pl.String))


MARKS = {Agreement.AGREES: "✓", Agreement.DISAGREES: "✗"}
"""The mark after a cell: ✓ = agrees with the prediction, ✗ = disagrees; nothing without a prediction."""
REGIME_MARKS = {Regime.NONLINEAR: "NL"}
"""Mark of a compact cell by its regime (runs.analysis.regime): NL = outside linear response."""
TREND_MARKS = {Trend.TOWARD: "→", Trend.AWAY: "←", Trend.MOVING: "~"}
"""Mark of a compact cell by the trend of its running exponents (runs.analysis.running); settled: none."""
CELL_MARKS_NOTE = ("NL: outside linear response (‖Δq‖/‖q₀‖ above {threshold:g} at the largest width; the slope "
                   "reflects saturation). → / ←: the local slopes still move toward / away from the prediction; "
                   "~: still moving (no prediction); no arrow: settled.")
"""How a reader decodes the marks of compact cells (the caption says it when a table carries them)."""


# --- what a reader sees of a slope frame --------------------------------------------------------
DISPLAY_COLUMNS = ["window", "width_lo", "width_hi", "term", "estimate", "se", "ci_low", "ci_high", "predicted",
                   "verdict", "agreement", "n_points", "n_seeds", "n_widths", "n_diverged", "status",
                   "contribution_ratio", "energy_share"]
"""Columns of a slope frame shown in md/latex after its cell keys (csv/parquet/json keep all); the window
and group columns appear when the frame has them (runs.analysis.slope_tables)."""
ANNOTATION_COLUMNS = ("trend", "regime_ratio", "regime")
"""Per-fit columns other analyses add to a slope frame (the trend of the running exponents, the
linear-response regime): tables that list fits show them, after the agreement, whenever a frame carries them."""


def slope_display(slopes: pl.DataFrame) -> pl.DataFrame:
    """A slope frame narrowed for reading: cell keys that vary (or identify a row), then DISPLAY_COLUMNS."""
    keys = [k for k in [*CELL_KEYS[:4], *OPTIONAL_CONFIG_KEYS, *CELL_KEYS[4:]] if k in slopes.columns]
    always = {*PARAMETERIZATION_KEYS, "layer", "site", "quantity", "step"}
    shown = [k for k in keys if k in always or slopes.get_column(k).n_unique() > 1]
    display = [*DISPLAY_COLUMNS[:DISPLAY_COLUMNS.index("agreement") + 1], *ANNOTATION_COLUMNS,
               *DISPLAY_COLUMNS[DISPLAY_COLUMNS.index("agreement") + 1:]]
    return order_rows(slopes).select(*shown, *(c for c in display if c in slopes.columns))


def slope_caption(slopes: pl.DataFrame, notes: Iterable[str] = ()) -> str:
    """One line saying what a slope table shows: convention, design, CI, thresholds (and any notes)."""

    def one(col: str) -> str:
        values = slopes.get_column(col).unique().to_list() if col in slopes.columns else []
        return ", ".join(str(v) for v in values) or "—"

    text = (f"log2‖·‖ = a + s·log2(width) per cell; norm convention {one('convention')}, design "
            f"{one('design')}; CI: {CONFIDENCE:.0%}, seed bootstrap ∪ OLS; flat when |s| ≤ {FLAT_TOL}, "
            f"agrees when |s − predicted| ≤ {AGREE_TOL} or the CI covers it.")
    if "width_lo" in slopes.columns:
        text += " Fitted over the widths width_lo…width_hi of each row (windows: docs/slopes.md)."
    if "trend" in slopes.columns:
        text += (" trend: toward / away from the prediction, settled, or moving, from the first and last local "
                 "slopes and their CIs.")
    if "regime" in slopes.columns:
        text += (f" regime: nonlinear when the median ‖Δq‖/‖q₀‖ at the largest width exceeds "
                 f"{REGIME_THRESHOLD:g} (the update dominates the init; the slope reflects saturation).")
    return " ".join([text, *notes])


def coincidence_notes(frame: pl.DataFrame, design: str) -> list[str]:
    """A sentence for each group of presets that are one parameterization over `frame`'s widths.

    `frame` is the probe (or runs) frame a table was fitted from; see runs.analysis.equivalence.
    """
    return [c.note() for c in coincidences(frame, design, PRESET_ORDER)]


# --- the paper's table -----------------------------------------------------------------------------
PaperStyle = Literal["text", "markdown", "latex"]
_HEADERS: dict[str, dict[str, str]] = {
    "text": {"x": "‖x‖", "y": "‖y‖", "dx": "‖Δx‖", "dy": "‖Δy‖"},
    "markdown": {"x": "‖x‖", "y": "‖y‖", "dx": "‖Δx‖", "dy": "‖Δy‖"},
    "latex": {"x": r"$\|x\|$", "y": r"$\|y\|$", "dx": r"$\|\Delta x\|$", "dy": r"$\|\Delta y\|$"},
}
_MARKS: dict[str, dict[str, str]] = {
    "text": MARKS,
    "markdown": MARKS,
    "latex": {Agreement.AGREES: r"$\surd$", Agreement.DISAGREES: r"$\times$"},
}
_BASES = {"width": "width", "n_u": "N_u", "n_x": "N_x"}
_TERM_ORDER = {"n_x": 0, "width": 1, "n_u": 2}  # the paper writes N_x^a · N_u^b
QUANTITY_TITLES = dict(_HEADERS["text"])
"""Paper-table column → its title (‖x‖, ‖y‖, ‖Δx‖, ‖Δy‖)."""


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


def _cell_agreement(terms: list[dict]) -> str:
    """One agreement for a cell of several terms: disagrees if any term does, agrees only if all do."""
    agreements = {t["agreement"] for t in terms}
    for verdict in (Agreement.DISAGREES, Agreement.NO_PREDICTION, Agreement.NOT_FITTED):
        if verdict in agreements:
            return verdict
    return Agreement.AGREES


def _latex_exponent(value: float, log_x: bool = False) -> str:
    """A predicted exponent as LaTeX math (no $): 0, \\frac12, -\\frac12, \\frac32, -1, with \\log for a log N_x
    factor."""
    frac = Fraction(value).limit_denominator(12)
    sign = "-" if frac < 0 else ""
    mag = abs(frac)
    text = f"{sign}\\frac{{{mag.numerator}}}{{{mag.denominator}}}" if mag.denominator != 1 else f"{frac}"
    text = text.replace("\\frac{1}{2}", "\\frac12").replace("\\frac{3}{2}", "\\frac32")
    if log_x:
        return "\\log" if frac == 0 else f"{text}\\,\\log"
    return text


def _cell_words(terms: list[dict], pred: str) -> str:
    """What a paper cell says after its measured exponents, by the wording rule (see verdict_text)."""
    verdicts = "/".join(t["verdict"] for t in terms)
    agreement = _cell_agreement(terms)
    if agreement == Agreement.AGREES:
        if all(predicted_verdict(t["predicted"]) == t["verdict"] for t in terms):
            return f"{verdicts}, as predicted ({pred})"
        return f"agrees with {pred} " + within_words(_covered(t["ci_low"], t["ci_high"], t["predicted"])
                                                     for t in terms)
    if agreement == Agreement.DISAGREES:
        return f"{verdicts}; predicted {pred}"
    return f"{verdicts}; no prediction"


LATEX_CELL_NOTE = ("Each cell: the measured exponent ± half its 95% CI, the predicted exponent in parentheses, "
                   "✓ agrees / ✗ disagrees with it; NL: outside linear response; → / ←: the local slopes still move "
                   "toward / away from the prediction, ~: still moving (no prediction).")
"""How a reader decodes the short cells of the LaTeX paper table (its caption starts with it)."""
LATEX_TREND_MARKS = {Trend.TOWARD: r"$\to$", Trend.AWAY: r"$\leftarrow$", Trend.MOVING: r"$\sim$"}
"""TREND_MARKS as LaTeX math (pdflatex without packages)."""


def _paper_cell(terms: list[dict], style: PaperStyle) -> str:
    """One cell: measured exponent(s) ± half the CI width, what they do against the theory, a mark.

    text/markdown: "width^0.51±0.04 grows, as predicted (width^0.5) ✓" · "width^0.21±0.38 agrees with
    width^0 within its CI ✓" · "width^0.02±0.03 flat; predicted width^0.5 ✗" (words: verdict_text's rule).
    latex, short and ASCII: "$\\mathrm{width}^{0.51\\pm0.04}$ ($\\frac12$) $\\surd$ NL" — the predicted
    exponent(s) in parentheses, the mark, NL / a trend arrow (the caption says how to read them).
    """
    if not terms:
        return "---" if style == "latex" else "—"
    if terms[0]["status"] != FitStatus.OK:
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
    agreement = _cell_agreement(terms)
    mark = _MARKS[style].get(agreement, "")
    if style == "latex":
        log_x = any(t["log_x"] for t in terms)
        pred = (", ".join(f"${_latex_exponent(t['predicted'], log_x and i == len(terms) - 1)}$"
                          for i, t in enumerate(terms)) if agreement != Agreement.NO_PREDICTION else "no pred.")
        marks = ("NL" if terms[0].get("regime") == Regime.NONLINEAR else "") + \
            LATEX_TREND_MARKS.get(terms[0].get("trend") or "", "")
        return " ".join(part for part in (f"${dot.join(measured)}$", f"({pred})", mark, marks) if part)
    log = {"markdown": "·log N<sub>x</sub>", "text": "·log N_x"}[style]
    log = log if any(t["log_x"] for t in terms) else ""
    pred = f"{dot.join(predicted)}{log}" if predicted else ""
    words = _cell_words(terms, pred)
    return f"{dot.join(measured)} {words} {mark}".rstrip() + _regime_mark(terms[0], style)


def _row_keys(paper: pl.DataFrame) -> list[str]:
    """The columns that name a row of the paper table: preset, discretisation, optimizer, what varies, step."""
    optional = ["lr", *OPTIONAL_CONFIG_KEYS, "fixed_width", "layer"]
    keys = list(PARAMETERIZATION_KEYS)
    keys += [k for k in optional if k in paper.columns and paper.get_column(k).n_unique() > 1]
    keys += [k for k in ("width_lo", "width_hi") if k in paper.columns]  # a top-octaves table says its widths
    return [*keys, "step"]


def _paper_rows(paper: pl.DataFrame) -> tuple[list[str], dict[tuple, dict[str, list[dict]]]]:
    """(row keys, rows): each row's key tuple → paper column → its slope records, SP → µP → µP-SSM first."""
    keys = _row_keys(paper)
    rows: dict[tuple, dict[str, list[dict]]] = {}
    for rec in order_rows(paper).iter_rows(named=True):
        rows.setdefault(tuple(rec[k] for k in keys), {}).setdefault(rec["column"], []).append(rec)
    return keys, rows


def _ratio_text(ratio: float) -> str:
    """ρ for a caption-sized cell: 2.3, 950, 5.7e+07."""
    return f"{ratio:.1f}" if ratio < 100 else f"{ratio:.0f}" if ratio < 10_000 else f"{ratio:.1e}"


def _regime_mark(term: dict, style: PaperStyle) -> str:
    """The mark of a cell outside linear response (runs.analysis.regime), e.g. " [nonlinear: ‖Δ‖/‖q₀‖ = 2.3]",
    and of a cell whose running exponents still move (runs.analysis.running), e.g. " [trend: toward]"."""
    marks = ""
    if term.get("regime") == Regime.NONLINEAR:
        ratio = _ratio_text(term["regime_ratio"])
        marks += f" [nonlinear: ‖Δ‖/‖q₀‖ = {ratio}]"
    if term.get("trend") in TREND_MARKS:
        marks += f" [trend: {term['trend']}]"
    return marks


def format_paper_table(paper: pl.DataFrame, style: PaperStyle = "text") -> pl.DataFrame:
    """The paper's table from `runs.analysis.slopes.paper_slopes` rows: one row per configuration, one cell per column.

    Row keys: preset, discretization, optimizer, then lr / spec / task / dt_max / fixed_width / layer
    where they vary, then the step; rows SP → µP → µP-SSM → custom. Headers are written as the style
    writes them (‖x‖ … or LaTeX math).
    """
    if style not in _HEADERS:
        raise ConfigError(f"style={style!r}; allowed: {', '.join(_HEADERS)}")
    keys, rows = _paper_rows(paper)
    headers = [paper_header(c, style) for c in PAPER_COLUMNS]
    records = [(*key, *(_paper_cell(cells.get(c, []), style) for c in PAPER_COLUMNS))
               for key, cells in rows.items()]
    schema = {k: paper.schema[k] for k in keys} | dict.fromkeys(headers, pl.String)
    return pl.DataFrame(records, schema=schema, orient="row")


def paper_table(frame: pl.DataFrame, *, style: PaperStyle = "text", **fit_options: object) -> pl.DataFrame:
    """The paper's table (preset × discretization × optimizer by ‖x‖, ‖y‖, ‖Δx‖, ‖Δy‖) from a probe frame.

    Each cell: measured N_x^a·N_u^b (2-D) or width^s (joint) ± half the 95 % CI, the verdict, what the
    theory predicts and ✓ (agrees) / ✗ (disagrees). fit_options go to runs.analysis.slopes.paper_slopes
    (convention, design, layers, step, n_boot, rng_seed, include_failed).
    """
    return format_paper_table(paper_slopes(frame, **fit_options), style)  # type: ignore[arg-type]


def paper_caption(paper: pl.DataFrame, notes: Iterable[str] = ()) -> str:
    """One line saying how the paper table was measured (and any notes, e.g. coinciding presets)."""
    return slope_caption(paper, [
        "Layers: mean of log2‖·‖ over layers unless a layer column is shown. ✓/✗: the measurement agrees/disagrees "
        "with the predicted exponent (·log: times log N_x).", *notes])


# --- the paper's table, compact: one short, sortable cell per quantity ------------------------------
@dataclass(frozen=True)
class CompactPaper:
    """The paper's table with one number per quantity (sortable) and the text shown for it.

    values: the row keys, then per quantity title (‖x‖ …) the measured exponent (2-D: the N_u one), Float64.
    labels / agreements: quantity title → per row, the cell's text ("−0.48±0.05 (−½) ✓ NL→") and agreement.
    The regime and the trend are properties of each cell, not of the row: they are marks at the end of the
    cell's text (REGIME_MARKS, TREND_MARKS), so the table keeps one narrow column per quantity.
    """

    values: pl.DataFrame
    keys: list[str]
    labels: dict[str, list[str]]
    agreements: dict[str, list[str]]


def _cell_marks(terms: list[dict]) -> str:
    """The regime and trend marks of one compact cell (" NL→", " →", " NL"), from its first term's annotation
    columns; written together so that the four quantity columns fit a terminal of about 120 columns."""
    marks = REGIME_MARKS.get(terms[0].get("regime") or "", "") + TREND_MARKS.get(terms[0].get("trend") or "", "")
    return f" {marks}" if marks else ""


def _compact_cell(terms: list[dict]) -> tuple[float | None, str, str]:
    """(sort value, text, agreement) of one compact cell: "−0.48±0.05 (−½) ✓", 2-D "+0.51·−0.02 (+1·0) ✓",
    with the cell's regime and trend marks at the end ("… ✓ NL→")."""
    if not terms:
        return None, "—", "not fitted"
    if terms[0]["status"] != FitStatus.OK:
        return None, terms[0]["status"].replace("_", " "), "not fitted"
    terms = sorted(terms, key=lambda t: {"width": 0, "n_u": 0, "n_x": 1}[t["term"]])
    measured = []
    for t in terms:
        text = _signed(t["estimate"])
        if len(terms) == 1 and t["ci_low"] is not None and t["ci_high"] is not None:
            text += f"±{(t['ci_high'] - t['ci_low']) / 2:.2f}"
        measured.append(text)
    agreement = _cell_agreement(terms)
    if agreement == "no prediction":
        pred = "no pred."
    else:
        log_x = any(t["log_x"] for t in terms)
        pred = "·".join(exponent_text(t["predicted"], log_x and i == len(terms) - 1) for i, t in enumerate(terms))
    mark = MARKS.get(agreement, "")
    text = f"{'·'.join(measured)} ({pred}) {mark}".rstrip() + _cell_marks(terms)
    return terms[0]["estimate"], text, agreement


def _signed(value: float) -> str:
    """+0.51, −0.48, 0.00 (never −0.00), with a true minus sign."""
    text = f"{value:+.2f}"
    return "0.00" if float(text) == 0 else text.replace("-", "−")


def compact_paper(paper: pl.DataFrame) -> CompactPaper:
    """The paper's table as a compact, sortable grid: a row per configuration, a number and a label per quantity."""
    keys, rows = _paper_rows(paper)
    keys = [k for k in keys if k != "step" or paper.get_column("step").n_unique() > 1]
    titles = [QUANTITY_TITLES[c] for c in PAPER_COLUMNS]
    values: dict[str, list] = {k: [] for k in [*keys, *titles]}
    labels: dict[str, list[str]] = {t: [] for t in titles}
    agreements: dict[str, list[str]] = {t: [] for t in titles}
    for cells in rows.values():
        first = next(iter(cells.values()))[0]
        for k in keys:
            values[k].append(first[k])
        for column, title in zip(PAPER_COLUMNS, titles, strict=True):
            value, label, agreement = _compact_cell(cells.get(column, []))
            values[title].append(value)
            labels[title].append(label)
            agreements[title].append(agreement)
    schema = {k: paper.schema[k] for k in keys} | dict.fromkeys(titles, pl.Float64)
    return CompactPaper(pl.DataFrame(values, schema=schema), keys, labels, agreements)


def compact_caption(paper: pl.DataFrame, notes: Iterable[str] = ()) -> str:
    """The caption of the compact table: how to read a cell, then the paper caption."""
    two_d = "design" in paper.columns and "2d" in paper["design"].unique().to_list()
    cell = ("s_u·s_x (predicted s_u·s_x)" if two_d else "s ± half the CI (predicted s)")
    step = paper["step"].unique().to_list() if "step" in paper.columns else []
    at = f" at step {step[0]}" if len(step) == 1 else ""
    marks = any(c in paper.columns for c in ("regime", "trend"))
    legend = " " + CELL_MARKS_NOTE.format(threshold=REGIME_THRESHOLD) if marks else ""
    described = paper.drop("trend", "regime", strict=False)  # the marks' legend says what these columns would
    return f"Each cell: {cell}{at}.{legend} " + paper_caption(described, notes)


# --- the paper's table, numeric: one row per fitted exponent, every number its own column ------------
NUMERIC_COLUMNS = ["estimate", "ci_low", "ci_high", "predicted", "verdict", "agreement"]
"""The numbers (and words) of one fit in the numeric layout."""


def numeric_paper(paper: pl.DataFrame) -> pl.DataFrame:
    """The paper's rows as a long table: row keys, quantity (and term in 2-D), then estimate, CI, predicted,
    verdict (in words that carry the agreement), agreement, and any annotation columns (regime, trend)."""
    keys = [k for k in _row_keys(paper) if k != "step" or paper.get_column("step").n_unique() > 1]
    terms = ["term"] if paper.get_column("term").n_unique() > 1 else []
    titled = worded(paper).with_columns(pl.col("column").replace_strict(QUANTITY_TITLES, return_dtype=pl.String)
                                        .alias("quantity"))
    extra = [c for c in ANNOTATION_COLUMNS if c in paper.columns]
    return order_rows(titled).select(*keys, "quantity", *terms, *NUMERIC_COLUMNS, *extra, "n_seeds", "n_widths",
                                     "status")


# --- one entry point for every table writer (the CLI and the dashboard's downloads) ------------------
def paper_output(paper: pl.DataFrame, fmt: Format | str,
                 notes: Iterable[str] = ()) -> tuple[pl.DataFrame, list[str], str]:
    """(frame, columns holding markup already, caption) of the paper table in `fmt`.

    md/latex: the rendered paper cells; csv/json/parquet: every column of the rows, SP → µP → µP-SSM.
    """
    fmt, notes = parse_format(fmt), list(notes)
    caption = paper_caption(paper, notes)
    if fmt not in TEXT_TABLE_FORMATS or paper.is_empty():
        return order_rows(paper), [], caption
    style: PaperStyle = "latex" if fmt == Format.LATEX else "markdown"
    raw = [paper_header(c, style) for c in PAPER_COLUMNS]
    if style == "latex":
        caption = f"{LATEX_CELL_NOTE} {caption}"
    return format_paper_table(paper, style), raw, caption


def full_output(slopes: pl.DataFrame, fmt: Format | str,
                notes: Iterable[str] = ()) -> tuple[pl.DataFrame, list[str], str]:
    """(frame, [], caption) of every fitted cell in `fmt`: read columns for md/latex, all columns otherwise."""
    fmt = parse_format(fmt)
    caption = slope_caption(slopes, notes)
    return (slope_display(worded(slopes)) if fmt in TEXT_TABLE_FORMATS else order_rows(slopes)), [], caption


def paper_rows(paper: pl.DataFrame) -> tuple[list[str], dict[tuple, dict[str, list[dict]]]]:
    """(row keys, rows) of the paper table: each row's key tuple → paper column → its slope records, in the order
    of format_paper_table and compact_paper (SP → µP → µP-SSM first)."""
    return _paper_rows(paper)
