"""Compare — presets, discretisations or optimizer settings: coordinate checks side by side on shared axes or
overlaid in one panel, and the differences of their fitted exponents."""

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
    ordered,
    panel_slopes,
    seed_bands,
    slope_comparison,
    width_axes,
)
from ssmscope.app.page import open_page
from ssmscope.app.widgets import download_buttons, export_figure
from ssmscope.runs.analysis.equivalence import coincidences

DIMENSIONS = {"preset": "Preset", "discretization": "Discretisation", "config": "Optimizer · learning rate"}
VIEWS = {"side": "side by side", "overlay": "overlaid in one panel"}


def config_label(config: tuple[str, float]) -> str:
    return f"{config[0]} · lr {config[1]:g}"


def distinct_default(runs: pl.DataFrame, dim: str, offered: list) -> list:
    """The values compared by default: all of them, except that of presets that are one parameterization for these
    runs (runs.analysis.equivalence, on their first width axis) only the last is kept (µP-SSM rather than µP under
    ZOH + Adam), so that the default never compares a preset with itself under another name."""
    if dim != "preset":
        return list(offered)
    axes = width_axes(runs)
    if not axes:
        return list(offered)
    same = [p for c in coincidences(axes[0].select(runs), axes[0].design, PRESET_ORDER) for p in c.presets[:-1]]
    return [p for p in offered if p not in same]


# What the page shows, under its title (a comment: Streamlit would print a bare string).
CAPTION = ("Coordinate checks of several presets, discretisations or optimizer settings on shared axes (side by "
           "side with one y range per row, or overlaid: line style = selection, colour = layer), and how their "
           "fitted exponents differ from the first one's. Everything else is held fixed by the sidebar.")


def main() -> None:
    """Render the page (Streamlit runs this file as the page's script)."""
    page = open_page("cmp", "Compare", CAPTION)
    state, db, runs = page.state, page.db, page.runs

    # --- selection -----------------------------------------------------------------------------------
    with st.sidebar:
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
        fmt = config_label if dim == "config" else str
        url = (lambda c: f"{c[0]}@{c[1]:g}") if dim == "config" else str
        fixed: dict[str, object] = {}
        if dim != "preset":
            fixed["preset"] = state.select("Preset", "preset", values["preset"])
        if dim != "discretization":
            fixed["discretization"] = state.select("Discretisation", "disc", values["discretization"], widget="radio")
        if dim != "config":
            fixed["optimizer"], fixed["lr"] = controls.config_select(state, pool.filter(
                *(pl.col(k) == v for k, v in fixed.items())))
        sel = data.where(**fixed)
        held = data.apply(pool, sel)
        picked = state.multiselect(f"{DIMENSIONS[dim]}s to compare", "values", values[dim],
                                   distinct_default(held, dim, values[dim]), format_func=fmt, url_format=url,
                                   help="The first one is the reference of the differences below. By default, "
                                   "presets that are one parameterization here are offered once.")
        view = state.select("View", "view", list(VIEWS), "side", format_func=VIEWS.get, widget="radio")

    def side(value: object) -> pl.Expr:
        """Rows of one selection."""
        if dim == "config":
            return (pl.col("optimizer") == value[0]) & (pl.col("lr") == value[1])
        return pl.col(dim) == value

    # The rows, convention and step are offered from every value of the compared dimension, so that they are
    # drawn (and keep their values) even while fewer than two are picked.
    in_offered = pl.any_horizontal(*(side(v) for v in values[dim]))
    rows, convention, step, show_refs, show_bands = [], "rms", 0, True, False
    with st.sidebar:
        axis = controls.axis_select(state, held.filter(in_offered))
        offered = data.apply(data.probe_frame(db, sweep), sel).filter(in_offered) if axis is not None else None
        if offered is not None:
            rows = controls.rows_select(state, offered)
            convention = controls.convention_select(state)
            step = controls.step_select(state, offered["step"].unique().to_list() or [0])
            show_refs = state.toggle("Reference slopes 0, ±½, ±1", "refs", True)
            show_bands = state.toggle("Seed bands", "bands", False) if view == "overlay" else True

    if len(picked) < 2:
        st.warning(f"Pick at least two {DIMENSIONS[dim].lower()}s to compare: "
                   + (f"comparing {fmt(picked[0])} with itself would show one panel and differences of exactly 0."
                      if picked else "none is selected."))
        state.sync()
        st.stop()
    if axis is None or offered is None:
        st.warning("These runs have fewer than two widths on every axis: nothing to plot against width.")
        state.sync()
        st.stop()

    labels = [fmt(v) for v in picked]
    in_any = pl.any_horizontal(*(side(v) for v in picked))
    panel = pl.lit(None, pl.String)
    for v, label in reversed(list(zip(picked, labels, strict=True))):
        panel = pl.when(side(v)).then(pl.lit(label)).otherwise(panel)
    in_pick = held.filter(in_any)
    frame = offered.filter(in_any)

    if not rows or frame.is_empty():
        st.info("Select at least one row (quantity) in the sidebar.")
        state.sync()
        st.stop()
    if dim == "preset":
        for c in coincidences(axis.select(in_pick), axis.design, PRESET_ORDER):
            st.info(f"{' and '.join(c.presets)} are one parameterization under {c.discretization} · {c.optimizer} "
                    "at these widths (every role's init, learning-rate and multiplier scale coincide): their "
                    "coordinate checks are the same model, and their differences are 0 by construction.",
                    icon=":material/join_inner:")

    # --- data ----------------------------------------------------------------------------------------
    points = coord_points(frame, convention=convention, step=step, axis=axis, panel_by=panel, rows=rows)
    bands = seed_bands(points)
    flags = flagged_points(in_pick, points, axis=axis, panel_by=panel, step=step)
    fits = data.slopes(db, sweep, sel, convention=convention, design=axis.design, fixed=axis.fixed, step=step)
    fits = panel_slopes(fits.filter(in_any), panel) if not fits.is_empty() else panel_slopes(fits, panel)
    missing = [label for label in labels if label not in set(points["panel"].to_list())]
    if missing:
        st.warning(f"No probes at step {step} on this width axis for: {', '.join(missing)}.")

    # --- figure and differences ----------------------------------------------------------------------
    fixed_text = " · ".join(config_label((fixed["optimizer"], fixed["lr"])) if k == "optimizer" else str(v)
                            for k, v in fixed.items() if k != "lr")
    title = f"{sweep} · {fixed_text} · step {step}"
    if view == "overlay":
        fig = figures.overlay_figure(points, bands, flags, fits, rows=rows, series=labels, convention=convention,
                                     x_title=axis.scale_title, step=step, show_refs=show_refs, show_bands=show_bands,
                                     title=title)
    else:
        fig = figures.coord_figure(points, bands, flags, fits, rows=rows, panels=labels, convention=convention,
                                   x_title=axis.scale_title, step=step, show_refs=show_refs, title=title,
                                   y_range="row")
    st.plotly_chart(fig, key="cmp__figure", config={"displaylogo": False})

    st.subheader(f"Slope differences from {labels[0]}")
    comparison = slope_comparison(fits, labels, rows)
    if comparison.is_empty():
        st.info("No slopes: fits need at least 3 widths per selection.")
    else:
        st.dataframe(tables.styled(comparison), hide_index=True, key="cmp__diff",
                     column_config=tables.readable_config(comparison.columns))
        exports = tables.frame_exports(comparison, f"Slope differences from {labels[0]} ({convention}, step {step}, "
                                       f"{axis.label})")
        download_buttons(exports, "slope-differences", "cmp__dl")

    with st.expander("Export the figure"):
        export_figure(fig, f"compare-{sweep}-step{step}", "cmp__export",
                      ident=(db.version, sorted(state.values.items())))

    if dim == "config":
        st.caption("Learning rates are base rates (at the preset's base width): "
                   + ", ".join(fmt_lr(v[1]) for v in picked) + ".")
    state.sync()


if __name__ == "__main__":
    main()
