"""Learning-rate transfer — does the optimum stay put as width grows, and is wider better at its own optimum?"""

from __future__ import annotations

import polars as pl
import streamlit as st

from ssmscope.app import controls, data, tables, transfer_figures
from ssmscope.app.frames import DISC_ORDER, PRESET_ORDER, lr_grid, ordered, transfer_curves, width_column
from ssmscope.app.page import open_page
from ssmscope.app.widgets import download_buttons, export_figure
from ssmscope.runs.analysis.transfer import eta_table
from ssmscope.runs.store.schema import PARAMETERIZATION_KEYS, RunStatus

LOSSES = {"eval_loss": "held-out loss", "train_loss": "training loss"}
READOUTS = {"base": "as the init base ties it", "tied": "tied to the embedding", "untied": "untied",
            "untied-zero": "untied, zero-initialised"}


# What the page shows, under its title (a comment: Streamlit would print a bare string).
CAPTION = ("Final loss against the base learning rate (log₂ axis), one curve per width (mean over seeds), every "
           "preset side by side on one y range. ★ = the optimum η* on its curve (vertex of a parabola in log₂ lr "
           "through the best grid point and its neighbours); ✕ at the top = a learning rate where a seed diverged. "
           "Transfer means the ★ stay at one learning rate as width grows (a drift of log₂ η* against log₂ width "
           "near 0); the µP literature's second test is that wider is better: the loss at η* falls with width.")


def main() -> None:
    """Render the page (Streamlit runs this file as the page's script)."""
    page = open_page("lr", "Learning-rate transfer", CAPTION)
    state, db, runs = page.state, page.db, page.runs

    # --- which sweeps have a learning-rate grid ------------------------------------------------------
    grids = (runs.group_by("spec", *PARAMETERIZATION_KEYS).agg(pl.col("lr").n_unique().alias("n_lrs"))
             .filter(pl.col("n_lrs") >= 2))
    if grids.is_empty():
        st.info("No sweep in this store has a learning-rate grid (two or more learning rates for one preset, "
                "discretisation and optimizer). The built-in transfer sweep fills one: 4 widths × 7 learning rates × "
                "3 presets × 2 discretisations × 2 seeds (hours on a CPU; `hp-transfer-gpu` on a GPU):")
        st.code(f"ssmscope sweep hp-transfer --db {db.path}", language="bash")
        state.sync()
        st.stop()

    with st.sidebar:
        n = dict(grids.group_by("spec").agg(pl.len()).iter_rows())
        sweep = state.select("Sweep", "sweep", sorted(n), format_func=lambda s: f"{s} ({n[s]} grids)", share="sweep")
        use = state.select("Loss", "loss", list(LOSSES), format_func=LOSSES.get, widget="radio")

    result = data.lr_transfer(db, sweep, use)
    if result is None and use == "eval_loss":
        st.warning("This sweep logged no held-out loss (train.eval_every = 0): showing the training loss.")
        use = "train_loss"
        result = data.lr_transfer(db, sweep, use)
    if result is None:
        st.info("This sweep logged no losses.")
        state.sync()
        st.stop()

    with st.sidebar:  # a sweep drawn on two init bases, or with two readouts: one at a time (never pooled)
        base = controls.base_select(state, result.final)
        readouts = sorted(result.final["readout"].unique().to_list()) if "readout" in result.final.columns else []
        readout = (state.select("Readout", "readout", readouts, format_func=lambda r: READOUTS.get(r, r),
                                widget="radio", help="How the readout was treated (grid.readouts): its optima are "
                                "never pooled with another treatment's")
                   if len(readouts) > 1 else None)
    chosen = pl.lit(True)
    if base is not None:
        chosen = chosen & (pl.col("init_base") == base)
    if readout is not None:
        chosen = chosen & (pl.col("readout") == readout)
    result = data.Transfer(result.final.filter(chosen), result.optima.filter(chosen), result.drift.filter(chosen))
    groups = lr_grid(result.final)
    with st.sidebar:
        disc = state.select("Discretisation", "disc", ordered(groups["discretization"], DISC_ORDER), widget="radio")
        optimizer = state.select("Optimizer", "optimizer",
                                 ordered(groups.filter(pl.col("discretization") == disc)["optimizer"]))
    key = (pl.col("discretization") == disc) & (pl.col("optimizer") == optimizer)
    final, optima = result.final.filter(key), result.optima.filter(key)
    drift = result.drift.filter(key)
    presets = ordered(final["preset"], PRESET_ORDER)
    width_name = {"n_u": "N_u", "n_x": "N_x"}[width_column(result.final)]
    label = f"{sweep} · {disc} · {optimizer}" + (f" · readout {readout}" if readout else "")

    # --- every preset side by side -------------------------------------------------------------------
    curves = {p: transfer_curves(final.filter(pl.col("preset") == p)) for p in presets}
    fig = transfer_figures.transfer_grid_figure(curves, optima, width_name=width_name, loss_name=LOSSES[use],
                                                title=label)
    st.plotly_chart(fig, key="lr__figure", config={"displaylogo": False})
    n_div = final.filter(pl.col("status") == RunStatus.DIVERGED).height
    st.caption(f"{final.height} runs, {n_div} diverged (their loss counts as +∞: a learning rate where any seed "
               "diverged is marked ✕, not averaged).")

    # --- the two tests: does η* stay put, is wider better --------------------------------------------
    left, right = st.columns([1, 1])
    with left:
        st.markdown("**Is wider better?** The loss at each width's optimum")
        st.plotly_chart(transfer_figures.loss_at_optimum_figure(optima, drift, presets, width_name=width_name,
                                                                loss_name=LOSSES[use]),
                        key="lr__loss_at_opt", config={"displaylogo": False})
    with right:
        st.markdown("**Optimal learning rate per width** (η*; ^ / v: at the grid's top / bottom)")
        st.dataframe(eta_table(optima, presets), hide_index=True, key="lr__eta")
    st.markdown("**Drift of η* and the loss-at-optimum slope** (per doubling of width, 95 % seed-bootstrap CIs)")
    shown = drift.select(*[c for c in ("preset", "readout", "drift", "ci_low", "ci_high", "loss_slope",
                                       "loss_ci_low", "loss_ci_high", "n_interior", "widths_at_edge")
                           if c in drift.columns])
    st.dataframe(tables.styled(shown), hide_index=True, key="lr__drift")
    for r in drift.iter_rows(named=True):  # why a number or its interval is missing
        for why in {r.get("reason"), r.get("loss_reason")} - {None}:
            st.caption(f"{r['preset']}: {why}.")
    exports = tables.frame_exports(result.drift.sort(PARAMETERIZATION_KEYS),
                                   f"Learning-rate drift and loss-at-optimum slope ({sweep}, {LOSSES[use]})")
    download_buttons(exports, f"lr-drift-{sweep}", "lr__dl", prefix="")

    # --- the readout's share of the embedding matrix's gradient ---------------------------------------
    split = data.readout_split(db, sweep)
    if not split.is_empty():
        keep = (pl.col("discretization") == disc) & (pl.col("optimizer") == optimizer)
        if readout is not None and "readout" in split.columns:
            keep = keep & (pl.col("readout") == readout)
        split = split.filter(keep)
        with st.expander("The readout's share of the embedding matrix's gradient (readout probes, at init)",
                         expanded=readout == "tied"):
            st.plotly_chart(transfer_figures.readout_split_figure(split, presets, width_name=width_name),
                            key="lr__split", config={"displaylogo": False})
            st.caption("‖∂L/∂W‖ on the probe batch at initialisation, split by use: the embedding lookup (input "
                       "side) and the readout (readout side); a tied matrix's gradient is their sum. Under µP a tied "
                       "readout's logits carry 1/N_u: if its side of the gradient shrank with width against the input "
                       "side, Adam's per-entry normalisation would follow the input side and the readout would learn "
                       "ever more slowly. Parallel lines here mean it does not (docs/theory.md §9).")

    with st.expander("Export the figure"):
        export_figure(fig, f"lr-transfer-{sweep}-{disc}-{optimizer}", "lr__export",
                      ident=(db.version, sorted(state.values.items())))

    state.sync()


if __name__ == "__main__":
    main()
