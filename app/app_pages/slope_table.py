"""Slope table — the paper's table: measured against predicted width exponents, with verdicts and downloads."""

from __future__ import annotations

import polars as pl
import streamlit as st

from ssmscope.app import controls, data, tables
from ssmscope.app.frames import DISC_ORDER, PRESET_ORDER
from ssmscope.app.page import open_page
from ssmscope.app.widgets import download_buttons
from ssmscope.runs.analysis.export import compact_caption, slope_caption, slope_display
from ssmscope.runs.analysis.slopes import Design, LayerAgg
from ssmscope.runs.analysis.vocabulary import Agreement, FitStatus

# Table layouts: the paper's table compact (sortable, fits a laptop screen), the same in long numeric form, and
# every fitted cell (`ssmscope slopes --table full`).
LAYOUTS = {"compact": "paper, compact", "numeric": "paper, one row per exponent", "full": "every cell"}


# What the page shows, under its title (a comment: Streamlit would print a bare string).
CAPTION = ("The exponent s of each norm against width (log₂‖·‖ = a + s·log₂ width) beside the one the theory "
           "predicts: ✓ / green = agrees, ✗ / red = disagrees. Click a column header to sort by it. The downloads "
           "are what `ssmscope slopes` writes for the same options.")


def main() -> None:
    """Render the page (Streamlit runs this file as the page's script)."""
    page = open_page("st", "Slope table", CAPTION)
    state, db, runs = page.state, page.db, page.runs

    # --- selection -----------------------------------------------------------------------------------
    with st.sidebar:
        sweep = controls.sweep_select(state, runs, allow_all=True)
        pool = runs if sweep is None else runs.filter(pl.col("spec") == sweep)
        presets = controls.multi_filter(state, "Presets", "presets", pool["preset"], order=PRESET_ORDER,
                                        share="presets")
        discs = controls.multi_filter(state, "Discretisations", "discs", pool["discretization"], order=DISC_ORDER,
                                      share="discs")
        optimizers = controls.multi_filter(state, "Optimizers", "optimizers", pool["optimizer"], share="optimizers")
        layout = state.select("Table", "table", list(LAYOUTS), "compact", widget="radio", format_func=LAYOUTS.get)
        kind = "full" if layout == "full" else "paper"
        convention = controls.convention_select(state)
        design = state.select("Width", "width", [d.value for d in Design], "joint",
                              format_func={"joint": "joint (N_u = N_x)", "n_u": "N_u (N_x fixed)",
                                           "n_x": "N_x (N_u fixed)", "2d": "2-D (s_u and s_x)"}.get)
        layers = state.select("Layers", "layers", [a.value for a in LayerAgg], "mean" if kind == "paper" else "each",
                              format_func={"mean": "mean over layers", "each": "one fit per layer"}.get, widget="radio")
        steps = sorted(data.probe_frame(db, sweep)["step"].unique().to_list())
        step = state.select("Step", "step", ["last", *steps], "last",
                            format_func=lambda s: "last (per configuration)" if s == "last" else str(s))
        include_failed = state.toggle("Fit diverged and failed runs too", "failed", False)

    sel = data.where(preset=presets, discretization=discs, optimizer=optimizers)
    options = dict(convention=convention, design=design, layers=layers, step=step, include_failed=include_failed)
    notes = data.coincidence_notes(db, sweep, sel, design=design)

    # --- table ---------------------------------------------------------------------------------------
    if kind == "paper":
        rows = data.paper(db, sweep, sel, **options)
        if rows.is_empty():
            st.info("Nothing to fit for this selection: the paper table needs x and y probes at 3 or more widths "
                    f"on the {design} axis.")
            state.sync()
            st.stop()
        for note in notes:
            st.info(note, icon=":material/join_inner:")
        if layout == "compact":
            style, config = tables.compact_styled(rows)
        else:
            style, config = tables.numeric_styled(rows)
        st.dataframe(style, hide_index=True, key="st__table", column_config=config)
        st.caption(compact_caption(rows) if layout == "compact" else slope_caption(rows))
        exports = tables.paper_exports(rows, notes)
    else:
        rows = data.slopes(db, sweep, sel, **options)
        if rows.is_empty():
            st.info("Nothing to fit for this selection.")
            state.sync()
            st.stop()
        for note in notes:
            st.info(note, icon=":material/join_inner:")
        shown = slope_display(rows)
        st.dataframe(tables.styled(shown, cells=["agreement"], verdicts=["verdict"]), hide_index=True, key="st__table",
                     column_config=tables.SLOPE_COLUMN_CONFIG)
        st.caption(slope_caption(rows))
        exports = tables.full_exports(rows, notes)

    n_ok = rows.filter(pl.col("status") == FitStatus.OK).height
    n_agree = rows.filter(pl.col("agreement") == Agreement.AGREES).height
    n_dis = rows.filter(pl.col("agreement") == Agreement.DISAGREES).height
    st.write(f"{rows.height} fitted terms: {n_ok} fitted, {n_agree} agree with the prediction, {n_dis} disagree.")

    # --- downloads -----------------------------------------------------------------------------------
    download_buttons(exports, f"slopes-{kind}-{sweep or 'all'}-{convention}-{design}", "st__dl")
    with st.expander("The same from the command line"):
        where = [f"--where 'spec={sweep}'"] if sweep is not None else []
        for column, picked, offered in (("preset", presets, pool["preset"]), ("discretization", discs,
                                        pool["discretization"]), ("optimizer", optimizers, pool["optimizer"])):
            if set(picked) != set(offered.unique()):
                where.append(f"--where '{column} in ({', '.join(picked)})'")
        st.code(f"ssmscope slopes --db {db.path} --table {kind} --convention {convention} --width {design} "
                f"--layers {layers} --step {step} {' '.join(where)} --format md", language="bash")

    state.sync()


if __name__ == "__main__":
    main()
