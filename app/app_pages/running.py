"""Running exponents — is a slope still moving toward its prediction, or settled elsewhere? Which group moves it?

Beside the coordinate check: the local slope of each cell between successive widths (or over sliding
3-width windows) against log2 width, with its 95 % CI as an error bar and the predicted exponent as a
horizontal line (runs.analysis.running); the cell's trend and regime in a table; and, for sweeps recorded
with per-group update probes, each parameter group's contribution to ‖Δx‖ / ‖Δy‖ against width with its
slope and share (runs.analysis.groups). Everything is fitted by runs/ exactly as `ssmscope slopes` does.
"""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
import polars as pl
import streamlit as st
from plotly.subplots import make_subplots

from ssmscope.app import controls, data
from ssmscope.app.frames import DISC_ORDER, PRESET_ORDER, ROW_BY_KEY, WidthAxis
from ssmscope.app.page import open_page
from ssmscope.app.widgets import export_figure
from ssmscope.runs.analysis.groups import GROUP_COLUMNS, GROUP_SITES, NO_GROUP_PROBES, contributions, group_slopes
from ssmscope.runs.analysis.norms import norm_label
from ssmscope.runs.analysis.regime import REGIME_COLUMNS, attach_regime
from ssmscope.runs.analysis.running import TREND_COLUMNS, WindowKind, attach_trend, running_slopes
from ssmscope.runs.analysis.slopes import fit_slopes
from ssmscope.runs.analysis.stats import DEFAULT_N_BOOT
from ssmscope.runs.analysis.vocabulary import FitStatus
from ssmscope.runs.store import db as store
from ssmscope.runs.store.schema import EXCLUDED_STATUSES

ROW_KEYS = ("x", "y", "dx", "dy", "cx", "dcx")  # the coordinate-check rows this page offers (activations, updates)
GROUP_ROW_KEYS = ("dx", "dy", "dcx")  # rows with per-group contributions
WINDOW_LABELS = {WindowKind.PAIR.value: "successive widths", WindowKind.WINDOW3.value: "3-width windows"}
LAYER_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
GROUP_COLORS = {"": "#222222", "W_B": "#1f77b4", "W_C": "#ff7f0e", "dt_path": "#2ca02c", "A_log": "#9467bd",
                "upstream": "#8c564b"}


# --- cached fits -----------------------------------------------------------------------------------
def _on_axis(frame: pl.DataFrame, axis_key: str) -> pl.DataFrame:
    design, _, fixed = axis_key.partition("@")
    if design == "n_u" and fixed:
        return frame.filter(pl.col("n_x") == int(fixed))
    if design == "n_x" and fixed:
        return frame.filter(pl.col("n_u") == int(fixed))
    return frame


@st.cache_data(show_spinner="Fitting running exponents…", max_entries=32)
def running(db: data.Store, sweep: str, sel: data.Where, *, axis_key: str, convention: str, step: int | str,
            layers: str, window: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(local slopes of every cell, the whole-range slopes with trend and regime) of the selected runs."""
    frame = _on_axis(data.apply(data.probe_frame(db, sweep), sel), axis_key)
    if frame.is_empty():
        return pl.DataFrame(), pl.DataFrame()
    options = dict(convention=convention, design=axis_key.partition("@")[0], layers=layers, step=step,
                   n_boot=DEFAULT_N_BOOT)
    local = running_slopes(frame, kinds=(WindowKind(window),), **options)
    whole = fit_slopes(frame, **options)
    whole = attach_trend(attach_regime(whole, frame), frame, **options)
    return local, whole


@st.cache_data(show_spinner="Reading the per-group probes…", max_entries=8)
def group_frame(db: data.Store, sweep: str) -> pl.DataFrame:
    """The sweep's Δ rows of the group sites (totals and per-group) with step-0 values: what the groups need.

    app.data.probe_frame drops per-group rows (no other page shows them), so this page reads its own.
    """
    frame = store.load_probe_frame(Path(db.path), {"spec": sweep})
    keep = pl.col("site").is_in(GROUP_SITES) & ((pl.col("quantity") == "delta_init") | (pl.col("step") == 0))
    return frame.filter(keep)


@st.cache_data(show_spinner="Fitting group contributions…", max_entries=32)
def groups(db: data.Store, sweep: str, sel: data.Where, *, axis_key: str, convention: str, step: int | str,
           layers: str, sites: tuple[str, ...]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(group slopes with shares, trend and regime; per-run contribution norms) of the selected runs."""
    frame = _on_axis(data.apply(group_frame(db, sweep), sel), axis_key)
    has_groups = frame.filter(pl.col("group").fill_null("") != "").height > 0
    if frame.is_empty() or not has_groups:
        return pl.DataFrame(), pl.DataFrame()
    options = dict(convention=convention, design=axis_key.partition("@")[0], layers=layers, step=step,
                   n_boot=DEFAULT_N_BOOT)
    fits = group_slopes(frame, sites=sites, **options)
    fits = attach_regime(fits, frame)
    norms = contributions(frame, convention).join(
        frame.select("run_id", "preset", "discretization", "n_u", "n_x", "seed", "status").unique("run_id"),
        on="run_id")
    return fits, norms


# --- figures ---------------------------------------------------------------------------------------
def running_figure(local: pl.DataFrame, *, rows: list[str], panels: list[tuple[str, str]],
                   axis_title: str, convention: str, title: str) -> go.Figure:
    """Local slope against log2 width per (row, panel): markers with CI bars per layer, prediction line."""
    fig = make_subplots(rows=len(rows), cols=len(panels), shared_xaxes=True, horizontal_spacing=0.04,
                        vertical_spacing=0.06, column_titles=[f"{p} · {d}" for p, d in panels],
                        row_titles=[ROW_BY_KEY[r].title for r in rows])
    layers = sorted(local["layer"].unique().to_list(), key=lambda v: -1 if v is None else v)
    seen_layers: set = set()
    for i, key in enumerate(rows, start=1):
        row = ROW_BY_KEY[key]
        for j, (preset, disc) in enumerate(panels, start=1):
            cell = local.filter((pl.col("preset") == preset) & (pl.col("discretization") == disc)
                                & (pl.col("site") == row.site) & (pl.col("quantity") == row.quantity)
                                & (pl.col("status") == FitStatus.OK))
            for k, layer in enumerate(layers):
                pts = cell.filter(pl.col("layer").is_null() if layer is None else pl.col("layer") == layer)
                pts = pts.sort("log2_width")
                if pts.is_empty():
                    continue
                name = "mean over layers" if layer is None else f"layer {layer}"
                hover = [f"{name}<br>widths {lo}–{hi}: s = {e:+.3f} [{a:+.3f}, {b:+.3f}]"
                         for lo, hi, e, a, b in pts.select("width_lo", "width_hi", "estimate", "ci_low",
                                                           "ci_high").fill_null(float("nan")).iter_rows()]
                fig.add_trace(go.Scatter(
                    x=pts["log2_width"].to_list(), y=pts["estimate"].to_list(), mode="lines+markers",
                    name=name, legendgroup=name, showlegend=name not in seen_layers,
                    line={"color": LAYER_COLORS[k % len(LAYER_COLORS)]},
                    error_y={"type": "data", "symmetric": False,
                             "array": (pts["ci_high"] - pts["estimate"]).to_list(),
                             "arrayminus": (pts["estimate"] - pts["ci_low"]).to_list()},
                    hovertext=hover, hoverinfo="text",
                    meta={"kind": "local", "row": key, "panel": f"{preset} · {disc}", "layer": layer}), row=i, col=j)
                seen_layers.add(name)
            predicted = cell["predicted"].drop_nulls()
            if len(predicted):
                fig.add_hline(y=float(predicted[0]), line={"dash": "dash", "color": "#888"}, row=i, col=j)
                fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line={"dash": "dash", "color": "#888"},
                                         name="predicted exponent", legendgroup="pred",
                                         showlegend="pred" not in seen_layers,
                                         meta={"kind": "prediction", "row": key, "panel": f"{preset} · {disc}",
                                               "value": float(predicted[0])}), row=i, col=j)
                seen_layers.add("pred")
            fig.add_hline(y=0.0, line={"width": 0.5, "color": "#ccc"}, row=i, col=j)
    fig.update_xaxes(title_text=axis_title, row=len(rows))
    fig.update_yaxes(title_text="local slope", col=1)
    fig.update_layout(title=title, height=240 * len(rows) + 120, margin={"t": 90},
                      meta={"rows": rows, "panels": [f"{p} · {d}" for p, d in panels], "convention": convention})
    return fig


def group_figure(norms: pl.DataFrame, *, sites: list[str], panels: list[tuple[str, str]], step: int,
                 axis: WidthAxis, convention: str) -> go.Figure:
    """Mean over seeds and layers of log2‖Δq_g‖ against log2 width, one line per group and the total."""
    fig = make_subplots(rows=len(sites), cols=len(panels), shared_xaxes=True, horizontal_spacing=0.04,
                        vertical_spacing=0.08, column_titles=[f"{p} · {d}" for p, d in panels],
                        row_titles=[norm_label(convention, s, "delta_init") for s in sites])
    col = "n_u" if axis.design in ("joint", "n_u") else "n_x"
    at = norms.filter((pl.col("step") == step) & ~pl.col("status").is_in(EXCLUDED_STATUSES))
    seen: set = set()
    for i, site in enumerate(sites, start=1):
        for j, (preset, disc) in enumerate(panels, start=1):
            cell = at.filter((pl.col("site") == site) & (pl.col("preset") == preset)
                             & (pl.col("discretization") == disc))
            if cell.is_empty():
                continue
            long = pl.concat([
                cell.select(col, "group", pl.col("norm").log(2).alias("y")),
                cell.unique(["run_id", "layer"]).select(col, pl.lit("").alias("group"),
                                                         pl.col("total").log(2).alias("y")),
            ])
            curves = (long.filter(pl.col("y").is_finite()).group_by(col, "group").agg(pl.col("y").mean())
                      .sort("group", col))
            for (group,), g in curves.group_by("group", maintain_order=True):
                name = group or "total"
                fig.add_trace(go.Scatter(
                    x=g[col].log(2).to_list(), y=g["y"].to_list(), mode="lines+markers", name=name,
                    legendgroup=name, showlegend=name not in seen,
                    line={"color": GROUP_COLORS.get(group, "#999"), "width": 3 if not group else 1.5},
                    meta={"kind": "group", "group": name, "site": site, "panel": f"{preset} · {disc}"}),
                    row=i, col=j)
                seen.add(name)
    fig.update_xaxes(title_text=axis.axis_title, row=len(sites))
    fig.update_yaxes(title_text="log₂‖Δq‖ (mean)", col=1)
    fig.update_layout(height=260 * len(sites) + 120, margin={"t": 90},
                      title=f"Each group's update alone (others at init), step {step}",
                      meta={"sites": sites, "panels": [f"{p} · {d}" for p, d in panels]})
    return fig


# What the page shows, under its title (a comment: Streamlit would print a bare string).
CAPTION = ("One power law over every width hides whether a slope is still moving. Each point is the slope "
           "fitted over successive widths (or a 3-width window), plotted at their geometric mean, with its "
           "95 % CI (seed bootstrap ∪ OLS); the dashed line is the predicted exponent. trend: toward / away "
           "from the prediction or settled, from the first and last local slopes and their CIs; regime: "
           "nonlinear when ‖Δq‖/‖q₀‖ > 1 at the largest width (docs/slopes.md).")


# --- the page ----------------------------------------------------------------------------------------
def main() -> None:
    """Render the page (Streamlit runs this file as the page's script)."""
    page = open_page("run", "Running exponents", CAPTION)
    state, db, runs = page.state, page.db, page.runs

    with st.sidebar:
        chosen = controls.run_selection(state, runs)
        sweep, optimizer, lr, base, in_config = chosen.sweep, chosen.optimizer, chosen.lr, chosen.base, chosen.runs
        axis = controls.axis_select(state, in_config)
        presets = controls.multi_filter(state, "Presets", "presets", in_config["preset"], order=PRESET_ORDER)
        discs = controls.multi_filter(state, "Discretisations", "discs", in_config["discretization"],
                                      order=DISC_ORDER)
        rows = state.multiselect("Rows (quantities)", "rows", list(ROW_KEYS), ["x", "y", "dx", "dy"],
                                 format_func=lambda k: ROW_BY_KEY[k].title)
        convention = controls.convention_select(state)
        layers = state.select("Layers", "layers", ["mean", "each"], "mean", widget="radio",
                              format_func={"mean": "mean over layers", "each": "one curve per layer"}.get)
        window = state.select("Local slopes over", "window", list(WINDOW_LABELS), WindowKind.PAIR.value,
                              format_func=WINDOW_LABELS.get, widget="radio")
        step = state.select("Step", "step", ["last", *sorted(data.probe_frame(db, sweep)["step"].unique().to_list())],
                            "last", format_func=lambda s: "last (per configuration)" if s == "last" else str(s))

    if axis is None or len(axis.widths) < 3:
        st.warning(f"Sweep {sweep!r} has fewer than three widths on every axis: a running exponent needs at least "
                   "two successive slopes.")
        state.sync()
        st.stop()
    if not presets or not discs or not rows:
        st.info("Select at least one preset, one discretisation and one row in the sidebar.")
        state.sync()
        st.stop()

    sel = data.where(optimizer=optimizer, lr=lr, preset=presets, discretization=discs, init_base=base)
    local, whole = running(db, sweep, sel, axis_key=axis.key, convention=convention, step=step, layers=layers,
                           window=window)
    panels = [(p, d) for p in presets for d in discs]
    if local.is_empty():
        st.info("Nothing to fit for this selection.")
        state.sync()
        st.stop()
    fig = running_figure(local, rows=rows, panels=panels, axis_title=axis.axis_title, convention=convention,
                         title=f"{sweep} · {optimizer} lr {lr:g} · step {step} · local slopes over "
                               f"{WINDOW_LABELS[window]} · {convention}")
    st.plotly_chart(fig, key="run__figure", config={"displaylogo": False})

    shown = whole.filter(pl.col("preset").is_in(presets) & pl.col("discretization").is_in(discs))
    row_filter = pl.lit(False)
    for key in rows:
        r = ROW_BY_KEY[key]
        row_filter = row_filter | ((pl.col("site") == r.site) & (pl.col("quantity") == r.quantity))
    st.subheader("Trend and regime per cell")
    st.dataframe(shown.filter(row_filter).select(
        "preset", "discretization", "site", "quantity", "layer", "step", "estimate", "ci_low", "ci_high", "predicted",
        "agreement", *TREND_COLUMNS, *REGIME_COLUMNS), hide_index=True, key="run__trend")
    with st.expander("Export the figure"):
        export_figure(fig, f"running-exponents-{sweep}-{convention}", "run__export",
                      ident=(db.version, sorted(state.values.items())))

    st.subheader("Per-group contributions")
    group_rows = [k for k in rows if k in GROUP_ROW_KEYS] or ["dx", "dy"]
    sites = tuple(ROW_BY_KEY[k].site for k in group_rows)
    fits, norms = groups(db, sweep, sel, axis_key=axis.key, convention=convention, step=step, layers=layers,
                         sites=sites)
    if fits.is_empty():
        st.info(NO_GROUP_PROBES + " (the per-group probes recompute the probe batch with one parameter group moved "
                "at a time: W_B, W_C, the Δ path, A_log, and everything upstream of the S6 input).")
    else:
        last = int(fits["step"].max())
        gfig = group_figure(norms, sites=list(sites), panels=panels, step=last, axis=axis, convention=convention)
        st.plotly_chart(gfig, key="run__groups", config={"displaylogo": False})
        st.dataframe(fits.select("preset", "discretization", "site", "layer", "group", "estimate", "ci_low",
                                 "ci_high", "status", *GROUP_COLUMNS, *REGIME_COLUMNS),
                     hide_index=True, key="run__group_table")
        st.caption("group = '' is the whole update. contribution_ratio = ‖Δq_g‖/‖Δq‖ and energy_share = "
                   "‖Δq_g‖²/Σ_h‖Δq_h‖², medians over seeds at the largest width. `ssmscope slopes --table groups` "
                   "prints the same; `ssmscope param fit` shifts each group's learning-rate exponent by minus its "
                   "slope (docs/solver.md).")
    state.sync()


if __name__ == "__main__":
    main()
