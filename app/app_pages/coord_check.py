"""Coordinate check — the paper's figure: log2‖·‖ against log2 width, per layer, per preset (or per step)."""

from __future__ import annotations

import polars as pl
import streamlit as st

from ssmscope.app import controls, data, figures, tables
from ssmscope.app.frames import (
    DISC_ORDER,
    PRESET_ORDER,
    Row,
    coord_points,
    figure_slopes,
    flagged_points,
    ordered,
    panel_slopes,
    readout_ratio,
    seed_bands,
)
from ssmscope.app.page import open_page
from ssmscope.app.widgets import export_figure
from ssmscope.runs.analysis.equivalence import coincidences

LAYOUTS = {"presets": "presets as columns", "steps": "steps as columns (one preset)"}
Y_RANGES = {"row": "per row", "panel": "per panel"}
SIDE_BY_SIDE = "side by side"
# session_state key remembering "side by side" while the per-step layout (one discretisation) is shown.
DISC_MEMORY_KEY = "cc__disc_columns"
# Steps offered by default in the per-step layout: up to this many, evenly spread, first and last included.
MAX_STEP_PANELS = 6


def spread(steps: list[int], most: int = MAX_STEP_PANELS) -> list[int]:
    """Up to `most` of the sorted `steps`, evenly spread, the first and the last included."""
    if len(steps) <= most:
        return steps
    return sorted({steps[round(i * (len(steps) - 1) / (most - 1))] for i in range(most)})


# What the page shows, under its title (a comment: Streamlit would print a bare string).
CAPTION = ("log₂ of each probed norm against log₂ width, one colour per SSM layer: under a width-stable "
           "parameterization every curve is flat (slope 0). Line = mean over seeds of log₂‖·‖ (the hover reads "
           "it), band = min–max over seeds, dots = single runs; ✕ at the top = a diverged or failed run, ▼ at "
           "the bottom = a zero or non-finite norm. Each layer's fitted slope is in the panel's corner; dotted "
           "= the fitted line, dash-dot = the predicted slope through the layer's mean.")


def rows_caption(rows: list[Row], frame: pl.DataFrame, convention: str, step: int) -> str:
    """What each row of the figure measures, and how much of ‖y‖ is the D⊙u skip where both y and C·x are probed."""
    text = "Rows: " + "; ".join(f"**{r.title}** = {r.meaning}" for r in rows) + "."
    ratio = readout_ratio(frame, convention, step) if any(r.site in ("y", "cx") for r in rows) else None
    if ratio is not None:
        text += (f" Here ‖y‖ is {ratio:.3g}× ‖C·x‖ (median over these runs and layers at step {step}): "
                 + ("y mostly measures the D⊙u skip, so the readout C·x is the row that tests the S6 scaling."
                    if ratio > 3 else "the readout is a sizeable part of y."))
    return text


def coincidence_notes(runs: pl.DataFrame, design: str, presets: list[str], layout: str) -> list[str]:
    """A note for each group of shown presets that are one parameterization on this width axis (runs.analysis.
    equivalence: their resolved exponents coincide), so that alike columns are read as alike by construction."""
    if len(presets) < 2 or layout != "presets":
        return []
    found = coincidences(runs.filter(pl.col("preset").is_in(presets)), design, PRESET_ORDER)
    return [f"{' and '.join(c.presets)} are one parameterization under {c.discretization} · {c.optimizer} at these "
            "widths (every role's init, learning-rate and multiplier scale coincide): their columns show the same "
            "model, alike by construction." for c in found]


def main() -> None:
    """Render the page (Streamlit runs this file as the page's script)."""
    page = open_page("cc", "Coordinate check", CAPTION)
    state, db, runs = page.state, page.db, page.runs

    # --- selection -----------------------------------------------------------------------------------
    with st.sidebar:
        chosen = controls.run_selection(state, runs)
        sweep, optimizer, lr, base, in_config = chosen.sweep, chosen.optimizer, chosen.lr, chosen.base, chosen.runs
        axis = controls.axis_select(state, in_config)
        layout = state.select("Columns", "layout", list(LAYOUTS), "presets", format_func=LAYOUTS.get, widget="radio")
        discs = ordered(in_config["discretization"], DISC_ORDER)
        all_presets = ordered(in_config["preset"], PRESET_ORDER)
        if layout == "presets":
            presets = controls.multi_filter(state, "Presets (columns)", "presets", in_config["preset"],
                                            order=PRESET_ORDER, share="presets")
            if st.session_state.pop(DISC_MEMORY_KEY, None) == SIDE_BY_SIDE:  # back from the per-step layout
                st.session_state[state.key("disc")] = SIDE_BY_SIDE
            disc_mode = state.select("Discretisation", "disc", [*discs, SIDE_BY_SIDE] if len(discs) > 1 else discs,
                                     SIDE_BY_SIDE if len(discs) > 1 else None, widget="radio")
        else:
            chosen = [p for p in state.shared("presets") or [] if p in all_presets]  # the columns' presets, first
            presets = [state.select("Preset", "preset", all_presets, chosen[0] if chosen else None)]
            if st.session_state.get(state.key("disc")) == SIDE_BY_SIDE:  # one discretisation here; kept for later
                st.session_state[DISC_MEMORY_KEY] = SIDE_BY_SIDE
            disc_mode = state.select("Discretisation", "disc", discs, widget="radio")

    if axis is None:
        st.warning(f"Sweep {sweep!r} ({optimizer}, lr {lr:g}) has fewer than two widths on every axis: nothing to "
                   "plot against width. The built-in sweeps smoke, paper-figure and paper-table have 3–5 widths.")
        state.sync()
        st.stop()

    shown_discs = discs if disc_mode == SIDE_BY_SIDE else [disc_mode]
    sel = data.where(optimizer=optimizer, lr=lr, preset=presets, discretization=shown_discs, init_base=base)
    frame = data.apply(data.probe_frame(db, sweep), sel)
    logged = sorted(frame["step"].unique().to_list()) or [0]

    with st.sidebar:
        rows = controls.rows_select(state, frame)
        convention = controls.convention_select(state)
        if layout == "presets":
            steps = [controls.step_select(state, logged)]
        else:
            steps = sorted(state.multiselect("Steps (columns)", "steps", logged, spread(logged),
                                             url_format=str, help="Optimizer steps shown side by side."))
        st.subheader("Display")
        y_range = state.select("y axis", "y", list(Y_RANGES), "row", format_func=Y_RANGES.get, widget="radio",
                               help="Per row (default): one range across the row, so a flat curve looks flat beside "
                               "one that explodes. Per panel: each panel fits its own data (slopes read the same; "
                               "small wiggles fill the panel).")
        show_refs = state.toggle("Reference slopes 0, ±½, ±1", "refs", True)
        show_seeds = state.toggle("Single runs (dots)", "runs", True)
        hover_runs = state.toggle("Hover on single runs (run id, config)", "hover", False)
        fit_lines = state.toggle("Fitted slope lines", "fit", False)
        pred_lines = state.toggle("Predicted slope lines", "pred", True)

    if not presets or not rows or not steps or frame.is_empty():
        st.info("Select at least one preset, one row (quantity) and one step in the sidebar.")
        state.sync()
        st.stop()

    # --- data ----------------------------------------------------------------------------------------
    runs_sel = data.apply(in_config, sel)
    fit_options = dict(convention=convention, design=axis.design, fixed=axis.fixed)
    if layout == "presets":
        step = steps[0]
        panel_by = ["preset", "discretization"] if len(shown_discs) > 1 else ["preset"]
        panels = [f"{p} · {d}" for p in presets for d in shown_discs] if len(shown_discs) > 1 else list(presets)
        points = coord_points(frame, convention=convention, step=step, axis=axis, panel_by=panel_by, rows=rows)
        flags = flagged_points(runs_sel, points, axis=axis, panel_by=panel_by, step=step)
        slopes = panel_slopes(data.slopes(db, sweep, sel, step=step, **fit_options), panel_by)
        title = (f"{sweep} · {optimizer} lr {lr:g} · step {step} · "
                 f"{'ZOH and Euler' if len(shown_discs) > 1 else shown_discs[0]}")
        shown_step: int | str = step
    else:
        by_step = pl.format("step {}", pl.col("step"))
        panels = [f"step {s}" for s in steps]
        points = coord_points(frame, convention=convention, step=steps, axis=axis, panel_by=by_step, rows=rows)
        flags = pl.concat([flagged_points(runs_sel, points.filter(pl.col("panel") == f"step {s}"), axis=axis,
                                          panel_by=pl.lit(f"step {s}"), step=s) for s in steps], how="vertical")
        slopes = pl.concat([panel_slopes(data.slopes(db, sweep, sel, step=s, **fit_options), by_step)
                            for s in steps], how="vertical_relaxed")
        title = (f"{sweep} · {presets[0]} · {shown_discs[0]} · {optimizer} lr {lr:g} · "
                 f"steps {', '.join(map(str, steps))}")
        shown_step = ",".join(map(str, steps))
    bands = seed_bands(points)

    # --- figure --------------------------------------------------------------------------------------
    for note in coincidence_notes(axis.select(runs_sel), axis.design, presets, layout):
        st.info(note, icon=":material/join_inner:")
    fig = figures.coord_figure(points, bands, flags, slopes, rows=rows, panels=panels, convention=convention,
                               x_title=axis.scale_title, step=shown_step, show_refs=show_refs, show_seeds=show_seeds,
                               title=title, y_range=y_range, hover_runs=hover_runs, fit_lines=fit_lines,
                               pred_lines=pred_lines)
    st.plotly_chart(fig, key="cc__figure", config={"displaylogo": False})

    n_runs = points["run_id"].n_unique()
    n_flag = flags.filter(pl.col("site").is_null())["run_id"].n_unique() if not flags.is_empty() else 0
    at = f"step {steps[0]}" if len(steps) == 1 else f"steps {', '.join(map(str, steps))}"
    st.caption(f"{n_runs} runs with probes at {at}; {n_flag} diverged or failed run(s) marked ✕, left out of "
               "the means and the fits (as in `ssmscope slopes`).")
    st.caption(rows_caption(rows, frame, convention, steps[-1]))

    with st.expander("Fitted slopes of this figure"):
        table = figure_slopes(slopes, rows, panels)
        if table.is_empty():
            st.write("No slopes: fits need at least 3 widths.")
        else:
            st.dataframe(table, hide_index=True, key="cc__slopes",
                         column_config=tables.readable_config(table.columns, tables.SLOPE_COLUMN_CONFIG))

    with st.expander("Export the figure"):
        export_figure(fig, f"coordinate-check-{sweep}-step{shown_step}-{convention}", "cc__export",
                      ident=(db.version, sorted(state.values.items())))

    state.sync()


if __name__ == "__main__":
    main()
