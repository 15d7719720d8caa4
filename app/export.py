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
"""Resolution of PNG exports (vector formats have none)."""
RENDER_TIMEOUT_S = 120


@dataclass(frozen=True)
class PaperSize:
    """An export size: width and height in inches, base font size in points (None: as on screen)."""

    name: str
    width_in: float | None
    height_in: float | None
    font_pt: float | None

    def pixels(self, fig: go.Figure) -> tuple[int, int]:
        """(width, height) in CSS pixels; screen size: 1400 px wide, the figure's own height."""
        if self.width_in is None:
            return 1400, int(fig.layout.height or 600)
        return round(self.width_in * CSS_PX_PER_INCH), round((self.height_in or self.width_in * 0.75) * CSS_PX_PER_INCH)


SIZES = {
    "screen": PaperSize("as on screen (1400 px wide)", None, None, None),
    "column": PaperSize("paper, one column (3.25 in, 8 pt)", 3.25, 2.6, 8),
    "double": PaperSize("paper, two columns (6.75 in, 9 pt)", 6.75, 4.5, 9),
}
"""Export sizes offered by the dashboard; width and height can be changed after picking one."""


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
    """A copy of `fig` laid out for `size`: its font in points, tighter margins; the on-screen figure is untouched."""
    out = go.Figure(fig)
    if size.font_pt is None:
        return out
    px = size.font_pt * CSS_PX_PER_INCH / 72
    width, height = size.pixels(fig)
    out.update_layout(width=width, height=height, font=dict(size=px), margin=dict(l=4 * px, r=px, t=3 * px, b=3 * px),
                      legend=dict(font=dict(size=px)), title=dict(font=dict(size=px * 1.1)))
    out.update_annotations(font_size=px * 0.9)
    return out


async def _render(figs: dict[str, tuple[go.Figure, dict]], chromium: str) -> dict[str, bytes]:
    import kaleido

    async with kaleido.Kaleido(n=1, path=chromium) as k:
        return {fmt: await k.calc_fig(fig, opts=opts) for fmt, (fig, opts) in figs.items()}


def to_static_all(fig: go.Figure, size: PaperSize = SIZES["screen"],
                  formats: tuple[str, ...] = STATIC_FORMATS) -> dict[str, bytes]:
    """The figure in every static format (PNG at PNG_DPI for paper sizes), rendered in one Chromium session.

    Runs kaleido's event loop in a worker thread, so it works from Streamlit's script thread too.
    """
    unknown = [f for f in formats if f not in STATIC_FORMATS]
    if unknown:
        raise ValueError(f"format={unknown[0]!r}; allowed: {', '.join(STATIC_FORMATS)}")
    problem = static_export_problem()
    if problem is not None:
        raise RuntimeError(problem)
    printed = for_print(fig, size)
    width, height = size.pixels(fig)
    png_scale = 2 if size.font_pt is None else PNG_DPI / CSS_PX_PER_INCH
    jobs = {fmt: (printed, dict(format=fmt, width=width, height=height, scale=png_scale if fmt == "png" else 1))
            for fmt in formats}
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, _render(jobs, find_chromium())).result(timeout=RENDER_TIMEOUT_S)
