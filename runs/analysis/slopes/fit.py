"""Width-scaling exponents: log-log fits with seed-bootstrap CIs, set beside the predicted ones.

Input: one row per (run, step, layer, site, quantity, group), the probe sums joined with the
run's keys (runs.store.schema.PROBE_FRAME_COLUMNS). Output of `fit_slopes`: one row per fitted
exponent ("term") of one cell, a cell being (preset, discretization, optimizer, lr, [spec, task,
dt_max,] fixed_width, layer, site, quantity, group, step) in one norm convention. Pure
polars/numpy, frame → frame. The pieces: codes (group-by bookkeeping), ols (fits from sufficient
statistics), bootstrap (seed CIs), verdicts (against the predictions), paper (the paper's table).

The fit: log2‖·‖ = a + s·log2(width) over every (width, seed) point of a cell ("joint": runs with
N_u = N_x; "n_u": N_x held fixed; "n_x": N_u held fixed), or a + s_u·log2 N_u + s_x·log2 N_x on a
2-D grid ("2d"). Standard errors are the OLS ones; the 95 % CI is a seed (cluster) bootstrap:
resample the seeds with replacement, keep each drawn seed's points, refit (docs/slopes.md).

This module holds fit_slopes and what prepares its points; it is longer than most because the
preparation (codes for runs, points, steps and layer means) and the per-cell fit share private
array types (_Runs, _Points) that only make sense together.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import numpy as np
import polars as pl

from ssmscope.runs.analysis.norms import norm_expr, parse_convention
from ssmscope.runs.analysis.slopes import bootstrap, codes, ols
from ssmscope.runs.analysis.slopes.verdicts import attach_predictions
from ssmscope.runs.analysis.stats import CONFIDENCE, DEFAULT_N_BOOT, normal_z
from ssmscope.runs.analysis.vocabulary import Design, FitStatus, LayerAgg
from ssmscope.runs.store.schema import (
    EXCLUDED_STATUSES,
    FRAME_RUN_KEYS,
    OPTIONAL_RUN_KEYS,
    PARAMETERIZATION_KEYS,
    PROBE_FRAME_COLUMNS,
    RunStatus,
)
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.predictions import Convention

MIN_WIDTHS = 3
"""Distinct widths per fitted axis below which a cell is reported too_few_points (2 points fit any line)."""
CONFIG_KEYS = [*PARAMETERIZATION_KEYS, "lr", "fixed_width"]
"""One sweep configuration: the fits never mix learning rates or a held-fixed width."""
OPTIONAL_CONFIG_KEYS = list(OPTIONAL_RUN_KEYS)
"""Run keys that also separate configurations when the frame has them (the store adds them): two
sweeps with another dt range or task must not be fitted as one."""
CELL_KEYS = [*CONFIG_KEYS, "layer", "site", "quantity", "group", "step"]
"""One fit = one cell (plus any OPTIONAL_CONFIG_KEYS present, after lr)."""


def on_axis(design: Design | str, fixed: int | None = None) -> pl.Expr:
    """The rows (with n_u, n_x) a fit along `design` uses: joint → N_u = N_x; n_u → N_x = `fixed`; n_x → N_u =
    `fixed` (every row when `fixed` is None: one fit per fixed width); 2d → every row. The one width filter of
    the fits, the coincidence check, the CLI's hints and the dashboard's width axes."""
    design = Design(design)
    if design == Design.JOINT:
        return pl.col("n_u") == pl.col("n_x")
    if fixed is not None and design in (Design.N_U, Design.N_X):
        return pl.col("n_x" if design == Design.N_U else "n_u") == fixed
    return pl.lit(True)


# The regressors (terms) of each design, as the log2 of which width column.
_TERMS: dict[Design, tuple[tuple[str, str], ...]] = {
    Design.JOINT: (("width", "n_u"),),
    Design.N_U: (("n_u", "n_u"),),
    Design.N_X: (("n_x", "n_x"),),
    Design.TWO_D: (("n_u", "n_u"), ("n_x", "n_x")),
}

Step = int | Literal["last"] | None
"""A step selector: an int, "last" (per configuration, the last step of an included run), None = all."""


FIT_COLUMNS = [*CELL_KEYS, "convention", "design", "term", "estimate", "se", "ci_low", "ci_high",
               "intercept", "residual_sd", "n_points", "n_seeds", "n_widths", "n_diverged", "n_failed",
               "n_nonfinite", "status", "predicted", "log_x", "verdict", "agreement", "prediction_note"]
"""Columns of a slope frame, in order."""


def _parse_enum(enum: type[StrEnum], key: str, value: object) -> StrEnum:
    """`enum(value)`, or a ConfigError naming the key, the value and the allowed values."""
    try:
        return enum(value)
    except ValueError:
        raise ConfigError(f"{key}={value!r}; allowed: {', '.join(e.value for e in enum)}") from None


def check_columns(frame: pl.DataFrame) -> None:
    """Fail early, naming what is missing, when a frame is not a probe frame."""
    missing = [c for c in PROBE_FRAME_COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigError(f"probe frame lacks column(s) {', '.join(missing)}; "
                          f"expected: {', '.join(PROBE_FRAME_COLUMNS)}")


def config_keys(frame: pl.DataFrame) -> list[str]:
    """CONFIG_KEYS with the OPTIONAL_CONFIG_KEYS the frame has, placed before fixed_width."""
    return [*CONFIG_KEYS[:-1], *(c for c in OPTIONAL_CONFIG_KEYS if c in frame.columns), "fixed_width"]


def _run_table(frame: pl.DataFrame, design: Design, include_failed: bool) -> pl.DataFrame:
    """One row per run, sorted by run_id, with in_design, fixed_width, included, r_<term> = log2(width)
    and dense codes.

    Codes: config numbers the configurations (`config_keys`) of runs in the design in sorted order
    (null for runs outside it: joint needs N_u = N_x); seed_code the seeds; w_<term> the widths of a term.
    """
    keys = config_keys(frame)
    runs = frame.select(*FRAME_RUN_KEYS, *keys[4:-1]).unique(subset="run_id", keep="any").sort("run_id")
    in_design = pl.col("n_u") == pl.col("n_x") if design == Design.JOINT else pl.lit(True)
    fixed = {Design.N_U: pl.col("n_x"), Design.N_X: pl.col("n_u")}.get(design, pl.lit(None))
    included = pl.lit(True) if include_failed else ~pl.col("status").is_in([s.value for s in EXCLUDED_STATUSES])
    runs = runs.with_columns(
        in_design.alias("in_design"), fixed.cast(pl.Int64).alias("fixed_width"), included.alias("included"),
        pl.col("seed").rank("dense").cast(pl.Int64).sub(1).alias("seed_code"),
        *(pl.col(col).cast(pl.Float64).log(2).alias(f"r_{term}") for term, col in _TERMS[design]),
        *(pl.col(col).rank("dense").cast(pl.Int64).sub(1).alias(f"w_{term}") for term, col in _TERMS[design]))
    configs = (runs.filter("in_design").select(keys).unique().sort(keys, nulls_last=True)
               .with_row_index("config").with_columns(pl.col("config").cast(pl.Int64)))
    return runs.join(configs, on=keys, how="left", nulls_equal=True, maintain_order="left")


@dataclass(frozen=True)
class _Runs:
    """Per-run attributes the fit needs, indexed by the run code (runs sorted by run_id)."""

    seed: np.ndarray  # (R,) dense seed code
    included: np.ndarray  # (R,) bool: fitted (not diverged/failed, unless asked)
    r: np.ndarray  # (R, p) log2 width per term
    w: np.ndarray  # (R, p) dense width code per term

    @staticmethod
    def of(runs: pl.DataFrame, terms: list[str]) -> _Runs:
        """The arrays of a `_run_table`."""
        return _Runs(seed=runs.get_column("seed_code").to_numpy(),
                     included=runs.get_column("included").to_numpy().astype(bool),
                     r=runs.select(f"r_{t}" for t in terms).to_numpy().astype(np.float64),
                     w=runs.select(f"w_{t}" for t in terms).to_numpy().astype(np.int64))


@dataclass(frozen=True)
class _Points:
    """The fitted points as arrays, one entry per point (a probe row, or a layer-mean of rows)."""

    run: np.ndarray  # (P,) run code (`_Runs` index)
    config: np.ndarray  # (P,) codes of the cell keys ...
    layer: np.ndarray
    probe: np.ndarray
    step: np.ndarray  # (P,) the step itself
    valid: np.ndarray  # (P,) bool: finite, non-zero norm
    y: np.ndarray  # (P,) log2‖·‖

    def take(self, idx: np.ndarray) -> _Points:
        """The points at `idx` (an index array or a boolean mask)."""
        return _Points(**{k: v[idx] for k, v in self.__dict__.items()})


_PROBE_KEYS = ("site", "quantity", "group")


def _points(frame: pl.DataFrame, runs: pl.DataFrame, convention: Convention) -> tuple[_Points, pl.DataFrame]:
    """The probe rows of runs in the design as points (codes and y = log2‖·‖), and the probe table:
    probe code → (site, quantity, group), codes in sorted order.

    Codes come from Enum casts, which keep the row order (no join on a million rows): sums over the
    points are then reproducible to the last bit.
    """
    levels = {c: frame.get_column(c).fill_null("").unique().sort() for c in _PROBE_KEYS}
    coded = frame.select(
        pl.col("run_id").cast(pl.Enum(runs.get_column("run_id"))).to_physical().alias("run"),
        *(pl.col(c).fill_null("").cast(pl.Enum(levels[c])).to_physical().alias(c) for c in _PROBE_KEYS),
        "step", "layer", norm_expr(convention).log(2).alias("y"))
    run = coded.get_column("run").to_numpy().astype(np.int64)
    config = runs.get_column("config").fill_null(-1).to_numpy()[run]
    n_q, n_g = len(levels["quantity"]), len(levels["group"])
    site, quantity, group = (coded.get_column(c).to_numpy().astype(np.int64) for c in _PROBE_KEYS)
    y = coded.get_column("y").to_numpy()
    points = _Points(run=run, config=config, layer=coded.get_column("layer").to_numpy().astype(np.int64),
                     probe=(site * n_q + quantity) * n_g + group,
                     step=coded.get_column("step").to_numpy().astype(np.int64), valid=np.isfinite(y), y=y)
    in_design = config >= 0
    if not in_design.all():
        points = points.take(in_design)
    present = codes.dense(points.probe, len(levels["site"]) * n_q * n_g)[1]
    probes = pl.DataFrame({"probe": present, "site": levels["site"].to_numpy()[present // (n_q * n_g)],
                           "quantity": levels["quantity"].to_numpy()[present // n_g % n_q],
                           "group": levels["group"].to_numpy()[present % n_g]})
    return points, probes


def _select_step(points: _Points, runs: _Runs, step: Step) -> _Points:
    """Points at `step`; "last" = per configuration, the largest step an included run logged (or any
    run, where none is included: the cell is then reported with its excluded runs, not dropped)."""
    if step is None:
        return points
    if isinstance(step, str) and step == "last":
        included = runs.included[points.run]
        lowest = np.iinfo(np.int64).min
        last = np.full(codes.radix(points.config), lowest)
        np.maximum.at(last, points.config[included], points.step[included])
        last_any = np.full(len(last), lowest)
        np.maximum.at(last_any, points.config, points.step)
        last = np.where(last == lowest, last_any, last)
        return points.take(points.step == last[points.config])
    if isinstance(step, bool) or not isinstance(step, int):
        raise ConfigError(f"step={step!r}; allowed: an integer, 'last' or None (all steps)")
    return points.take(points.step == step)


def _mean_over_layers(points: _Points) -> _Points:
    """One point per (run, probe, step): y is the mean of log2‖·‖ over its layers, layer becomes 0.

    A point with any non-finite layer is invalid: a mean over the remaining layers would shift it.
    """
    step_codes, steps = codes.dense(*codes.shifted(points.step))
    code, capacity = codes.combine([(points.run, codes.radix(points.run)), (points.probe, codes.radix(points.probe)),
                               (step_codes, max(len(steps), 1))])
    inverse, uniques = codes.dense(code, capacity)
    n = len(uniques)
    count = np.bincount(inverse, minlength=n)
    y_sum = np.bincount(inverse, weights=np.where(points.valid, points.y, 0.0), minlength=n)
    valid = np.bincount(inverse, weights=~points.valid, minlength=n) == 0
    first = points.take(codes.first_rows(inverse, n))
    return _Points(run=first.run, config=first.config, layer=np.zeros(n, np.int64), probe=first.probe,
                   step=first.step, valid=valid, y=np.where(valid, y_sum / count, np.nan))


def fit_slopes(frame: pl.DataFrame, *, convention: Convention | str = Convention.RMS,
               design: Design | str = Design.JOINT, layers: LayerAgg | str = LayerAgg.EACH,
               step: Step = None, n_boot: int = DEFAULT_N_BOOT, rng_seed: int = 0,
               include_failed: bool = False, confidence: float = CONFIDENCE,
               interval: str = "union", min_widths: int = MIN_WIDTHS) -> pl.DataFrame:
    """Fit width-scaling exponents for every cell of a probe frame; one output row per (cell, term).

    Args:
        frame: probe rows joined with run keys (PROBE_FRAME_COLUMNS), already filtered to the selection.
        convention: norm convention (runs.analysis.norms); predictions are shifted to the same one.
        design: which widths vary (Design): joint, n_u (N_x fixed), n_x (N_u fixed) or 2d.
        layers: "each" (a fit per layer) or "mean" (fit the layer-mean of log2‖·‖; layer is null).
        step: an int, "last" (per configuration, the last step logged by an included run), None = all.
        n_boot: bootstrap resamples of the seeds (0: no CI).
        rng_seed: seeds the bootstrap draws (results are deterministic).
        include_failed: fit diverged and failed runs too (they are counted either way).
        confidence: nominal coverage of the CI.
        interval: "union" (default: the wider of the seed bootstrap and the OLS normal interval, which keeps
            its coverage with 2-3 seeds) or "bootstrap" (the percentile seed bootstrap alone).
        min_widths: distinct widths per fitted axis below which a cell is too_few_points (MIN_WIDTHS; the
            running exponents of runs.analysis.running fit successive pairs of widths with 2).

    Returns: FIT_COLUMNS (plus the OPTIONAL_CONFIG_KEYS the frame has, after lr), one row per
    (cell, term) in CELL_KEYS order, with `status` ok | too_few_points | singular, and the
    predicted exponent, verdict and agreement (`attach_predictions`).
    """
    check_columns(frame)
    convention = parse_convention(convention)
    design = _parse_enum(Design, "width", design)
    layers = _parse_enum(LayerAgg, "layers", layers)
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence={confidence!r}; allowed: a number in (0, 1)")
    terms = [t for t, _ in _TERMS[design]]

    runs = _run_table(frame, design, include_failed)
    run_arrays = _Runs.of(runs, terms)
    points, probes = _points(frame, runs, convention)
    points = _select_step(points, run_arrays, step)
    if layers == LayerAgg.MEAN:
        points = _mean_over_layers(points)
    if interval not in ("union", "bootstrap"):
        raise ConfigError(f"interval={interval!r}; allowed: union, bootstrap")
    if isinstance(min_widths, bool) or not isinstance(min_widths, int) or min_widths < 2:
        raise ConfigError(f"min_widths={min_widths!r}; allowed: an integer >= 2 (a slope needs two widths)")
    fits = _fit_cells(points, run_arrays, terms, n_boot, rng_seed, confidence, interval, min_widths)

    configs = runs.filter("in_design").group_by("config").agg(
        pl.col(config_keys(frame)).first(),
        (pl.col("status") == RunStatus.DIVERGED).sum().cast(pl.Int64).alias("n_diverged"),
        (pl.col("status") == RunStatus.FAILED).sum().cast(pl.Int64).alias("n_failed"))
    layer = pl.lit(None, pl.Int64) if layers == LayerAgg.MEAN else pl.col("layer")
    out = (fits.join(configs, on="config", how="left", maintain_order="left")
           .join(probes, on="probe", how="left", maintain_order="left")
           .with_columns(layer.alias("layer"), pl.lit(convention.value).alias("convention"),
                         pl.lit(design.value).alias("design")))
    optional = [c for c in OPTIONAL_CONFIG_KEYS if c in frame.columns]
    return attach_predictions(out).select(*FIT_COLUMNS[:4], *optional, *FIT_COLUMNS[4:])


def _fit_cells(points: _Points, runs: _Runs, terms: list[str], n_boot: int, rng_seed: int,
               confidence: float, interval: str = "union", min_widths: int = MIN_WIDTHS) -> pl.DataFrame:
    """Per cell: counts over every point, OLS and bootstrap CI over the included valid ones.

    Returns one row per (cell, term) in cell order, keyed by the codes config, layer, probe, step.
    """
    p = len(terms)
    step_codes, steps = codes.dense(*codes.shifted(points.step))
    code, capacity = codes.combine([(points.config, codes.radix(points.config)),
                                    (points.layer - codes.low(points.layer), codes.span(points.layer)),
                                    (points.probe, codes.radix(points.probe)), (step_codes, max(len(steps), 1))])
    cell, uniques = codes.dense(code, capacity)  # (P,) cell index, cells in CELL_KEYS order
    n_cells = len(uniques)
    included = runs.included[points.run]
    usable = np.flatnonzero(included & points.valid)  # (U,) the points that are fitted
    first = codes.first_rows(cell, n_cells)
    n_points = np.bincount(cell[usable], minlength=n_cells)
    n_nonfinite = np.bincount(cell[included & ~points.valid], minlength=n_cells)
    cell_u, run_u = cell[usable], points.run[usable]
    n_widths = np.stack([codes.distinct_per_group(cell_u, runs.w[run_u, j], n_cells) for j in range(p)], axis=1)

    # Sufficient statistics per (cell, seed), rows in (cell, seed) order.
    n_seed_codes = codes.radix(runs.seed)
    group, group_codes = codes.dense(cell_u * n_seed_codes + runs.seed[run_u], n_cells * n_seed_codes)
    columns = ols.stat_columns(runs.r[run_u], points.y[usable])
    stats = np.stack([np.bincount(group, weights=c, minlength=len(group_codes)) for c in columns], axis=1)
    group_cell = group_codes // n_seed_codes  # (G,) cell of each (cell, seed) row
    starts = np.flatnonzero(np.r_[True, group_cell[1:] != group_cell[:-1]]) if len(group_cell) else (
        np.zeros(0, np.int64))
    n_seeds = np.zeros(n_cells, np.int64)
    n_seeds[group_cell[starts]] = np.diff(np.r_[starts, len(group_cell)])
    totals = np.zeros((n_cells, stats.shape[1]))
    if len(starts):
        totals[group_cell[starts]] = np.add.reduceat(stats, starts, axis=0)
    fit = ols.ols(totals, p)
    low = np.full((n_cells, p), np.nan)
    high = np.full((n_cells, p), np.nan)
    fitted = group_cell[starts]
    low[fitted], high[fitted] = bootstrap.bootstrap_ci(stats, starts, n_seeds[fitted], p, n_boot, rng_seed, confidence)
    # A percentile bootstrap over 2-3 seeds undercovers badly (docs/slopes.md: 50 % for 2 seeds, 75 % for 3);
    # the reported interval is the union with the OLS normal interval, which keeps ~93 % at any seed count.
    if interval == "union":
        z = normal_z(confidence)
        with np.errstate(invalid="ignore"):
            low = np.fmin(low, fit.coef - z * fit.se)
            high = np.fmax(high, fit.coef + z * fit.se)
    with np.errstate(invalid="ignore", divide="ignore"):
        resid_sd = np.where(totals[:, 0] > p + 1, np.sqrt(fit.rss / (totals[:, 0] - p - 1)), np.nan)
    too_few = (n_widths < min_widths).any(axis=1)
    ok = ~too_few & ~fit.singular

    def masked(values: np.ndarray) -> np.ndarray:
        """A cell that is not "ok" reports its counts only: no numbers that look like a result."""
        return np.where(ok, values, np.nan)

    per_cell = {"_cell": np.arange(n_cells), "config": points.config[first], "layer": points.layer[first],
                "probe": points.probe[first], "step": points.step[first], "intercept": masked(fit.intercept),
                "residual_sd": masked(resid_sd), "n_points": n_points, "n_seeds": n_seeds,
                "n_nonfinite": n_nonfinite, "_too_few": too_few, "_singular": fit.singular}
    status = (pl.when("_too_few").then(pl.lit(FitStatus.TOO_FEW_POINTS))
              .when("_singular").then(pl.lit(FitStatus.SINGULAR)).otherwise(pl.lit(FitStatus.OK)))
    long = pl.concat([pl.DataFrame({
        **per_cell, "estimate": masked(fit.coef[:, j]), "se": masked(fit.se[:, j]),
        "ci_low": masked(low[:, j]), "ci_high": masked(high[:, j]), "n_widths": n_widths[:, j],
    }).with_columns(pl.lit(t).alias("term")) for j, t in enumerate(terms)])
    return (long.sort("_cell", "term").with_columns(status.alias("status"), pl.col(pl.Float64).fill_nan(None))
            .drop("_cell", "_too_few", "_singular"))
