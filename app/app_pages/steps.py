"""Norm vs step — one quantity of one preset and layer against the optimizer step, one curve per width.

The coordinate-check view of mup and W&B: under a width-stable parameterization the curves of every width lie on top
of each other through training; under one that is not, they fan out as training proceeds. Read from the same store as
the coordinate check (its width axis, norm conventions and rows).
"""

from __future__ import annotations

import polars as pl
import streamlit as st

from ssmscope.app import controls, data, figures
from ssmscope.app.frames import (
    DISC_ORDER,
    FLAGGED_STATUSES,
    PRESET_ORDER,
    ROW_BY_KEY,
    available_rows,
    default_rows,
    ordered,
    step_curves,
)
from ssmscope.app.page import open_page
from ssmscope.app.widgets import export_figure
from ssmscope.runs.analysis.norms import norm_label

# What the page shows, under its title (a comment: Streamlit would print a bare string).
CAPTION = ("One probed norm against the optimizer step, one curve per width (dark = small): under a width-stable "
           "parameterization the widths' curves lie on top of each other all through training. Line = geometric "
           "mean over seeds (the mean of log₂‖·‖, as on the coordinate check), band = min–max over seeds.")


def main() -> None:
    """Render the page (Streamlit runs this file as the page's script)."""
    page = open_page("ns", "Norm vs step", CAPTION)
    state, db, runs = page.state, page.db, page.runs

    # --- selection -----------------------------------------------------------------------------------
    with st.sidebar:
        chosen = controls.run_selection(state, runs)
        sweep, optimizer, lr, base, in_config = chosen.sweep, chosen.optimizer, chosen.lr, chosen.base, chosen.runs
        axis = controls.axis_select(state, in_config)
        presets = ordered(in_config["preset"], PRESET_ORDER)
        shared = [p for p in state.shared("presets") or [] if p in presets]
        preset = state.select("Preset", "preset", presets, shared[-1] if shared else None)
        disc = state.select("Discretisation", "disc", ordered(in_config["discretization"], DISC_ORDER),
                            widget="radio")

    if axis is None:
        st.warning(f"Sweep {sweep!r} ({optimizer}, lr {lr:g}) has fewer than two widths on every axis: nothing to "
                   "compare across widths.")
        state.sync()
        st.stop()

    sel = data.where(optimizer=optimizer, lr=lr, preset=preset, discretization=disc, init_base=base)
    frame = data.apply(data.probe_frame(db, sweep), sel)
    keys = [r.key for r in available_rows(frame)]
    layers = sorted(frame["layer"].unique().to_list()) if not frame.is_empty() else []
    with st.sidebar:
        defaults = default_rows(keys)
        row_key = state.select("Quantity", "row", keys, defaults[1] if len(defaults) > 1 else None,
                               format_func=lambda k: f"{ROW_BY_KEY[k].title}: {ROW_BY_KEY[k].meaning}")
        layer = state.select("Layer", "layer", layers, format_func=lambda v: f"layer {v}", url_format=str)
        convention = controls.convention_select(state)

    if row_key is None or layer is None:
        st.info("These runs have no probes to show.")
        state.sync()
        st.stop()

    # --- data and figure -----------------------------------------------------------------------------
    row = ROW_BY_KEY[row_key]
    curves = step_curves(frame, convention=convention, axis=axis, row=row, layer=layer)
    title = f"{sweep} · {preset} · {disc} · {optimizer} lr {lr:g} · layer {layer} · {row.title}"
    fig = figures.step_figure(curves, width_name=axis.scale_title.split(" (")[0],
                              y_title=norm_label(convention, row.site, row.quantity), title=title)
    st.plotly_chart(fig, key="ns__figure", config={"displaylogo": False})

    left_out = axis.select(data.apply(in_config, sel)).filter(pl.col("status").is_in(FLAGGED_STATUSES))
    st.caption(f"**{row.title}** = {row.meaning}. {curves['width'].n_unique()} widths on {axis.label}; "
               f"{left_out.height} diverged or failed run(s) left out (the Runs page lists them). A zero norm (every "
               "Δ at step 0) has no place on the log axis and is not drawn.")

    with st.expander("Export the figure"):
        export_figure(fig, f"norm-vs-step-{sweep}-{preset}-{disc}-{row.key}-layer{layer}-{convention}", "ns__export",
                      ident=(db.version, sorted(state.values.items())))

    state.sync()


if __name__ == "__main__":
    main()
