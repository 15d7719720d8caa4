"""Figure builders: plot-ready frames (app.frames) → plotly Figures, testable without Streamlit.

Each builder takes frames and labels and returns a `go.Figure`; nothing here reads the store or
computes a statistic. Export helpers turn a figure into interactive HTML (always available) or a
static PNG/SVG (needs kaleido and a Chromium; `static_export_problem` says what is missing).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import plotly.graph_objects as go
import plotly.io as pio
import polars as pl
from plotly.subplots import make_subplots

from ssmscope.app.frames import Row
from ssmscope.runs.analysis.export import exponent_text, record_words
from ssmscope.runs.analysis.norms import norm_label
from ssmscope.runs.analysis.vocabulary import FitStatus
from ssmscope.runs.store.schema import PARAMETERIZATION_KEYS, WIDTH_KEYS
from ssmscope.ssm.roles import Family

LAYER_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf")
"""Layer colours in legend order (plotly/D3 category10)."""
REF_SLOPES = (-1.0, -0.5, 0.0, 0.5, 1.0)
"""Reference slopes drawn in every panel: flat, ±½ (√width) and ±1 (width)."""
FLAG_COLOUR = "#c0392b"
ROW_HEIGHT = 240
FONT = dict(family="Inter, Helvetica, Arial, sans-serif", size=12)


def layer_colour(layer: int) -> str:
    return LAYER_COLOURS[int(layer) % len(LAYER_COLOURS)]


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _signed(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    text = f"{value:+.{digits}f}"
    return text.replace("+0.00", "0.00").replace("-0.00", "0.00")


def _frac(value: float) -> str:
    return {-1.0: "−1", -0.5: "−½", 0.0: "0", 0.5: "+½", 1.0: "+1"}.get(value, f"{value:+g}")


def slope_text(rec: dict | None) -> str:
    """One slope as hover text: s = +0.51 [0.44, 0.58] · predicted +½ · grows, as predicted."""
    if rec is None:
        return "slope: not fitted"
    if rec.get("status") != FitStatus.OK:
        return f"slope: {str(rec.get('status', '')).replace('_', ' ')} (n={rec.get('n_points')})"
    ci = ""
    if rec.get("ci_low") is not None and rec.get("ci_high") is not None:
        ci = f" [{rec['ci_low']:.2f}, {rec['ci_high']:.2f}]"
    pred = (f" · predicted {exponent_text(rec['predicted'], rec.get('log_x'))}" if rec.get("predicted") is not None
            else "")
    words = record_words(rec)
    return f"slope s = {_signed(rec['estimate'])}{ci}{pred} · {words}"


# --- the coordinate check ----------------------------------------------------------------------
Y_RANGES = ("panel", "row")
"""y axis per panel (each panel its own range) or per row (one range across a row, for comparing levels)."""


class _Panels:
    """Traces and annotations of a subplot grid, collected as plain dicts.

    A coordinate check has hundreds of traces; building each as a validated go.Scatter and adding it
    with add_trace(row=, col=) costs about a second for a 6 × 4 grid, plain dicts a few milliseconds.
    """

    def __init__(self, n_cols: int) -> None:
        self.n_cols = n_cols
        self.traces: list[dict] = []
        self.annotations: list[dict] = []

    def axes(self, row: int, col: int) -> tuple[str, str]:
        n = (row - 1) * self.n_cols + col
        suffix = "" if n == 1 else str(n)
        return f"x{suffix}", f"y{suffix}"

    def add(self, row: int, col: int, **trace: object) -> None:
        x, y = self.axes(row, col)
        self.traces.append({"type": "scatter", **trace, "xaxis": x, "yaxis": y})

    def corner(self, row: int, col: int, lines: Sequence[str]) -> None:
        """Short lines, one under the other, in the top-left corner of subplot (row, col).

        One line per layer ("L0 +0.05") keeps the label about 60 px wide whatever the number of layers,
        so it stays inside its panel down to six panels across a 1280 px window.
        """
        x, y = self.axes(row, col)
        self.annotations.append(dict(text="<br>".join(lines), xref=f"{x} domain", yref=f"{y} domain", x=0.01, y=0.99,
                                     xanchor="left", yanchor="top", align="left", showarrow=False,
                                     font=dict(size=9), bgcolor="rgba(255,255,255,0.75)", borderpad=1,
                                     name="slopes"))


@dataclass(frozen=True)
class _Span:
    """The y extent of one panel: where the data lies, and where ✕ / ▼ markers sit above and below it."""

    lo: float
    hi: float

    @property
    def size(self) -> float:
        return max(self.hi - self.lo, 1.0)

    @property
    def top(self) -> float:
        return self.hi + 0.12 * self.size

    @property
    def bottom(self) -> float:
        return self.lo - 0.12 * self.size

    @property
    def range(self) -> list[float]:
        return [self.bottom - 0.05 * self.size, self.top + 0.08 * self.size]


def _span(values: pl.Series) -> _Span:
    finite = values.filter(values.is_finite())
    return _Span(float(finite.min()), float(finite.max())) if len(finite) else _Span(0.0, 1.0)


COLUMN_TITLE_SIZE = 12
"""Font size of the column titles: "mup-ssm · euler" fits its panel with six panels across a 1280-px window."""


def compact_titles(titles: Sequence[str]) -> list[str]:
    """Column titles without the model-family prefix they all share ("mamba2-sp", "mamba2-mup" → "mamba2-sp", "mup"):
    eight Mamba-2 recipes side by side overlap at 1280 px with it. The first title keeps its full name, so the family
    stays on the figure; other titles are unchanged."""
    for family in Family:
        head = f"{family.value}-"
        if len(titles) > 1 and all(t.startswith(head) and len(t) > len(head) for t in titles):
            return [titles[0], *(t[len(head):] for t in titles[1:])]
    return list(titles)


@functools.cache
def _grid_json(n_rows: int, n_cols: int, per_row: bool, titles: tuple[str, ...]) -> str:
    """The layout of a subplot grid as JSON (make_subplots validates every axis: ~0.5 s, so it is built once)."""
    grid = make_subplots(rows=n_rows, cols=n_cols, shared_xaxes=True, shared_yaxes=per_row,
                         column_titles=list(titles) or None,
                         horizontal_spacing=(0.03 if per_row else 0.045) if n_cols > 1 else 0.1,
                         vertical_spacing=min(0.06, 0.3 / n_rows))
    layout = grid.layout.to_plotly_json()
    for note in layout.get("annotations", []):  # the column titles
        note["font"] = {"size": COLUMN_TITLE_SIZE}
        note["name"] = "column_title"
    return json.dumps(layout)


@functools.cache
def _template_json() -> str:
    return json.dumps(pio.templates["plotly_white"].to_plotly_json())


def _axis(kind: str, row: int, col: int, n_cols: int) -> str:
    """Layout key of the x or y axis of subplot (row, col): xaxis, xaxis2, …"""
    n = (row - 1) * n_cols + col
    return f"{kind}axis" if n == 1 else f"{kind}axis{n}"


def _grid_layout(n_rows: int, n_cols: int, per_row: bool, titles: Sequence[str], *, x_range: list[float],
                 widths: list[tuple[float, int]], x_title: str, y_titles: Sequence[str],
                 y_ranges: dict[tuple[int, int], list[float]]) -> dict:
    """A plain-dict layout for an n_rows × n_cols grid: axis ranges, ticks and titles set without plotly's
    per-call validation (which costs about a second for a 6 × 4 grid)."""
    layout = json.loads(_grid_json(n_rows, n_cols, per_row, tuple(compact_titles(titles))))
    for i in range(1, n_rows + 1):
        for j in range(1, n_cols + 1):
            xa = layout.setdefault(_axis("x", i, j, n_cols), {})
            xa.update(range=x_range, zeroline=False, tickvals=[lw for lw, _ in widths],
                      ticktext=[str(w) for _, w in widths])  # at log₂ width, labelled with the width
            ya = layout.setdefault(_axis("y", i, j, n_cols), {})
            if (i, j) in y_ranges and not (per_row and j > 1):  # per row: the others match the first
                ya["range"] = y_ranges[(i, j)]
        layout[_axis("y", i, 1, n_cols)]["title"] = {"text": y_titles[i - 1], "font": {"size": 10}}
    # one x title under the whole grid (a title under every column repeats it and runs into its neighbours)
    layout.setdefault("annotations", []).append(dict(
        text=x_title, xref="paper", yref="paper", x=0.5, y=0, xanchor="center", yanchor="top", yshift=-24,
        showarrow=False, font={"size": 12}, name="x_title"))
    layout["template"] = json.loads(_template_json())
    return layout


def coord_figure(points: pl.DataFrame, bands: pl.DataFrame, flags: pl.DataFrame, slopes: pl.DataFrame, *,
                 rows: Sequence[Row], panels: Sequence[str], convention: str, x_title: str, step: int | str,
                 show_refs: bool = True, show_seeds: bool = True, title: str | None = None,
                 y_range: str = "panel", hover_runs: bool = False, fit_lines: bool = False,
                 pred_lines: bool = False) -> go.Figure:
    """The paper's figure: log2‖·‖ against log2 width, rows = probed quantities, columns = panels.

    Colour = layer (legend in layer order); line = mean over seeds, band = min–max over seeds; small
    markers = single runs (hovered only when `hover_runs`: by default the hover reads the mean); ✕ at the
    top of a panel = a diverged or failed run at that width, ▼ at the bottom = a zero or non-finite norm;
    dashed grey = reference slopes. `fit_lines`: the fitted line a + s·log2 width of each layer (dotted);
    `pred_lines`: a line of the predicted slope through the layer's mean point (dash-dot). Each layer's
    fitted slope is in the hover and in the panel's corner. `y_range`: "panel" (each its own) or "row".
    """
    if y_range not in Y_RANGES:
        raise ValueError(f"y_range={y_range!r}; allowed: {', '.join(Y_RANGES)}")
    per_row = y_range == "row"
    n_rows, n_cols = max(len(rows), 1), max(len(panels), 1)
    out = _Panels(n_cols)
    layers = sorted(points["layer"].unique().to_list()) if not points.is_empty() else []
    legend_done: set[str] = set()
    slope_map = {(r["panel"], r["site"], r["quantity"], r["layer"]): r for r in slopes.iter_rows(named=True)}
    x_all = points["log2_width"].unique().to_list() if not points.is_empty() else [0.0, 1.0]
    x_lo, x_hi = min(x_all), max(x_all)
    pad = max(0.25, 0.05 * (x_hi - x_lo))
    keys = ["panel", "site", "quantity", "layer"]
    band_parts = bands.partition_by(keys, as_dict=True) if not bands.is_empty() else {}
    seed_parts = (points.filter(pl.col("finite")).partition_by(keys, as_dict=True)
                  if show_seeds and not points.is_empty() else {})
    empty_band, empty_seeds = bands.clear(), points.clear()
    spans: dict[tuple[int, int], _Span] = {}

    for i, row in enumerate(rows, start=1):
        row_pts = points.filter((pl.col("site") == row.site) & (pl.col("quantity") == row.quantity))
        row_bands = bands.filter((pl.col("site") == row.site) & (pl.col("quantity") == row.quantity))
        row_span = _span(row_pts["log2_norm"])
        for j, panel in enumerate(panels, start=1):
            span = row_span if per_row else _span(row_pts.filter(pl.col("panel") == panel)["log2_norm"])
            spans[(i, j)] = span
            pb = row_bands.filter(pl.col("panel") == panel)
            if show_refs and not pb.is_empty():
                _add_refs(out, pb, x_hi + pad / 2, i, j, legend_done)
            corner = []
            for layer in layers:
                colour = layer_colour(layer)
                group = f"layer {layer}"
                band = band_parts.get((panel, row.site, row.quantity, layer), empty_band)
                rec = slope_map.get((panel, row.site, row.quantity, layer))
                s_text = slope_text(rec)
                if rec is not None and rec.get("status") == FitStatus.OK:
                    corner.append(f"<span style='color:{colour}'>L{layer} {_signed(rec['estimate'])}</span>")
                if not band.is_empty():
                    x, lo, hi = band["log2_width"].to_list(), band["lo"].to_list(), band["hi"].to_list()
                    out.add(i, j, x=x + x[::-1], y=hi + lo[::-1], mode="lines", fill="toself",
                            fillcolor=_rgba(colour, 0.18), line=dict(width=0), hoverinfo="skip", showlegend=False,
                            legendgroup=group, name=f"{group} band")
                    custom = [[w, n, s_text] for w, n in zip(band["width"].to_list(), band["n_seeds"].to_list(),
                                                              strict=True)]
                    show = group not in legend_done
                    legend_done.add(group)
                    out.add(i, j, x=x, y=band["mean"].to_list(), mode="lines+markers", name=group,
                            legendgroup=group, legendrank=100 + int(layer), showlegend=show,
                            line=dict(color=colour, width=2), marker=dict(size=7, color=colour), customdata=custom,
                            meta=dict(kind="mean", panel=panel, row=row.key, layer=int(layer)),
                            hovertemplate=(f"<b>{group}</b> · {panel} · {row.title}<br>width %{{customdata[0]}}"
                                           f" (log₂ %{{x:.2f}}): mean log₂ = %{{y:.3f}} over %{{customdata[1]}} "
                                           "seed(s)<br>%{customdata[2]}<extra></extra>"))
                    _add_slope_lines(out, band, rec, i, j, panel, row, layer, fit_lines, pred_lines, legend_done)
                seeds = seed_parts.get((panel, row.site, row.quantity, layer), empty_seeds)
                if not seeds.is_empty():
                    _add_seeds(out, seeds, i, j, panel, row, layer, hover_runs)
            _add_flags(out, flags, panel, row, span.top, span.bottom, i, j, legend_done)
            if corner:
                out.corner(i, j, corner)

    widths = sorted(set(zip(points["log2_width"].to_list(), points["width"].to_list(), strict=True)))
    layout = _grid_layout(n_rows, n_cols, per_row, panels, x_range=[x_lo - pad, x_hi + pad], widths=widths,
                          x_title=x_title, y_ranges={k: v.range for k, v in spans.items()},
                          y_titles=[f"log₂ {norm_label(convention, r.site, r.quantity)}" for r in rows])
    height = ROW_HEIGHT * n_rows + 140
    layout.update(
        height=height, font=FONT, hovermode="closest",
        margin=dict(l=70, r=20, t=70 if title else 50, b=60),
        legend=dict(orientation="h", yanchor="bottom", y=1.0 + 40 / height, x=0, traceorder="normal",
                    groupclick="togglegroup"),
        annotations=[*layout.get("annotations", []), *out.annotations],
        meta=dict(kind="coord_check", convention=convention, step=step, rows=[r.key for r in rows],
                  panels=list(panels), y_range=y_range, layers=[int(v) for v in layers]))
    if title:
        layout["title"] = dict(text=title, x=0, y=0.995, yanchor="top", font=dict(size=14))
    return go.Figure(data=out.traces, layout=layout, _validate=False)  # built above as plotly wants them


def _add_seeds(out: _Panels, seeds: pl.DataFrame, i: int, j: int, panel: str, row: Row, layer: int,
               hover: bool) -> None:
    """Single runs as small dots (hover: run id and config when `hover`, else the hover reads the mean)."""
    colour = layer_colour(layer)
    custom = seeds.select("run_id", "seed", "status", *PARAMETERIZATION_KEYS, "lr", *WIDTH_KEYS, "norm").rows()
    extra = (dict(hovertemplate=("run %{customdata[0]} · seed %{customdata[1]} · %{customdata[2]}<br>"
                                 "%{customdata[3]} · %{customdata[4]} · %{customdata[5]} lr %{customdata[6]}<br>"
                                 "N_u=%{customdata[7]} N_x=%{customdata[8]} · layer " + str(layer)
                                 + f"<br>{row.title} = %{{customdata[9]:.4g}} (log₂ %{{y:.3f}})<extra></extra>"))
             if hover else dict(hoverinfo="skip"))
    out.add(i, j, x=seeds["log2_width"].to_list(), y=seeds["log2_norm"].to_list(), mode="markers",
            name=f"layer {layer} runs", legendgroup=f"layer {layer}", showlegend=False,
            marker=dict(size=5, color=_rgba(colour, 0.55), line=dict(width=0)), customdata=[list(c) for c in custom],
            meta=dict(kind="runs", panel=panel, row=row.key, layer=int(layer)), **extra)


SLOPE_LINES = {"fit": ("fitted slope", "dot"), "pred": ("predicted slope", "dashdot")}
"""Per-layer slope lines: legend name and dash."""


def _add_slope_lines(out: _Panels, band: pl.DataFrame, rec: dict | None, i: int, j: int, panel: str, row: Row,
                     layer: int, fit: bool, pred: bool, legend_done: set[str]) -> None:
    """The fitted line a + s·x over the layer's widths, and a line of the predicted slope through its mean point."""
    if rec is None or rec.get("status") != FitStatus.OK:
        return
    x = band["log2_width"].to_list()
    x0, x1 = min(x), max(x)
    lines = []
    if fit and rec.get("intercept") is not None and math.isfinite(rec["intercept"]):
        a, s = rec["intercept"], rec["estimate"]
        lines.append(("fit", [a + s * x0, a + s * x1], f"fitted s = {_signed(s)}"))
    if pred and rec.get("predicted") is not None:
        xm, ym, p = sum(x) / len(x), float(band["mean"].mean()), rec["predicted"]
        lines.append(("pred", [ym + p * (x0 - xm), ym + p * (x1 - xm)],
                      f"predicted s = {exponent_text(p, rec.get('log_x'))}"))
    for kind, ys, text in lines:
        name, dash = SLOPE_LINES[kind]
        show = name not in legend_done
        legend_done.add(name)
        out.add(i, j, x=[x0, x1], y=ys, mode="lines", name=name, legendgroup=name, legendrank=800,
                showlegend=show, line=dict(color=layer_colour(layer), width=1.5, dash=dash),
                meta=dict(kind=f"{kind}_line", panel=panel, row=row.key, layer=int(layer)),
                hovertemplate=f"layer {layer} · {panel} · {row.title}<br>{text}<extra></extra>")


def _add_refs(out: _Panels, band: pl.DataFrame, x1: float, row: int, col: int, legend_done: set[str]) -> None:
    """Reference slopes from the panel's mean at its smallest width to x1: one trace of broken lines."""
    first = band.filter(pl.col("log2_width") == band["log2_width"].min())
    x0, anchor_y = float(first["log2_width"][0]), float(first["mean"].mean())
    xs, ys, ty, texts = [], [], [], []
    for s in REF_SLOPES:
        xs += [x0, x1, None]
        ys += [anchor_y, anchor_y + s * (x1 - x0), None]
        ty.append(anchor_y + s * (x1 - x0))
        texts.append(_frac(s))
    show = "ref" not in legend_done
    legend_done.add("ref")
    out.add(row, col, x=xs, y=ys, mode="lines", name="reference slopes 0, ±½, ±1", legendgroup="ref",
            legendrank=900, showlegend=show, hoverinfo="skip",
            line=dict(color="rgba(120,120,120,0.45)", width=1, dash="dash"), meta=dict(kind="ref"))
    out.add(row, col, x=[x1] * len(ty), y=ty, mode="text", text=texts, textposition="middle left",
            textfont=dict(size=9, color="rgba(110,110,110,0.9)"), hoverinfo="skip", showlegend=False,
            legendgroup="ref", meta=dict(kind="ref_label"))


def _add_flags(out: _Panels, flags: pl.DataFrame, panel: str, row: Row, top: float, bottom: float,
               i: int, j: int, legend_done: set[str]) -> None:
    """✕ at the top for diverged/failed runs, ▼ at the bottom for zero or non-finite norms."""
    if flags.is_empty():
        return
    in_panel = flags.filter(pl.col("panel") == panel)
    runs = in_panel.filter(pl.col("site").is_null())
    pts = in_panel.filter((pl.col("site") == row.site) & (pl.col("quantity") == row.quantity))
    for frame, y, symbol, name in ((runs, top, "x", "diverged / failed run"),
                                   (pts, bottom, "triangle-down", "zero or non-finite norm")):
        if frame.is_empty():
            continue
        custom = [[r["run_id"], r["seed"], r["reason"], "" if r["layer"] is None else f" · layer {r['layer']}"]
                  for r in frame.iter_rows(named=True)]
        show = name not in legend_done
        legend_done.add(name)
        out.add(i, j, x=frame["log2_width"].to_list(), y=[y] * frame.height, mode="markers", name=name,
                legendgroup=name, legendrank=950, showlegend=show, customdata=custom,
                marker=dict(symbol=symbol, size=10, color=FLAG_COLOUR, line=dict(width=1, color=FLAG_COLOUR)),
                meta=dict(kind="flag", panel=panel, row=row.key),
                hovertemplate=("run %{customdata[0]} · seed %{customdata[1]}%{customdata[3]}<br>%{customdata[2]}"
                               "<extra>" + name + "</extra>"))


DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "cross", "star")
"""Line style and marker per overlaid series (the first series solid with circles)."""


def overlay_figure(points: pl.DataFrame, bands: pl.DataFrame, flags: pl.DataFrame, slopes: pl.DataFrame, *,
                   rows: Sequence[Row], series: Sequence[str], convention: str, x_title: str, step: int,
                   show_refs: bool = True, show_bands: bool = False, title: str | None = None) -> go.Figure:
    """Several selections (presets, discretisations, …) in one panel per row: colour = layer, line style and
    marker = selection (series, taken from the frames' `panel` column). Hover: the mean and its fitted slope."""
    n_rows = max(len(rows), 1)
    spans: dict[tuple[int, int], list[float]] = {}
    out = _Panels(1)
    layers = sorted(points["layer"].unique().to_list()) if not points.is_empty() else []
    slope_map = {(r["panel"], r["site"], r["quantity"], r["layer"]): r for r in slopes.iter_rows(named=True)}
    x_all = points["log2_width"].unique().to_list() if not points.is_empty() else [0.0, 1.0]
    x_lo, x_hi = min(x_all), max(x_all)
    pad = max(0.25, 0.05 * (x_hi - x_lo))
    legend_done: set[str] = set()
    for i, row in enumerate(rows, start=1):
        in_row = (pl.col("site") == row.site) & (pl.col("quantity") == row.quantity)
        row_bands = bands.filter(in_row)
        span = _span(points.filter(in_row)["log2_norm"])
        if show_refs and not row_bands.is_empty():
            _add_refs(out, row_bands, x_hi + pad / 2, i, 1, legend_done)
        for k, name in enumerate(series):
            dash, symbol = DASHES[k % len(DASHES)], SYMBOLS[k % len(SYMBOLS)]
            for layer in layers:
                colour = layer_colour(layer)
                band = row_bands.filter((pl.col("panel") == name) & (pl.col("layer") == layer))
                if band.is_empty():
                    continue
                x = band["log2_width"].to_list()
                label = f"{name} · layer {layer}"
                if show_bands:
                    lo, hi = band["lo"].to_list(), band["hi"].to_list()
                    out.add(i, 1, x=x + x[::-1], y=hi + lo[::-1], mode="lines", fill="toself",
                            fillcolor=_rgba(colour, 0.12), line=dict(width=0), hoverinfo="skip", showlegend=False,
                            legendgroup=label, name=f"{label} band")
                s_text = slope_text(slope_map.get((name, row.site, row.quantity, layer)))
                custom = [[w, n, s_text] for w, n in zip(band["width"].to_list(), band["n_seeds"].to_list(),
                                                          strict=True)]
                out.add(i, 1, x=x, y=band["mean"].to_list(), mode="lines+markers", name=label, legendgroup=label,
                        legendrank=100 + 10 * k + int(layer), showlegend=label not in legend_done,
                        line=dict(color=colour, width=2, dash=dash), marker=dict(size=7, color=colour, symbol=symbol),
                        customdata=custom, meta=dict(kind="mean", panel=name, row=row.key, layer=int(layer),
                                                     dash=dash),
                        hovertemplate=(f"<b>{label}</b> · {row.title}<br>width %{{customdata[0]}} (log₂ %{{x:.2f}}): "
                                       "mean log₂ = %{y:.3f} over %{customdata[1]} seed(s)<br>%{customdata[2]}"
                                       "<extra></extra>"))
                legend_done.add(label)
            _add_flags(out, flags, name, row, span.top, span.bottom, i, 1, legend_done)
        spans[(i, 1)] = span.range
    widths = sorted(set(zip(points["log2_width"].to_list(), points["width"].to_list(), strict=True)))
    layout = _grid_layout(n_rows, 1, False, [], x_range=[x_lo - pad, x_hi + pad], widths=widths, x_title=x_title,
                          y_ranges=spans, y_titles=[f"log₂ {norm_label(convention, r.site, r.quantity)}" for r in rows])
    layout.update(
        height=ROW_HEIGHT * n_rows + 140, font=FONT, hovermode="closest",
        margin=dict(l=70, r=20, t=70 if title else 50, b=60),
        legend=dict(orientation="v", x=1.01, y=1, traceorder="normal", groupclick="togglegroup"),
        annotations=[*layout.get("annotations", []), *out.annotations],
        meta=dict(kind="overlay", convention=convention, step=step, rows=[r.key for r in rows], series=list(series)))
    if title:
        layout["title"] = dict(text=title, x=0, y=0.995, yanchor="top", font=dict(size=14))
    return go.Figure(data=out.traces, layout=layout, _validate=False)


# --- one run -----------------------------------------------------------------------------------
def step_ticks(steps: Sequence[int], most: int = 8) -> dict:
    """x-axis settings that label optimizer steps with integers only: a whole-number tick spacing (1, 2, 5, 10,
    20, … so that at most `most` ticks show), starting at 0."""
    span = (max(steps) - min(steps)) if len(steps) else 1
    nice = (1, 2, 5)
    k = 0
    while span / (nice[k % 3] * 10 ** (k // 3)) > most:
        k += 1
    return dict(tickmode="linear", tick0=0, dtick=nice[k % 3] * 10 ** (k // 3), tickformat="d")


def loss_figure(losses: pl.DataFrame, title: str | None = None) -> go.Figure:
    """Train (and held-out, when logged) loss against step."""
    fig = go.Figure()
    for col, name, dash in (("train_loss", "train", None), ("eval_loss", "held-out", "dot")):
        part = losses.filter(pl.col(col).is_not_null())
        if part.is_empty():
            continue
        fig.add_trace(go.Scatter(x=part["step"].to_list(), y=part[col].to_list(), mode="lines+markers", name=name,
                                 line=dict(dash=dash), meta=dict(kind="loss", series=col)))
    fig.update_layout(title=title, xaxis_title="step", yaxis_title="loss", height=320, template="plotly_white",
                      font=FONT, margin=dict(l=60, r=20, t=50 if title else 20, b=50))
    fig.update_xaxes(**step_ticks(losses["step"].to_list() if "step" in losses.columns else []))
    return fig


def run_curves_figure(curves: pl.DataFrame, *, rows: Sequence[Row], convention: str) -> go.Figure:
    """A run's norms against step, one subplot per row, colour = layer (log₂ y)."""
    fig = make_subplots(rows=1, cols=max(len(rows), 1), subplot_titles=[r.title for r in rows],
                        horizontal_spacing=0.06)
    shown: set[int] = set()
    for j, row in enumerate(rows, start=1):
        part = curves.filter(pl.col("row") == row.key)
        for layer in sorted(part["layer"].unique().to_list()):
            c = part.filter(pl.col("layer") == layer)
            fig.add_trace(go.Scatter(
                x=c["step"].to_list(), y=c["norm"].to_list(), mode="lines+markers", name=f"layer {layer}",
                legendgroup=f"layer {layer}", legendrank=100 + int(layer), showlegend=layer not in shown,
                line=dict(color=layer_colour(layer)), meta=dict(kind="run_curve", row=row.key, layer=int(layer)),
                hovertemplate=f"layer {layer} · step %{{x}}<br>{row.title} = %{{y:.4g}}<extra></extra>"),
                row=1, col=j)
            shown.add(layer)
        fig.update_yaxes(type="log", exponentformat="power", row=1, col=j)
        fig.update_xaxes(title_text="step", row=1, col=j, **step_ticks(curves["step"].to_list()))
    fig.update_yaxes(title_text=norm_label(convention, "·"), row=1, col=1)
    fig.update_layout(height=330, template="plotly_white", font=FONT, margin=dict(l=60, r=20, t=40, b=50))
    return fig


# --- norms against the step -------------------------------------------------------------------------
def step_figure(curves: pl.DataFrame, *, width_name: str, y_title: str, title: str | None = None) -> go.Figure:
    """A norm against the optimizer step, one curve per width (app.frames.step_curves; colour by width, dark =
    small), with its min–max band over seeds; log y."""
    fig = go.Figure()
    widths = sorted(curves["width"].unique().to_list()) if not curves.is_empty() else []
    colours = width_colours(widths) if widths else {}
    for w in widths:
        c = curves.filter(pl.col("width") == w)
        x = c["step"].to_list()
        name = f"{width_name} = {w}"
        fig.add_trace(go.Scatter(x=x + x[::-1], y=c["hi"].to_list() + c["lo"].to_list()[::-1], fill="toself",
                                 mode="lines", line=dict(width=0), fillcolor=_rgba_any(colours[w], 0.15),
                                 hoverinfo="skip", showlegend=False, legendgroup=name, meta=dict(kind="step_band",
                                                                                                   width=int(w))))
        fig.add_trace(go.Scatter(
            x=x, y=c["norm"].to_list(), mode="lines+markers", name=name, legendgroup=name,
            line=dict(color=colours[w], width=2), marker=dict(size=5), customdata=c["n_seeds"].to_list(),
            meta=dict(kind="step_curve", width=int(w)),
            hovertemplate=f"{name} · step %{{x}}<br>%{{y:.4g}} (geometric mean of %{{customdata}} seed(s))"
                          "<extra></extra>"))
    fig.update_xaxes(title_text="optimizer step", **step_ticks(curves["step"].to_list() if widths else []))
    fig.update_yaxes(title_text=y_title, type="log", exponentformat="power")
    fig.update_layout(height=460, template="plotly_white", font=FONT, title=title, meta=dict(kind="steps"),
                      margin=dict(l=70, r=20, t=50 if title else 20, b=50), legend=dict(traceorder="normal"))
    return fig


def _rgba_any(colour: str, alpha: float) -> str:
    """A plotly colour ("#rrggbb" or "rgb(r, g, b)") with transparency `alpha`."""
    if colour.startswith("#"):
        return _rgba(colour, alpha)
    return colour.replace("rgb(", "rgba(").replace(")", f", {alpha})")


# --- learning-rate transfer ----------------------------------------------------------------------
WIDTH_COLOURSCALE = "Viridis"


def width_colours(widths: Sequence[int]) -> dict[int, str]:
    """Widths from small to large along a sequential colour scale (small = dark)."""
    from plotly.colors import sample_colorscale

    widths = sorted(widths)
    if len(widths) == 1:
        return {widths[0]: sample_colorscale(WIDTH_COLOURSCALE, [0.0])[0]}
    at = [0.85 * i / (len(widths) - 1) for i in range(len(widths))]
    return dict(zip(widths, sample_colorscale(WIDTH_COLOURSCALE, at), strict=True))


def lr_tick(lr: float) -> str:
    """A learning-rate tick: 2^k for powers of two, else the value."""
    k = math.log2(lr) if lr > 0 else math.nan
    return f"2^{int(k)}" if math.isfinite(k) and k.is_integer() else f"{lr:.3g}"


def transfer_figure(curves: pl.DataFrame, optima: pl.DataFrame, *, width_name: str, loss_name: str,
                    title: str | None = None) -> go.Figure:
    """Final loss against log2 learning rate, one curve per width; ★ = optimum; ✕ at the top = diverged."""
    fig = go.Figure()
    widths = sorted(curves["width"].unique().to_list()) if not curves.is_empty() else []
    colours = width_colours(widths) if widths else {}
    finite = curves.filter(pl.col("loss").is_not_null())["loss"]
    lo = float(finite.min()) if len(finite) else 0.0
    hi = float(finite.max()) if len(finite) else 1.0
    span = max(hi - lo, 1e-3)
    top = hi + 0.1 * span  # diverged markers sit above every curve, one slightly lower per width to stay visible
    opt_by_width = {r["width"]: r for r in optima.iter_rows(named=True)} if not optima.is_empty() else {}
    flagged_legend = False
    for k, w in enumerate(widths):
        c = curves.filter(pl.col("width") == w)
        ok = c.filter(pl.col("loss").is_not_null())
        name = f"{width_name} = {w}"
        fig.add_trace(go.Scatter(
            x=ok["log2_lr"].to_list(), y=ok["loss"].to_list(), mode="lines+markers", name=name,
            legendgroup=name, line=dict(color=colours[w], width=2), marker=dict(size=7),
            customdata=[[lr, n, ids] for lr, n, ids in zip(ok["lr"].to_list(), ok["n_seeds"].to_list(),
                                                           ok["run_ids"].to_list(), strict=True)],
            meta=dict(kind="transfer", width=int(w)),
            hovertemplate=(f"{name}<br>lr %{{customdata[0]:.3g}} (log₂ %{{x:.2f}}): {loss_name} %{{y:.4f}}"
                           "<br>mean of %{customdata[1]} seed(s) · runs %{customdata[2]}<extra></extra>")))
        bad = c.filter(pl.col("loss").is_null())
        if not bad.is_empty():
            fig.add_trace(go.Scatter(
                x=bad["log2_lr"].to_list(), y=[top - 0.03 * span * k] * bad.height, mode="markers", name="diverged",
                legendgroup="diverged", showlegend=not flagged_legend,
                marker=dict(symbol="x", size=11, color=colours[w], line=dict(width=2, color=FLAG_COLOUR)),
                customdata=[[lr, n, s, ids] for lr, n, s, ids in zip(
                    bad["lr"].to_list(), bad["n_diverged"].to_list(), bad["n_seeds"].to_list(),
                    bad["run_ids"].to_list(), strict=True)],
                meta=dict(kind="diverged", width=int(w)),
                hovertemplate=(f"{name}<br>lr %{{customdata[0]:.3g}}: %{{customdata[1]}} of %{{customdata[2]}} "
                               "seed(s) diverged<br>runs %{customdata[3]}<extra></extra>")))
            flagged_legend = True
        o = opt_by_width.get(w)
        if o is not None and o["log2_lr_opt"] is not None and math.isfinite(o["log2_lr_opt"]):
            fig.add_trace(go.Scatter(
                x=[o["log2_lr_opt"]], y=[o["loss_at_opt"]], mode="markers", name=f"optimum {name}",
                legendgroup=name, showlegend=False,
                marker=dict(symbol="star", size=15, color=colours[w], line=dict(width=1, color="black")),
                meta=dict(kind="optimum", width=int(w)),
                hovertemplate=(f"{name}: optimum lr {2 ** o['log2_lr_opt']:.3g} (log₂ {o['log2_lr_opt']:.2f})"
                               f"<br>{loss_name} {o['loss_at_opt']:.4f} · {o['status']}<extra></extra>")))
    ticks = sorted(set(zip(curves["log2_lr"].to_list(), curves["lr"].to_list(), strict=True)))
    fig.update_xaxes(title_text="base learning rate (log₂ scale)", tickvals=[t for t, _ in ticks],
                     ticktext=[lr_tick(lr) for _, lr in ticks])
    fig.update_yaxes(title_text=loss_name, range=[lo - 0.08 * span, top + 0.08 * span])
    fig.update_layout(height=460, template="plotly_white", font=FONT, title=title,
                      margin=dict(l=60, r=20, t=50 if title else 20, b=50), meta=dict(kind="transfer"))
    return fig
