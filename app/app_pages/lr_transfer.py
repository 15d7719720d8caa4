"""Learning-rate transfer — final loss against learning rate per width; does the optimum stay put as width grows?"""

from __future__ import annotations

import polars as pl
import streamlit as st

from ssmscope.app import controls, data, figures, tables
from ssmscope.app.frames import DISC_ORDER, PRESET_ORDER, lr_grid, ordered, transfer_curves, width_column
from ssmscope.app.page import open_page
from ssmscope.app.widgets import download_buttons, export_figure
from ssmscope.runs.store.schema import PARAMETERIZATION_KEYS, RunStatus

LOSSES = {"eval_loss": "held-out loss", "train_loss": "training loss"}


# What the page shows, under its title (a comment: Streamlit would print a bare string).
CAPTION = ("Final loss against the base learning rate (log₂ axis), one curve per width (mean over seeds). ★ = the "
           "optimum (vertex of a parabola in log₂ lr through the best grid point and its neighbours); "
           "✕ at the top = a learning rate where a run diverged. Transfer means the ★ stay at one learning rate "
           "as width grows: a drift (slope of log₂ η* against log₂ width) near 0.")


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

    with st.sidebar:  # a sweep drawn on two init bases: one base at a time (its optima are never pooled)
        base = controls.base_select(state, result.final)
    if base is not None:
        chosen = pl.col("init_base") == base
        result = data.Transfer(result.final.filter(chosen), result.optima.filter(chosen), result.drift.filter(chosen))
    groups = lr_grid(result.final)
    with st.sidebar:
        preset = state.select("Preset", "preset", ordered(groups["preset"], PRESET_ORDER))
        in_preset = groups.filter(pl.col("preset") == preset)
        disc = state.select("Discretisation", "disc", ordered(in_preset["discretization"], DISC_ORDER), widget="radio")
        optimizer = state.select("Optimizer", "optimizer",
                                 ordered(in_preset.filter(pl.col("discretization") == disc)["optimizer"]))

    key = (pl.col("preset") == preset) & (pl.col("discretization") == disc) & (pl.col("optimizer") == optimizer)
    final = result.final.filter(key)
    optima = result.optima.filter(key)
    width_name = {"n_u": "N_u", "n_x": "N_x"}[width_column(result.final)]

    # --- figure and drift ----------------------------------------------------------------------------
    left, right = st.columns([3, 2])
    with left:
        curves = transfer_curves(final)
        fig = figures.transfer_figure(curves, optima, width_name=width_name, loss_name=LOSSES[use],
                                      title=f"{sweep} · {preset} · {disc} · {optimizer}")
        st.plotly_chart(fig, key="lr__figure", config={"displaylogo": False})
    with right:
        st.markdown("**Drift of the optimal learning rate** (all groups of this sweep)")
        drift = result.drift.sort(PARAMETERIZATION_KEYS)
        st.dataframe(tables.styled(drift), hide_index=True, key="lr__drift")
        for r in drift.filter(pl.col("reason").is_not_null()).iter_rows(named=True):  # why a cell is empty
            st.caption(f"{r['preset']} · {r['discretization']} · {r['optimizer']}: {r['reason']}.")
        st.caption("drift = slope of log₂ η* against log₂ width over the widths with an interior optimum, "
                   "95 % CI from a seed bootstrap; widths whose optimum is at the grid's edge or that all diverged "
                   "are counted, not fitted. An empty cell is a number that cannot be computed: `reason` says why.")
        exports = tables.frame_exports(drift, f"Learning-rate drift ({sweep}, {LOSSES[use]})")
        download_buttons(exports, f"lr-drift-{sweep}", "lr__dl", prefix="")

    st.markdown(f"**Optimal learning rate per width** ({preset} · {disc} · {optimizer})")
    st.dataframe(tables.styled(optima.drop(PARAMETERIZATION_KEYS)), hide_index=True, key="lr__optima")
    n_div = final.filter(pl.col("status") == RunStatus.DIVERGED).height
    st.caption(f"{final.height} runs, {n_div} diverged (their loss counts as +∞: a learning rate where any seed "
               "diverged is marked ✕, not averaged).")

    with st.expander("Export the figure"):
        export_figure(fig, f"lr-transfer-{sweep}-{preset}-{disc}", "lr__export",
                      ident=(db.version, sorted(state.values.items())))

    state.sync()


if __name__ == "__main__":
    main()
