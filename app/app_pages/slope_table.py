"""Slope table — the paper's table: measured against predicted width exponents, with verdicts and downloads."""

from __future__ import annotations

import polars as pl
import streamlit as st

from ssmscope.app import controls, data, tables
from ssmscope.app.frames import DESIGN_LABELS, DISC_ORDER, PRESET_ORDER, ROW_TITLES, design_problem
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


def design_problem_of(pool: pl.DataFrame, design: str) -> str | None:
    """Why no sweep of `pool` supports `design` (the first sweep's reason); None when one does."""
    reasons = [design_problem(part, design) for _, part in pool.group_by("spec")] or ["no runs"]
    return None if any(r is None for r in reasons) else reasons[0]


def readable_cells(shown: pl.DataFrame) -> pl.DataFrame:
    """The full table for reading: site and quantity (`y`, `delta_init`) become the row's title (‖Δy‖)."""
    if not {"site", "quantity"} <= set(shown.columns):
        return shown
    titles = [ROW_TITLES.get((s, q), f"{s} {q}") for s, q in shown.select("site", "quantity").iter_rows()]
    return shown.with_columns(pl.Series("quantity", titles, pl.String)).drop("site")


def main() -> None:
    """Render the page (Streamlit runs this file as the page's script)."""
    page = open_page("st", "Slope table", CAPTION)
    state, db, runs = page.state, page.db, page.runs

    # --- selection -----------------------------------------------------------------------------------
    with st.sidebar:
        sweep = controls.sweep_select(state, runs, allow_all=True, default=controls.latest_sweep(runs))
        pool = runs if sweep is None else runs.filter(pl.col("spec") == sweep)
        presets = controls.multi_filter(state, "Presets", "presets", pool["preset"], order=PRESET_ORDER,
                                        share="presets")
        discs = controls.multi_filter(state, "Discretisations", "discs", pool["discretization"], order=DISC_ORDER,
                                      share="discs")
        optimizers = controls.multi_filter(state, "Optimizers", "optimizers", pool["optimizer"], share="optimizers")
        layout = state.select("Table", "table", list(LAYOUTS), "compact", widget="radio", format_func=LAYOUTS.get)
        colouring = state.select("Colour", "colour", list(tables.COLOURINGS), "stability", widget="radio",
                                 format_func=tables.COLOURINGS.get, help="Stability: does the norm stay flat, grow "
                                 "or vanish with width (what a width-stable parameterization is about). Agreement: "
                                 "does the measured exponent agree with the one the theory predicts.")
        kind = "full" if layout == "full" else "paper"
        convention = controls.convention_select(state)
        problems = {d.value: design_problem_of(pool, d.value) for d in Design}
        supported = [d for d, why in problems.items() if why is None]
        design = state.select("Width", "width", [d.value for d in Design], supported[0] if supported else "joint",
                              format_func=DESIGN_LABELS.get)
        layers = state.select("Layers", "layers", [a.value for a in LayerAgg], "mean" if kind == "paper" else "each",
                              format_func={"mean": "mean over layers", "each": "one fit per layer"}.get, widget="radio")
        steps = sorted(data.probe_frame(db, sweep)["step"].unique().to_list())
        step = state.select("Step", "step", ["last", *steps], "last",
                            format_func=lambda s: "last (per configuration)" if s == "last" else str(s))
        include_failed = state.toggle("Fit diverged and failed runs too", "failed", False)

    if problems[design] is not None:
        other = ", ".join(DESIGN_LABELS[d] for d in supported) or "none: every design needs 3 widths along its axis"
        st.warning(f"{'These sweeps' if sweep is None else f'Sweep {sweep!r}'} cannot support a "
                   f"{DESIGN_LABELS[design]} fit: {problems[design]}. Designs it supports: {other}.",
                   icon=":material/straighten:")
        state.sync()
        st.stop()

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
            style, config = tables.compact_styled(rows, colouring)
        else:
            style, config = tables.numeric_styled(rows, colouring)
        st.dataframe(style, hide_index=True, key="st__table", column_config=config)
        st.caption(tables.COLOURING_LEGEND[colouring] + " "
                   + (compact_caption(rows) if layout == "compact" else slope_caption(rows)))
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
        shown = readable_cells(shown)
        agree = colouring == "agreement"
        st.dataframe(tables.styled(shown, cells=["agreement"] if agree else [], verdicts=["verdict"] if agree else [],
                                   stable=[] if agree else ["verdict"]), hide_index=True, key="st__table",
                     column_config=tables.readable_config(shown.columns, tables.SLOPE_COLUMN_CONFIG))
        st.caption(tables.COLOURING_LEGEND[colouring] + " " + slope_caption(rows))
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
