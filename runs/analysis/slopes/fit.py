"""Width-scaling exponents: log-log fits with seed-bootstrap CIs, set beside the predicted ones.

Input: one row per (run, step, layer, site, quantity, group), the probe sums joined with the
run's keys (FRAME_COLUMNS). Output of `fit_slopes`: one row per fitted exponent ("term") of one
cell, a cell being (preset, discretization, optimizer, lr, [spec, task, dt_max,] fixed_width, layer,
site, quantity, group, step) in one norm convention. Pure polars/numpy, frame → frame; the paper's
table (`paper_slopes`) and synthetic frames with known exponents (`synthetic_frame`) live here too.

The fit: log2‖·‖ = a + s·log2(width) over every (width, seed) point of a cell ("joint": runs with
N_u = N_x; "n_u": N_x held fixed; "n_x": N_u held fixed), or a + s_u·log2 N_u + s_x·log2 N_x on a
2-D grid ("2d"). Standard errors are the OLS ones; the 95 % CI is a seed (cluster) bootstrap:
resample the seeds with replacement, keep each drawn seed's points, refit (docs/slopes.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from statistics import NormalDist
from typing import Literal

import numpy as np
import polars as pl

from ssmscope.runs.analysis.norms import norm_expr, parse_convention
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.predictions import Convention, predictions

# --- thresholds and minimums (docs/slopes.md explains each) ---------------------------------
MIN_WIDTHS = 3
"""Distinct widths per fitted axis below which a cell is reported too_few_points (2 points fit any line)."""
MIN_SEEDS_FOR_CI = 2
"""A seed bootstrap of one seed has zero spread: fewer seeds give a null CI (the SE is still reported)."""
FLAT_TOL = 0.1
"""|s| ≤ FLAT_TOL per doubling of width is "flat"; above is "grows", below −FLAT_TOL "vanishes"."""
AGREE_TOL = 0.15
"""A measured exponent agrees with the prediction when |s − predicted| ≤ AGREE_TOL or the CI covers it."""
DEFAULT_N_BOOT = 1000
"""Bootstrap resamples per cell (percentiles of 1000 resamples are stable to about ±0.01 of s)."""
CONFIDENCE = 0.95
"""Nominal coverage of the bootstrap CI."""
EXCLUDED_STATUSES = ("diverged", "failed")
"""Run statuses left out of the fits by default (and counted per cell)."""
_DEGENERATE_REL = 1e-9
"""Relative determinant below which a design matrix counts as singular (e.g. a 2-D fit on N_u = N_x only)."""
_BOOT_CHUNK = 1 << 22
"""Elements (cells × distinct resamples × sums) per bootstrap batch: bounds memory at ~32 MB."""

# --- column sets -----------------------------------------------------------------------------
RUN_COLUMNS = ["run_id", "preset", "discretization", "optimizer", "lr", "seed", "n_u", "n_x", "status"]
FRAME_COLUMNS = [*RUN_COLUMNS, "step", "layer", "site", "quantity", "group", "sumsq", "count", "maxabs",
                 "token_norm_sum", "n_tokens", "channel_norm_sum", "n_channels"]
CONFIG_KEYS = ["preset", "discretization", "optimizer", "lr", "fixed_width"]
"""One sweep configuration: the fits never mix learning rates or a held-fixed width."""
OPTIONAL_CONFIG_KEYS = ["spec", "task", "dt_max"]
"""Run keys that also separate configurations when the frame has them (runs.store adds them): two
sweeps with another dt range or task must not be fitted as one."""
CELL_KEYS = [*CONFIG_KEYS, "layer", "site", "quantity", "group", "step"]
"""One fit = one cell (plus any OPTIONAL_CONFIG_KEYS present, after lr)."""
OPTIMIZER_FAMILY: dict[str, str] = {"sgd": "sgd", "adam": "adam", "adamw": "adam"}
"""Optimizer → the predictions' family; optimizers not listed get no prediction."""


class Design(StrEnum):
    """Which widths vary across the fitted points."""

    JOINT = "joint"  # N_u = N_x = width, one slope s
    N_U = "n_u"  # N_x held fixed (one fit per fixed N_x), slope in N_u
    N_X = "n_x"  # N_u held fixed (one fit per fixed N_u), slope in N_x
    TWO_D = "2d"  # every (N_u, N_x) point, slopes s_u and s_x


class LayerAgg(StrEnum):
    """How layers enter a fit."""

    EACH = "each"  # one fit per layer
    MEAN = "mean"  # fit the mean over layers of log2‖·‖ (= the mean of the per-layer slopes)


# The regressors (terms) of each design, as the log2 of which width column.
_TERMS: dict[Design, tuple[tuple[str, str], ...]] = {
    Design.JOINT: (("width", "n_u"),),
    Design.N_U: (("n_u", "n_u"),),
    Design.N_X: (("n_x", "n_x"),),
    Design.TWO_D: (("n_u", "n_u"), ("n_x", "n_x")),
}

# The paper's table: its four columns as (site, quantity).
PAPER_COLUMNS: dict[str, tuple[str, str]] = {
    "x": ("x", "value"),
    "y": ("y", "value"),
    "dx": ("x", "delta_init"),
    "dy": ("y", "delta_init"),
}

Step = int | Literal["last"] | None
"""A step selector: an int, "last" (per configuration, the last step of an included run), None = all."""


def _parse_enum(enum: type[StrEnum], key: str, value: object) -> StrEnum:
    """`enum(value)`, or a ConfigError naming the key, the value and the allowed values."""
    try:
        return enum(value)
    except ValueError:
        raise ConfigError(f"{key}={value!r}; allowed: {', '.join(e.value for e in enum)}") from None


def _check_columns(frame: pl.DataFrame) -> None:
    """Fail early, naming what is missing, when a frame is not a probe frame."""
    missing = [c for c in FRAME_COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigError(f"probe frame lacks column(s) {', '.join(missing)}; "
                          f"expected: {', '.join(FRAME_COLUMNS)}")


# --- preparing points ------------------------------------------------------------------------
# Fitting works on dense integer codes (run, config, probe, step, cell) with numpy bincounts:
# group-bys over ten key columns, four of them strings, cost about a second on a million rows.
def _config_keys(frame: pl.DataFrame) -> list[str]:
    """CONFIG_KEYS with the OPTIONAL_CONFIG_KEYS the frame has, placed before fixed_width."""
    return [*CONFIG_KEYS[:-1], *(c for c in OPTIONAL_CONFIG_KEYS if c in frame.columns), "fixed_width"]


def _run_table(frame: pl.DataFrame, design: Design, include_failed: bool) -> pl.DataFrame:
    """One row per run, sorted by run_id, with in_design, fixed_width, included, r_<term> = log2(width)
    and dense codes.

    Codes: config numbers the configurations (`_config_keys`) of runs in the design in sorted order
    (null for runs outside it: joint needs N_u = N_x); seed_code the seeds; w_<term> the widths of a term.
    """
    keys = _config_keys(frame)
    runs = frame.select(*RUN_COLUMNS, *keys[4:-1]).unique(subset="run_id", keep="any").sort("run_id")
    in_design = pl.col("n_u") == pl.col("n_x") if design == Design.JOINT else pl.lit(True)
    fixed = {Design.N_U: pl.col("n_x"), Design.N_X: pl.col("n_u")}.get(design, pl.lit(None))
    included = pl.lit(True) if include_failed else ~pl.col("status").is_in(EXCLUDED_STATUSES)
    runs = runs.with_columns(
        in_design.alias("in_design"), fixed.cast(pl.Int64).alias("fixed_width"), included.alias("included"),
        pl.col("seed").rank("dense").cast(pl.Int64).sub(1).alias("seed_code"),
        *(pl.col(col).cast(pl.Float64).log(2).alias(f"r_{term}") for term, col in _TERMS[design]),
        *(pl.col(col).rank("dense").cast(pl.Int64).sub(1).alias(f"w_{term}") for term, col in _TERMS[design]))
    configs = (runs.filter("in_design").select(keys).unique().sort(keys, nulls_last=True)
               .with_row_index("config").with_columns(pl.col("config").cast(pl.Int64)))
    return runs.join(configs, on=keys, how="left", nulls_equal=True, maintain_order="left")


def _dense(codes: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """Each code's index among the distinct codes (in sorted order), and the distinct codes.

    A bincount over [0, capacity) when that is not much larger than the data, a sort otherwise.
    """
    if capacity <= max(4 * len(codes), 1 << 22):
        present = np.bincount(codes, minlength=capacity) > 0
        return (np.cumsum(present) - 1)[codes], np.flatnonzero(present)
    uniques, inverse = np.unique(codes, return_inverse=True)
    return inverse.reshape(-1), uniques


def _combine(parts: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, int]:
    """Mixed-radix code of dense codes (value, radix), ordered like the tuple of parts; and its capacity."""
    code, capacity = np.zeros(len(parts[0][0]), np.int64), 1
    for values, radix in parts:
        if capacity * radix >= 2**62:  # never for real stores; keeps the code exact regardless
            code, uniques = _dense(code, capacity)
            capacity = len(uniques)
        code, capacity = code * radix + values, capacity * radix
    return code, capacity


def _first_rows(inverse: np.ndarray, n_groups: int) -> np.ndarray:
    """The first row of each group (inverse: group index per row)."""
    first = np.zeros(n_groups, np.int64)
    first[inverse[::-1]] = np.arange(len(inverse) - 1, -1, -1)  # reversed: the first occurrence wins
    return first


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
    codes = frame.select(
        pl.col("run_id").cast(pl.Enum(runs.get_column("run_id"))).to_physical().alias("run"),
        *(pl.col(c).fill_null("").cast(pl.Enum(levels[c])).to_physical().alias(c) for c in _PROBE_KEYS),
        "step", "layer", norm_expr(convention).log(2).alias("y"))
    run = codes.get_column("run").to_numpy().astype(np.int64)
    config = runs.get_column("config").fill_null(-1).to_numpy()[run]
    n_q, n_g = len(levels["quantity"]), len(levels["group"])
    site, quantity, group = (codes.get_column(c).to_numpy().astype(np.int64) for c in _PROBE_KEYS)
    y = codes.get_column("y").to_numpy()
    points = _Points(run=run, config=config, layer=codes.get_column("layer").to_numpy().astype(np.int64),
                     probe=(site * n_q + quantity) * n_g + group,
                     step=codes.get_column("step").to_numpy().astype(np.int64), valid=np.isfinite(y), y=y)
    in_design = config >= 0
    if not in_design.all():
        points = points.take(in_design)
    present = _dense(points.probe, len(levels["site"]) * n_q * n_g)[1]
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
        last = np.full(_radix(points.config), lowest)
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
    step_codes, steps = _dense(*_shifted(points.step))
    code, capacity = _combine([(points.run, _radix(points.run)), (points.probe, _radix(points.probe)),
                               (step_codes, max(len(steps), 1))])
    inverse, uniques = _dense(code, capacity)
    n = len(uniques)
    count = np.bincount(inverse, minlength=n)
    y_sum = np.bincount(inverse, weights=np.where(points.valid, points.y, 0.0), minlength=n)
    valid = np.bincount(inverse, weights=~points.valid, minlength=n) == 0
    first = points.take(_first_rows(inverse, n))
    return _Points(run=first.run, config=first.config, layer=np.zeros(n, np.int64), probe=first.probe,
                   step=first.step, valid=valid, y=np.where(valid, y_sum / count, np.nan))


def _radix(codes: np.ndarray) -> int:
    """The radix of a non-negative dense code array."""
    return int(codes.max()) + 1 if len(codes) else 1


def _shifted(values: np.ndarray) -> tuple[np.ndarray, int]:
    """values − min, and the capacity (max − min + 1), for `_dense`."""
    if not len(values):
        return values.astype(np.int64), 1
    lo = int(values.min())
    return (values - lo).astype(np.int64), int(values.max()) - lo + 1


# --- least squares from sufficient statistics --------------------------------------------------
def _stat_names(p: int) -> list[str]:
    """Sufficient statistics of an OLS fit with p regressors: n, Σr_j, Σy, Σr_j r_k, Σr_j y, Σy²."""
    pairs = [f"s_{j}{k}" for j in range(p) for k in range(j, p)]
    return ["n", *(f"s_{j}" for j in range(p)), "s_y", *pairs, *(f"s_{j}y" for j in range(p)), "s_yy"]


@dataclass(frozen=True)
class _Fit:
    """OLS results over a batch of fits (any leading shape `...`)."""

    coef: np.ndarray  # (..., p) slopes
    intercept: np.ndarray  # (...,)
    se: np.ndarray  # (..., p), NaN where n ≤ p + 1 leaves no residual degree of freedom
    rss: np.ndarray  # (...,) residual sum of squares
    singular: np.ndarray  # (...,) bool: the design does not determine the slopes


def _ols(stats: np.ndarray, p: int) -> _Fit:
    """Closed-form OLS (p = 1 or 2 regressors plus an intercept) from sufficient statistics (..., S).

    Works on centred cross-products of the sums, so a cell's fit never revisits its points; the
    bootstrap uses the slope part alone (`_slopes_only`).
    """
    idx = {name: i for i, name in enumerate(_stat_names(p))}
    n = stats[..., idx["n"]]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = [stats[..., idx[f"s_{j}"]] / n for j in range(p)]
        mean_y = stats[..., idx["s_y"]] / n
        c = {(j, k): stats[..., idx[f"s_{j}{k}"]] - n * mean[j] * mean[k]
             for j in range(p) for k in range(j, p)}
        cy = [stats[..., idx[f"s_{j}y"]] - n * mean[j] * mean_y for j in range(p)]
        cyy = stats[..., idx["s_yy"]] - n * mean_y * mean_y
        if p == 1:
            det = c[0, 0]
            scale = np.abs(c[0, 0])
            coef = [cy[0] / det]
            inv_diag = [1.0 / det]
        else:
            det = c[0, 0] * c[1, 1] - c[0, 1] ** 2
            scale = np.abs(c[0, 0] * c[1, 1])
            coef = [(c[1, 1] * cy[0] - c[0, 1] * cy[1]) / det, (c[0, 0] * cy[1] - c[0, 1] * cy[0]) / det]
            inv_diag = [c[1, 1] / det, c[0, 0] / det]
        singular = ~(det > _DEGENERATE_REL * np.maximum(scale, 1e-300)) | ~(n > p)
        rss = np.maximum(cyy - sum(b * v for b, v in zip(coef, cy, strict=True)), 0.0)
        dof = n - p - 1
        sigma2 = np.where(dof > 0, rss / np.where(dof > 0, dof, 1.0), np.nan)
        se = np.stack([np.sqrt(sigma2 * v) for v in inv_diag], axis=-1)
        coef_arr = np.stack(coef, axis=-1)
        intercept = mean_y - sum(b * m for b, m in zip(coef, mean, strict=True))
    coef_arr[singular] = np.nan
    se[singular] = np.nan
    return _Fit(coef_arr, np.where(singular, np.nan, intercept), se, rss, singular)


# --- the seed bootstrap --------------------------------------------------------------------------
@dataclass(frozen=True)
class _Resamples:
    """n_boot seed resamples of one seed count K, as distinct multiplicity patterns."""

    patterns: np.ndarray  # (U, K) how often each seed position is drawn, one row per distinct pattern
    weights: np.ndarray  # (U,) how many of the n_boot resamples have that pattern
    inverse: np.ndarray  # (B,) the pattern of each resample


def _resamples(n_seeds: int, n_boot: int, rng_seed: int) -> _Resamples:
    """The n_boot resamples (with replacement) of n_seeds seeds, reduced to distinct patterns.

    Draws depend only on (rng_seed, n_seeds), so a cell's CI does not depend on what else was selected.
    With few seeds the patterns repeat (3 seeds: at most 10 distinct), so each distinct pattern is
    fitted once and weighted by its count: exactly the n_boot-resample percentiles, at a fraction of the cost.
    """
    rng = np.random.default_rng([rng_seed, n_seeds])
    draws = rng.integers(0, n_seeds, size=(n_boot, n_seeds))  # (B, K) drawn seed positions
    flat = (np.arange(n_boot)[:, None] * n_seeds + draws).ravel()
    counts = np.bincount(flat, minlength=n_boot * n_seeds).reshape(n_boot, n_seeds)  # (B, K)
    patterns, inverse, weights = np.unique(counts, axis=0, return_inverse=True, return_counts=True)
    return _Resamples(patterns.astype(np.float64), weights.astype(np.float64), inverse.reshape(-1))


def _slopes_only(sums: np.ndarray, p: int) -> list[np.ndarray]:
    """The OLS slopes alone from sufficient statistics (S, ...) ordered as `_stat_names(p)`; NaN if singular.

    The bootstrap's hot loop: n-scaled centred cross-products, no SE or intercept (Σy² is not read).
    """
    s = dict(zip(_stat_names(p), sums, strict=False))
    n, sy = s["n"], s["s_y"]
    c = {(j, k): n * s[f"s_{j}{k}"] - s[f"s_{j}"] * s[f"s_{k}"] for j in range(p) for k in range(j, p)}
    cy = [n * s[f"s_{j}y"] - s[f"s_{j}"] * sy for j in range(p)]
    with np.errstate(divide="ignore", invalid="ignore"):
        if p == 1:
            ok = c[0, 0] > _DEGENERATE_REL * n * s["s_00"]
            return [np.where(ok, cy[0] / c[0, 0], np.nan)]
        det = c[0, 0] * c[1, 1] - c[0, 1] * c[0, 1]
        ok = det > _DEGENERATE_REL * np.abs(c[0, 0] * c[1, 1])
        return [np.where(ok, (c[1, 1] * cy[0] - c[0, 1] * cy[1]) / det, np.nan),
                np.where(ok, (c[0, 0] * cy[1] - c[0, 1] * cy[0]) / det, np.nan)]


def _weighted_quantiles(values: np.ndarray, weights: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """Inverted-CDF quantiles of weighted samples per row: values (m, U), weights (U,) → (m, len(qs)).

    Equal to np.quantile(method="inverted_cdf") of the samples repeated by their weights; NaN samples
    (a resample whose design is singular) carry no weight; a row with no finite sample gives NaN.
    """
    w = np.where(np.isnan(values), 0.0, weights[None, :])  # (m, U)
    order = np.argsort(values, axis=1)  # NaN last
    v_sorted = np.take_along_axis(values, order, axis=1)
    cw = np.cumsum(np.take_along_axis(w, order, axis=1), axis=1)  # (m, U)
    total = cw[:, -1:]
    out = np.empty((values.shape[0], len(qs)))
    for i, q in enumerate(qs):
        pos = (cw < q * total - 1e-9 * total).sum(axis=1)  # first index with cumulative weight ≥ q·total
        pos = np.minimum(pos, values.shape[1] - 1)
        out[:, i] = np.take_along_axis(v_sorted, pos[:, None], axis=1)[:, 0]
    out[total[:, 0] <= 0] = np.nan
    return out


def _resample_quantiles(values: np.ndarray, res: _Resamples, qs: tuple[float, ...]) -> np.ndarray:
    """Inverted-CDF quantiles over the n_boot resamples of per-pattern values (m, U) → (m, len(qs)).

    Few distinct patterns: a weighted sort of U values. Many (U near n_boot, i.e. many seeds): expand
    to the n_boot resamples and select the two order statistics with np.partition, O(n_boot) per row.
    """
    n_boot = len(res.inverse)
    if 8 * len(res.weights) < n_boot:
        return _weighted_quantiles(values, res.weights, qs)
    out = np.empty((values.shape[0], len(qs)))
    has_nan = np.isnan(values).any(axis=1)
    if has_nan.any():
        out[has_nan] = _weighted_quantiles(values[has_nan], res.weights, qs)
    clean = ~has_nan
    ranks = [max(int(np.ceil(q * n_boot - 1e-9 * n_boot)) - 1, 0) for q in qs]
    expanded = values[clean][:, res.inverse]  # (m', B)
    out[clean] = np.partition(expanded, ranks, axis=1)[:, ranks]
    return out


def _bootstrap_ci(seed_stats: np.ndarray, starts: np.ndarray, n_seeds: np.ndarray, p: int, n_boot: int,
                  rng_seed: int, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Seed-bootstrap percentile CI per cell: (low, high), each (n_cells, p); NaN where not computable.

    seed_stats (rows, S) holds one row of sufficient statistics per (cell, seed), grouped by cell;
    cell c owns rows starts[c] : starts[c] + n_seeds[c]. A resample's sums are its seeds' sums
    weighted by how often each seed was drawn: one matrix product for all resamples of a batch of cells.
    """
    n_cells = len(starts)
    low = np.full((n_cells, p), np.nan)
    high = np.full((n_cells, p), np.nan)
    if n_boot <= 0:
        return low, high
    alpha = 1.0 - confidence
    qs = (alpha / 2, 1.0 - alpha / 2)
    n_sums = seed_stats.shape[1] - 1  # Σy² is not needed for slopes
    by_stat = np.ascontiguousarray(seed_stats[:, :n_sums].T)  # (S', rows)
    for k in np.unique(n_seeds):
        if k < MIN_SEEDS_FOR_CI:
            continue
        cells = np.flatnonzero(n_seeds == k)
        res = _resamples(int(k), n_boot, rng_seed)
        chunk = max(1, _BOOT_CHUNK // (len(res.weights) * n_sums))
        for lo in range(0, len(cells), chunk):
            part = cells[lo:lo + chunk]
            rows = starts[part][:, None] + np.arange(k)  # (m, K)
            sums = by_stat[:, rows] @ res.patterns.T  # (S', m, K) @ (K, U) → (S', m, U)
            for j, slope in enumerate(_slopes_only(sums, p)):
                q = _resample_quantiles(slope, res, qs)  # (m, 2)
                low[part, j], high[part, j] = q[:, 0], q[:, 1]
    return low, high


# --- the fit ---------------------------------------------------------------------------------
def fit_slopes(frame: pl.DataFrame, *, convention: Convention | str = Convention.RMS,
               design: Design | str = Design.JOINT, layers: LayerAgg | str = LayerAgg.EACH,
               step: Step = None, n_boot: int = DEFAULT_N_BOOT, rng_seed: int = 0,
               include_failed: bool = False, confidence: float = CONFIDENCE,
               interval: str = "union") -> pl.DataFrame:
    """Fit width-scaling exponents for every cell of a probe frame; one output row per (cell, term).

    Args:
        frame: probe rows joined with run keys (FRAME_COLUMNS), already filtered to the selection.
        convention: norm convention (runs.norms); predictions are shifted to the same one.
        design: which widths vary (Design): joint, n_u (N_x fixed), n_x (N_u fixed) or 2d.
        layers: "each" (a fit per layer) or "mean" (fit the layer-mean of log2‖·‖; layer is null).
        step: an int, "last" (per configuration, the last step logged by an included run), None = all.
        n_boot: bootstrap resamples of the seeds (0: no CI).
        rng_seed: seeds the bootstrap draws (results are deterministic).
        include_failed: fit diverged and failed runs too (they are counted either way).
        confidence: nominal coverage of the CI.
        interval: "union" (default: the wider of the seed bootstrap and the OLS normal interval, which keeps
            its coverage with 2-3 seeds) or "bootstrap" (the percentile seed bootstrap alone).

    Returns: FIT_COLUMNS (plus the OPTIONAL_CONFIG_KEYS the frame has, after lr), one row per
    (cell, term) in CELL_KEYS order, with `status` ok | too_few_points | singular, and the
    predicted exponent, verdict and agreement (`attach_predictions`).
    """
    _check_columns(frame)
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
    fits = _fit_cells(points, run_arrays, terms, n_boot, rng_seed, confidence, interval)

    configs = runs.filter("in_design").group_by("config").agg(
        pl.col(_config_keys(frame)).first(),
        (pl.col("status") == "diverged").sum().cast(pl.Int64).alias("n_diverged"),
        (pl.col("status") == "failed").sum().cast(pl.Int64).alias("n_failed"))
    layer = pl.lit(None, pl.Int64) if layers == LayerAgg.MEAN else pl.col("layer")
    out = (fits.join(configs, on="config", how="left", maintain_order="left")
           .join(probes, on="probe", how="left", maintain_order="left")
           .with_columns(layer.alias("layer"), pl.lit(convention.value).alias("convention"),
                         pl.lit(design.value).alias("design")))
    optional = [c for c in OPTIONAL_CONFIG_KEYS if c in frame.columns]
    return attach_predictions(out).select(*FIT_COLUMNS[:4], *optional, *FIT_COLUMNS[4:])


FIT_COLUMNS = [*CELL_KEYS, "convention", "design", "term", "estimate", "se", "ci_low", "ci_high",
               "intercept", "residual_sd", "n_points", "n_seeds", "n_widths", "n_diverged", "n_failed",
               "n_nonfinite", "status", "predicted", "log_x", "verdict", "agreement", "prediction_note"]
"""Columns of a slope frame, in order."""


def _fit_cells(points: _Points, runs: _Runs, terms: list[str], n_boot: int, rng_seed: int,
               confidence: float, interval: str = "union") -> pl.DataFrame:
    """Per cell: counts over every point, OLS and bootstrap CI over the included valid ones.

    Returns one row per (cell, term) in cell order, keyed by the codes config, layer, probe, step.
    """
    p = len(terms)
    step_codes, steps = _dense(*_shifted(points.step))
    code, capacity = _combine([(points.config, _radix(points.config)), (points.layer - _low(points.layer),
                               _span(points.layer)), (points.probe, _radix(points.probe)),
                               (step_codes, max(len(steps), 1))])
    cell, uniques = _dense(code, capacity)  # (P,) cell index, cells in CELL_KEYS order
    n_cells = len(uniques)
    included = runs.included[points.run]
    usable = np.flatnonzero(included & points.valid)  # (U,) the points that are fitted
    first = _first_rows(cell, n_cells)
    n_points = np.bincount(cell[usable], minlength=n_cells)
    n_nonfinite = np.bincount(cell[included & ~points.valid], minlength=n_cells)
    cell_u, run_u = cell[usable], points.run[usable]
    n_widths = np.stack([_distinct_per_group(cell_u, runs.w[run_u, j], n_cells) for j in range(p)], axis=1)

    # Sufficient statistics per (cell, seed), rows in (cell, seed) order.
    n_seed_codes = _radix(runs.seed)
    group, group_codes = _dense(cell_u * n_seed_codes + runs.seed[run_u], n_cells * n_seed_codes)
    columns = _stat_columns(runs.r[run_u], points.y[usable])
    stats = np.stack([np.bincount(group, weights=c, minlength=len(group_codes)) for c in columns], axis=1)
    group_cell = group_codes // n_seed_codes  # (G,) cell of each (cell, seed) row
    starts = np.flatnonzero(np.r_[True, group_cell[1:] != group_cell[:-1]]) if len(group_cell) else (
        np.zeros(0, np.int64))
    n_seeds = np.zeros(n_cells, np.int64)
    n_seeds[group_cell[starts]] = np.diff(np.r_[starts, len(group_cell)])
    totals = np.zeros((n_cells, stats.shape[1]))
    if len(starts):
        totals[group_cell[starts]] = np.add.reduceat(stats, starts, axis=0)
    fit = _ols(totals, p)
    low = np.full((n_cells, p), np.nan)
    high = np.full((n_cells, p), np.nan)
    fitted = group_cell[starts]
    low[fitted], high[fitted] = _bootstrap_ci(stats, starts, n_seeds[fitted], p, n_boot, rng_seed, confidence)
    # A percentile bootstrap over 2-3 seeds undercovers badly (docs/slopes.md: 50 % for 2 seeds, 75 % for 3);
    # the reported interval is the union with the OLS normal interval, which keeps ~93 % at any seed count.
    if interval == "union":
        z = float(NormalDist().inv_cdf(0.5 + confidence / 2))
        with np.errstate(invalid="ignore"):
            low = np.fmin(low, fit.coef - z * fit.se)
            high = np.fmax(high, fit.coef + z * fit.se)
    with np.errstate(invalid="ignore", divide="ignore"):
        resid_sd = np.where(totals[:, 0] > p + 1, np.sqrt(fit.rss / (totals[:, 0] - p - 1)), np.nan)
    too_few = (n_widths < MIN_WIDTHS).any(axis=1)
    ok = ~too_few & ~fit.singular

    def masked(values: np.ndarray) -> np.ndarray:
        """A cell that is not "ok" reports its counts only: no numbers that look like a result."""
        return np.where(ok, values, np.nan)

    per_cell = {"_cell": np.arange(n_cells), "config": points.config[first], "layer": points.layer[first],
                "probe": points.probe[first], "step": points.step[first], "intercept": masked(fit.intercept),
                "residual_sd": masked(resid_sd), "n_points": n_points, "n_seeds": n_seeds,
                "n_nonfinite": n_nonfinite, "_too_few": too_few, "_singular": fit.singular}
    status = (pl.when("_too_few").then(pl.lit("too_few_points"))
              .when("_singular").then(pl.lit("singular")).otherwise(pl.lit("ok")))
    long = pl.concat([pl.DataFrame({
        **per_cell, "estimate": masked(fit.coef[:, j]), "se": masked(fit.se[:, j]),
        "ci_low": masked(low[:, j]), "ci_high": masked(high[:, j]), "n_widths": n_widths[:, j],
    }).with_columns(pl.lit(t).alias("term")) for j, t in enumerate(terms)])
    return (long.sort("_cell", "term").with_columns(status.alias("status"), pl.col(pl.Float64).fill_nan(None))
            .drop("_cell", "_too_few", "_singular"))


def _low(values: np.ndarray) -> int:
    """The minimum of a code array (0 when empty)."""
    return int(values.min()) if len(values) else 0


def _span(values: np.ndarray) -> int:
    """max − min + 1 of a code array (1 when empty)."""
    return int(values.max()) - int(values.min()) + 1 if len(values) else 1


def _distinct_per_group(group: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """How many distinct codes each group has (groups and codes dense, non-negative)."""
    radix = _radix(codes)
    pairs = _dense(group * radix + codes, n_groups * radix)[1]  # the distinct (group, code) pairs
    return np.bincount(pairs // radix, minlength=n_groups)


def _stat_columns(r: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """Per-point summands of the sufficient statistics, in `_stat_names(p)` order."""
    p = r.shape[1]
    cols = [np.ones_like(y), *(r[:, j] for j in range(p)), y]
    cols += [r[:, j] * r[:, k] for j in range(p) for k in range(j, p)]
    cols += [r[:, j] * y for j in range(p)]
    cols.append(y * y)
    return cols


# --- predicted vs measured -----------------------------------------------------------------------
def predictions_frame(convention: Convention | str = Convention.RMS) -> pl.DataFrame:
    """ssmscope.ssm.predictions as a frame: preset, discretization, family, site, quantity, pred_n_u, pred_n_x, ..."""
    rows = [dict(preset=p.preset, discretization=p.discretization.value, family=p.optimizer, site=p.site,
                 quantity=p.quantity, pred_n_u=float(p.n_u), pred_n_x=float(p.n_x), log_x=p.log_x,
                 prediction_note=p.note) for p in predictions(parse_convention(convention))]
    schema = {"preset": pl.String, "discretization": pl.String, "family": pl.String, "site": pl.String,
              "quantity": pl.String, "pred_n_u": pl.Float64, "pred_n_x": pl.Float64, "log_x": pl.Boolean,
              "prediction_note": pl.String}
    return pl.DataFrame(rows, schema=schema)


def attach_predictions(slopes: pl.DataFrame) -> pl.DataFrame:
    """Add predicted, log_x, prediction_note, verdict and agreement to a slope frame (FLAT_TOL, AGREE_TOL).

    Predictions describe totals (group ""), so per-group rows get none. The predicted slope of a term:
    joint width → n_u + n_x; n_u → n_u; n_x → n_x (in the slope frame's own convention).
    """
    slopes = (slopes.drop("predicted", "log_x", "prediction_note", "verdict", "agreement", strict=False)
              .with_row_index("_row"))
    parts = []
    for conv in slopes.get_column("convention").unique().to_list():
        part = slopes.filter(pl.col("convention") == conv)
        family = pl.col("optimizer").replace_strict(OPTIMIZER_FAMILY, default=None, return_dtype=pl.String)
        part = part.with_columns(family.alias("family"), (pl.col("group") == "").alias("_total"))
        preds = predictions_frame(conv).with_columns(pl.lit(True).alias("_total"))
        parts.append(part.join(preds, on=["preset", "discretization", "family", "site", "quantity", "_total"],
                                how="left", maintain_order="left").drop("family", "_total"))
    out = pl.concat(parts, how="diagonal_relaxed") if parts else slopes.with_columns(
        pl.lit(None, pl.Float64).alias("pred_n_u"), pl.lit(None, pl.Float64).alias("pred_n_x"),
        pl.lit(None, pl.Boolean).alias("log_x"), pl.lit(None, pl.String).alias("prediction_note"))
    predicted = (pl.when(pl.col("term") == "width").then(pl.col("pred_n_u") + pl.col("pred_n_x"))
                 .when(pl.col("term") == "n_u").then(pl.col("pred_n_u")).otherwise(pl.col("pred_n_x")))
    s, ok = pl.col("estimate"), pl.col("status") == "ok"
    verdict = (pl.when(~ok).then(None).when(s > FLAT_TOL).then(pl.lit("grows"))
               .when(s < -FLAT_TOL).then(pl.lit("vanishes")).otherwise(pl.lit("flat")))
    pred = pl.col("predicted")
    covered = (pl.col("ci_low") <= pred) & (pred <= pl.col("ci_high"))
    agreement = (pl.when(~ok).then(pl.lit("not fitted")).when(pred.is_null()).then(pl.lit("no prediction"))
                 .when(((s - pred).abs() <= AGREE_TOL) | covered.fill_null(False)).then(pl.lit("agrees"))
                 .otherwise(pl.lit("disagrees")))
    return (out.sort("_row").with_columns(predicted.alias("predicted")).drop("pred_n_u", "pred_n_x", "_row")
            .with_columns(verdict.alias("verdict"), agreement.alias("agreement")))


# --- the paper's table ---------------------------------------------------------------------------
def paper_slopes(frame: pl.DataFrame, *, convention: Convention | str = Convention.RMS,
                 design: Design | str = Design.JOINT, layers: LayerAgg | str = LayerAgg.MEAN,
                 step: Step = "last", n_boot: int = DEFAULT_N_BOOT, rng_seed: int = 0,
                 include_failed: bool = False) -> pl.DataFrame:
    """The slope rows behind the paper's table: ‖x‖, ‖y‖, ‖Δx‖, ‖Δy‖ (totals), with a `column` label.

    Defaults: the last step of each configuration, and layers="mean" — one exponent per cell for the
    mean over layers of log2‖·‖, which equals the mean of the per-layer exponents and gets its CI from
    the same seed bootstrap (use layers="each" for a row per layer).
    """
    _check_columns(frame)
    selector = pl.lit(False)
    label = pl.lit(None, pl.String)
    for name, (site, quantity) in reversed(PAPER_COLUMNS.items()):
        hit = (pl.col("site") == site) & (pl.col("quantity") == quantity)
        selector = selector | hit
        label = pl.when(hit).then(pl.lit(name)).otherwise(label)
    subset = frame.filter(selector & (pl.col("group") == ""))
    slopes = fit_slopes(subset, convention=convention, design=design, layers=layers, step=step,
                        n_boot=n_boot, rng_seed=rng_seed, include_failed=include_failed)
    keys = [c for c in slopes.columns if c in _config_keys(frame)]
    order = pl.Enum(list(PAPER_COLUMNS))
    return (slopes.with_columns(label.cast(order).alias("column"))
            .sort(*keys, "layer", "column", "term", nulls_last=True, maintain_order=True)
            .with_columns(pl.col("column").cast(pl.String)))


# --- synthetic frames --------------------------------------------------------------------------------
def synthetic_frame(*, n_u: tuple[int, ...] = (32, 64, 128, 256, 512), n_x: tuple[int, ...] | None = None,
                    seeds: int = 3, presets: tuple[str, ...] = ("sp", "mup", "mup-ssm"),
                    discretizations: tuple[str, ...] = ("zoh", "euler"),
                    optimizers: tuple[str, ...] = ("adam",),
                    steps: tuple[int, ...] = (0, 100), layers: int = 3,
                    cells: tuple[tuple[str, str], ...] = tuple(PAPER_COLUMNS.values()),
                    groups: tuple[str, ...] = ("",),
                    exponents: dict[tuple[str, str], tuple[float, float]] | None = None,
                    noise: float = 0.05, lr: float = 1e-3, rng_seed: int = 0) -> pl.DataFrame:
    """A probe frame (FRAME_COLUMNS) whose RMS norms follow known exponents, for tests, benches and demos.

    log2 rms = 1 + s_u·log2 N_u + s_x·log2 N_x + layer/4 + N(0, noise²), independently per row.
    Widths: n_x=None gives joint runs (N_x = N_u); otherwise every (N_u, N_x) pair.
    exponents: {(site, quantity): (s_u, s_x)}; None takes ssm.predictions (RMS) where they exist, else 0.
    """
    pairs = [(u, u) for u in n_u] if n_x is None else [(u, x) for u in n_u for x in n_x]
    runs = pl.DataFrame(
        [(p, d, o, u, x, s) for p in presets for d in discretizations for o in optimizers
         for u, x in pairs for s in range(seeds)],
        schema={"preset": pl.String, "discretization": pl.String, "optimizer": pl.String,
                "n_u": pl.Int64, "n_x": pl.Int64, "seed": pl.Int64}, orient="row")
    runs = runs.with_columns(
        pl.format("{}-{}-{}-u{}-x{}-s{}", *runs.columns).alias("run_id"), pl.lit(lr).alias("lr"),
        pl.lit("completed").alias("status"))
    probes = pl.DataFrame([(st, ly, si, q, g) for st in steps for ly in range(layers) for si, q in cells
                           for g in groups], orient="row",
                          schema={"step": pl.Int64, "layer": pl.Int32, "site": pl.String,
                                  "quantity": pl.String, "group": pl.String})
    frame = runs.join(probes, how="cross")
    exp = _synthetic_exponents(frame, exponents)
    rng = np.random.default_rng(rng_seed)
    log2_width = np.log2(frame.select("n_u", "n_x").to_numpy().astype(np.float64))  # (rows, 2)
    log2_rms = (1.0 + (exp * log2_width).sum(axis=1) + frame["layer"].to_numpy() / 4
                + rng.normal(0.0, noise, frame.height))
    rms = np.exp2(log2_rms)
    count = (frame["n_u"] * frame["n_x"] * 64).to_numpy()
    return frame.with_columns(
        pl.Series("sumsq", rms**2 * count), pl.Series("count", count), pl.Series("maxabs", 4 * rms),
        pl.Series("token_norm_sum", 64 * rms * np.sqrt(count / 64)), pl.lit(64, pl.Int64).alias("n_tokens"),
        pl.Series("channel_norm_sum", count * rms), pl.Series("n_channels", count),
    ).select(FRAME_COLUMNS)


def _synthetic_exponents(frame: pl.DataFrame,
                         exponents: dict[tuple[str, str], tuple[float, float]] | None) -> np.ndarray:
    """(rows, 2) true (s_u, s_x) per row of a synthetic frame."""
    if exponents is not None:
        table = pl.DataFrame([(s, q, u, x) for (s, q), (u, x) in exponents.items()], orient="row",
                             schema={"site": pl.String, "quantity": pl.String, "e_u": pl.Float64,
                                     "e_x": pl.Float64})
        keys = ["site", "quantity"]
    else:
        table = predictions_frame().rename({"pred_n_u": "e_u", "pred_n_x": "e_x"}).select(
            "preset", "discretization", "family", "site", "quantity", "e_u", "e_x")
        frame = frame.with_columns(pl.col("optimizer").replace_strict(OPTIMIZER_FAMILY, default=None,
                                                                      return_dtype=pl.String).alias("family"))
        keys = ["preset", "discretization", "family", "site", "quantity"]
    joined = frame.select(keys).join(table, on=keys, how="left", maintain_order="left")
    return joined.select(pl.col("e_u", "e_x").fill_null(0.0)).to_numpy()
