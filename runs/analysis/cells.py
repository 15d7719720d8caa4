"""The runs behind a slope cell, and values read at a cell's largest width (regime, group shares).

A slope cell (runs.analysis.slopes.fit) is a configuration — config_keys plus the width held fixed by the
design — and a probe (layer, site, quantity, group, step). Annotations such as the linear-response ratio
(runs.analysis.regime) or a group's share of the update (runs.analysis.groups) are read at the cell's
largest width, over the runs the fit used; this module finds those runs the way the fit does.
"""

from __future__ import annotations

import polars as pl

from ssmscope.runs.analysis.slopes.fit import config_keys, on_axis
from ssmscope.runs.store.schema import EXCLUDED_STATUSES, FRAME_RUN_KEYS, OPTIONAL_RUN_KEYS


def fitted_runs(frame: pl.DataFrame, design: str, include_failed: bool) -> tuple[pl.DataFrame, list[str]]:
    """(runs, configuration columns): one row per run a fit of `design` uses, with `fixed_width` and
    `_size` = N_u·N_x (the order of "largest width" in any design), and the columns naming its configuration.

    Joint fits use runs with N_u = N_x; diverged and failed runs are left out unless include_failed.
    """
    keys = [k for k in config_keys(frame) if k != "fixed_width"]
    run_cols = [c for c in (*FRAME_RUN_KEYS, *OPTIONAL_RUN_KEYS) if c in frame.columns]
    runs = frame.select(run_cols).unique(subset="run_id")
    runs = runs.filter(on_axis(design))
    if not include_failed:
        runs = runs.filter(~pl.col("status").is_in([s.value for s in EXCLUDED_STATUSES]))
    fixed = {"n_u": pl.col("n_x"), "n_x": pl.col("n_u")}.get(design, pl.lit(None))
    runs = runs.with_columns(fixed.cast(pl.Int64).alias("fixed_width"), (pl.col("n_u") * pl.col("n_x")).alias("_size"))
    return runs, [*keys, "fixed_width"]


def at_largest_width(values: pl.DataFrame, by: list[str], columns: list[str]) -> pl.DataFrame:
    """Median over runs of `columns` at the largest `_size` within each `by` group: one row per group."""
    largest = values.filter(pl.col("_size") == pl.col("_size").max().over(by))
    return largest.group_by(by).agg(pl.col(columns).median())


def is_layer_mean(slopes: pl.DataFrame) -> bool:
    """Whether a slope frame was fitted on the mean over layers (its layer column is all null)."""
    return slopes.get_column("layer").null_count() == slopes.height
