"""Per-group attribution: which parameter group's update makes ‖Δx‖, ‖Δy‖ grow or vanish with width.

With `group_probes = true` in a sweep's [train] table the Observer recomputes the probe batch once per
parameter group with only that group moved to its current value, every other parameter at its init
(probes.observer.UPDATE_GROUPS: W_B, W_C, dt_path, A_log, upstream), and records Δx, Δy, Δ(C·x) and
Δ(block output) from init as rows with `group` = the group's name. A flat total can hide a growing part
and a vanishing one; these rows separate them. This module fits them like any cell (fit_slopes: the group
is a cell key) and sizes each contribution against the total at the largest width:

    contribution_ratio   ‖Δq_g‖ / ‖Δq‖             (median over seeds; 1 = the group alone moves q as much
                                                     as the whole update)
    energy_share         ‖Δq_g‖² / Σ_h ‖Δq_h‖²      (median over seeds; the groups' shares sum to about 1)

Parameters in no group (D, out_proj, the readout) move only in the total.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from ssmscope.runs.analysis.cells import at_largest_width, fitted_runs, is_layer_mean
from ssmscope.runs.analysis.norms import norm_expr, parse_convention
from ssmscope.runs.analysis.slopes.fit import config_keys, fit_slopes
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.predictions import Convention

GROUP_SITES = ("x", "cx", "y", "block_out")
"""Sites the per-group probes record (quantity delta_init)."""
GROUP_COLUMNS = ["contribution_ratio", "energy_share"]
"""Columns `group_slopes` adds to the slope rows."""
NO_GROUP_PROBES = ("no per-group update probes in the selection: run a sweep with `group_probes = true` in its "
                   "[train] table, e.g. `ssmscope sweep paper-figure-groups`")
"""The one-line error when a store (or selection) has no per-group rows."""


def group_rows(frame: pl.DataFrame) -> pl.DataFrame:
    """The per-group update rows of a probe frame (group ≠ "", site in GROUP_SITES, delta_init)."""
    return frame.filter(pl.col("site").is_in(GROUP_SITES) & (pl.col("quantity") == "delta_init")
                        & (pl.col("group").fill_null("") != ""))


def require_group_probes(frame: pl.DataFrame) -> None:
    """A ConfigError naming the fix when `frame` has no per-group update rows."""
    if group_rows(frame).is_empty():
        raise ConfigError(NO_GROUP_PROBES)


def group_names(frame: pl.DataFrame) -> list[str]:
    """The groups recorded in `frame`, in the order they first appear."""
    return group_rows(frame).get_column("group").unique(maintain_order=True).to_list()


def contributions(frame: pl.DataFrame, convention: Convention | str = Convention.RMS) -> pl.DataFrame:
    """Per (run, step, layer, site, group): ‖Δq_g‖ (`norm`), the total ‖Δq‖ and the two shares.

    One row per group row of `frame`; `total` is the group "" row of the same run, step, layer and site.
    """
    conv = parse_convention(convention)
    rows = group_rows(frame).select("run_id", "step", "layer", "site", "group", norm_expr(conv))
    totals = (frame.filter(pl.col("site").is_in(GROUP_SITES) & (pl.col("quantity") == "delta_init")
                           & (pl.col("group").fill_null("") == ""))
              .select("run_id", "step", "layer", "site", norm_expr(conv).alias("total")))
    energy = (pl.col("norm") ** 2) / (pl.col("norm") ** 2).sum().over("run_id", "step", "layer", "site")
    return (rows.join(totals, on=["run_id", "step", "layer", "site"], how="left", maintain_order="left")
            .with_columns((pl.col("norm") / pl.col("total")).alias("contribution_ratio"), energy.alias("energy_share"))
            .with_columns(pl.col("contribution_ratio", "energy_share").fill_nan(None)))


def shares_at_largest(slopes: pl.DataFrame, frame: pl.DataFrame, *, include_failed: bool = False) -> pl.DataFrame:
    """`slopes` (fits of group rows, layers each or mean) with GROUP_COLUMNS at each cell's largest width.

    Medians over seeds at the cell's largest N_u·N_x; for a layer-mean cell, the mean over layers per run.
    Total rows (group "") get ratio 1 and a null energy share.
    """
    if slopes.is_empty():
        return slopes
    parts = []
    for (convention, design), part in slopes.group_by(["convention", "design"], maintain_order=True):
        runs, cell = fitted_runs(frame, str(design), include_failed)
        shares = contributions(frame, str(convention)).join(runs.select("run_id", "_size", *cell), on="run_id")
        if is_layer_mean(part):
            shares = (shares.group_by(["run_id", "_size", *cell, "step", "site", "group"])
                      .agg(pl.col(GROUP_COLUMNS).mean()).with_columns(pl.lit(None, pl.Int32).alias("layer")))
        at = [*cell, "site", "group", "step", "layer"]
        per_cell = at_largest_width(shares, at, GROUP_COLUMNS)
        per_cell = per_cell.cast({k: part.schema[k] for k in at if k in part.columns})
        joined = part.drop(GROUP_COLUMNS, strict=False).join(per_cell, on=at, how="left", nulls_equal=True,
                                                              maintain_order="left")
        total = pl.col("group") == ""
        parts.append(joined.with_columns(pl.when(total).then(1.0).otherwise(pl.col("contribution_ratio"))
                                         .alias("contribution_ratio")))
    return pl.concat(parts, how="diagonal_relaxed") if len(parts) > 1 else parts[0]


def group_slopes(frame: pl.DataFrame, *, sites: tuple[str, ...] = ("x", "y"), **fit_options: Any) -> pl.DataFrame:
    """Slopes of every group's contribution and of the total, ‖Δq‖ of `sites`, with GROUP_COLUMNS.

    fit_options go to fit_slopes (convention, design, layers, step, ...). Rows: per (configuration, layer,
    site, step) the total (group "") then each group, in the order the probes recorded them. Raises a
    ConfigError (NO_GROUP_PROBES) when the frame has no group rows.
    """
    require_group_probes(frame)
    bad = [s for s in sites if s not in GROUP_SITES]
    if bad:
        raise ConfigError(f"site {bad[0]!r} has no per-group probes; allowed: {', '.join(GROUP_SITES)}")
    subset = frame.filter(pl.col("site").is_in(sites) & (pl.col("quantity") == "delta_init"))
    slopes = fit_slopes(subset, **fit_options)
    order = pl.Enum(["", *group_names(frame)])
    keys = [c for c in slopes.columns if c in config_keys(frame)]
    slopes = (slopes.with_columns(pl.col("group").cast(order).alias("_order"))
              .sort(*keys, "layer", "site", "step", "_order", "term", nulls_last=True, maintain_order=True)
              .drop("_order"))
    return shares_at_largest(slopes, frame, include_failed=bool(fit_options.get("include_failed", False)))
