"""The learning-rate transfer figures: loss-vs-lr curves of every preset side by side, the loss at the optimum
against width ("wider is better"), and the embedding/readout gradient split against width.

Frames in, Plotly figures out (app/frames.py shapes the curves; runs.analysis.transfer finds the optima). Each
trace carries `meta` (kind, preset, width) so tests read the figure, not the pixels.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from ssmscope.app.figures import FLAG_COLOUR, FONT, lr_tick, width_colours

PRESET_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")
"""One colour per preset in the per-width panels (presets in display order)."""


def on_curve(log2_lr: np.ndarray, loss: np.ndarray, at: float) -> float:
    """The drawn curve's height at `at`: linear in log2 lr between its grid points (so an optimum marker sits on
    the line it belongs to, not at the parabola's vertex above or below it); NaN outside the drawn points."""
    ok = np.isfinite(loss)
    x, y = np.asarray(log2_lr, float)[ok], np.asarray(loss, float)[ok]
    if not len(x) or not (x.min() - 1e-9 <= at <= x.max() + 1e-9):  # log2 by polars and numpy: last-bit apart
        return math.nan
    return float(np.interp(at, x, y))


def transfer_grid_figure(curves: dict[str, pl.DataFrame], optima: pl.DataFrame, *, width_name: str,
                         loss_name: str, title: str | None = None) -> go.Figure:
    """One panel per preset (in the given order), final loss against log2 lr, one curve per width; ★ on each
    curve at its optimum η*, ✕ at the top of a panel for a learning rate where a seed diverged; one y range."""
    presets = list(curves)
    fig = make_subplots(rows=1, cols=len(presets), shared_yaxes=True, horizontal_spacing=0.03,
                        subplot_titles=presets)
    everything = pl.concat([c for c in curves.values() if not c.is_empty()]) if presets else pl.DataFrame()
    widths = sorted(everything["width"].unique().to_list()) if not everything.is_empty() else []
    colours = width_colours(widths) if widths else {}
    finite = everything.filter(pl.col("loss").is_not_null())["loss"] if not everything.is_empty() else []
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    span = max(hi - lo, 1e-3)
    top = hi + 0.08 * span
    flagged_legend = False
    for col, preset in enumerate(presets, start=1):
        c_all = curves[preset]
        opt = optima.filter(pl.col("preset") == preset)
        by_width = {r["width"]: r for r in opt.iter_rows(named=True)}
        for k, w in enumerate(widths):
            c = c_all.filter(pl.col("width") == w)
            if c.is_empty():
                continue
            ok = c.filter(pl.col("loss").is_not_null())
            name = f"{width_name} = {w}"
            fig.add_trace(go.Scatter(
                x=ok["log2_lr"].to_list(), y=ok["loss"].to_list(), mode="lines+markers", name=name,
                legendgroup=name, showlegend=col == 1, line=dict(color=colours[w], width=2), marker=dict(size=6),
                meta=dict(kind="transfer", preset=preset, width=int(w)),
                hovertemplate=f"{preset} · {name}<br>lr 2^%{{x:.2f}}: {loss_name} %{{y:.4f}}<extra></extra>"),
                row=1, col=col)
            bad = c.filter(pl.col("loss").is_null())
            if not bad.is_empty():
                fig.add_trace(go.Scatter(
                    x=bad["log2_lr"].to_list(), y=[top - 0.025 * span * k] * bad.height, mode="markers",
                    name="diverged", legendgroup="diverged", showlegend=not flagged_legend,
                    marker=dict(symbol="x", size=9, color=colours[w], line=dict(width=2, color=FLAG_COLOUR)),
                    meta=dict(kind="diverged", preset=preset, width=int(w)),
                    hovertemplate=f"{preset} · {name}<br>lr 2^%{{x:.2f}}: a seed diverged<extra></extra>"),
                    row=1, col=col)
                flagged_legend = True
            o = by_width.get(w)
            if o is None or o["log2_lr_opt"] is None or not math.isfinite(o["log2_lr_opt"]):
                continue
            y = on_curve(ok["log2_lr"].to_numpy(), ok["loss"].to_numpy(), o["log2_lr_opt"])
            fig.add_trace(go.Scatter(
                x=[o["log2_lr_opt"]], y=[y], mode="markers", name=f"optimum {name}", legendgroup=name,
                showlegend=False,
                marker=dict(symbol="star", size=13, color=colours[w], line=dict(width=1, color="black")),
                meta=dict(kind="optimum", preset=preset, width=int(w)),
                hovertemplate=(f"{preset} · {name}: η* = 2^{o['log2_lr_opt']:.2f} ({2 ** o['log2_lr_opt']:.3g})"
                               f"<br>{loss_name} at η* {o['loss_at_opt']:.4f} (parabola vertex) · "
                               f"{o['status']}<extra></extra>")), row=1, col=col)
    ticks = sorted(set(zip(everything["log2_lr"].to_list(), everything["lr"].to_list(), strict=True))) \
        if not everything.is_empty() else []
    for col in range(1, len(presets) + 1):
        fig.update_xaxes(tickvals=[t for t, _ in ticks][::2], ticktext=[lr_tick(lr) for _, lr in ticks][::2],
                         row=1, col=col)
    fig.update_yaxes(title_text=loss_name, range=[lo - 0.05 * span, top + 0.05 * span], row=1, col=1)
    fig.update_layout(height=430, template="plotly_white", font=FONT, title=title,
                      margin=dict(l=60, r=20, t=70 if title else 40, b=60),
                      meta=dict(kind="transfer-grid", presets=presets))
    fig.add_annotation(text="base learning rate (log₂ scale)", xref="paper", yref="paper", x=0.5, y=-0.16,
                       showarrow=False)
    return fig


def loss_at_optimum_figure(optima: pl.DataFrame, drift: pl.DataFrame, presets: list[str], *, width_name: str,
                           loss_name: str) -> go.Figure:
    """The loss at each width's optimum (95 % seed-bootstrap interval as error bars) against log2 width, one line
    per preset; the legend gives the fitted slope per doubling with its CI: negative = wider is better."""
    fig = go.Figure()
    for i, preset in enumerate(presets):
        o = optima.filter((pl.col("preset") == preset) & pl.col("loss_at_opt").is_finite()).sort("width")
        if o.is_empty():
            continue
        d = drift.filter(pl.col("preset") == preset)
        slope = d["loss_slope"][0] if d.height else math.nan
        lo, hi = (d["loss_ci_low"][0], d["loss_ci_high"][0]) if d.height else (math.nan, math.nan)
        ci = f" [{lo:+.3f}, {hi:+.3f}]" if lo is not None and math.isfinite(lo) else " (no CI)"
        label = f"{preset}: {slope:+.3f}{ci} per doubling" if slope is not None and math.isfinite(slope) else preset
        err_hi = (o["loss_ci_high"] - o["loss_at_opt"]).fill_nan(None).to_list()
        err_lo = (o["loss_at_opt"] - o["loss_ci_low"]).fill_nan(None).to_list()
        fig.add_trace(go.Scatter(
            x=np.log2(o["width"].to_numpy().astype(float)).tolist(), y=o["loss_at_opt"].to_list(),
            mode="lines+markers", name=label, line=dict(color=PRESET_COLOURS[i % len(PRESET_COLOURS)], width=2),
            error_y=dict(type="data", array=err_hi, arrayminus=err_lo, visible=True, thickness=1),
            meta=dict(kind="loss-at-optimum", preset=preset),
            customdata=o["width"].to_list(),
            hovertemplate=f"{preset} · {width_name} = %{{customdata}}: {loss_name} at η* %{{y:.4f}}<extra></extra>"))
    fig.update_xaxes(title_text=f"log₂ {width_name}")
    fig.update_yaxes(title_text=f"{loss_name} at η*")
    fig.update_layout(height=360, template="plotly_white", font=FONT, margin=dict(l=60, r=20, t=30, b=50),
                      legend=dict(orientation="h", y=-0.25), meta=dict(kind="loss-at-optimum"))
    return fig


def readout_split_figure(split: pl.DataFrame, presets: list[str], *, width_name: str) -> go.Figure:
    """log2 of the embedding matrix's gradient norm from its input use and from its readout use (and their sum for
    a tied matrix) against log2 width, one panel per preset; `split` has preset, width, group, norm."""
    fig = make_subplots(rows=1, cols=max(len(presets), 1), shared_yaxes=True, subplot_titles=presets,
                        horizontal_spacing=0.04)
    dashes = {"input": "dot", "readout": "solid", "shared": "dash"}
    for col, preset in enumerate(presets, start=1):
        for group, dash in dashes.items():
            g = split.filter((pl.col("preset") == preset) & (pl.col("group") == group)).sort("width")
            if g.is_empty():
                continue
            fig.add_trace(go.Scatter(
                x=np.log2(g["width"].to_numpy().astype(float)).tolist(), y=np.log2(g["norm"].to_numpy()).tolist(),
                mode="lines+markers", name=f"{group} side" if group != "shared" else "shared matrix",
                legendgroup=group, showlegend=col == 1, line=dict(dash=dash, width=2, color="#333333"),
                meta=dict(kind="readout-split", preset=preset, group=group)), row=1, col=col)
    fig.update_yaxes(title_text="log₂ ‖∂L/∂W‖ (probe batch)", row=1, col=1)
    fig.update_layout(height=330, template="plotly_white", font=FONT, margin=dict(l=60, r=20, t=40, b=60),
                      meta=dict(kind="readout-split"))
    fig.add_annotation(text=f"log₂ {width_name}", xref="paper", yref="paper", x=0.5, y=-0.2, showarrow=False)
    return fig
