"""Selection controls shared by the pages: sweep, optimizer · lr, width axis, rows, convention, step.

Each takes the page's UrlState (so its value is in the URL) and the runs or probe frame to offer
choices from, and returns the choice. Pages call them from top to bottom in the sidebar.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl
import streamlit as st

from ssmscope.app.frames import ROW_BY_KEY, Row, WidthAxis, available_rows, default_rows, fmt_lr, width_axes
from ssmscope.app.widgets import UrlState
from ssmscope.runs.analysis.norms import norm_label
from ssmscope.ssm.predictions import Convention

CONVENTION_HELP = ("How a probed tensor becomes one number (docs/store.md): RMS per coordinate, L2 over the "
                   "probe batch, L2 per token, or L2 per channel (for x: over the N_x state modes). "
                   "Exponents differ between conventions; the y axes say which one is shown.")


ALL_SWEEPS = "*"
"""The "all sweeps" choice (a real value, not None: a selectbox showing None shows its placeholder)."""


PAPER_SWEEP = "paper-figure"
"""The sweep a page that shows one sweep opens on when the store holds it (`latest_sweep`)."""


def latest_sweep(runs: pl.DataFrame) -> str | None:
    """paper-figure when the store holds it, else the sweep whose last run finished most recently (None: no runs)."""
    if runs.is_empty():
        return None
    specs = runs["spec"].unique().to_list()
    if PAPER_SWEEP in specs:
        return PAPER_SWEEP
    last = runs.group_by("spec").agg(pl.col("finished_at").max().alias("last"))
    return last.sort("last", "spec", descending=[True, False], nulls_last=True)["spec"][0]


def sweep_select(state: UrlState, runs: pl.DataFrame, *, where: Any = st.sidebar,
                 allow_all: bool = False, default: str | None = None) -> str | None:
    """The sweep (spec) to show, most runs first; None = all sweeps (when allowed). Shared between pages.

    `default`: the sweep shown first (else the first offered: all sweeps where allowed, else the largest sweep)."""
    n = dict(runs.group_by("spec").len().iter_rows())
    specs = sorted(n, key=lambda s: (-n[s], str(s)))
    options: list[Any] = ([ALL_SWEEPS] if allow_all else []) + specs

    def fmt(s: str) -> str:
        return f"all sweeps ({runs.height} runs)" if s == ALL_SWEEPS else f"{s or '(unnamed)'} ({n[s]} runs)"

    shared = state.shared("sweep")  # a sweep chosen on another page; "all sweeps" is not carried over
    first = shared if shared in n else default if default in n else None
    chosen = state.select("Sweep", "sweep", options, first, format_func=fmt,
                          url_format=lambda s: "" if s == ALL_SWEEPS else s, where=where,
                          help="The spec a run came from (`ssmscope sweep SPEC`). Runs of different "
                          "sweeps are never fitted together.")
    if chosen in n:
        state.share("sweep", chosen)
    return None if chosen == ALL_SWEEPS else chosen


def config_select(state: UrlState, runs: pl.DataFrame, *, where: Any = st.sidebar,
                  name: str = "config", label: str = "Optimizer · learning rate") -> tuple[str, float]:
    """One (optimizer, base lr) of the runs: the coordinate check fixes both."""
    combos = runs.group_by("optimizer", "lr").len().sort("len", "optimizer", "lr", descending=[True, False, False])
    options = [(o, lr) for o, lr, _ in combos.iter_rows()]
    return state.select(label, name, options, format_func=lambda c: f"{c[0]} · lr {fmt_lr(c[1])}",
                        url_format=lambda c: f"{c[0]}@{c[1]:g}", where=where)


@dataclass(frozen=True)
class RunSelection:
    """What the width-figure pages (coordinate check, running exponents) fix before anything else."""

    sweep: str
    optimizer: str
    lr: float
    base: str | None
    """The init base, when the sweep holds more than one; else None (no restriction)."""
    runs: pl.DataFrame
    """The runs of that sweep, optimizer, learning rate (and base)."""


def run_selection(state: UrlState, runs: pl.DataFrame) -> RunSelection:
    """Sweep, then optimizer · learning rate, then the init base where there is a choice (in the sidebar)."""
    sweep = sweep_select(state, runs)
    in_sweep = runs.filter(pl.col("spec") == sweep)
    optimizer, lr = config_select(state, in_sweep)
    chosen = in_sweep.filter((pl.col("optimizer") == optimizer) & (pl.col("lr") == lr))
    base = base_select(state, chosen)
    if base is not None:
        chosen = chosen.filter(pl.col("init_base") == base)
    return RunSelection(sweep, optimizer, lr, base, chosen)


def base_select(state: UrlState, runs: pl.DataFrame, *, where: Any = st.sidebar) -> str | None:
    """The init base when the runs hold more than one (a sweep with `grid.bases`), most runs first; else None.

    Runs of one preset on two bases are different measurements: a figure shows one base at a time."""
    if "init_base" not in runs.columns or runs["init_base"].n_unique() < 2:
        return None
    n = dict(runs.group_by("init_base").len().iter_rows())
    bases = sorted(n, key=lambda b: (-n[b], str(b)))
    return state.select("Init base", "base", bases, format_func=lambda b: f"{b} ({n[b]} runs)", where=where,
                        share="base", help="The initialisation the presets' width exponents scale (ssm/presets/"
                        "bases): `mamba` = state-spaces/mamba's, `ssmscope-v0` = the constants used before bases.")


def axis_select(state: UrlState, runs: pl.DataFrame, *, where: Any = st.sidebar) -> WidthAxis | None:
    """The width axis: joint (N_u = N_x), N_u at a fixed N_x, or N_x at a fixed N_u; None if no axis has 2 widths."""
    axes = width_axes(runs)
    if not axes:
        return None
    return state.select("Width axis", "axis", axes, format_func=lambda a: a.label, url_format=lambda a: a.key,
                        where=where, help="Which widths vary along the x axis (and in the slope fits).")


def rows_select(state: UrlState, frame: pl.DataFrame, *, where: Any = st.sidebar) -> list[Row]:
    """The probed quantities shown as figure rows (x, C·x, Δx, Δ(C·x) by default: frames.DEFAULT_ROWS)."""
    rows = available_rows(frame)
    keys = [r.key for r in rows]
    default = default_rows(keys)
    chosen = state.multiselect("Rows (quantities)", "rows", keys, default, format_func=lambda k: ROW_BY_KEY[k].title,
                               where=where, help="C·x is the S6 readout, y = C·x + D⊙u adds the skip (mostly "
                               "the skip under Mamba's constants); ∂L/∂y and ∂L/∂x are the gradients (recorded when "
                               "the sweep has train.grads = true).")
    return [ROW_BY_KEY[k] for k in keys if k in chosen]


def convention_select(state: UrlState, *, where: Any = st.sidebar) -> str:
    options = [c.value for c in Convention]
    return state.select("Norm convention", "convention", options, "rms",
                        format_func=lambda c: f"{c}: {norm_label(c, '·')}", where=where, help=CONVENTION_HELP)


def step_select(state: UrlState, steps: Sequence[int], *, where: Any = st.sidebar) -> int:
    """An optimizer step (0 = initialisation); the last one by default."""
    steps = sorted(steps)
    if len(steps) == 1:
        where.caption(f"Step: {steps[0]} (the only logged step)")
        raw = state.url("step", where=where)
        if raw is not None and raw != str(steps[0]):
            state.reject("step", raw, [str(steps[0])], f"showing step {steps[0]}", where=where)
        state.values["step"] = str(steps[0])
        return steps[0]
    return state.select("Step", "step", steps, steps[-1], widget="select_slider", where=where,
                        help="Optimizer steps taken before the probe; Δ = change since step 0 on the probe batch.")


def multi_filter(state: UrlState, label: str, name: str, values: Sequence[Any], *, order: Sequence[Any] = (),
                 where: Any = st.sidebar, fmt: Any = str, share: str | None = None) -> list[Any]:
    """A multiselect over the distinct values of a run column, all selected by default (`share`: across pages)."""
    from ssmscope.app.frames import ordered

    options = ordered(values, order)
    return state.multiselect(label, name, options, options, format_func=fmt, share=share,
                             url_format=lambda v: f"{v:g}" if isinstance(v, float) else str(v), where=where)
