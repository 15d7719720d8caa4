"""The coordinate-check figure straight from a probe frame: fits, frames and figure in one call.

The one builder behind `ssmscope.coord_figure` (the notebook API) and the reproduction report
(app/report.py): app.frames → app.figures.coord_figure, with the slopes of runs.analysis.slopes.fit_slopes in
the hover and the panel corners. No Streamlit, no store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import polars as pl

from ssmscope.runs.store.schema import PROBE_FRAME_COLUMNS
from ssmscope.ssm.errors import ConfigError

PANEL_KEYS = ("preset", "discretization", "optimizer", "lr")
"""Run keys that split the figure into columns when they take more than one value."""


def _runs(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per run, with the last step it logged (standing in for last_finite_step on flags)."""
    keys = ["run_id", "seed", "status", *PANEL_KEYS, "n_u", "n_x"]
    return frame.group_by(keys).agg(pl.col("step").max().alias("last_finite_step"))


def coord_check_figure(frame: pl.DataFrame, *, convention: str = "rms", step: int | Literal["last"] = "last",
                       rows: Sequence[str] = ("x", "y", "dx", "dy"), axis: str | None = None, n_boot: int = 200,
                       title: str | None = None, y_range: str = "panel", pred_lines: bool = False) -> Any:
    """The coordinate check of a probe frame as a Plotly figure: log2‖·‖ against log2 width.

    Args:
        frame: a probe frame (ssmscope.coord_check, or ssmscope.store.load).
        convention: rms | l2 | token_l2 | channel_l2. step: a logged step, or "last".
        rows: quantities to show, from x, y, dx, dy, cx, dcx, grad_y, grad_x, out, dout.
        axis: "joint" (N_u = N_x), "n_u@<N_x>" or "n_x@<N_u>"; None: joint when there is one, else the first.
        n_boot: bootstrap resamples for the slopes' intervals (0: none).
        y_range: "panel" (each panel its own y range) or "row" (one range per row: the paper's layout).
        pred_lines: draw the predicted slope through each layer's mean point.

    Columns are the presets (and discretisations, optimizers, learning rates when the frame has several).
    """
    from ssmscope.app import figures
    from ssmscope.app.frames import (
        DISC_ORDER,
        PRESET_ORDER,
        ROW_BY_KEY,
        coord_points,
        flagged_points,
        ordered,
        panel_slopes,
        seed_bands,
        width_axes,
    )
    from ssmscope.runs.analysis.slopes import fit_slopes

    missing = [c for c in PROBE_FRAME_COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigError(f"not a probe frame: it lacks {', '.join(missing)} (use ssmscope.coord_check or "
                          "ssmscope.store.load)")
    unknown = [r for r in rows if r not in ROW_BY_KEY]
    if unknown:
        raise ConfigError(f"rows: {unknown[0]!r}; allowed: {', '.join(ROW_BY_KEY)}")
    frame = frame.filter(pl.col("group") == "")
    if frame.is_empty():
        raise ConfigError("the frame has no probe records")
    runs = _runs(frame)
    axes = {a.key: a for a in width_axes(runs)}
    if not axes:
        raise ConfigError("every width axis of the frame has fewer than two widths: nothing to plot against width")
    if axis is None:
        chosen = axes.get("joint") or next(iter(axes.values()))
    elif axis in axes:
        chosen = axes[axis]
    else:
        raise ConfigError(f"axis={axis!r}; this frame has: {', '.join(axes)}")
    on_axis = chosen.select(frame).drop("width")
    if step == "last":
        step = int(on_axis["step"].max())
    elif isinstance(step, bool) or not isinstance(step, int) or step not in set(on_axis["step"].to_list()):
        raise ConfigError(f"step={step!r}; logged steps: {sorted(set(on_axis['step'].to_list()))} or 'last'")
    panel_by = [k for k in PANEL_KEYS if on_axis[k].n_unique() > 1] or ["preset"]
    shown_rows = [ROW_BY_KEY[r] for r in rows]
    points = coord_points(on_axis, convention=convention, step=step, axis=chosen, panel_by=panel_by, rows=shown_rows)
    fits = fit_slopes(on_axis, convention=convention, design=chosen.design, step=step, n_boot=n_boot)
    slopes = panel_slopes(fits, panel_by)
    flags = flagged_points(runs, points, axis=chosen, panel_by=panel_by, step=step)
    order = [" · ".join(parts) for parts in _panel_order(on_axis, panel_by, PRESET_ORDER, DISC_ORDER)]
    panels = ordered(points["panel"].to_list(), order)
    return figures.coord_figure(points, bands=seed_bands(points), flags=flags, slopes=slopes, rows=shown_rows,
                                panels=panels, convention=convention, x_title=chosen.scale_title, step=step,
                                title=title, y_range=y_range, pred_lines=pred_lines)


def _panel_order(frame: pl.DataFrame, panel_by: list[str], presets: Sequence[str],
                 discs: Sequence[str]) -> list[list[str]]:
    """Panel labels in the paper's order of presets and discretisations (others after, sorted)."""
    orders = {"preset": presets, "discretization": discs}
    combos: list[list[str]] = [[]]
    for key in panel_by:
        values = [str(v) for v in frame[key].unique().to_list()]
        first = [v for v in orders.get(key, ()) if v in values]
        values = first + sorted(v for v in values if v not in first)
        combos = [[*c, v] for c in combos for v in values]
    return combos
