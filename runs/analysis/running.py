"""Running exponents: how a cell's slope changes along the width axis (docs/slopes.md, "Finite width").

The headline exponent of a cell is one power law over every width. At finite width a slope can still be
moving — toward its asymptotic prediction, or away from it — or it can have settled elsewhere; one fit
over the whole range cannot tell these apart. This module fits the same cells over windows of the width
axis, with the same machinery (runs.analysis.slopes.fit_slopes: OLS, seed bootstrap ∪ OLS interval):

    pair          successive widths (w_i, w_i+1): the local slope at their geometric mean
    window3       a sliding window of 3 successive widths: smoother, one width shared with its neighbour
    top-octaves   the widths within TOP_OCTAVES octaves of the largest (w ≥ w_max / 4)

and judges each cell's `trend` from its running exponents (`trend_frame`):

    settled   the first and last local slopes differ by less than their combined CI half-widths, or by
              less than TREND_MIN_CHANGE (the flat tolerance: a change no verdict could see)
    toward    they differ, and the last is closer to the predicted exponent than the first
    away      they differ, and the last is farther from the prediction
    moving    they differ, and the cell has no prediction to judge against
    (null)    fewer than two local slopes could be fitted

Windows are taken per configuration (its own widths), on one width axis (joint, n_u or n_x; a 2-D fit has
no single axis to run along).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import polars as pl

from ssmscope.runs.analysis.cells import fitted_runs
from ssmscope.runs.analysis.slopes.fit import (
    CELL_KEYS,
    OPTIONAL_CONFIG_KEYS,
    Design,
    check_columns,
    fit_slopes,
)
from ssmscope.runs.analysis.slopes.verdicts import FLAT_TOL
from ssmscope.runs.analysis.stats import normal_z
from ssmscope.runs.analysis.vocabulary import FitStatus, Trend
from ssmscope.ssm.errors import ConfigError

TOP_OCTAVES = 2
"""The top-octaves fit uses the widths w with w_max / w ≤ 2**TOP_OCTAVES (128…512 of 32…512)."""
RUNNING_MIN_WIDTHS = 2
"""A window's fit needs two distinct widths (with seeds, a pair still has residual degrees of freedom)."""


class FitRange(StrEnum):
    """Which widths a slope table fits (`ssmscope slopes --fit`)."""

    ALL = "all"  # one power law over every width (the default, the paper's table)
    TOP_OCTAVES = "top-octaves"  # the widths within TOP_OCTAVES octaves of the largest; verdicts judged there
    RUNNING = "running"  # every window: local slopes, sliding 3-width windows, top octaves


class WindowKind(StrEnum):
    """A family of width windows."""

    PAIR = "pair"
    WINDOW3 = "window3"
    TOP_OCTAVES = "top-octaves"


WINDOW_COLUMNS = ["window", "width_lo", "width_hi", "log2_width"]
"""Columns a windowed fit adds before the slope columns: its kind, its width range and its centre."""
TREND_COLUMNS = ["trend", "local_first", "local_last", "local_change", "local_change_ci"]
"""Columns `trend_frame` gives each cell (and `attach_trend` adds to a slope frame)."""

# The width axis of each 1-D design: the column that varies, and the column held fixed (None: joint).
_AXIS: dict[Design, tuple[str, str | None]] = {
    Design.JOINT: ("n_u", None),
    Design.N_U: ("n_u", "n_x"),
    Design.N_X: ("n_x", "n_u"),
}


@dataclass(frozen=True)
class Window:
    """A set of successive widths fitted together."""

    kind: WindowKind
    widths: tuple[int, ...]

    @property
    def center(self) -> float:
        """log2 of the geometric mean of the window's widths (where its local slope is plotted)."""
        return sum(math.log2(w) for w in self.widths) / len(self.widths)


def windows(widths: Iterable[int], kinds: Iterable[WindowKind] = tuple(WindowKind)) -> list[Window]:
    """The windows of a sorted set of widths: successive pairs, sliding triples, the top octaves."""
    ws = sorted(set(widths))
    kinds = set(kinds)
    out: list[Window] = []
    if WindowKind.PAIR in kinds:
        out += [Window(WindowKind.PAIR, tuple(ws[i:i + 2])) for i in range(len(ws) - 1)]
    if WindowKind.WINDOW3 in kinds:
        out += [Window(WindowKind.WINDOW3, tuple(ws[i:i + 3])) for i in range(len(ws) - 2)]
    if WindowKind.TOP_OCTAVES in kinds and len(ws) >= 2:
        top = tuple(w for w in ws if ws[-1] / w <= 2**TOP_OCTAVES + 1e-9)
        if len(top) >= 2:
            out.append(Window(WindowKind.TOP_OCTAVES, top))
    return out


def width_axis(design: Design | str) -> tuple[str, str | None]:
    """(column that varies, column held fixed or None) of a 1-D design; a ConfigError for 2d."""
    try:
        return _AXIS[Design(design)]
    except (ValueError, KeyError):
        raise ConfigError(f"running exponents need one width axis: --width joint, n_u or n_x (got {design!r}); "
                          "a 2-D fit has no single axis to run along") from None


def _width_groups(frame: pl.DataFrame, design: Design, include_failed: bool) -> list[tuple[tuple[int, ...], list[str]]]:
    """[(sorted widths, run ids)]: the runs of configurations that share the same widths on the axis.

    A configuration is config_keys plus the fixed width; its widths are those of its fitted runs (a width
    whose runs all diverged has no points and opens no window); its run ids are all of its runs, so that
    the fits still count the diverged and failed ones.
    """
    axis, _ = width_axis(design)
    every, cell = fitted_runs(frame, design.value, include_failed=True)
    fitted, _ = fitted_runs(frame, design.value, include_failed)
    widths = (fitted.group_by(cell).agg(pl.col(axis).unique().sort().alias("_widths"))
              .with_columns(pl.col("_widths").list.eval(pl.element().cast(pl.String)).list.join(",").alias("_key")))
    runs = every.join(widths, on=cell, how="inner", nulls_equal=True)
    out = []
    for (key,), part in runs.group_by(["_key"], maintain_order=True):
        out.append((tuple(int(w) for w in str(key).split(",")), part.get_column("run_id").to_list()))
    return sorted(out)


def running_slopes(frame: pl.DataFrame, *, kinds: Iterable[WindowKind] = tuple(WindowKind),
                   fit: Callable[..., pl.DataFrame] = fit_slopes, **fit_options: Any) -> pl.DataFrame:
    """Every cell of `frame` fitted over every window of its width axis: one row per (window, cell, term).

    `fit` is the fitting function applied to each window's rows (fit_slopes; paper_slopes or
    runs.analysis.groups.group_slopes for those tables): it must take `min_widths`. fit_options are
    fit_slopes's (convention, design, layers, step, n_boot, rng_seed, include_failed, confidence,
    interval). Adds WINDOW_COLUMNS in front of the slope columns: `window` (pair, window3,
    top-octaves), `width_lo`, `width_hi` and `log2_width` (the window's centre, mean log2 width). The counts
    (n_points, n_diverged, …) are those of the window. Verdicts and agreement judge the window's slope.
    """
    check_columns(frame)
    design = str(fit_options.get("design", Design.JOINT))
    axis, _ = width_axis(design)
    include_failed = bool(fit_options.get("include_failed", False))
    kinds = tuple(kinds)
    parts = []
    for widths, run_ids in _width_groups(frame, Design(design), include_failed):
        in_group = frame.filter(pl.col("run_id").is_in(run_ids))
        for window in windows(widths, kinds):
            subset = in_group.filter(pl.col(axis).is_in(list(window.widths)))
            fits = fit(subset, **{**fit_options, "min_widths": RUNNING_MIN_WIDTHS})
            if fits.is_empty():
                continue
            parts.append(fits.select(
                pl.lit(window.kind.value).alias("window"), pl.lit(window.widths[0], pl.Int64).alias("width_lo"),
                pl.lit(window.widths[-1], pl.Int64).alias("width_hi"), pl.lit(window.center).alias("log2_width"),
                pl.all()))
    if not parts:
        return pl.DataFrame()
    order = [k for k in slope_keys(parts[0]) if k != "term"]
    kind_order = pl.col("window").cast(pl.Enum([k.value for k in WindowKind]))
    return (pl.concat(parts, how="diagonal_relaxed")
            .sort([*order, kind_order, "log2_width", "term"], nulls_last=True, maintain_order=True))


def top_octave_slopes(frame: pl.DataFrame, *, fit: Callable[..., pl.DataFrame] = fit_slopes,
                      **fit_options: Any) -> pl.DataFrame:
    """Slopes over the top TOP_OCTAVES octaves of each configuration's widths, verdicts judged there.

    A slope frame like fit_slopes's, with `width_lo` and `width_hi` saying which widths were fitted.
    """
    fits = running_slopes(frame, kinds=(WindowKind.TOP_OCTAVES,), fit=fit, **fit_options)
    return fits.drop("window", "log2_width") if not fits.is_empty() else fits


def slope_keys(slopes: pl.DataFrame) -> list[str]:
    """The columns that identify one fitted term of a slope frame (cell keys, convention, design, term)."""
    keys = [*CELL_KEYS[:4], *OPTIONAL_CONFIG_KEYS, *CELL_KEYS[4:], "convention", "design", "term"]
    return [k for k in keys if k in slopes.columns]


def _ends(running: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Per term: the first and last local slopes the trend compares, with their CI half-widths.

    Sliding 3-width windows when the first and last share at most one width (5 or more widths): their
    slopes are the least noisy local estimates; otherwise successive pairs.
    """
    z = normal_z()
    ok = running.filter((pl.col("status") == FitStatus.OK)
                        & pl.col("window").is_in([WindowKind.PAIR, WindowKind.WINDOW3]))
    half = pl.coalesce((pl.col("ci_high") - pl.col("ci_low")) / 2, pl.col("se") * z)
    ends = (ok.with_columns(half.alias("_half")).sort("log2_width")
            .group_by([*keys, "window"], maintain_order=True)
            .agg(pl.len().alias("_n"), pl.col("estimate").first().alias("local_first"),
                 pl.col("estimate").last().alias("local_last"), pl.col("_half").first().alias("_h0"),
                 pl.col("_half").last().alias("_h1"), pl.col("width_hi").first().alias("_first_hi"),
                 pl.col("width_lo").last().alias("_last_lo"), pl.col("predicted").first().alias("predicted")))
    usable = ends.filter(pl.col("_n") >= 2)
    triples = usable.filter((pl.col("window") == WindowKind.WINDOW3) & (pl.col("_first_hi") <= pl.col("_last_lo")))
    pairs = usable.filter(pl.col("window") == WindowKind.PAIR).join(triples.select(keys), on=keys, how="anti",
                                                                     nulls_equal=True)
    return pl.concat([triples, pairs], how="vertical_relaxed")


TREND_MIN_CHANGE = FLAT_TOL
"""The smallest change of the local slope (per doubling of width) a trend reports as moving.

A change resolved from zero but smaller than the tolerance within which a slope counts as flat cannot move
any verdict; with many seeds and little noise (synthetic data, long sweeps) the CI alone would call such
changes "toward"/"away". The same number as the flat tolerance, so the two judgements share one scale."""


def trend_frame(running: pl.DataFrame) -> pl.DataFrame:
    """One row per fitted term of `running` (running_slopes output): TREND_COLUMNS and the slope keys.

    local_change = local_last − local_first; local_change_ci = √(h_first² + h_last²), h a CI half-width
    (the two windows' points overlap in at most one width, so their errors are treated as independent;
    sharing seeds makes them positively correlated, which makes this test conservative). A change larger
    than local_change_ci and than TREND_MIN_CHANGE is a moving slope; the trend then says whether it moves toward
    the prediction.
    """
    keys = slope_keys(running)
    if running.is_empty():
        return pl.DataFrame(schema={**{k: pl.String for k in keys}, "trend": pl.String})
    ends = _ends(running, keys)
    change = pl.col("local_last") - pl.col("local_first")
    bound = (pl.col("_h0") ** 2 + pl.col("_h1") ** 2).sqrt()
    closer = (pl.col("local_last") - pl.col("predicted")).abs() < (pl.col("local_first") - pl.col("predicted")).abs()
    settled = (change.abs() <= bound) | (change.abs() <= TREND_MIN_CHANGE)
    trend = (pl.when(bound.is_null()).then(None).when(settled).then(pl.lit(Trend.SETTLED))
             .when(pl.col("predicted").is_null()).then(pl.lit(Trend.MOVING))
             .when(closer).then(pl.lit(Trend.TOWARD)).otherwise(pl.lit(Trend.AWAY)))
    judged = ends.select(*keys, trend.alias("trend"), "local_first", "local_last", change.alias("local_change"),
                         bound.alias("local_change_ci"))
    cells = running.select(keys).unique(maintain_order=True)
    return cells.join(judged, on=keys, how="left", nulls_equal=True, maintain_order="left")


def attach_trend(slopes: pl.DataFrame, frame: pl.DataFrame, *, fit: Callable[..., pl.DataFrame] = fit_slopes,
                 **fit_options: Any) -> pl.DataFrame:
    """`slopes` with TREND_COLUMNS, from the running exponents of `frame` fitted with the same options
    (and the same fitting function: fit_slopes, paper_slopes or group_slopes).

    Cells whose axis has fewer than three widths, and 2-D fits, get null trend columns.
    """
    if slopes.is_empty():
        return slopes
    design = fit_options.get("design", "joint")
    if str(design) == Design.TWO_D:
        return slopes.with_columns(pl.lit(None, pl.String).alias("trend"),
                                   *(pl.lit(None, pl.Float64).alias(c) for c in TREND_COLUMNS[1:]))
    running = running_slopes(frame, kinds=(WindowKind.PAIR, WindowKind.WINDOW3), fit=fit, **fit_options)
    trends = trend_frame(running)
    keys = slope_keys(slopes)
    if trends.is_empty() or "local_first" not in trends.columns:
        return slopes.with_columns(pl.lit(None, pl.String).alias("trend"),
                                   *(pl.lit(None, pl.Float64).alias(c) for c in TREND_COLUMNS[1:]))
    trends = trends.select(*keys, *TREND_COLUMNS).cast({k: slopes.schema[k] for k in keys})
    return slopes.drop(TREND_COLUMNS, strict=False).join(trends, on=keys, how="left", nulls_equal=True,
                                                        maintain_order="left")
