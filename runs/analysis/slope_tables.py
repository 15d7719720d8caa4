"""The slope tables `ssmscope slopes` (and the dashboard) show: which cells, over which widths, annotated.

    table  paper    ‖x‖ ‖y‖ ‖Δx‖ ‖Δy‖ (totals) per configuration (runs.analysis.slopes.paper_slopes)
           full     every cell (fit_slopes)
           groups   every per-group contribution to ‖Δx‖ ‖Δy‖ ‖Δ(C·x)‖ beside the total (runs.analysis.groups)
           slices   Mamba-2: each in_proj row block's output (z, x, B, C, dt) and its change, per slice
    fit    all          one power law over every width (the default)
           top-octaves  the widths within TOP_OCTAVES octaves of the largest: verdicts judged there
           running      every window: successive pairs, sliding 3-width windows, the top octaves

Every table gets the regime (runs.analysis.regime: `regime_ratio`, `regime`) and, for one-axis designs,
the trend of its running exponents (runs.analysis.running: `trend`, `local_first`, `local_last`, …).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import polars as pl

from ssmscope.runs.analysis.groups import group_slopes
from ssmscope.runs.analysis.regime import attach_regime
from ssmscope.runs.analysis.running import FitRange, WindowKind, attach_trend, running_slopes, top_octave_slopes
from ssmscope.runs.analysis.slopes import fit_slopes, paper_slopes
from ssmscope.ssm.errors import ConfigError

TABLES = ("paper", "full", "groups", "slices")
"""What `--table` may name."""
GROUP_TABLE_SITES = ("x", "y", "cx")
"""The sites of the groups table: the state, the output and the readout alone."""
SLICE_SITE = "in_proj"
"""The site of the slices table: a Mamba-2 in_proj row block's output, `group` naming the block (probes.mamba2)."""
NO_SLICES = ("no in_proj slice records in the selection: the slices table needs Mamba-2 runs "
             "(train.model = \"mamba2\", e.g. `ssmscope sweep mamba2-figure`)")


def slice_slopes(frame: pl.DataFrame, **fit_options: Any) -> pl.DataFrame:
    """fit_slopes over the in_proj slice records only (one cell per slice, quantity, layer)."""
    return fit_slopes(frame.filter(pl.col("site") == SLICE_SITE), **fit_options)


def parse_fit(value: str) -> FitRange:
    """The FitRange named by `value` (the --fit option); a ConfigError listing the allowed values otherwise."""
    try:
        return FitRange(value)
    except ValueError:
        raise ConfigError(f"--fit={value!r}; allowed: {', '.join(f.value for f in FitRange)}") from None


def _fitter(table: str) -> Any:
    if table == "paper":
        return paper_slopes
    if table == "groups":
        return partial(group_slopes, sites=GROUP_TABLE_SITES)
    if table == "full":
        return fit_slopes
    if table == "slices":
        return slice_slopes
    raise ConfigError(f"--table={table!r}; allowed: {', '.join(TABLES)}")


def slope_table(frame: pl.DataFrame, *, table: str = "full", fit: FitRange | str = FitRange.ALL,
                annotate: bool = True, **fit_options: Any) -> pl.DataFrame:
    """The slope rows of one table over one width range, with regime and trend columns when `annotate`.

    fit_options go to the fits (convention, design, layers, step, n_boot, rng_seed, include_failed).
    `--fit running` rows carry the window columns (runs.analysis.running.WINDOW_COLUMNS); `top-octaves`
    rows carry width_lo and width_hi.
    """
    fit = parse_fit(str(fit))
    fitter = _fitter(table)
    if fit == FitRange.ALL:
        slopes = fitter(frame, **fit_options)
    elif fit == FitRange.TOP_OCTAVES:
        slopes = top_octave_slopes(frame, fit=fitter, **fit_options)
    else:
        slopes = running_slopes(frame, kinds=tuple(WindowKind), fit=fitter, **fit_options)
    if not annotate or slopes.is_empty():
        return slopes
    slopes = attach_regime(slopes, frame, include_failed=bool(fit_options.get("include_failed", False)))
    if fit == FitRange.RUNNING:  # the windows are the running exponents; a trend per window says nothing new
        return slopes
    trend_frame = frame if table != "paper" else frame.filter(pl.col("group").fill_null("") == "")
    return attach_trend(slopes, trend_frame, fit=fitter, **fit_options)
