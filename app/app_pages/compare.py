"""Compare — two presets, discretisations or optimizer settings: coordinate checks on shared axes, slope differences."""

from __future__ import annotations

import polars as pl
import streamlit as st

from ssmscope.app import controls, data, figures, tables
from ssmscope.app.frames import (
    DISC_ORDER,
    PRESET_ORDER,
    coord_points,
    flagged_points,
    fmt_lr,
    in_rows,
    ordered,
    panel_slopes,
    seed_bands,
    slope_differences,
)
from ssmscope.app.widgets import UrlState, download_buttons, export_figure

DIMENSIONS = {"preset": "Preset", "discretization": "Discretisation", "config": "Optimizer · learning rate"}


def main() -> None:
    """Render the page (Streamlit runs this file as the page's script)."""
    state = UrlState("cmp")
    db = data.current_store()
    runs = data.runs_frame(db)

    st.title("Compare")
    st.caption("Two coordinate checks side by side on shared axes (same rows, same y range per row), and the "
               "difference of their fitted exponents. Everything else is held fixed by the selections in the sidebar.")


    def config_label(optimizer: str, lr: float) -> str:
        return f"{optimizer} · lr {lr:g}"


    # --- selection -----------------------------------------------------------------------------------
    with st.sidebar:
        st.header("Compare")
        sweep = controls.sweep_select(state, runs)
        pool = runs.filter(pl.col("spec") == sweep)
        values = {"preset": ordered(pool["preset"], PRESET_ORDER),
                  "discretization": ordered(pool["discretization"], DISC_ORDER),
                  "config": [tuple(r) for r in pool.select("optimizer", "lr").unique().sort("optimizer", "lr").rows()]}
        dims = [d for d, v in values.items() if len(v) >= 2]
        if not dims:
            st.info("This sweep has one preset, one discretisation and one optimizer setting: nothing to compare.")
            state.sync()
            st.stop()
        dim = state.select("Compare", "by", dims, format_func=DIMENSIONS.get, widget="radio")
        fmt = (lambda c: config_label(*c)) if dim == "config" else str
        url = (lambda c: f"{c[0]}@{c[1]:g}") if dim == "config" else str
        a = state.select("A", "a", values[dim], values[dim][0], format_func=fmt, url_format=url)
        b = state.select("B", "b", values[dim], values[dim][1], format_func=fmt, url_format=url)
        fixed: dict[str, object] = {}
        if dim != "preset":
            fixed["preset"] = state.select("Preset", "preset", values["preset"])
        if dim != "discretization":
            fixed["discretization"] = state.select("Discretisation", "disc", values["discretization"], widget="radio")
        if dim != "config":
            fixed["optimizer"], fixed["lr"] = controls.config_select(state, pool.filter(
                *(pl.col(k) == v for k, v in fixed.items())))


    def side(value: object) -> pl.Expr:
        """Rows of selection A or B."""
        if dim == "config":
            return (pl.col("optimizer") == value[0]) & (pl.col("lr") == value[1])
        return pl.col(dim) == value


    label_a, label_b = fmt(a), fmt(b)
    if a == b:
        label_b = label_b + " (B)"
    panel = pl.when(side(a)).then(pl.lit(label_a)).otherwise(pl.lit(label_b))
    sel = data.where(**fixed)
    in_pair = data.apply(pool, sel).filter(side(a) | side(b))

    with st.sidebar:
        axis = controls.axis_select(state, in_pair)
    if axis is None:
        st.warning("These runs have fewer than two widths on every axis: nothing to plot against width.")
        state.sync()
        st.stop()

    frame = data.apply(data.probe_frame(db, sweep), sel).filter(side(a) | side(b))
    with st.sidebar:
        rows = controls.rows_select(state, frame)
        convention = controls.convention_select(state)
        step = controls.step_select(state, frame["step"].unique().to_list() or [0])
        show_refs = state.toggle("Reference slopes 0, ±½, ±1", "refs", True)

    if not rows or frame.is_empty():
        st.info("Select at least one row (quantity) in the sidebar.")
        state.sync()
        st.stop()

    # --- data ----------------------------------------------------------------------------------------
    points = coord_points(frame, convention=convention, step=step, axis=axis, panel_by=panel, rows=rows)
    bands = seed_bands(points)
    flags = flagged_points(in_pair, points, axis=axis, panel_by=panel, step=step)
    fits = data.slopes(db, sweep, sel, convention=convention, design=axis.design, fixed=axis.fixed, step=step)
    fits = fits.filter(side(a) | side(b)) if not fits.is_empty() else fits

    # --- figure and differences ----------------------------------------------------------------------
    fixed_text = " · ".join(config_label(fixed["optimizer"], fixed["lr"]) if k == "optimizer" else str(v)
                            for k, v in fixed.items() if k != "lr")
    fig = figures.coord_figure(points, bands, flags, panel_slopes(fits, panel),
                               rows=rows, panels=[label_a, label_b], convention=convention, x_title=axis.axis_title,
                               step=step, show_refs=show_refs, title=f"{sweep} · {fixed_text} · step {step}")
    st.plotly_chart(fig, key="cmp__figure", config={"displaylogo": False})

    st.subheader(f"Slope differences: {label_b} − {label_a}")
    if fits.is_empty():
        st.info("No slopes: fits need at least 3 widths per selection.")
    else:
        shown = in_rows(rows)
        diff = slope_differences(fits.filter(side(a) & shown), fits.filter(side(b) & shown), label_a, label_b)
        st.dataframe(tables.styled(diff, cells=[c for c in diff.columns if c.startswith("agreement")],
                                   verdicts=[c for c in diff.columns if c.startswith("verdict")]),
                     hide_index=True, key="cmp__diff")
        exports = tables.frame_exports(diff, f"Slope differences {label_b} − {label_a} ({convention}, step {step}, "
                                       f"{axis.label})")
        download_buttons(exports, "slope-differences", "cmp__dl")

    with st.expander("Export the figure"):
        export_figure(fig, f"compare-{sweep}-step{step}", "cmp__export")

    if dim == "config":
        st.caption(f"Learning rates are base rates (at the preset's base width): {fmt_lr(a[1])} and {fmt_lr(b[1])}.")
    state.sync()


if __name__ == "__main__":
    main()
