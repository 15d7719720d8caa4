"""Norms of probe records in each convention, as polars expressions, and their axis labels.

A probe record keeps raw sums (probes.schema), so every convention is derived here and nowhere
else: rms = sqrt(sumsq/count), l2 = sqrt(sumsq), token_l2 = token_norm_sum/n_tokens,
channel_l2 = channel_norm_sum/n_channels. Slopes differ between conventions (ssm.predictions
.convention_shift), so every figure and table says which one it shows.
"""

from __future__ import annotations

import polars as pl

from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.predictions import Convention

# What each convention measures, for axis labels: "‖x‖ RMS per coordinate" etc.
_LABELS: dict[Convention, str] = {
    Convention.RMS: "‖{s}‖ RMS per coordinate",
    Convention.L2: "‖{s}‖₂ over the probe batch",
    Convention.TOKEN_L2: "‖{s}‖₂ per token (mean over tokens)",
    Convention.CHANNEL_L2: "‖{s}⁽ⁱ⁾‖₂ per channel (mean over tokens and channels)",
}

# How sites and quantities read in labels: Δ marks a change from initialisation.
_SITE_SYMBOLS: dict[str, str] = {"grad_x": "∂L/∂x", "grad_y": "∂L/∂y", "cx": "C·x", "block_out": "out"}
_QUANTITY_PREFIX: dict[str, str] = {"value": "", "delta_init": "Δ", "delta_prev": "δ"}


def parse_convention(convention: Convention | str) -> Convention:
    """The Convention named by `convention`; a ConfigError naming the allowed values otherwise."""
    try:
        return Convention(convention)
    except ValueError:
        allowed = ", ".join(c.value for c in Convention)
        raise ConfigError(f"convention={convention!r}; allowed: {allowed}") from None


def norm_expr(convention: Convention | str) -> pl.Expr:
    """The norm of one probe record in `convention`, from its raw sums (a Float64 expression).

    Division by a zero count gives NaN or inf; the slope fits treat those as non-finite and count them.
    """
    convention = parse_convention(convention)
    if convention == Convention.RMS:
        expr = (pl.col("sumsq") / pl.col("count")).sqrt()
    elif convention == Convention.L2:
        expr = pl.col("sumsq").sqrt()
    elif convention == Convention.TOKEN_L2:
        expr = pl.col("token_norm_sum") / pl.col("n_tokens")
    else:
        expr = pl.col("channel_norm_sum") / pl.col("n_channels")
    return expr.cast(pl.Float64).alias("norm")


def norm_label(convention: Convention | str, site: str = "x", quantity: str = "value") -> str:
    """Axis label for a norm, e.g. "‖Δy‖ RMS per coordinate" for (rms, y, delta_init)."""
    convention = parse_convention(convention)
    symbol = _QUANTITY_PREFIX.get(quantity, "") + _SITE_SYMBOLS.get(site, site)
    return _LABELS[convention].format(s=symbol)
