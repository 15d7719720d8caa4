"""coord_figure: the dashboard's coordinate-check figure, straight from a probe frame (no store).

Builds what the dashboard's Coordinate check page builds (app.frames → app.figures.coord_figure, through
app.paper_figure, which the reproduction report uses too), with the slopes of runs.analysis.slopes.fit_slopes
in the hover and the panel corners. Plotly and the app's modules load on the first call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import polars as pl


def coord_figure(frame: pl.DataFrame, *, convention: str = "rms", step: int | Literal["last"] = "last",
                 rows: Sequence[str] = ("x", "y", "dx", "dy"), axis: str | None = None, n_boot: int = 200,
                 title: str | None = None, y_range: Literal["row", "panel"] = "row") -> Any:
    """The coordinate check of a probe frame as a Plotly figure: log2‖·‖ against log2 width, built by
    app.paper_figure.coord_check_figure (its docstring names every argument). `y_range` "row" (the default, as
    the dashboard's): one y range per row, so a flat parameterization looks flat beside an exploding one;
    "panel": each panel its own range."""
    from ssmscope.app.paper_figure import coord_check_figure

    return coord_check_figure(frame, convention=convention, step=step, rows=rows, axis=axis, n_boot=n_boot,
                              title=title, y_range=y_range)
