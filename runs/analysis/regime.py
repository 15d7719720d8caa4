"""The regime of a slope: is the run still in linear response at the fitted step? (docs/slopes.md, "Regime")

A width exponent of ‖Δq‖ measures how the parameterization scales the update only while the update is
a perturbation of the initial q_0: then Δq is first order in the learning rates and its exponent is the
sum of theirs and of the forward scales (docs/theory.md §3–4). Once ‖Δq‖ is as large as ‖q_0‖ the update
dominates, the norms saturate (a normalised layer cannot grow without bound) and the measured exponent
reflects saturation, not the parameterization. The value of q at the step, q_0 + Δq, is then the update's
too. So each probe row gets the ratio

    ρ = ‖Δq‖ / ‖q_0‖    (Δq: quantity delta_init at the step; q_0: quantity value at step 0, same run,
                          layer, site, convention; per-group updates are divided by the total q_0)

and each slope cell the flag

    regime = "nonlinear"  when the median over seeds of ρ at the cell's largest width > REGIME_THRESHOLD
             "linear"     otherwise; null where the site has no Δ (gradients) or no step-0 value.

For a cell fitted on the mean over layers, each run's ρ is its largest over layers (one saturated layer
bends the mean). `regime_ratio` is that median, so a reader sees how far inside or outside the cell is.
"""

from __future__ import annotations

import polars as pl

from ssmscope.runs.analysis.cells import at_largest_width, fitted_runs, is_layer_mean
from ssmscope.runs.analysis.norms import norm_expr, parse_convention
from ssmscope.runs.analysis.vocabulary import Regime
from ssmscope.ssm.predictions import Convention

REGIME_THRESHOLD = 1.0
"""ρ = ‖Δq‖/‖q_0‖ above which a cell is "nonlinear": the change since init is larger than the init itself.

Why 1: for ρ ≪ 1 the first-order expansion in the update holds and the exponent is the parameterization's;
at ρ = 1 the update alone is as large as q_0, so second-order terms (the update of the update, the
normalisations reacting) are of the order of the signal, and at the largest width the measured exponent
describes where the norms saturate. The ratio is reported beside the flag: cells with 0.3 < ρ ≤ 1 are in
the crossover and deserve the same suspicion in proportion.
"""
REGIME_COLUMNS = ["regime_ratio", "regime"]
"""Columns `attach_regime` adds to a slope frame."""


def response_ratios(frame: pl.DataFrame, convention: Convention | str = Convention.RMS) -> pl.DataFrame:
    """ρ = ‖Δq‖/‖q_0‖ for every delta_init probe row: run_id, step, layer, site, group, regime_ratio.

    q_0 is the value at step 0 of the same run, layer and site (for a parameter row, the same parameter;
    for a per-group update row, the total). A zero or non-finite q_0 gives a null ratio. Join it onto
    per-run points (e.g. the coordinate check's hover) by (run_id, step, layer, site).
    """
    normed = frame.select("run_id", "step", "layer", "site", "quantity", pl.col("group").fill_null(""),
                          norm_expr(parse_convention(convention)))
    initial = (normed.filter((pl.col("quantity") == "value") & (pl.col("step") == 0))
               .select("run_id", "layer", "site", pl.col("group").alias("_ref"), pl.col("norm").alias("_norm0"))
               .unique(subset=["run_id", "layer", "site", "_ref"], keep="first"))
    deltas = normed.filter(pl.col("quantity") == "delta_init").with_columns(
        pl.when(pl.col("site") == "param").then(pl.col("group")).otherwise(pl.lit("")).alias("_ref"))
    ratio = pl.col("norm") / pl.col("_norm0")
    return (deltas.join(initial, on=["run_id", "layer", "site", "_ref"], how="left", maintain_order="left")
            .select("run_id", "step", "layer", "site", "group",
                    pl.when(ratio.is_finite()).then(ratio).otherwise(None).alias("regime_ratio")))


def attach_regime(slopes: pl.DataFrame, frame: pl.DataFrame, *, include_failed: bool = False,
                  threshold: float = REGIME_THRESHOLD) -> pl.DataFrame:
    """`slopes` (a fit_slopes frame of `frame`) with `regime_ratio` and `regime` per cell (module docstring).

    The convention, design and layer aggregation are read from the slope frame itself; `include_failed`
    must match the fit's (the runs whose ratios count are the fitted ones).
    """
    if slopes.is_empty():
        return slopes
    out = []
    for (convention, design), part in slopes.group_by(["convention", "design"], maintain_order=True):
        out.append(_attach(part, frame, str(convention), str(design), include_failed, threshold))
    return pl.concat(out, how="diagonal_relaxed") if len(out) > 1 else out[0]


def _attach(slopes: pl.DataFrame, frame: pl.DataFrame, convention: str, design: str, include_failed: bool,
            threshold: float) -> pl.DataFrame:
    """attach_regime for one (convention, design)."""
    runs, cell = fitted_runs(frame, design, include_failed)
    ratios = response_ratios(frame, convention).join(runs.select("run_id", "_size", *cell), on="run_id")
    if is_layer_mean(slopes):
        ratios = (ratios.group_by(["run_id", "_size", *cell, "site", "group", "step"])
                  .agg(pl.col("regime_ratio").max()).with_columns(pl.lit(None, pl.Int32).alias("layer")))
    at = [*cell, "layer", "site", "group", "step"]
    per_cell = at_largest_width(ratios, at, ["regime_ratio"])
    per_cell = per_cell.cast({k: slopes.schema[k] for k in at if k in slopes.columns})
    joined = slopes.drop(REGIME_COLUMNS, strict=False).join(per_cell, on=at, how="left", nulls_equal=True,
                                                            maintain_order="left")
    regime = (pl.when(pl.col("regime_ratio").is_null()).then(None)
              .when(pl.col("regime_ratio") > threshold).then(pl.lit(Regime.NONLINEAR)).otherwise(pl.lit(Regime.LINEAR)))
    return joined.with_columns(regime.alias("regime"))
