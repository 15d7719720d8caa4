"""Runs — every run in the store, filtered; diverged and failed runs highlighted; one run in detail.

Clicking a row of the table shows that run below (as choosing it in "Run" does). The sweep, preset,
discretisation and optimizer filters carry over to the other pages.
"""

from __future__ import annotations

import json

import polars as pl
import streamlit as st

from ssmscope.app import controls, data, figures
from ssmscope.app.frames import DISC_ORDER, PRESET_ORDER, ROW_BY_KEY, available_rows, default_rows, fmt_lr, run_curves
from ssmscope.app.page import open_page
from ssmscope.app.tables import readable_config, status_styled
from ssmscope.runs.analysis.export import order_rows
from ssmscope.runs.store.schema import PARAMETERIZATION_KEYS, WIDTH_KEYS, RunStatus

TABLE_COLUMNS = ["run_id", "spec", "status", *PARAMETERIZATION_KEYS, "lr", *WIDTH_KEYS, "seed",
                 "n_layers", "steps", "last_finite_step", "wall_s", "device", "finished_at"]


# session_state key of the table row last clicked (its run id), so a click is applied once.
CLICKED_KEY = "runs__clicked"


def select_clicked_run(event: object, run_ids: list[str]) -> str | None:
    """The run of a table row clicked since the last rerun, else None (a click is applied once, so choosing
    another run in the "Run" box afterwards is not undone by the row still being selected)."""
    rows = list(getattr(getattr(event, "selection", None), "rows", None) or [])
    clicked = run_ids[rows[0]] if rows and 0 <= rows[0] < len(run_ids) else None
    if clicked == st.session_state.get(CLICKED_KEY):
        return None
    st.session_state[CLICKED_KEY] = clicked
    return clicked


def main() -> None:
    """Render the page (Streamlit runs this file as the page's script)."""
    page = open_page("runs", "Runs", sidebar="Filter runs")
    state, db, runs = page.state, page.db, page.runs

    # --- filters -------------------------------------------------------------------------------------
    with st.sidebar:
        sweep = controls.sweep_select(state, runs, allow_all=True)
        pool = runs if sweep is None else runs.filter(pl.col("spec") == sweep)
        chosen = {
            "preset": controls.multi_filter(state, "Preset", "preset", pool["preset"], order=PRESET_ORDER,
                                            share="presets"),
            "discretization": controls.multi_filter(state, "Discretisation", "disc", pool["discretization"],
                                                    order=DISC_ORDER, share="discs"),
            "optimizer": controls.multi_filter(state, "Optimizer", "optimizer", pool["optimizer"],
                                               share="optimizers"),
            "lr": controls.multi_filter(state, "Learning rate", "lr", sorted(pool["lr"].unique()), fmt=fmt_lr),
            "n_u": controls.multi_filter(state, "N_u", "n_u", sorted(pool["n_u"].unique())),
            "n_x": controls.multi_filter(state, "N_x", "n_x", sorted(pool["n_x"].unique())),
            "seed": controls.multi_filter(state, "Seed", "seed", sorted(pool["seed"].unique())),
            "status": controls.multi_filter(state, "Status", "status", pool["status"],
                                            order=tuple(RunStatus)),
        }
    shown = order_rows(data.apply(pool, data.where(**chosen)))  # SP → µP → µP-SSM → custom, as every table

    # --- counts and table ----------------------------------------------------------------------------
    by_status = dict(shown.group_by("status").len().iter_rows())
    cols = st.columns(4)
    cols[0].metric("runs shown", f"{shown.height} of {runs.height}")
    for col, status in zip(cols[1:4], (RunStatus.COMPLETED, RunStatus.DIVERGED, RunStatus.FAILED), strict=True):
        col.metric(status, by_status.get(status, 0))
    if shown.is_empty():
        st.info("No run matches the filters.")
        state.sync()
        st.stop()

    table = shown.select([c for c in TABLE_COLUMNS if c in shown.columns])
    event = st.dataframe(status_styled(table), hide_index=True, key="runs__table", on_select="rerun",
                         selection_mode="single-row",
                         column_config=readable_config(table.columns, {
                             "lr": st.column_config.NumberColumn("lr", format="%.3g"),
                             "wall_s": st.column_config.NumberColumn("wall s", format="%.1f")}))
    st.caption("Click a row to show that run below. Rows of diverged runs are orange, failed runs red. A diverged "
               "run stopped at its last finite step; a failed one raised (its error is in its detail below).")

    # --- one run -------------------------------------------------------------------------------------
    st.subheader("Run detail")
    labels = {r["run_id"]: (f"{r['run_id']} · {r['preset']} · {r['discretization']} · {r['optimizer']} "
                            f"lr {r['lr']:g} · N_u={r['n_u']} N_x={r['n_x']} · seed {r['seed']} · {r['status']}")
              for r in shown.iter_rows(named=True)}
    clicked = select_clicked_run(event, table["run_id"].to_list())
    if clicked is not None:
        st.session_state[state.key("run")] = clicked
    run_id = state.select("Run", "run", list(labels), format_func=labels.get)
    run = shown.filter(pl.col("run_id") == run_id).row(0, named=True)

    left, right = st.columns([1, 2])
    with left:
        if run["status"] == RunStatus.FAILED and run.get("error"):
            st.error(f"failed: {run['error'].splitlines()[0]}")
            with st.expander("error"):
                st.code(run["error"])
        elif run["status"] == RunStatus.DIVERGED:
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
        default = default_rows(keys)
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
