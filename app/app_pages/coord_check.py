"""Coordinate check — the paper's figure: log2‖·‖ against log2 width, per layer, per preset."""

from __future__ import annotations

import polars as pl
import streamlit as st

from ssmscope.app import controls, data, figures
from ssmscope.app.frames import (
    DISC_ORDER,
    PRESET_ORDER,
    coord_points,
    flagged_points,
    ordered,
    panel_slopes,
    seed_bands,
)
from ssmscope.app.tables import styled
from ssmscope.app.widgets import UrlState, export_figure


def main() -> None:
    """Render the page (Streamlit runs this file as the page's script)."""
    state = UrlState("cc")
    db = data.current_store()
    runs = data.runs_frame(db)

    st.title("Coordinate check")
    st.caption("log₂ of each probed norm against log₂ width, one colour per SSM layer: under a width-stable "
               "parameterization every curve is flat (slope 0). Line = mean over seeds of log₂‖·‖, band = min–max "
               "over seeds, dots = single runs; ✕ at the top = a diverged or failed run, ▼ at the bottom = a zero or "
               "non-finite norm. The fitted slope s of each layer is in the panel corner and the hover.")

    # --- selection -----------------------------------------------------------------------------------
    with st.sidebar:
        st.header("Coordinate check")
        sweep = controls.sweep_select(state, runs)
        in_sweep = runs.filter(pl.col("spec") == sweep)
        optimizer, lr = controls.config_select(state, in_sweep)
        in_config = in_sweep.filter((pl.col("optimizer") == optimizer) & (pl.col("lr") == lr))
        axis = controls.axis_select(state, in_config)
        presets = controls.multi_filter(state, "Presets (columns)", "presets", in_config["preset"], order=PRESET_ORDER)
        discs = ordered(in_config["discretization"], DISC_ORDER)
        disc_mode = state.select("Discretisation", "disc", [*discs, "side by side"] if len(discs) > 1 else discs,
                                 "side by side" if len(discs) > 1 else None, widget="radio")

    if axis is None:
        st.warning(f"Sweep {sweep!r} ({optimizer}, lr {lr:g}) has fewer than two widths on every axis: nothing to "
                   "plot against width. The built-in sweeps smoke, paper-figure and paper-table have 3–5 widths.")
        state.sync()
        st.stop()

    shown_discs = discs if disc_mode == "side by side" else [disc_mode]
    sel = data.where(optimizer=optimizer, lr=lr, preset=presets, discretization=shown_discs)
    frame = data.apply(data.probe_frame(db, sweep), sel)

    with st.sidebar:
        rows = controls.rows_select(state, frame)
        convention = controls.convention_select(state)
        step = controls.step_select(state, frame["step"].unique().to_list() or [0])
        show_refs = state.toggle("Reference slopes 0, ±½, ±1", "refs", True)
        show_seeds = state.toggle("Single runs (hover: run id, config)", "runs", True)

    if not presets or not rows or frame.is_empty():
        st.info("Select at least one preset and one row (quantity) in the sidebar.")
        state.sync()
        st.stop()

    # --- data ----------------------------------------------------------------------------------------
    panel_by = ["preset", "discretization"] if len(shown_discs) > 1 else ["preset"]
    panels = [f"{p} · {d}" for p in presets for d in shown_discs] if len(shown_discs) > 1 else list(presets)
    points = coord_points(frame, convention=convention, step=step, axis=axis, panel_by=panel_by, rows=rows)
    bands = seed_bands(points)
    flags = flagged_points(data.apply(in_config, sel), points, axis=axis, panel_by=panel_by, step=step)
    fits = data.slopes(db, sweep, sel, convention=convention, design=axis.design, fixed=axis.fixed, step=step)
    slopes = panel_slopes(fits, panel_by)

    # --- figure --------------------------------------------------------------------------------------
    title = (f"{sweep} · {optimizer} lr {lr:g} · step {step} · "
             f"{'ZOH and Euler' if len(shown_discs) > 1 else shown_discs[0]}")
    fig = figures.coord_figure(points, bands, flags, slopes, rows=rows, panels=panels, convention=convention,
                               x_title=axis.axis_title, step=step, show_refs=show_refs, show_seeds=show_seeds,
                               title=title)
    st.plotly_chart(fig, key="cc__figure", config={"displaylogo": False})

    n_runs = points["run_id"].n_unique()
    n_flag = flags.filter(pl.col("site").is_null())["run_id"].n_unique() if not flags.is_empty() else 0
    st.caption(f"{n_runs} runs with probes at step {step}; {n_flag} diverged or failed run(s) marked ✕, left out of "
               "the means and the fits (as in `ssmscope slopes`).")

    with st.expander("Fitted slopes of this figure"):
        if slopes.is_empty():
            st.write("No slopes: fits need at least 3 widths.")
        else:
            table = slopes.select("panel", "site", "quantity", "layer", "estimate", "ci_low", "ci_high", "predicted",
                                  "verdict", "agreement", "n_seeds", "n_widths", "n_diverged", "status")
            st.dataframe(styled(table, cells=["agreement"], verdicts=["verdict"]), hide_index=True)

    with st.expander("Export the figure"):
        export_figure(fig, f"coordinate-check-{sweep}-step{step}-{convention}", "cc__export")

    state.sync()


if __name__ == "__main__":
    main()
