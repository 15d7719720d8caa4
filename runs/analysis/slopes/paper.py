"""The paper's table: ‖x‖, ‖y‖, ‖Δx‖, ‖Δy‖ per preset and discretisation, as slope rows."""

from __future__ import annotations

import polars as pl

from ssmscope.runs.analysis.slopes.fit import (
    MIN_WIDTHS,
    Design,
    LayerAgg,
    Step,
    check_columns,
    config_keys,
    fit_slopes,
)
from ssmscope.runs.analysis.stats import DEFAULT_N_BOOT
from ssmscope.ssm.predictions import Convention

PAPER_COLUMNS: dict[str, tuple[str, str]] = {
    "x": ("x", "value"),
    "y": ("y", "value"),
    "dx": ("x", "delta_init"),
    "dy": ("y", "delta_init"),
}
"""The paper's table: its four columns as (site, quantity)."""


def paper_slopes(frame: pl.DataFrame, *, convention: Convention | str = Convention.RMS,
                 design: Design | str = Design.JOINT, layers: LayerAgg | str = LayerAgg.MEAN,
                 step: Step = "last", n_boot: int = DEFAULT_N_BOOT, rng_seed: int = 0,
                 include_failed: bool = False, min_widths: int = MIN_WIDTHS) -> pl.DataFrame:
    """The slope rows behind the paper's table: ‖x‖, ‖y‖, ‖Δx‖, ‖Δy‖ (totals), with a `column` label.

    Defaults: the last step of each configuration, and layers="mean" — one exponent per cell for the
    mean over layers of log2‖·‖, which equals the mean of the per-layer exponents and gets its CI from
    the same seed bootstrap (use layers="each" for a row per layer). min_widths as fit_slopes.
    """
    check_columns(frame)
    selector = pl.lit(False)
    label = pl.lit(None, pl.String)
    for name, (site, quantity) in reversed(PAPER_COLUMNS.items()):
        hit = (pl.col("site") == site) & (pl.col("quantity") == quantity)
        selector = selector | hit
        label = pl.when(hit).then(pl.lit(name)).otherwise(label)
    subset = frame.filter(selector & (pl.col("group") == ""))
    slopes = fit_slopes(subset, convention=convention, design=design, layers=layers, step=step,
                        n_boot=n_boot, rng_seed=rng_seed, include_failed=include_failed, min_widths=min_widths)
    keys = [c for c in slopes.columns if c in config_keys(frame)]
    order = pl.Enum(list(PAPER_COLUMNS))
    return (slopes.with_columns(label.cast(order).alias("column"))
            .sort(*keys, "layer", "column", "term", nulls_last=True, maintain_order=True)
            .with_columns(pl.col("column").cast(pl.String)))
