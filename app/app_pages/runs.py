"""Runs — every run in the store, filtered; diverged and failed runs highlighted; one run in detail."""

from __future__ import annotations

import json

import polars as pl
import streamlit as st

from ssmscope.app import controls, data, figures
from ssmscope.app.frames import DEFAULT_ROWS, DISC_ORDER, PRESET_ORDER, ROW_BY_KEY, available_rows, fmt_lr, run_curves
from ssmscope.app.tables import status_styled
from ssmscope.app.widgets import UrlState

TABLE_COLUMNS = ["run_id", "spec", "status", "preset", "discretization", "optimizer", "lr", "n_u", "n_x", "seed",
                 "n_layers", "steps", "last_finite_step", "wall_s", "device", "finished_at"]


def main() -> None:
    """Render the page (Streamlit runs this file as the page's script)."""
    state = UrlState("runs")
    db = data.current_store()
    runs = data.runs_frame(db)

    st.title("Runs")

    # --- filters -------------------------------------------------------------------------------------
    with st.sidebar:
        st.header("Filter runs")
        sweep = controls.sweep_select(state, runs, allow_all=True)
        pool = runs if sweep is None else runs.filter(pl.col("spec") == sweep)
        chosen = {
            "preset": controls.multi_filter(state, "Preset", "preset", pool["preset"], order=PRESET_ORDER),
            "discretization": controls.multi_filter(state, "Discretisation", "disc", pool["discretization"],
                                                    order=DISC_ORDER),
            "optimizer": controls.multi_filter(state, "Optimizer", "optimizer", pool["optimizer"]),
            "lr": controls.multi_filter(state, "Learning rate", "lr", sorted(pool["lr"].unique()), fmt=fmt_lr),
            "n_u": controls.multi_filter(state, "N_u", "n_u", sorted(pool["n_u"].unique())),
            "n_x": controls.multi_filter(state, "N_x", "n_x", sorted(pool["n_x"].unique())),
            "seed": controls.multi_filter(state, "Seed", "seed", sorted(pool["seed"].unique())),
            "status": controls.multi_filter(state, "Status", "status", pool["status"],
                                            order=("completed", "diverged", "failed")),
        }
    shown = data.apply(pool, data.where(**chosen))

    # --- counts and table ----------------------------------------------------------------------------
    by_status = dict(shown.group_by("status").len().iter_rows())
    cols = st.columns(4)
    cols[0].metric("runs shown", f"{shown.height} of {runs.height}")
    cols[1].metric("completed", by_status.get("completed", 0))
    cols[2].metric("diverged", by_status.get("diverged", 0))
    cols[3].metric("failed", by_status.get("failed", 0))
    if shown.is_empty():
        st.info("No run matches the filters.")
        state.sync()
        st.stop()

    table = shown.select([c for c in TABLE_COLUMNS if c in shown.columns])
    st.dataframe(status_styled(table), hide_index=True, key="runs__table",
                 column_config={"lr": st.column_config.NumberColumn("lr", format="%.3g"),
                                "wall_s": st.column_config.NumberColumn("wall s", format="%.1f")})
    st.caption("Rows of diverged runs are orange, failed runs red. A diverged run stopped at its last finite step; "
               "a failed one raised (its error is in its detail below).")

    # --- one run -------------------------------------------------------------------------------------
    st.subheader("Run detail")
    labels = {r["run_id"]: (f"{r['run_id']} · {r['preset']} · {r['discretization']} · {r['optimizer']} "
                            f"lr {r['lr']:g} · N_u={r['n_u']} N_x={r['n_x']} · seed {r['seed']} · {r['status']}")
              for r in shown.iter_rows(named=True)}
    run_id = state.select("Run", "run", list(labels), format_func=labels.get)
    run = shown.filter(pl.col("run_id") == run_id).row(0, named=True)

    left, right = st.columns([1, 2])
    with left:
        if run["status"] == "failed" and run.get("error"):
            st.error(f"failed: {run['error'].splitlines()[0]}")
            with st.expander("error"):
                st.code(run["error"])
        elif run["status"] == "diverged":
            st.warning(f"diverged after step {run['last_finite_step']} (the last finite one)")
        config = data.run_config(db, run_id)
        st.markdown("**Config**")
        st.json(json.loads(config) if config else {k: run[k] for k in TABLE_COLUMNS if k in run}, expanded=False)
        st.markdown("**Provenance**")
        st.json({k: run.get(k) for k in ("started_at", "finished_at", "wall_s", "device", "scan", "torch_version",
                                         "ssmscope_version", "git_commit", "hostname")}, expanded=False)
    with right:
        losses = data.run_losses(db, run_id)
        if losses.is_empty():
            st.info("This run logged no losses.")
        else:
            st.plotly_chart(figures.loss_figure(losses, title="Loss"), key="runs__loss_fig")

    probes = data.run_probes(db, run_id)
    if probes.is_empty():
        st.info("This run has no probe rows.")
    else:
        keys = [r.key for r in available_rows(probes)]
        default = [k for k in DEFAULT_ROWS if k in keys]
        chosen_rows = state.multiselect("Probe curves", "curves", keys, default,
                                        format_func=lambda k: ROW_BY_KEY[k].title)
        convention = controls.convention_select(state, where=st)
        rows = [ROW_BY_KEY[k] for k in keys if k in chosen_rows]
        if rows:
            curves = run_curves(probes, convention=convention, rows=rows)
            st.plotly_chart(figures.run_curves_figure(curves, rows=rows, convention=convention), key="runs__curves_fig")

    state.sync()


if __name__ == "__main__":
    main()
