"""Figure export: interactive HTML always; PNG and SVG through kaleido and a local Chromium.

Kept apart from the figure builders: this is the only dashboard module that looks for a browser.
It never changes the process environment: the Chromium found here is handed to kaleido directly,
and kaleido is never allowed to download one.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import plotly.graph_objects as go

STATIC_FORMATS = ("png", "svg")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


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
    """Why PNG/SVG export is unavailable (None when kaleido and a Chromium are present)."""
    if importlib.util.find_spec("kaleido") is None:
        return ("PNG/SVG export needs kaleido (`pip install kaleido`) and a Chromium; "
                "the interactive HTML export works without them.")
    if find_chromium() is None:
        return ("PNG/SVG export needs a Chromium or Chrome (e.g. `apt-get install chromium`, or set "
                "BROWSER_PATH); the interactive HTML export works without it.")
    return None


def to_static(fig: go.Figure, fmt: str, width: int = 1400) -> bytes:
    """The figure as PNG or SVG bytes through kaleido (~5 s: it starts a headless Chromium)."""
    import kaleido

    if fmt not in STATIC_FORMATS:
        raise ValueError(f"format={fmt!r}; allowed: {', '.join(STATIC_FORMATS)}")
    problem = static_export_problem()
    if problem is not None:
        raise RuntimeError(problem)
    height = fig.layout.height or 600
    opts = dict(format=fmt, width=width, height=height, scale=2 if fmt == "png" else 1)
    return kaleido.calc_fig_sync(fig, opts=opts, kopts={"path": find_chromium()})
