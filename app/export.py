"""Figure export: interactive HTML always; PNG, SVG and PDF through kaleido and a local Chromium.

Kept apart from the figure builders: this is the only dashboard module that looks for a browser.
It never changes the process environment: the Chromium found here is handed to kaleido directly,
and kaleido is never allowed to download one. `to_static_all` renders every static format in one
browser session (one start-up, ~5 s, instead of one per format), at a size made for print:
`PaperSize` gives the width and height in inches and the font size in points (a single or double
column of a two-column paper, or the screen size).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import math
import os
import shutil
from dataclasses import dataclass

import plotly.graph_objects as go

STATIC_FORMATS = ("png", "svg", "pdf")
MIME = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf"}
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
CSS_PX_PER_INCH = 96
"""Plotly's pixels are CSS pixels: 96 per inch (a point is 1/72 inch)."""
PNG_DPI = 300
"""Default resolution of PNG exports at paper sizes (vector formats have none); PaperSize.dpi changes it."""
RENDER_TIMEOUT_S = 120


@dataclass(frozen=True)
class PaperSize:
    """An export size: width and height in inches (height None: from the figure's grid of panels), base font
    size in points (None: as on screen) and the PNG's resolution in dots per inch."""

    name: str
    width_in: float | None
    height_in: float | None
    font_pt: float | None
    dpi: int = PNG_DPI

    @property
    def is_print(self) -> bool:
        return self.width_in is not None

    def height_for(self, fig: go.Figure) -> float:
        """The height in inches: height_in, else one that keeps the figure's panels about 4:3 (plus room for the
        column titles, the x title and the legend below)."""
        if self.height_in is not None:
            return self.height_in
        rows, cols = grid_shape(fig)
        if rows is None:
            return round(self.width_in * 0.75, 2)
        panel_w = self.width_in / cols
        return round(min(rows * panel_w * 0.65 + 0.9, 9.0), 2)

    def pixels(self, fig: go.Figure) -> tuple[int, int]:
        """(width, height) in CSS pixels; screen size: 1400 px wide, the figure's own height."""
        if self.width_in is None:
            return 1400, int(fig.layout.height or 600)
        return round(self.width_in * CSS_PX_PER_INCH), round(self.height_for(fig) * CSS_PX_PER_INCH)

    def png_pixels(self, fig: go.Figure) -> tuple[int, int]:
        """The PNG's (width, height) in pixels: width_in × dpi at print sizes (the height within a pixel of
        height × dpi: the page is laid out in whole CSS pixels), twice the CSS size on screen."""
        width, height = self.pixels(fig)
        if not self.is_print:
            return 2 * width, 2 * height
        png_width = round(self.width_in * self.dpi)
        return png_width, math.floor(height * png_width / width + 1e-9)  # Chromium drops the fraction


SIZES = {
    "screen": PaperSize("as on screen (1400 px wide)", None, None, None),
    "column": PaperSize("paper, one column (3.3 in, 7 pt)", 3.3, None, 7),
    "double": PaperSize("paper, two columns (7 in, 8 pt)", 7.0, None, 8),
}
"""Export sizes offered by the dashboard and the report; width, height, font and DPI can be changed after
picking one. Heights follow the figure's grid unless set."""
DPI_RANGE = (72, 1200)
"""The PNG resolutions an export accepts."""


def grid_shape(fig: go.Figure) -> tuple[int | None, int]:
    """(rows, columns) of a coordinate-check figure's panels from its meta; (None, 1) for other figures."""
    meta = fig.layout.meta if isinstance(fig.layout.meta, dict) else {}
    if meta.get("kind") not in ("coord_check", "overlay") or not meta.get("rows"):
        return None, 1
    return len(meta["rows"]), max(len(meta.get("panels") or [1]), 1)


def _slug(value: object) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in str(value)).strip("-")


def file_stem(fig: go.Figure, name: str, size_key: str = "screen", size: PaperSize | None = None) -> str:
    """The file name (without suffix) of an export: `name`, then what the figure's meta says and `name` does not
    (the step, the layers, the norm convention), then the size and, at print sizes, the PNG's dpi:
    coordinate-check-paper-figure-step40-rms-layers0-2-column-300dpi."""
    meta = fig.layout.meta if isinstance(fig.layout.meta, dict) else {}
    parts = [name]
    if meta.get("step") is not None and f"step{meta['step']}" not in name:
        parts.append(f"step{_slug(meta['step'])}")
    if meta.get("convention") and meta["convention"] not in name.split("-"):
        parts.append(_slug(meta["convention"]))
    layers = meta.get("layers")
    if layers:
        parts.append(f"layers{layers[0]}-{layers[-1]}" if len(layers) > 1 else f"layer{layers[0]}")
    if size_key != "screen":
        parts.append(_slug(size_key))
        if size is not None and size.is_print:
            parts.append(f"{size.dpi}dpi")
    return "-".join(p for p in parts if p)


def to_html(fig: go.Figure) -> str:
    """A self-contained interactive HTML page of the figure (plotly.js embedded: works offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True)


def find_chromium() -> str | None:
    """The Chromium/Chrome to render with: $BROWSER_PATH, else the first one on PATH."""
    env = os.environ.get("BROWSER_PATH")
    if env and os.path.exists(env):
        return env
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def static_export_problem() -> str | None:
    """Why PNG/SVG/PDF export is unavailable (None when kaleido and a Chromium are present)."""
    if importlib.util.find_spec("kaleido") is None:
        return ("PNG/SVG/PDF export needs kaleido (`pip install kaleido`) and a Chromium; "
                "the interactive HTML export works without them.")
    if find_chromium() is None:
        return ("PNG/SVG/PDF export needs a Chromium or Chrome (e.g. `apt-get install chromium`, or set "
                "BROWSER_PATH); the interactive HTML export works without it.")
    return None


def for_print(fig: go.Figure, size: PaperSize) -> go.Figure:
    """A copy of `fig` laid out to be read at `size` in print; the on-screen figure is untouched.

    Every text in points (base font_pt: ticks, axis and panel titles, the legend), lines and markers thinned
    to the size, at most four ticks per axis (x ticks say log2 width only), the legend in one row under the
    panels. At paper sizes the panel-corner slope labels and the reference-slope labels are left out: at a
    third of an inch per panel they would cover the data (the slope table carries the numbers).
    """
    out = go.Figure(fig)
    if size.font_pt is None:
        return out
    px = size.font_pt * CSS_PX_PER_INCH / 72  # plotly sizes are CSS px: 1 pt = 96/72 px
    width, height = size.pixels(fig)
    thin = max(0.5, width / 1400)  # how much smaller than on screen the figure is drawn
    out.update_layout(width=width, height=height, font=dict(size=px), margin=dict(l=4 * px, r=px, t=2.5 * px, b=5 * px),
                      legend=dict(font=dict(size=px * 0.9), orientation="h", x=0, xanchor="left", y=-3.2 * px / height,
                                  yanchor="top", itemwidth=30, traceorder="normal"),
                      title=dict(font=dict(size=px * 1.1)))
    kept = [a for a in out.layout.annotations if a.name != "slopes"]
    out.layout.annotations = kept
    out.update_annotations(font_size=px)
    out.update_xaxes(tickfont_size=px * 0.9, title_font_size=px, title_standoff=2, ticklen=2)
    out.update_yaxes(tickfont_size=px * 0.9, title_font_size=px, title_standoff=2, ticklen=2, nticks=4)
    _short_titles(out, fig)
    for axis in out.layout:
        if axis.startswith("xaxis") and out.layout[axis].tickvals is not None:
            ticks = list(out.layout[axis].tickvals)
            step = max(1, -(-len(ticks) // 4))  # at most four ticks
            chosen = ticks[::step]
            out.layout[axis].tickvals = chosen
            out.layout[axis].ticktext = [f"{t:g}" for t in chosen]
    data = []
    for trace in out.data:
        kind = (trace.meta or {}).get("kind") if isinstance(trace.meta, dict) else None
        if kind == "ref_label":
            continue
        trace.legendgroup = None  # a static legend toggles nothing; ungrouped entries share a row
        if getattr(trace, "line", None) is not None and trace.line.width:
            trace.line.width = max(0.5, trace.line.width * thin * 1.5)
        if getattr(trace, "marker", None) is not None and isinstance(trace.marker.size, (int, float)):
            trace.marker.size = max(2.0, trace.marker.size * thin * 1.5)
        if getattr(trace, "textfont", None) is not None and trace.textfont.size:
            trace.textfont.size = px * 0.8
        data.append(trace)
    out = go.Figure(data=data, layout=out.layout)
    return out


def _short_titles(out: go.Figure, fig: go.Figure) -> None:
    """Axis titles that fit a printed panel: a coordinate check's rows as "log₂ ‖x‖" (the norm convention is in
    the caption and the file name), its x title once, under the middle column."""
    from ssmscope.app.frames import ROW_BY_KEY

    rows, cols = grid_shape(fig)
    if rows is None:
        return
    meta = fig.layout.meta
    for i, key in enumerate(meta["rows"], start=1):
        axis = "yaxis" if (i - 1) * cols == 0 else f"yaxis{(i - 1) * cols + 1}"
        if key in ROW_BY_KEY and out.layout[axis].title.text:
            out.layout[axis].title.text = f"log₂ {ROW_BY_KEY[key].title}"
    middle = (cols + 1) // 2
    for j in range(1, cols + 1):
        n = (rows - 1) * cols + j
        axis = out.layout["xaxis" if n == 1 else f"xaxis{n}"]
        if axis.title.text and j != middle:
            axis.title.text = None


async def _render(figs: dict[str, tuple[go.Figure, dict]], chromium: str) -> dict[str, bytes]:
    import kaleido

    async with kaleido.Kaleido(n=1, path=chromium) as k:
        return {fmt: await k.calc_fig(fig, opts=opts) for fmt, (fig, opts) in figs.items()}


def to_static_all(fig: go.Figure, size: PaperSize = SIZES["screen"],
                  formats: tuple[str, ...] = STATIC_FORMATS) -> dict[str, bytes]:
    """The figure in every static format, rendered in one Chromium session: the PNG at size.dpi for paper sizes
    (so it is width_in × dpi pixels wide), twice the screen size otherwise.

    Runs kaleido's event loop in a worker thread, so it works from Streamlit's script thread too.
    """
    unknown = [f for f in formats if f not in STATIC_FORMATS]
    if unknown:
        raise ValueError(f"format={unknown[0]!r}; allowed: {', '.join(STATIC_FORMATS)}")
    if not DPI_RANGE[0] <= size.dpi <= DPI_RANGE[1]:
        raise ValueError(f"dpi={size.dpi}; allowed: {DPI_RANGE[0]}…{DPI_RANGE[1]}")
    problem = static_export_problem()
    if problem is not None:
        raise RuntimeError(problem)
    printed = for_print(fig, size)
    width, height = size.pixels(fig)
    png_scale = size.png_pixels(fig)[0] / width
    jobs = {fmt: (printed, dict(format=fmt, width=width, height=height, scale=png_scale if fmt == "png" else 1))
            for fmt in formats}
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, _render(jobs, find_chromium())).result(timeout=RENDER_TIMEOUT_S)
